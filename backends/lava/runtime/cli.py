"""The command line of ``run_lava.py``::

    python run_lava.py --input tokens.npy --timesteps 8 --precision floating_pt --out out.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from runtime.fixed_point import CURRENT_ENCODINGS, PRECISIONS
from runtime.network import NetworkError, load_network
from runtime.numpy_ops import TORCH_VEC_WIDTH
from runtime.run import run_network, save_result


def main(argv: list[str] | None = None, default_export: str | Path | None = None) -> int:
    """Run an export (``--export``, default ``default_export``: the folder of ``run_lava.py``)
    and write its ``out.npz``. Returns the exit code: 0, or 3 for an unusable network or input."""
    ap = argparse.ArgumentParser(description="Run a spikec Lava export on Lava's Loihi 2 simulator (Loihi2SimCfg).")
    ap.add_argument("--input", required=True, help=".npy of token ids [batch, positions] (int) or embeddings (float)")
    ap.add_argument("--out", required=True, help="output .npz (outputs, per-layer spikes, meta)")
    ap.add_argument("--timesteps", "-T", type=int, help="timesteps per window (default: the export's)")
    ap.add_argument("--precision", choices=PRECISIONS, default="floating_pt")
    ap.add_argument("--stages-per-run", type=int, default=4,
                    help="neuron-layer stages per Lava network (0: the whole graph as one network)")
    ap.add_argument("--current", choices=CURRENT_ENCODINGS, default="graded24",
                    help="fixed_pt neuron current: 24-bit graded value (default) or a 13-bit-mantissa LIF bias")
    ap.add_argument("--teacher", action="store_true",
                    help="fixed_pt: feed every stage the float run of the fixed-point network (per-layer agreement)")
    ap.add_argument("--torch-vec-width", type=int, default=TORCH_VEC_WIDTH, choices=(8, 16),
                    help="SIMD width of the torch build to reproduce bit for bit in the norms: 8 (AVX2, "
                         "default) or 16 (AVX-512); only matters when comparing with spikec's simulator")
    ap.add_argument("--export", default=str(default_export or Path.cwd()),
                    help="export folder (default: this script's folder)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        net = load_network(a.export)
        result = run_network(net, np.load(a.input), a.timesteps, a.precision, a.stages_per_run, not a.quiet,
                             a.current, a.teacher, a.torch_vec_width)
    except (NetworkError, FileNotFoundError) as e:
        print(f"run_lava: error: {e}", file=sys.stderr)
        return 3
    save_result(result, a.out)
    if not a.quiet:
        m = result["meta"]
        print(f"run_lava: {m['precision']}, T={m['timesteps']}, {m['stages']} stages, {m['steps_total']} steps in "
              f"{len(m['segments'])} Lava run(s), {m['wall_seconds']:.1f} s -> {a.out}", file=sys.stderr)
    return 0
