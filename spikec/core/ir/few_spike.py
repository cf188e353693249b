"""NIR extension nodes of the few-spike (binary) code: the neuron and its Horner readout.

``SpikecFewSpike`` turns a real current ``[batch, positions, features]`` into a spike train
``[T, batch, positions, features]`` of -1/0/1 spikes, step ``k`` standing for ``2^-k``
thresholds; ``SpikecBinaryReadout`` turns the time series of its input back into a real value
with the same step weights. Equations (``spikec.core.few_spike``; docs/nir-extensions.md), in
threshold units ``u = x / threshold``, ``w_k = 2^-k``, ``k = 0 .. T-1``:

    v_0 = u + sgn(u) 2^-T      (binary digits; signed digits: v_0 = u)
    s_k = sgn(v_k) [|v_k| >= l_k],  v_k+1 = v_k - s_k w_k
    l_k = w_k                   (binary; signed digits: fl32(2/3) w_k, and w_k / 2 on the last step)

    readout: acc_0 = 0, acc_k+1 = 2 acc_k + x_k, value = acc_T 2^-(T-1) = sum_k 2^-k x_k

Balanced ternary (``radix = 3``, signed digits), in units of the code's last step
(``W_k = 3^(S-1-k)``, S the code's steps):

    m_0 = fl32(u 3^(S-1)),  s_k = sgn(m_k) [|m_k| >= W_k / 2],  m_k+1 = m_k - s_k W_k

    readout: per group of 8 steps acc = 3 acc + x_k (integer weights), scaled by 3^-(stop-1),
    value = sum_k 3^-k x_k
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .base import SpikecNode


@dataclass(eq=False)
class SpikecFewSpike(SpikecNode):
    """Few-spike neurons: at most one signed spike per step, step ``k`` weighted ``2^-k``
    thresholds, rounding offset in the initial membrane (module docstring).

    threshold: ``[features]`` float32 > 0, the first step's weight in input units.
    signed_digits: greedy non-adjacent signed digits instead of binary ones.
    steps: the layer's own code length S (1..T; ``--budget``): the S-step code on the window's
    first S steps (rounding offset ``2^-S``), no spike on the rest. 0 (the default, not written
    to a file) means the whole window, T.
    radix: 2 (the default, not written to a file) or 3 (balanced ternary, step ``k`` weighted
    ``3^-k``; ``signed_digits`` is then True)."""

    kind: ClassVar[str] = "spiking"
    threshold: np.ndarray  # [features]
    signed_digits: bool
    steps: int = 0
    radix: int = 2

    def __post_init__(self) -> None:
        self.set_feature_types(self.threshold.shape[0], self.threshold.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """NIR's serialization, without ``steps`` where it is 0 and ``radix`` where it is 2 (files
        without a budget or ternary digits are unchanged)."""
        out = super().to_dict()
        if not self.steps:
            out.pop("steps", None)
        if self.radix == 2:
            out.pop("radix", None)
        return out


@dataclass(eq=False)
class SpikecBinaryReadout(SpikecNode):
    """``sum_k r^-k x_k`` over the T steps of its time-series input (Horner: multiply by the
    radix r, then add the step's input): a real value per window. A real input (constant over the
    window) is passed on unchanged, as ``SpikecRateReadout`` does. radix: 2 (the default, not
    written to a file) or 3."""

    kind: ClassVar[str] = "readout"
    features: int
    radix: int = 2

    def __post_init__(self) -> None:
        self.set_feature_types(self.features, self.features)

    def to_dict(self) -> dict[str, Any]:
        """NIR's serialization, without ``radix`` where it is 2."""
        out = super().to_dict()
        if self.radix == 2:
            out.pop("radix", None)
        return out
