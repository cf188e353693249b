"""SmolLM2-135M in spike-softmax mode (every weight layer and attention product driven by spikes,
spike-equivalent norms, activations and softmax): ppl_ratio, cosine and top-1 agreement at
T in {8, 16, 32, 64} on 1024 held-out tokens (Python docstrings; calibration on the GPL-3 text),
simulated from model.nir through ``spikec.evaluate`` as benchmarks/accuracy_curve.py does.
Writes benchmarks/results/spike_softmax.json.

    python benchmarks/spike_softmax.py [--variants spike-softmax,rate-tokens,binary-tokens,accurate]
                                       [--timesteps 8,16,32,64] [--tokens 1024] [--ablation 16,32]

``--ablation T,..`` also measures what each neuron site costs: the converted network with only
that site quantized (every other site passes its value on exactly), one run each. It runs the
converted fx graph (the quantized ANN), which the simulation equals bit for bit
(tests/test_spike_softmax.py and every compile's simulator_check).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spikec.passes  # noqa: F401
from results_file import write_results
from spikec.passes.spike_softmax import PIPELINE, PIPELINE_WITH_TOKENS

from spikec.compiler import CompileOptions, compile_model
from spikec.core import streaming
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.evaluate import evaluate, load_compiled

VARIANTS = {  # name -> (passes, preset, options)
    "spike-softmax": (PIPELINE, "balanced", {}),
    "rate-tokens": (PIPELINE_WITH_TOKENS, "balanced", {"token_encoding": "rate"}),
    "binary-tokens": (PIPELINE_WITH_TOKENS, "balanced", {"token_encoding": "binary"}),
    "accurate": (PIPELINE, "accurate", {}),
}
SITES = ("qkv", "q", "k", "v", "probs", "attn_out", "mlp_in", "mlp_out", "lm_head")
"""Neuron sites: the inputs of the five affine roles, the q/k/v neurons, the probability neurons."""


def _exact_count(x, threshold, timesteps, max_spikes=1, signed=True, v_init=0.5):
    """A neuron site that passes its value on exactly: ``T x / theta`` (no rounding, no clipping)."""
    return timesteps * x.float() / threshold.float()


def _partly_exact(keep: torch.Tensor):
    def count(x, threshold, timesteps, max_spikes=1, signed=True, v_init=0.5):
        return torch.where(keep, streaming.stbif(x, threshold, timesteps, max_spikes, signed, v_init),
                           _exact_count(x, threshold, timesteps))
    return count


@contextlib.contextmanager
def only_site(gm: torch.fx.GraphModule, site: str | None):
    """``gm`` (converted) with only ``site`` (None: every site) quantized, restored on exit."""
    saved_targets, saved_args, saved_attrs = {}, {}, {}
    for node in list(gm.graph.nodes) if site is not None else []:
        if node.op != "call_function":
            continue
        if node.target is streaming.stbif:
            user = next(iter(node.users))
            saved_targets[node] = node.target
            if user.target is streaming.spike_attention:
                heads, kv_heads, head_dim = user.args[3], user.args[4], user.args[5]
                part = torch.tensor([0] * (heads * head_dim) + [1] * (kv_heads * head_dim) + [2] * (kv_heads * head_dim))
                wanted = {"q": 0, "k": 1, "v": 2}.get(site, -1)
                node.target = _partly_exact(part == wanted) if wanted >= 0 else _exact_count
            elif user.meta.get("role") != site:
                node.target = _exact_count
        elif node.target is streaming.spike_attention and site != "probs":
            theta = node.args[8].target  # probability neurons with a tiny step pass P on exactly
            saved_attrs[theta], saved_args[node] = getattr(gm, theta), node.args
            setattr(gm, theta, torch.full_like(getattr(gm, theta), 1e-9))
            node.args = (*node.args[:9], 10**9, *node.args[10:])
    gm.recompile()
    try:
        yield gm
    finally:
        for node, target in saved_targets.items():
            node.target = target
        for node, args in saved_args.items():
            node.args = args
        for name, value in saved_attrs.items():
            setattr(gm, name, value)
        gm.recompile()


def ablation(model: str, tokens: int, timesteps: list[int]) -> list[dict]:
    from spikec.frontend.canonicalize import capture_canonical
    from spikec.frontend.models import load_model
    from spikec.text import (
        CALIBRATION_TEXT,
        HELDOUT_TEXT,
        cut_samples,
        cut_sequences,
        read_text,
        token_stream,
    )

    loaded = load_model(model)
    calib = cut_samples(token_stream(loaded.tokenizer, read_text(None, CALIBRATION_TEXT)), 16, 128, "calibration")
    ids = cut_sequences(token_stream(loaded.tokenizer, read_text(None, HELDOUT_TEXT)), tokens, tokens)
    with torch.no_grad():
        ann = loaded.model(input_ids=ids, use_cache=False).logits.float()

    def ppl(logits: torch.Tensor) -> float:
        return math.exp(float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))))

    base = capture_canonical(loaded, seq_len=16)
    rows = []
    for t in timesteps:
        ctx = PassContext(options={"timesteps": t}, calibration=calib, config=loaded.config)
        gm, _ = run_passes(copy.deepcopy(base), PIPELINE, ctx)
        for site in (None, *SITES):
            start = time.perf_counter()
            with torch.no_grad(), only_site(gm, site) as quantized:
                out = quantized(ids)
            row = {"timesteps": t, "quantized": site or "all", "ppl_ratio": ppl(out) / ppl(ann),
                   "cosine": float(F.cosine_similarity(out, ann, dim=-1).mean()), "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"ablation T={t:<3} only {row['quantized']:<9} ppl_ratio={row['ppl_ratio']:.4f} "
                  f"cosine={row['cosine']:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="spike-softmax")
    ap.add_argument("--timesteps", default="8,16,32,64")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--compile-timesteps", type=int, default=32, help="T of the compile (its fx check)")
    ap.add_argument("--ablation", default="", help="T values of the per-site ablation (fx), e.g. 16,32")
    ap.add_argument("--compiled", default="", help="evaluate this compile output (one variant) instead of compiling")
    ap.add_argument("--output", default="spike_softmax", help="results file name in benchmarks/results")
    a = ap.parse_args()
    ts = [int(t) for t in a.timesteps.split(",") if t]
    rows, checks = [], {}
    for variant in [v for v in a.variants.split(",") if v]:
        passes, preset, options = VARIANTS[variant]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            if a.compiled:
                compiled = load_compiled(a.compiled)
                report = compiled.report
            else:
                report = compile_model(CompileOptions(model=a.model, output=f"{tmp}/m", timesteps=a.compile_timesteps,
                                                      passes=passes, preset=preset, options=options))
                compiled = load_compiled(f"{tmp}/m")
            compile_s = time.perf_counter() - start if not a.compiled else report["compile_seconds"]
            checks[variant] = {**report["simulator_check"], "compile_timesteps": report["timesteps"],
                               "attention": report.get("attention"), "token_encoding": report.get("token_encoding")}
            print(f"{variant}: compiled in {compile_s:.0f} s; simulator_check {report['simulator_check']}", flush=True)
            for t in ts:
                (r,) = evaluate(compiled, tokens=a.tokens, timesteps=[t], progress=False)
                r.update(variant=variant, compile_seconds=compile_s)
                rows.append(r)
                print(f"{variant:<14} T={r['timesteps']:<4} ppl_ratio={r['ppl_ratio']:.4f} cosine={r['cosine']:.4f} "
                      f"top1={r['top1_agreement']:.3f} spikes/neuron/step={r['spikes_per_neuron_step']:.3f} "
                      f"(ANN ppl {r['ann_ppl']:.2f}, sim {r['seconds']:.1f} s)", flush=True)
    ablation_rows = ablation(a.model, a.tokens, [int(t) for t in a.ablation.split(",") if t]) if a.ablation else []
    write_results(a.output, {"model": a.model, "tokens": a.tokens, "rows": rows, "simulator_checks": checks,
                                    "ablation": ablation_rows,
                                    "bar": "ppl_ratio <= 1.10 at T=32 (spike-softmax, every weight layer spike-driven)"})


if __name__ == "__main__":
    main()
