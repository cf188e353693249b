"""SmolLM2-135M on held-out text (1024 tokens of Python docstrings; calibration on the GPL-3
text): ppl_ratio, cosine and top-1 agreement for T in {8, 16, 32, 64, 128}, for the default
pipeline and for the alternatives of outlier handling at the MLP down-projection input.
Writes benchmarks/results/accuracy_curve.json.

    python benchmarks/accuracy_curve.py [--variants balanced,accurate,plain,wide-mlp-out,burst-mlp-out]
                                        [--timesteps 8,16,32,64,128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402

from spikec.compiler import CompileOptions, compile_model  # noqa: E402
from spikec.evaluate import evaluate, load_compiled  # noqa: E402

VARIANTS = {  # name -> (passes, preset)
    "balanced": (["default"], "balanced"),
    "accurate": (["default"], "accurate"),
    "plain": (["fold-norm-affine", "calibrate", "spike-encode"], "balanced"),
    "wide-mlp-out": (["fold-norm-affine", "calibrate", "wide-range-mlp-out", "spike-encode"], "balanced"),
    "burst-mlp-out": (["fold-norm-affine", "calibrate", "burst-mlp-out", "spike-encode"], "balanced"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="balanced,accurate")
    ap.add_argument("--timesteps", default="8,16,32,64,128")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--model", default="smollm2-135m")
    a = ap.parse_args()
    ts = [int(t) for t in a.timesteps.split(",")]
    rows = []
    for variant in a.variants.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            passes, preset = VARIANTS[variant]
            compile_model(CompileOptions(model=a.model, output=f"{tmp}/m", timesteps=ts[0], passes=passes,
                                         preset=preset))
            compile_s = time.perf_counter() - start
            results = evaluate(load_compiled(f"{tmp}/m"), tokens=a.tokens, timesteps=ts, progress=False)
        for r in results:
            r.update(variant=variant, compile_seconds=compile_s)
            rows.append(r)
            print(f"{variant:<14} T={r['timesteps']:<4} ppl_ratio={r['ppl_ratio']:.4f} cosine={r['cosine']:.4f} "
                  f"top1={r['top1_agreement']:.3f} spikes/neuron/step={r['spikes_per_neuron_step']:.3f} (ANN ppl {r['ann_ppl']:.2f}, sim {r['seconds']:.1f} s)", flush=True)
    write_results("accuracy_curve", {"model": a.model, "tokens": a.tokens, "rows": rows,
                                     "spikingjelly_2_qwen2_recipe_ppl_ratio": {"8": 2.36, "16": 1.42, "32": 1.24, "64": 1.10}})


if __name__ == "__main__":
    main()
