"""The few-spike codes (binary, balanced ternary) against the rate code on SmolLM2-135M, and in Lava (issue 17).

Compiles SmolLM2-135M (real weights, offline) with ``--coding binary`` at T=7 and T=8, with
``--coding ternary`` at T=7 (and T=8 with ``--budget 1.04``), and with the rate code at T=64
(the accuracy to match) and T=16 (the simulation time to match), then on
held-out text (the embedded docstrings, ``--tokens`` tokens, never used to choose a setting):

* accuracy (perplexity ratio, top-1, cosine) and spikes per neuron per token (``spikec eval``);
* whole-model energy reduction against the ANN under ``45nm``, against the fp32 and the int8 ANN
  (``spikec energy --model 45nm [--precision int8]``);
* simulation time of binary and ternary T=7 against rate T=16 (same tokens, interleaved, best of
  ``--repeats``; the machine is shared, so the ratio is the figure);
* Lava: a 2-layer GPT-2-shaped model (random weights) compiled with ``--coding binary --target
  lava``, floating_pt and fixed_pt against the reference simulator (``spikec eval --backend lava``).

Writes benchmarks/results/few_spike.json; with ``--only NAME ...`` it measures those settings and
keeps the others' rows from the file (timing needs its settings measured in the same run).

    python benchmarks/few_spike.py [--tokens 1024] [--repeats 3] [--skip-lava] [--only ternary_T7 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import RESULTS, write_results  # noqa: E402

from spikec.analysis.energy_models import resolve_model  # noqa: E402
from spikec.backends.lava.compare import evaluate_lava  # noqa: E402
from spikec.backends.simulator import Simulator  # noqa: E402
from spikec.compiler import CompileOptions, compile_model  # noqa: E402
from spikec.energy import energy_on_text  # noqa: E402
from spikec.evaluate import evaluate, heldout_ids, load_compiled  # noqa: E402

MODEL = "smollm2-135m"
SETTINGS = {  # name -> (coding, T, --budget)
    "binary_T7": ("binary", 7, None),
    "binary_T8": ("binary", 8, None),
    "ternary_T7": ("ternary", 7, None),
    "ternary_T8_budget1.04": ("ternary", 8, 1.04),
    "rate_T64": ("rate", 64, None),
    "rate_T16": ("rate", 16, None),
}
TIMED = (("binary_T7", "rate_T16"), ("ternary_T7", "rate_T16"))  # simulation time: few-spike T=7 / rate T=16
LAVA_MODEL = dict(model="gpt2", random_weights=True, config_overrides={"n_layer": "2", "n_embd": "128", "n_head": "4"})
KEYS = ("ann_pj_per_token", "snn_pj_per_token", "reduction", "attention_reduction", "spikes_per_neuron_per_window")


def accuracy_and_energy(directory: str, tokens: int) -> dict:
    compiled = load_compiled(directory)
    (acc,) = evaluate(compiled, None, tokens, progress=False)
    acc["spikes_per_neuron_per_token"] = acc["spikes_per_neuron_step"] * acc["timesteps"]
    energy = {}
    for precision in ("fp32", "int8"):
        est = energy_on_text(directory, None, tokens, model=resolve_model("45nm", precision), progress=False)
        energy[f"45nm_{precision}"] = {k: est.get(k) for k in KEYS}
    return {"accuracy": acc, "energy": energy, "passes": compiled.report["passes"][-1]["stats"]}


def simulation_time(dirs: dict[str, str], names: tuple[str, str], tokens: int, repeats: int) -> dict:
    """Best-of-``repeats`` wall time of one simulation of the same ``tokens`` tokens per network."""
    compiled = {n: load_compiled(dirs[n]) for n in names}
    ids = heldout_ids(compiled[names[0]], None, tokens)[:1]
    sims = {n: Simulator(c.graph) for n, c in compiled.items()}
    best = {n: float("inf") for n in names}
    for _ in range(repeats):
        for n in names:
            t = int(compiled[n].report["timesteps"])
            start = time.perf_counter()
            sims[n].run(ids, t)
            best[n] = min(best[n], time.perf_counter() - start)
    return {"tokens": int(ids.numel()), "threads": torch.get_num_threads(), "seconds": best,
            "ratio": best[names[0]] / best[names[1]]}


def bars(out: dict) -> dict:
    """Issue 17's bars from the measured rows (a bar whose rows are missing is left out)."""
    s, timed, found = out["settings"], out.get("simulation_time", {}), {}
    acc = {n: r["accuracy"] for n, r in s.items()}
    for few in ("binary_T7", "ternary_T7"):
        if few in acc and "rate_T64" in acc:
            found[f"{few}_at_least_as_accurate_as_rate_T64"] = acc[few]["ppl_ratio"] <= acc["rate_T64"]["ppl_ratio"]
            found[f"{few}_spikes_over_rate_T64"] = (acc[few]["spikes_per_neuron_per_token"]
                                                   / acc["rate_T64"]["spikes_per_neuron_per_token"])
        if isinstance(timed.get(few), dict) and "ratio" in timed[few]:
            found[f"{few}_sim_time_over_rate_T16"] = timed[few]["ratio"]
    for name, row in s.items():
        if row.get("budget"):
            found[f"{name}_ratio_at_most_1.05"] = acc[name]["ppl_ratio"] <= 1.05
            found[f"{name}_45nm_reduction_at_least_0.55"] = row["energy"]["45nm_fp32"]["reduction"] >= 0.55
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--sim-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-lava", action="store_true")
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), help="measure only these settings")
    a = ap.parse_args()
    out: dict = {"model": MODEL, "text": "held-out (embedded docstrings)", "tokens": a.tokens, "settings": {}}
    previous = RESULTS / "few_spike.json"
    if a.only and previous.exists():
        kept = json.loads(previous.read_text())
        out["settings"] = {n: r for n, r in kept.get("settings", {}).items() if n in SETTINGS}
        out.update({k: kept[k] for k in ("simulation_time", "lava") if k in kept})
        if "ratio" in out.get("simulation_time", {}):  # a file from before the ternary rows: binary T=7's timing
            out["simulation_time"] = {"binary_T7": out["simulation_time"]}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for name, (coding, t, budget) in SETTINGS.items():
            if a.only and name not in a.only:
                continue
            dirs[name] = f"{tmp}/{name}"
            start = time.perf_counter()
            compile_model(CompileOptions(model=MODEL, output=dirs[name], timesteps=t, coding=coding, budget=budget))
            row = {"coding": coding, "timesteps": t, "budget": budget, "compile_seconds": time.perf_counter() - start}
            row.update(accuracy_and_energy(dirs[name], a.tokens))
            if budget:
                row["budget_choice"] = load_compiled(dirs[name]).report.get("budget")
            out["settings"][name] = row
            acc, e = row["accuracy"], row["energy"]
            print(f"{name:10} ppl ratio {acc['ppl_ratio']:.4f}  top-1 {acc['top1_agreement']:.3f}  "
                  f"spikes/neuron/token {acc['spikes_per_neuron_per_token']:.2f}  "
                  f"45nm reduction vs fp32 ANN {100 * e['45nm_fp32']['reduction']:.1f}%, "
                  f"vs int8 ANN {100 * e['45nm_int8']['reduction']:.1f}%", flush=True)
        for few, rate in TIMED:
            if few in dirs and rate in dirs:
                st = simulation_time(dirs, (few, rate), a.sim_tokens, a.repeats)
                out.setdefault("simulation_time", {})[few] = st
                print(f"simulation time, {st['tokens']} tokens: {few} {st['seconds'][few]:.2f} s, "
                      f"{rate} {st['seconds'][rate]:.2f} s, ratio {st['ratio']:.2f}")
        out["bars"] = bars(out)
        if not a.skip_lava:
            lava_dir = f"{tmp}/lava_gpt2"
            compile_model(CompileOptions(**LAVA_MODEL, output=lava_dir, coding="binary", target="lava"))
            ternary_dir = f"{tmp}/lava_gpt2_ternary"
            compile_model(CompileOptions(**LAVA_MODEL, output=ternary_dir, coding="ternary", timesteps=7,
                                         target="lava"))
            ids = heldout_ids(load_compiled(lava_dir), None, 16)
            out["lava"] = {}
            runs = [(lava_dir, "", 7), (lava_dir, "", 16), (ternary_dir, "ternary_", 7), (ternary_dir, "ternary_", 12)]
            for directory, prefix, t in runs:  # 16: the binary compile's default T; ternary takes T <= 13 in fixed_pt
                for precision in ("floating_pt", "fixed_pt"):
                    r = evaluate_lava(directory, ids, timesteps=t, precision=precision)
                    out["lava"][f"{prefix}T{t}_{precision}"] = {
                        k: r.get(k) for k in ("spike_agreement", "spike_agreement_per_layer", "logits_max_abs_diff",
                                              "next_token_agreement", "layerwise")}
                    per_layer = r["spike_agreement_per_layer"]
                    print(f"Lava {prefix}T={t} {precision}: spike agreement {r['spike_agreement']:.6f} (lowest layer "
                          f"{min(per_layer.values()):.6f}), logits max |diff| {r['logits_max_abs_diff']:.3g}")
    for bar, value in out["bars"].items():
        print(f"  {bar}: {value}")
    write_results("few_spike", out)


if __name__ == "__main__":
    main()
