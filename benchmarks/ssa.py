"""SSA mode (spiking self-attention + surrogate-gradient fine-tuning) on SmolLM2-135M.

Converts the model with the default pipeline, replaces every attention with SSA (``ssa``),
fine-tunes the SSA layers (``ssa-finetune``) on calibration text (the embedded GPL-3 text, or
``--calib-text``, e.g. spikec/data/finetune_numpy_docstrings.txt), lowers to NIR
and runs the reference simulator on 1024 held-out tokens (Python docstrings, disjoint from
the calibration text). Reports, against the original model (the canonical ANN graph, whose
logits equal the Hugging Face model's):

* ``hidden_cosine``: mean cosine similarity of the FINAL hidden states, the input of lm_head
  (the final RMSNorm's output with its weight; spikec folds that weight into lm_head, so the
  simulator's value is multiplied back by it), per token;
* ``logits_cosine``, ``ppl_ratio``, ``top1_agreement`` (as ``spikec eval`` computes them);
* the fine-tuning steps, minutes and losses.

    python benchmarks/ssa.py [--timesteps 8] [--preset accurate] [--steps 100] [--lr 1e-2]
                             [--rank 8] [--samples 32] [--seq-len 64] [--eval-seq-len 1024]
                             [--calib-text FILE] [--baseline] [--threads 1] [--save model.nir]

Writes benchmarks/results/ssa.json.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import nir
import torch
import torch.nn.functional as F
from torch import fx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spikec.passes as builtin
from results_file import write_results
from spikec.backends.simulator import Simulator

from spikec.core import ops
from spikec.core.options import parse_value
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.frontend.canonicalize import capture_canonical
from spikec.frontend.models import load_model
from spikec.lower import lower_to_nir
from spikec.text import (
    CALIBRATION_TEXT,
    HELDOUT_TEXT,
    cut_samples,
    cut_sequences,
    read_text,
    text_label,
    token_stream,
)
from spikec.verify import compare_fx_and_simulator


class _LmHeadInput(fx.Interpreter):
    """Runs the canonical ANN graph and keeps the input of lm_head."""

    def run_node(self, n: fx.Node):
        if n.op == "call_function" and n.target is ops.affine and n.meta.get("role") == "lm_head":
            self.hidden = self.env[n.args[0]]
        return super().run_node(n)


def _norm_weight(gm: fx.GraphModule) -> torch.Tensor:
    (node,) = [n for n in gm.graph.nodes if n.op == "call_function" and n.meta.get("spikec_name") == "ln_f"]
    return getattr(gm, node.args[1].target).detach().float()


def _with_hidden_output(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The graph with a second Output node ``hidden`` on the final norm's output."""
    nodes = dict(graph.nodes)
    nodes["hidden"] = nir.Output(output_type={"output": nodes["output"].output_type["output"]})
    return nir.NIRGraph(nodes=nodes, edges=[*graph.edges, ("ln_f", "hidden")], metadata=graph.metadata,
                        type_check=False)


def _metrics(ids, ann_logits, snn_logits, ann_hidden, snn_hidden) -> dict[str, float]:
    targets = ids[:, 1:].reshape(-1)

    def nll(logits: torch.Tensor) -> float:
        return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets))

    cosine = F.cosine_similarity(ann_hidden, snn_hidden, dim=-1)  # [sequences, positions]
    edges = [e for e in (0, 128, 512, 1024, 4096) if e < cosine.shape[1]] + [cosine.shape[1]]
    return {
        "hidden_cosine": float(cosine.mean()),
        "hidden_cosine_by_position": {f"{lo}-{hi - 1}": float(cosine[:, lo:hi].mean())
                                      for lo, hi in zip(edges, edges[1:])},
        "logits_cosine": float(F.cosine_similarity(ann_logits, snn_logits, dim=-1).mean()),
        "ann_ppl": math.exp(nll(ann_logits)),
        "snn_ppl": math.exp(nll(snn_logits)),
        "ppl_ratio": math.exp(nll(snn_logits) - nll(ann_logits)),
        "top1_agreement": float((ann_logits.argmax(-1) == snn_logits.argmax(-1)).float().mean()),
    }


def evaluate_graph(graph: nir.NIRGraph, ids: torch.Tensor, timesteps: int, gamma: torch.Tensor,
                   ann_logits: torch.Tensor, ann_hidden: torch.Tensor) -> dict[str, float]:
    sim = Simulator(_with_hidden_output(graph))
    start = time.perf_counter()
    logits, hidden = [], []
    for i in range(ids.shape[0]):
        out = sim.run(ids[i:i + 1], timesteps).outputs
        logits.append(out["output"].float())
        hidden.append(out["hidden"].float() * gamma)
    result = _metrics(ids, ann_logits, torch.cat(logits), ann_hidden, torch.cat(hidden))
    result["simulator_seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--timesteps", type=int, default=8)
    ap.add_argument("--preset", default="accurate", choices=sorted(builtin.PRESETS))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--samples", type=int, default=32, help="calibration/fine-tuning sequences")
    ap.add_argument("--seq-len", type=int, default=64, help="positions per calibration/fine-tuning sequence")
    ap.add_argument("--calib-text", help="calibration and fine-tuning text file, or embedded:NAME "
                    "(default: the embedded GPL-3 text)")
    ap.add_argument("--inputs", default="ann", choices=("ann", "snn"))
    ap.add_argument("--surrogate", default="sigmoid", choices=("sigmoid", "arctan"))
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="more pass options")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--eval-seq-len", default="1024", help="positions per evaluation sequence, or a comma list")
    ap.add_argument("--baseline", action="store_true", help="also evaluate the conversion without SSA")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--name", default="ssa", help="results file name")
    ap.add_argument("--save", type=Path, help="also write the final NIR graph here (to evaluate it again)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    loaded = load_model(a.model)
    gm = capture_canonical(loaded, seq_len=16)
    tok = loaded.tokenizer
    calib = cut_samples(token_stream(tok, read_text(a.calib_text, CALIBRATION_TEXT)), a.samples, a.seq_len, "calibration")
    stream = token_stream(tok, read_text(None, HELDOUT_TEXT))
    evals = {}  # positions -> (ids, ANN logits, ANN hidden states)
    with torch.no_grad():
        for positions in (int(x) for x in a.eval_seq_len.split(",")):
            ids = cut_sequences(stream, a.tokens, positions)
            ann_logits, ann_hidden = [], []
            for i in range(ids.shape[0]):
                probe = _LmHeadInput(gm)
                ann_logits.append(probe.run(ids[i:i + 1]).float())
                ann_hidden.append(probe.hidden.float())
            evals[positions] = (ids, torch.cat(ann_logits), torch.cat(ann_hidden))
    gamma = _norm_weight(gm)

    def evaluate_all(graph: nir.NIRGraph, label: str) -> dict[str, dict[str, float]]:
        out = {}
        for positions, (ids, ann_logits, ann_hidden) in evals.items():
            out[f"positions_{positions}"] = evaluate_graph(graph, ids, a.timesteps, gamma, ann_logits, ann_hidden)
            print(f"{label}, {ids.shape[0]} x {positions} positions:", out[f"positions_{positions}"], flush=True)
        return out

    print(f"loaded and captured in {time.perf_counter() - t0:.0f} s", flush=True)

    extra = {}
    for item in a.option:
        key, _, value = item.partition("=")
        extra[key] = parse_value(value)
    options = {"timesteps": a.timesteps, **builtin.PRESETS[a.preset], "finetune_steps": a.steps,
               "finetune_lr": a.lr, "finetune_rank": a.rank, "finetune_batch": a.batch, "finetune_inputs": a.inputs,
               "surrogate": a.surrogate, "progress": sys.stderr.isatty(), **extra}
    ctx = PassContext(options=options, calibration=calib, config=loaded.config)
    start = time.perf_counter()
    converted, _ = run_passes(copy.deepcopy(gm), builtin.DEFAULT_PIPELINE, ctx)
    convert_s = time.perf_counter() - start
    rows = {}
    example = ids[:1, :2]
    if a.baseline:
        rows["converted"] = evaluate_all(lower_to_nir(converted, example), "converted (softmax attention)")
    start = time.perf_counter()
    model, records = run_passes(converted, ["ssa"], ctx)
    ssa_s = time.perf_counter() - start
    graph = lower_to_nir(model, example)
    if a.steps == 0 or a.baseline:
        rows["ssa_init"] = evaluate_all(graph, "ssa, not fine-tuned")
    finetune = {}
    if a.steps:
        start = time.perf_counter()
        model, records = run_passes(model, ["ssa-finetune"], ctx)
        finetune = {**records[-1].stats, "minutes": (time.perf_counter() - start) / 60}
        print(f"fine-tuned {a.steps} steps in {finetune['minutes']:.1f} min: loss {finetune['loss_before']:.4f} -> "
              f"{finetune['loss_after']:.4f}", flush=True)
        graph = lower_to_nir(model, example)
        if a.save:
            nir.write(a.save, graph)
        rows["ssa_finetuned"] = evaluate_all(graph, "ssa, fine-tuned")
    check = compare_fx_and_simulator(model, graph, calib[:1], a.timesteps)
    for positions, final in rows.get("ssa_finetuned", rows.get("ssa_init", {})).items():
        print(f"BAR hidden-state cosine >= 0.90 ({positions}): {final['hidden_cosine']:.4f} "
              f"(ppl_ratio {final['ppl_ratio']:.3f})")
    print(f"fx vs simulator identical: {check.identical}")
    write_results(a.name, {
        "model": a.model, "timesteps": a.timesteps, "preset": a.preset, "tokens": a.tokens,
        "eval_positions": sorted(evals), "calibration": {"text": text_label(a.calib_text, CALIBRATION_TEXT),
                                                             "samples": int(calib.shape[0]),
                                                             "positions": int(calib.shape[1])},
        "options": {k: v for k, v in options.items() if k != "progress"}, "convert_seconds": convert_s,
        "ssa_seconds": ssa_s, "finetune": finetune, "results": rows, "fx_simulator_identical": check.identical,
        "hidden_state": "input of lm_head: final RMSNorm output times its weight",
    })


if __name__ == "__main__":
    main()
