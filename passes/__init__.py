"""Rewrite passes over canonical spikec GraphModules (importable as ``spikec.passes``).

Importing this package registers the built-in passes with ``spikec.core.passes``.
"""

from . import calibrate, encode, fold, outliers  # noqa: F401  (registration side effects)
from . import ssa, ssa_finetune  # noqa: F401  (ssa, ssa-finetune: spiking self-attention, docs/ssa.md)
from . import portable  # noqa: F401  (portable-encode: standard NIR IF neurons, docs/interop.md)
from . import fas_calibrate, qcfs_finetune  # noqa: F401  (FAS two-stage conversion, docs/fas.md)
from . import spike_softmax, token_encoding  # noqa: F401  (spike-softmax, token-encode: docs/spike-softmax.md)

DEFAULT_PIPELINE: list[str] = ["fold-norm-affine", "calibrate", "burst-all", "spike-encode"]
"""The passes ``spikec compile`` runs by default, in order."""

PRESETS: dict[str, dict[str, float | int]] = {
    "balanced": {},
    "accurate": {"burst_range_scale": 0.5, "burst_spikes": 16},
}
"""Named pass-option sets (``spikec compile --preset``). ``accurate`` halves the burst neurons'
thresholds (twice the resolution at the same T) and doubles their burst capacity (the same
range), for about twice the spikes. Measured on SmolLM2-135M, held-out text, ppl ratio
balanced/accurate: T=8 2.12/1.18, T=16 1.17/1.04, T=32 1.06/1.007, T=64 1.017/1.002
(benchmarks/accuracy_curve.py)."""

__all__ = ["DEFAULT_PIPELINE", "PRESETS"]
