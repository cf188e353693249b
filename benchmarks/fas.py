"""FAS two-stage conversion (passes/qcfs_finetune.py, passes/fas_calibrate.py, docs/fas.md) on
SmolLM2-135M at T=8: ppl_ratio, cosine and top-1 agreement against the ORIGINAL model on 1024
held-out tokens (Python docstrings; calibration and fine-tuning on the disjoint GPL-3 text), through the real
``spikec compile`` + ``spikec eval`` path (NIR file, reference simulator), for

    baseline        the preset's default pipeline (no FAS)
    stage1          + qcfs-finetune (QCFS fine-tuning) before spike-encode
    stage1+coarse   + fas-calibrate calibrate=coarse after spike-encode
    stage1+fine     + fas-calibrate calibrate=fine
    coarse, fine    stage 2 alone (ablation)

Stage 1 runs once per preset: the later variants reuse its finished state (``fas_state_dir``).
Writes benchmarks/results/fas.json.

    python benchmarks/fas.py [--presets accurate] [--variants baseline,stage1,stage1+coarse,stage1+fine]
                             [--qcfs-steps 40] [--qcfs-lr 1e-5] [--calib-samples 32] [--option k=v ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results
from spikec.passes import DEFAULT_PIPELINE

from spikec.arguments import pass_options
from spikec.compiler import CompileOptions, compile_model
from spikec.evaluate import evaluate, load_compiled

PREPARE = DEFAULT_PIPELINE[:-1]  # fold-norm-affine, calibrate, burst-all
VARIANTS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "baseline": ([*PREPARE, "spike-encode"], {}),
    "stage1": ([*PREPARE, "qcfs-finetune", "spike-encode"], {}),
    "stage1+coarse": ([*PREPARE, "qcfs-finetune", "spike-encode", "fas-calibrate"], {"calibrate": "coarse"}),
    "stage1+fine": ([*PREPARE, "qcfs-finetune", "spike-encode", "fas-calibrate"], {"calibrate": "fine"}),
    "coarse": ([*PREPARE, "spike-encode", "fas-calibrate"], {"calibrate": "coarse"}),
    "fine": ([*PREPARE, "spike-encode", "fas-calibrate"], {"calibrate": "fine"}),
}
BAR, AIM = 1.15, 1.05


def _pass_stats(report: dict[str, Any], name: str) -> dict[str, Any]:
    for record in report["passes"]:
        if record["name"] == name:
            stats = {k: v for k, v in record["stats"].items() if k != "losses"}
            return {**stats, "pass_seconds": record["seconds"]}
    return {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--presets", default="accurate")
    ap.add_argument("--variants", default="baseline,stage1,stage1+coarse,stage1+fine")
    ap.add_argument("--timesteps", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration samples of 128 tokens (GPL-3 text)")
    ap.add_argument("--qcfs-steps", type=int, default=40)
    ap.add_argument("--qcfs-lr", type=float, default=1e-5)
    ap.add_argument("--state-dir", default=None, help="fas_state_dir (default ~/.cache/spikec/fas)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="more pass options")
    a = ap.parse_args()
    common: dict[str, Any] = {"qcfs_steps": a.qcfs_steps, "qcfs_lr": a.qcfs_lr, "qcfs_reuse": True,
                              "progress": False}  # stage 1 runs once; its later variants reuse it
    if a.state_dir:
        common["fas_state_dir"] = a.state_dir
    common.update(pass_options(dict(o.split("=", 1) for o in a.option)))
    rows = []
    for preset in a.presets.split(","):
        for variant in a.variants.split(","):
            passes, options = VARIANTS[variant]
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                report = compile_model(CompileOptions(
                    model=a.model, output=f"{tmp}/m", timesteps=a.timesteps, passes=passes, preset=preset,
                    calib_samples=a.calib_samples, options={**common, **options}))
                compile_s = time.perf_counter() - start
                (r,) = evaluate(load_compiled(f"{tmp}/m"), tokens=a.tokens, timesteps=[a.timesteps], progress=False)
            stage1, stage2 = _pass_stats(report, "qcfs-finetune"), _pass_stats(report, "fas-calibrate")
            r.update(variant=variant, preset=preset, compile_seconds=compile_s, options={**common, **options},
                     qcfs_finetune=stage1, fas_calibrate=stage2)
            rows.append(r)
            s1 = (f" stage1 {stage1.get('steps')} steps {stage1.get('seconds', 0) / 60:.1f} min"
                  f"{' (reused)' if stage1.get('reused_finished_run') else ''}" if stage1 else "")
            s2 = (f" stage2 {stage2.get('calibrate')} {stage2.get('seconds', 0) / 60:.1f} min"
                  f" layer MSE {stage2.get('layer_mse_sum_before', 0):.4g}->{stage2.get('layer_mse_sum_after', 0):.4g}"
                  if stage2 else "")
            print(f"{preset:<9} {variant:<14} T={a.timesteps} ppl_ratio={r['ppl_ratio']:.4f} cosine={r['cosine']:.4f} "
                  f"top1={r['top1_agreement']:.3f} spikes/neuron/step={r['spikes_per_neuron_step']:.3f}{s1}{s2} "
                  f"(compile {compile_s / 60:.1f} min)", flush=True)
    both = [r for r in rows if r["variant"].startswith("stage1+")]
    if both:
        best = min(both, key=lambda r: r["ppl_ratio"])
        verdict = "met" if best["ppl_ratio"] <= BAR else "NOT met"
        print(f"bar: FAS stages 1+2 ppl_ratio <= {BAR} (aim {AIM}): best {best['ppl_ratio']:.4f} "
              f"({best['preset']}, {best['variant']}) -> {verdict}")
    write_results("fas", {"model": a.model, "tokens": a.tokens, "timesteps": a.timesteps,
                          "calib_samples": a.calib_samples, "bar": BAR, "aim": AIM, "rows": rows})


if __name__ == "__main__":
    main()
