"""Energy per token of SmolLM2-135M as a spiking network (rate-coded path, default pipeline, or
another conversion mode with --attention/--token-encoding) on held-out text: whole-model and attention-only reductions under the 45nm, 45nm-memory and loihi
models, with the accuracy measured on the very same simulation runs. Sequence
lengths: 1024 (one sequence, as `spikec eval --tokens 1024` runs it) and 128 (the compile's).
Writes benchmarks/results/energy.json (energy_<mode>.json for the other modes).

    python benchmarks/energy.py [--dir COMPILED --name NAME] [-T 16] [--tokens 1024] [--seq-lens 1024,128]
                                [--attention softmax|spike-softmax|ssa] [--token-encoding none|rate|binary]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402

from spikec.analysis.counts import combine_results, count_operations  # noqa: E402
from spikec.analysis.energy_models import MODEL_NAMES, builtin_model  # noqa: E402
from spikec.analysis.estimate import estimate  # noqa: E402
from spikec.backends.simulator import simulate  # noqa: E402
from spikec.compiler import CompileOptions, compile_model  # noqa: E402
from spikec.passes.pipelines import ATTENTION_MODES, TOKEN_ENCODINGS, build_pipeline  # noqa: E402
from spikec.energy import token_chunks  # noqa: E402
from spikec.evaluate import load_compiled, metrics  # noqa: E402
from spikec.text import HELDOUT_TEXT, read_text, token_stream  # noqa: E402


def _role(name: str) -> str:
    parts = name.split("_")
    return "_".join(parts[2:]) if parts[0] == "h" and len(parts) > 2 else name


@torch.no_grad()
def run(directory: str, tokens: int, seq_len: int, timesteps: int) -> dict:
    compiled = load_compiled(directory)
    stream = token_stream(compiled.loaded.tokenizer, read_text(None, HELDOUT_TEXT))
    ids = token_chunks(stream, tokens, seq_len, compiled.graph)
    start = time.perf_counter()
    ann = compiled.loaded.model(input_ids=ids, use_cache=False).logits.float()
    results = [simulate(compiled.graph, ids[i : i + 1], timesteps) for i in range(ids.shape[0])]
    accuracy = metrics(ids, ann, torch.cat([r.output for r in results]))
    counts = count_operations(compiled.graph, combine_results(results), int(ids.shape[1]), int(ids.shape[0]))
    seconds = time.perf_counter() - start
    estimates = {m: estimate(counts, builtin_model(m)) for m in MODEL_NAMES}
    base = builtin_model("45nm")
    roles: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.Counter())
    for layer in counts.layers:
        r = roles[_role(layer.name)]
        r["ann_pj"] += base.energy(layer.ann)
        r["snn_pj"] += base.energy(layer.snn)
        r["spikes"] += layer.snn.spikes
        r["neuron_updates"] += layer.snn.neuron_updates
    by_role = {k: {"ann_pj": v["ann_pj"], "snn_pj": v["snn_pj"],
                   "reduction": 1 - v["snn_pj"] / v["ann_pj"] if v["ann_pj"] else None,
                   "spikes_per_neuron_per_window": v["spikes"] * timesteps / v["neuron_updates"]
                   if v["neuron_updates"] else None} for k, v in roles.items()}
    return {
        "tokens": int(ids.numel()), "sequences": int(ids.shape[0]), "positions": int(ids.shape[1]),
        "timesteps": timesteps, "accuracy": accuracy, "seconds": seconds,
        "models": {m: {k: e[k] for k in ("ann_pj_per_token", "snn_pj_per_token", "reduction",
                                          "attention_ann_pj_per_token", "attention_snn_pj_per_token",
                                          "attention_reduction", "snn_breakdown_pj", "ann_breakdown_pj",
                                          "firing_rate", "spikes_per_neuron_per_window", "spike_driven_mac_share")}
                   for m, e in estimates.items()},
        "by_role_45nm": by_role,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dir", help="an existing compile output (default: compile into a temporary directory)")
    ap.add_argument("-T", "--timesteps", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--seq-lens", default="1024,128")
    ap.add_argument("--attention", default="softmax", choices=ATTENTION_MODES)
    ap.add_argument("--token-encoding", default="none", choices=TOKEN_ENCODINGS)
    ap.add_argument("--name", help="results file name (default: energy, or energy_<attention>_<tokens>; "
                                    "give one with --dir, whose mode the flags do not describe)")
    a = ap.parse_args()
    default = a.attention == "softmax" and a.token_encoding == "none"
    mode = "default" if default else f"{a.attention}+{a.token_encoding}-tokens"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = a.dir or f"{tmp}/m"
        compile_seconds = None
        if not a.dir:
            start = time.perf_counter()
            passes, options = build_pipeline(a.attention, a.token_encoding)
            compile_model(CompileOptions(model=a.model, output=directory, timesteps=a.timesteps,
                                         passes=["default"] if default else passes, options=options))
            compile_seconds = time.perf_counter() - start
        for seq_len in (int(s) for s in a.seq_lens.split(",")):
            row = run(directory, a.tokens, seq_len, a.timesteps)
            rows.append(row)
            acc = row["accuracy"]
            print(f"T={a.timesteps} {row['sequences']}x{row['positions']} tokens: ppl_ratio {acc['ppl_ratio']:.4f}, "
                  f"top-1 {acc['top1_agreement']:.3f}, cosine {acc['cosine']:.4f} ({row['seconds']:.0f} s)")
            for m, e in row["models"].items():
                print(f"  {m:<12} ANN {e['ann_pj_per_token'] / 1e6:9.1f} uJ/token  "
                      f"SNN {e['snn_pj_per_token'] / 1e6:9.1f} uJ/token  reduction {100 * e['reduction']:7.1f}%  "
                      f"attention {100 * e['attention_reduction']:7.1f}%")
            print(f"  spikes per neuron per window {row['models']['45nm']['spikes_per_neuron_per_window']:.2f}; "
                  f"spike-driven share of ANN MACs {100 * row['models']['45nm']['spike_driven_mac_share']:.1f}%")
            for role, r in row["by_role_45nm"].items():
                if r["spikes_per_neuron_per_window"] is not None:
                    reduction = "     -" if r["reduction"] is None else f"{100 * r['reduction']:6.1f}"
                    print(f"    {role:<10} 45nm reduction {reduction}%  "
                          f"spikes/neuron/window {r['spikes_per_neuron_per_window']:.2f}")
    write_results(a.name or ("energy" if default else f"energy_{a.attention}_{a.token_encoding}"),
                  {"model": a.model, "pipeline": mode, "compile_seconds": compile_seconds,
                             "goal": {"reduction_45nm": 0.90, "attention_reduction_45nm": 0.85}, "rows": rows})


if __name__ == "__main__":
    main()
