"""NIR interoperability figures (docs/interop.md): spikec's portable subgraphs in Norse and
SpikingJelly, other libraries' exports in spikec, and the accuracy cost of portable neurons.

1. Spikes: GPT-2 (124M shapes, random weights, ``--gpt2-layers`` blocks) and SmolLM2-135M
   (real weights) compiled with ``fold-norm-affine,calibrate,portable-encode`` at T=32, split
   with the portable profile; every subgraph of the chosen blocks runs in spikec's simulator,
   Norse and SpikingJelly on the real inputs it gets from held-out text (captured from the
   model.nir itself), and the spike trains of its IF node are compared element for element.
   SpikingJelly runs both the file as written and ``interop.for_library(..., "spikingjelly")``.
2. Import: tests/test_interop.py (the other libraries' exporters) run, outcome per test with
   the named reason of every expected failure.
3. Accuracy: ``spikec eval`` of the portable SmolLM2 at T=32 and T=64 on 1024 held-out tokens,
   beside the default pipeline's figures from benchmarks/results/accuracy_curve.json.

Writes benchmarks/results/interop.json.

    python benchmarks/interop.py [--skip-eval] [--build build/interop] [--reuse] [--accuracy-only]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import RESULTS, write_results  # noqa: E402

import nir  # noqa: E402

from spikec.backends import interop, nirio, portable  # noqa: E402
from spikec.backends.simulator import simulate  # noqa: E402
from spikec.compiler import CompileOptions, compile_model  # noqa: E402
from spikec.evaluate import evaluate, heldout_ids, load_compiled  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PORTABLE = ["fold-norm-affine", "calibrate", "portable-encode"]
T = 32


def compiled(out: Path, model: str, reuse: bool, **kw) -> Path:
    if reuse and (out / "report.json").is_file():
        return out
    start = time.perf_counter()
    compile_model(CompileOptions(model=model, output=str(out), timesteps=T, passes=PORTABLE, force=True, **kw))
    print(f"compiled {model} in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def spike_agreement(model_dir: Path, blocks: list[str], sequences: int, positions: int) -> dict:
    """Per subgraph of ``blocks``: % identical IF spikes spikec/Norse/SpikingJelly over T steps."""
    c = load_compiled(model_dir)
    graph = c.graph
    ids = heldout_ids(c, None, sequences * positions, positions)
    portable.check_portable(graph)
    with tempfile.TemporaryDirectory() as tmp:
        chosen = [p for p in portable.split(graph) if any(p.name.startswith(b) for b in blocks)]
        sources = sorted({src for p in chosen for srcs in p.inputs.values() for src in srcs})
        values = simulate(interop.probe(graph, sources), ids, T).outputs
        rows = []
        for piece in chosen:  # as write_portable writes them, read back by nir itself
            nirio.write(Path(tmp) / "sub.nir", portable.standalone(graph, piece, {"dt": 1.0}))
            sub = nir.read(Path(tmp) / "sub.nir")
            (srcs,) = piece.inputs.values()
            x = values[interop.PROBE_PREFIX + srcs[0]]
            (neuron,) = [n for n in piece.nodes if isinstance(graph.nodes[n], nir.IF)]
            entry = {"name": piece.name}
            start = time.perf_counter()
            ours = simulate(sub, x, T, record=True)
            ref = ours.spikes[neuron]
            row = {"subgraph": entry["name"], "neurons": int(ref.shape[-1]), "compared": int(ref.numel()),
                   "spikes": int(ref.sum()), "firing_rate": float(ref.float().mean())}
            for label, library, g in (("norse", "norse", sub), ("spikingjelly", "spikingjelly", sub),
                                      ("spikingjelly_for_library", "spikingjelly",
                                       interop.for_library(sub, "spikingjelly"))):
                out, spikes = interop.run_in_library(library, g, x, T, record=(neuron,))
                row[f"{label}_identical_pct"] = 100.0 * interop.agreement(spikes[neuron], ref)
                row[f"{label}_differing_spikes"] = int((spikes[neuron] != ref).sum())
                row[f"{label}_output_max_abs_diff"] = float((out - ours.output).abs().max())
                if label == "norse":
                    norse_spikes = spikes[neuron]
                if label == "spikingjelly":
                    row["norse_vs_spikingjelly_identical_pct"] = 100.0 * interop.agreement(spikes[neuron], norse_spikes)
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            print(f"  {row['subgraph']:<16} {row['neurons']:>5} neurons x {row['compared'] // row['neurons']} "
                  f"(T x tokens)  rate {row['firing_rate']:.3f}  "
                  f"norse {row['norse_identical_pct']:.4f}%  spikingjelly {row['spikingjelly_identical_pct']:.4f}% "
                  f"(for_library {row['spikingjelly_for_library_identical_pct']:.4f}%)", flush=True)
    return {"model": c.report["model"], "blocks": blocks, "timesteps": T, "input_tokens": int(ids.numel()),
            "sequences": sequences, "positions": positions, "subgraphs": rows,
            "all_identical": {k: all(r[f"{k}_identical_pct"] == 100.0 for r in rows)
                              for k in ("norse", "spikingjelly", "spikingjelly_for_library")}}


def import_results() -> list[dict]:
    """tests/test_interop.py, outcome per test (with each expected failure's named reason)."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", str(REPO / "tests" / "test_interop.py"), "-q",
                        "-p", "no:cacheprovider", "-W", "ignore", f"--junitxml={xml}"], cwd=REPO, check=False,
                       capture_output=True)
        rows = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            skipped, failure = case.find("skipped"), case.find("failure")
            if skipped is not None and skipped.get("type") == "pytest.xfail":
                outcome, reason = "xfail", skipped.get("message", "")
            elif skipped is not None:
                outcome, reason = "skipped", skipped.get("message", "")
            elif failure is not None:
                outcome, reason = "failed", failure.get("message", "")[:300]
            else:
                outcome, reason = "passed", ""
            rows.append({"test": case.get("name"), "outcome": outcome, "reason": reason.removeprefix("reason: ")})
    return rows


def round_trip(path: Path) -> dict:
    """``nirio.read`` then ``nirio.write``: same bytes? (and the same node/edge lists)."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        graph = nirio.read(path)
        nirio.write(Path(tmp) / "again.nir", graph)
        again = nirio.read(Path(tmp) / "again.nir")
        same_bytes = filecmp.cmp(path, Path(tmp) / "again.nir", shallow=False)
    return {"identical_bytes": same_bytes, "same_nodes_and_edges": list(graph.nodes) == list(again.nodes)
            and graph.edges == again.edges}


def accuracy(model_dir: Path, reuse: bool) -> dict:
    """``spikec eval`` at T=32 and 64 on 1024 held-out tokens (with ``reuse``, the DIR/eval.json a
    ``spikec eval DIR -T 32,64`` left there)."""
    saved = model_dir / "eval.json"
    results = json.loads(saved.read_text()) if reuse and saved.is_file() else []
    if sorted(r["timesteps"] for r in results) != [32, 64] or any(r["tokens"] != 1024 for r in results):
        results = evaluate(load_compiled(model_dir), tokens=1024, timesteps=[32, 64], progress=False)
    default = {}
    curve = RESULTS / "accuracy_curve.json"
    if curve.is_file():
        for r in json.loads(curve.read_text())["rows"]:
            if r.get("variant") == "balanced" and r["timesteps"] in (32, 64):
                default[str(r["timesteps"])] = r["ppl_ratio"]
    return {"portable": results, "default_pipeline_ppl_ratio": default}


def report_accuracy(acc: dict) -> None:
    for r in acc["portable"]:
        print(f"  portable T={r['timesteps']}: ppl_ratio {r['ppl_ratio']:.4f} (default pipeline "
              f"{acc['default_pipeline_ppl_ratio'].get(str(r['timesteps']), float('nan')):.4f}), cosine "
              f"{r['cosine']:.4f}, top-1 {r['top1_agreement']:.3f}, spikes/neuron/step "
              f"{r['spikes_per_neuron_step']:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build/interop", help="where the compiled models go")
    ap.add_argument("--reuse", action="store_true", help="reuse compiled models found in --build")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--accuracy-only", action="store_true",
                    help="only add the accuracy (with --reuse: DIR/eval.json of `spikec eval -T 32,64`) to interop.json")
    ap.add_argument("--gpt2-layers", type=int, default=2)
    ap.add_argument("--gpt2-only", action="store_true", help="stop after GPT-2")
    ap.add_argument("--resume", action="store_true", help="keep the sections results/interop.json already has")
    ap.add_argument("--sequences", type=int, default=2)
    ap.add_argument("--positions", type=int, default=64)
    a = ap.parse_args()
    build = Path(a.build)
    if a.accuracy_only:  # add the accuracy of an earlier `spikec eval` to an earlier run's results
        payload = json.loads((RESULTS / "interop.json").read_text())
        payload.pop("machine", None)
        payload["accuracy"] = accuracy(build / "smollm2-135m", a.reuse)
        report_accuracy(payload["accuracy"])
        write_results("interop", payload)
        return
    payload: dict = {"timesteps": T, "passes": ",".join(PORTABLE)}
    if a.resume and (RESULTS / "interop.json").is_file():  # keep the sections an interrupted run finished
        payload = json.loads((RESULTS / "interop.json").read_text())
        payload.pop("machine", None)
    if "imports" not in payload:
        print("import tests (other libraries' exporters)", flush=True)
        payload["imports"] = import_results()
        write_results("interop", payload)
    for r in payload["imports"]:
        print(f"  {r['outcome']:<7} {r['test']}" + (f": {r['reason']}" if r["reason"] else ""))
    gpt2 = compiled(build / "gpt2-124m-shapes", "gpt2", a.reuse, random_weights=True,
                    config_overrides={"n_layer": str(a.gpt2_layers)}, calib_samples=4)
    if "gpt2" not in payload:
        print(f"spike agreement, GPT-2 124M shapes ({a.gpt2_layers} blocks, random weights), T={T}", flush=True)
        payload["gpt2"] = spike_agreement(gpt2, [f"h_{i}_" for i in range(a.gpt2_layers)], a.sequences,
                                          a.positions)
        payload.setdefault("round_trip", {})["gpt2"] = round_trip(gpt2 / "model.nir")
        write_results("interop", payload)
    if a.gpt2_only:
        return
    smol = compiled(build / "smollm2-135m", "smollm2-135m", a.reuse)
    if "smollm2" not in payload:
        print(f"spike agreement, SmolLM2-135M blocks 0 and 29, T={T}", flush=True)
        payload["smollm2"] = spike_agreement(smol, ["h_0_", "h_29_"], a.sequences, a.positions)
        write_results("interop", payload)
    if not a.skip_eval:
        print("accuracy: spikec eval, 1024 held-out tokens", flush=True)
        payload["accuracy"] = accuracy(smol, a.reuse)
        report_accuracy(payload["accuracy"])
    payload["model_nir_bytes"] = {"smollm2_portable": (smol / "model.nir").stat().st_size}
    payload.setdefault("round_trip", {})["smollm2"] = round_trip(smol / "model.nir")
    print(f"round trip model.nir -> read -> write: {payload['round_trip']}", flush=True)
    write_results("interop", payload)


if __name__ == "__main__":
    main()
