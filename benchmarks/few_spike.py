"""The few-spike (binary) code against the rate code on SmolLM2-135M, and in Lava (issue 17).

Compiles SmolLM2-135M (real weights, offline) with ``--coding binary`` at T=7 and T=8 and with
the rate code at T=64 (the accuracy to match) and T=16 (the simulation time to match), then on
held-out text (the embedded docstrings, ``--tokens`` tokens, never used to choose a setting):

* accuracy (perplexity ratio, top-1, cosine) and spikes per neuron per token (``spikec eval``);
* whole-model energy reduction against the ANN under ``45nm``, against the fp32 and the int8 ANN
  (``spikec energy --model 45nm [--precision int8]``);
* simulation time of binary T=7 against rate T=16 (same tokens, the two interleaved, best of
  ``--repeats``; the machine is shared, so the ratio is the figure);
* Lava: a 2-layer GPT-2-shaped model (random weights) compiled with ``--coding binary --target
  lava``, floating_pt and fixed_pt against the reference simulator (``spikec eval --backend lava``).

Writes benchmarks/results/few_spike.json.

    python benchmarks/few_spike.py [--tokens 1024] [--repeats 3] [--skip-lava]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402

from spikec.analysis.energy_models import resolve_model  # noqa: E402
from spikec.backends.lava.compare import evaluate_lava  # noqa: E402
from spikec.backends.simulator import Simulator  # noqa: E402
from spikec.compiler import CompileOptions, compile_model  # noqa: E402
from spikec.energy import energy_on_text  # noqa: E402
from spikec.evaluate import evaluate, heldout_ids, load_compiled  # noqa: E402

MODEL = "smollm2-135m"
SETTINGS = {  # name -> (coding, T)
    "binary_T7": ("binary", 7),
    "binary_T8": ("binary", 8),
    "rate_T64": ("rate", 64),
    "rate_T16": ("rate", 16),
}
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--sim-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-lava", action="store_true")
    a = ap.parse_args()
    out: dict = {"model": MODEL, "text": "held-out (embedded docstrings)", "tokens": a.tokens, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for name, (coding, t) in SETTINGS.items():
            dirs[name] = f"{tmp}/{name}"
            start = time.perf_counter()
            compile_model(CompileOptions(model=MODEL, output=dirs[name], timesteps=t, coding=coding))
            row = {"coding": coding, "timesteps": t, "compile_seconds": time.perf_counter() - start}
            row.update(accuracy_and_energy(dirs[name], a.tokens))
            out["settings"][name] = row
            acc, e = row["accuracy"], row["energy"]
            print(f"{name:10} ppl ratio {acc['ppl_ratio']:.4f}  top-1 {acc['top1_agreement']:.3f}  "
                  f"spikes/neuron/token {acc['spikes_per_neuron_per_token']:.2f}  "
                  f"45nm reduction vs fp32 ANN {100 * e['45nm_fp32']['reduction']:.1f}%, "
                  f"vs int8 ANN {100 * e['45nm_int8']['reduction']:.1f}%", flush=True)
        out["simulation_time"] = simulation_time(dirs, ("binary_T7", "rate_T16"), a.sim_tokens, a.repeats)
        st = out["simulation_time"]
        print(f"simulation time, {st['tokens']} tokens: binary T=7 {st['seconds']['binary_T7']:.2f} s, "
              f"rate T=16 {st['seconds']['rate_T16']:.2f} s, ratio {st['ratio']:.2f}")
        s = out["settings"]
        out["bars"] = {
            "binary_T7_at_least_as_accurate_as_rate_T64":
                s["binary_T7"]["accuracy"]["ppl_ratio"] <= s["rate_T64"]["accuracy"]["ppl_ratio"],
            "binary_T7_spikes_over_rate_T64": s["binary_T7"]["accuracy"]["spikes_per_neuron_per_token"]
                / s["rate_T64"]["accuracy"]["spikes_per_neuron_per_token"],
            "binary_T7_sim_time_over_rate_T16": st["ratio"],
        }
        if not a.skip_lava:
            lava_dir = f"{tmp}/lava_gpt2"
            compile_model(CompileOptions(**LAVA_MODEL, output=lava_dir, coding="binary", target="lava"))
            ids = heldout_ids(load_compiled(lava_dir), None, 16)
            out["lava"] = {}
            for t in (7, 16):  # 16: the compile's default T
                for precision in ("floating_pt", "fixed_pt"):
                    r = evaluate_lava(lava_dir, ids, timesteps=t, precision=precision)
                    out["lava"][f"T{t}_{precision}"] = {
                        k: r.get(k) for k in ("spike_agreement", "spike_agreement_per_layer", "logits_max_abs_diff",
                                              "next_token_agreement", "layerwise")}
                    per_layer = r["spike_agreement_per_layer"]
                    print(f"Lava T={t} {precision}: spike agreement {r['spike_agreement']:.6f} (lowest layer "
                          f"{min(per_layer.values()):.6f}), logits max |diff| {r['logits_max_abs_diff']:.3g}")
    for bar, value in out["bars"].items():
        print(f"  {bar}: {value}")
    write_results("few_spike", out)


if __name__ == "__main__":
    main()
