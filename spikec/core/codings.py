"""The spike codings of ``spikec compile --coding`` and the steps per token each takes by default.

Light on purpose (no torch): the command line builds its ``-T`` help from ``DEFAULT_TIMESTEPS``.
"""

from __future__ import annotations

CODINGS = ("rate", "binary", "ternary")
"""rate: SignedIF neurons, about T |x| / theta spikes per value (the default); binary: few-spike
neurons, one spike per set bit, step k weighted 2^-k; ternary: few-spike neurons with balanced
ternary digits, step k weighted 3^-k (docs/few-spike.md)."""

FEW_SPIKE_CODINGS = ("binary", "ternary")
"""The codings of the ``binary-encode`` pass (``--budget`` applies to them)."""

DEFAULT_TIMESTEPS = {"rate": 16, "binary": 8, "ternary": 7}
"""T, timesteps (steps per token), when none is given, by coding. A few-spike code of T steps has
about 2^T (binary) or 3^T (ternary) levels: 8 and 7 steps are the settings measured as useful
(docs/few-spike.md), where T=16 would resolve float32 rounding differences between backends
(and ternary takes at most 15 steps)."""


def default_timesteps(coding: str) -> int:
    """The T that ``coding`` takes when none is given (``DEFAULT_TIMESTEPS``); 16, the rate
    code's, for a name that is not a coding (the pipeline refuses it with the known names)."""
    return DEFAULT_TIMESTEPS.get(coding, DEFAULT_TIMESTEPS["rate"])


def timesteps_defaults_text() -> str:
    """The defaults as help text says them: ``rate 16, binary 8, ternary 7``."""
    return ", ".join(f"{coding} {t}" for coding, t in DEFAULT_TIMESTEPS.items())
