"""Peak resident memory of `spikec compile` and `spikec eval`, each in its own process
and `spikec energy` (docs/memory.md). Writes benchmarks/results/memory.json.

Default run (modest, ~3 min): SmolLM2-135M with 256 calibration samples, evaluated on 256
tokens, and its compile with the source model placed by accelerate (``--device-map cpu
--max-memory cpu=150MB``: most blocks read from disk). ``--large`` also compiles and evaluates a random-weight model of SmolLM2-1.7B's shapes
(hidden 2048, MLP 8192, 24 layers, 32 heads; 4 calibration samples, -T 4, 64 eval tokens;
~7 GiB of weights, a ~7 GB model.nir, about 10 minutes and 10 GiB of memory): check
``free -g`` first. The figure is the child's peak RSS (``getrusage(RUSAGE_CHILDREN)`` of a
process that runs only that command). eval and energy read model.nir lazily (one node's
weights at a time); ``eval_eager`` and ``energy_eager`` run the same commands with every array
read whole, as before lazy reading (``nirio.LAZY_MIN_BYTES`` set out of reach), for comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402

SPIKEC = [sys.executable, "-m", "spikec.cli"]
EAGER = [sys.executable, "-c", "import sys; from spikec.backends import nirio; nirio.LAZY_MIN_BYTES = 2**62; "
         "from spikec.cli import main; sys.exit(main(sys.argv[1:]))"]
"""``spikec`` with every array of model.nir read whole (no lazy reading)."""
SMOLLM2_1_7B = ("hidden_size=2048,intermediate_size=8192,num_hidden_layers=24,num_attention_heads=32,"
                "num_key_value_heads=32")
"""SmolLM2-1.7B's shapes over the smollm2-135m config (its vocabulary 49152 and tied embeddings)."""

CASES = {
    "smollm2-135m": {
        "compile": ["compile", "smollm2-135m", "--calib-samples", "256"],
        "eval": ["eval", "--tokens", "256"],
        "energy": ["energy", "--tokens", "256"],
    },
    "smollm2-135m-placed": {  # the same model.nir; the source model in 150 MB of memory, the rest read from disk
        "compile": ["compile", "smollm2-135m", "--calib-samples", "256", "--device-map", "cpu", "--max-memory",
                    "cpu=150MB"],
    },
    "smollm2-1.7b-shapes-random": {
        "compile": ["compile", "smollm2-135m", "--random-weights", "--config", SMOLLM2_1_7B,
                    "--calib-samples", "4", "-T", "4"],
        "eval": ["eval", "--tokens", "64"],
        "energy": ["energy", "--tokens", "64"],
    },
}

MEASURE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def peak_rss(argv: list[str]) -> tuple[float, float]:
    """Run ``argv`` in a fresh process; its peak resident memory (GiB) and wall time (s).
    Raises ``RuntimeError`` naming the command when it fails."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[-4:])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    kib = int(done.stdout.strip().splitlines()[-1])
    return kib / 2**20, wall


def measure(name: str, case: dict[str, list[str]], work: Path) -> dict:
    """Compile one case into ``work``, then evaluate it and count its energy (lazily and with
    every array read whole); figures per command."""
    out = work / name
    row = {}
    steps = [("compile", SPIKEC, [*case["compile"], "-o", str(out), "--force"])]
    for step in [s for s in ("eval", "energy") if s in case]:  # a case of compile alone has neither
        args = [case[step][0], str(out), *case[step][1:]]
        steps += [(step, SPIKEC, args), (f"{step}_eager", EAGER, args)]
    for step, spikec, args in steps:
        gib, wall = peak_rss([*spikec, *args])
        shown = " ".join("DIR" if a == str(out) else a for a in args)
        shown += " (every array read whole)" if spikec is EAGER else ""
        row[step] = {"command": f"spikec {shown}", "peak_rss_gib": round(gib, 2), "wall_seconds": round(wall, 1)}
        print(f"{name} {step}: peak RSS {gib:.2f} GiB, {wall:.0f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also the random SmolLM2-1.7B-shaped model (~10 min)")
    parser.add_argument("--case", action="append", choices=list(CASES),
                        help="run only this case (repeatable); the others keep their figures from the file")
    args = parser.parse_args()
    names = args.case or (list(CASES) if args.large else ["smollm2-135m", "smollm2-135m-placed"])
    with tempfile.TemporaryDirectory(prefix="spikec-memory-") as tmp:
        results = {name: measure(name, CASES[name], Path(tmp)) for name in names}
    previous = Path(__file__).resolve().parent / "results" / "memory.json"
    if previous.is_file():  # keep the figures of the cases not run this time
        old = json.loads(previous.read_text()).get("cases", {})
        results = {**{k: v for k, v in old.items() if k not in results}, **results}
    write_results("memory", {"cases": results})


if __name__ == "__main__":
    main()
