"""The accuracy / energy / latency trade-off of SmolLM2-135M over codings, T and budgets (issue 17 item 4).

For each setting (rate T in {8, 16, 32, 64}, binary T in {6, 7, 8, 9}, ternary T in {6, 7, 8},
binary and ternary T=8 with ``--budget 1.04``) compiles SmolLM2-135M (real weights, offline) and on held-out text (the embedded
docstrings, ``--tokens`` tokens, never used to choose anything) measures:

* the perplexity ratio SNN/ANN (``spikec eval``);
* the whole-model energy reduction against the fp32 ANN under the ``45nm``, ``45nm-memory`` and
  ``loihi`` models (one simulation's operation counts priced under each model);
* the latency: timesteps per token (the compiled T).

Points are measured in ``ORDER`` and the results file is rewritten after each one, so a run cut
short keeps what it measured. Settings not measured in this run (``--quick``, ``--only``, or cut
short) keep their measured point from an earlier run's pareto.json (same model and tokens), else
are filled from benchmarks/results/few_spike.json where it holds the identical setting (same
model, coding, T and text): ppl ratio and the ``45nm`` reduction only, marked
``"source": "few_spike.json"``. Compiled directories are kept under ``--cache`` and reused.

Writes benchmarks/results/pareto.json; copy it to spikec/data/pareto.json for the report.

    python benchmarks/pareto.py [--quick] [--only NAME ...] [--cache DIR] [--tokens 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import RESULTS, write_results  # noqa: E402

from spikec.analysis.energy_models import MODEL_NAMES, builtin_model  # noqa: E402
from spikec.analysis.estimate import estimate  # noqa: E402
from spikec.compiler import CompileOptions, compile_model  # noqa: E402
from spikec.energy import measure_energy  # noqa: E402
from spikec.evaluate import evaluate, load_compiled  # noqa: E402

MODEL = "smollm2-135m"
SETTINGS = {  # name -> (coding, T, budget)
    "rate_T8": ("rate", 8, None),
    "rate_T16": ("rate", 16, None),
    "rate_T32": ("rate", 32, None),
    "rate_T64": ("rate", 64, None),
    "binary_T6": ("binary", 6, None),
    "binary_T7": ("binary", 7, None),
    "binary_T8": ("binary", 8, None),
    "binary_T9": ("binary", 9, None),
    "binary_T8_budget1.04": ("binary", 8, 1.04),
    "ternary_T6": ("ternary", 6, None),
    "ternary_T7": ("ternary", 7, None),
    "ternary_T8": ("ternary", 8, None),
    "ternary_T8_budget1.04": ("ternary", 8, 1.04),
}
ORDER = ("binary_T8", "rate_T16", "binary_T6", "rate_T8", "binary_T9", "rate_T32", "binary_T7", "rate_T64",
         "ternary_T7", "ternary_T6", "ternary_T8", "binary_T8_budget1.04", "ternary_T8_budget1.04")
SLOW = ("rate_T64", "binary_T8_budget1.04", "ternary_T8_budget1.04")  # skipped by --quick
FEW_SPIKE = RESULTS / "few_spike.json"


def measure(directory: Path, tokens: int) -> dict:
    """ppl ratio, energy reduction per energy model and latency of one compiled directory."""
    compiled = load_compiled(str(directory))
    (acc,) = evaluate(compiled, None, tokens, progress=False)
    _, est, counts = measure_energy(directory, None, tokens, model=builtin_model("45nm"), progress=False)
    energy = {}
    for name in MODEL_NAMES:
        e = est if name == "45nm" else estimate(counts, builtin_model(name))
        energy[name] = {k: e.get(k) for k in ("ann_pj_per_token", "snn_pj_per_token", "reduction")}
    return {"ppl_ratio": acc["ppl_ratio"], "top1_agreement": acc["top1_agreement"], "cosine": acc["cosine"],
            "latency_timesteps_per_token": int(acc["timesteps"]),
            "spikes_per_neuron_per_token": acc["spikes_per_neuron_step"] * acc["timesteps"],
            "energy_reduction": {k: v["reduction"] for k, v in energy.items()}, "energy": energy}


def from_few_spike(name: str, tokens: int) -> dict | None:
    """The identical setting's point from few_spike.json (ppl ratio, 45nm reduction), or None."""
    if not FEW_SPIKE.is_file():
        return None
    data = json.loads(FEW_SPIKE.read_text())
    row = data.get("settings", {}).get(name)
    if data.get("model") != MODEL or data.get("tokens") != tokens or row is None:
        return None
    acc = row["accuracy"]
    return {"ppl_ratio": acc["ppl_ratio"], "top1_agreement": acc["top1_agreement"], "cosine": acc["cosine"],
            "latency_timesteps_per_token": int(row["timesteps"]),
            "spikes_per_neuron_per_token": acc["spikes_per_neuron_per_token"],
            "energy_reduction": {"45nm": row["energy"]["45nm_fp32"]["reduction"]}, "source": "few_spike.json"}


def earlier_points(tokens: int) -> dict[str, dict]:
    """The measured points of an earlier run's pareto.json on the same model and tokens."""
    path = RESULTS / "pareto.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("model") != MODEL or data.get("tokens") != tokens:
        return {}
    return {n: p for n, p in data.get("points", {}).items() if p.get("source") == "measured"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help=f"skip the slow settings {', '.join(SLOW)}")
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), help="measure only these settings")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "spikec-pareto"))
    a = ap.parse_args()
    todo = [n for n in ORDER if (a.only is None or n in a.only) and not (a.quick and n in SLOW)]
    out: dict = {"model": MODEL, "text": "held-out (embedded docstrings)", "tokens": a.tokens,
                 "reference": "fp32 ANN", "latency_unit": "timesteps per token", "points": {}}
    earlier = earlier_points(a.tokens)
    for name in ORDER:  # filled first, replaced by each measured point
        if name in todo:
            continue
        if name in earlier:
            out["points"][name] = earlier[name]
            continue
        old = from_few_spike(name, a.tokens)
        if old is not None:
            out["points"][name] = {"coding": SETTINGS[name][0], "timesteps": SETTINGS[name][1],
                                   "budget": SETTINGS[name][2], **old}
    for name in todo:
        coding, t, budget = SETTINGS[name]
        directory = Path(a.cache) / name
        start = time.perf_counter()
        if not (directory / "model.nir").is_file():
            compile_model(CompileOptions(model=MODEL, output=str(directory), timesteps=t, coding=coding, budget=budget))
        compile_seconds = time.perf_counter() - start
        row = {"coding": coding, "timesteps": t, "budget": budget, **measure(directory, a.tokens),
               "source": "measured", "compile_seconds": compile_seconds,
               "seconds": time.perf_counter() - start}
        out["points"][name] = row
        r = row["energy_reduction"]
        print(f"{name:22} ppl ratio {row['ppl_ratio']:.4f}  latency {t:3} steps/token  reduction "
              + "  ".join(f"{m} {100 * r[m]:.1f}%" for m in MODEL_NAMES), flush=True)
        write_results("pareto", out)
    write_results("pareto", out)


if __name__ == "__main__":
    main()
