"""Models of ``FewSpike``: float32 (``floating_pt``) and an integer membrane (``fixed_pt``).

Both follow spikec.core.few_spike's equations. Radix 2, in threshold units: ``u = x / theta``,
``v_0 = u + sgn(u) 2^-S`` (binary digits; S the layer's code length, ``steps``, T unless
``--budget`` chose fewer; no spike after step S-1) or ``u`` (signed digits); each step
``s = sgn(v) [|v| >= l_k]``, ``v -= s 2^-k``, with ``l_k = 2^-k`` (binary) or ``fl32(2/3) 2^-k``
(``2^-k / 2`` on the last step; signed digits). Radix 3 (balanced ternary), in units of the
code's last step: ``m_0 = fl32(u 3^(S-1))``, each step ``s = sgn(m) [|m| >= W_k / 2]``,
``m -= s W_k`` with ``W_k = 3^(S-1-k)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from runtime.fixed_point import STATE_MAX, ternary_fixed_membrane, ternary_fraction_bits
from runtime.numpy_ops import F32
from runtime.proc.common import WindowSpikesModel
from runtime.proc.few_spike.process import FewSpike

TWO_THIRDS = F32(2.0 / 3.0)
MEMBRANE_SHIFT = 21  # fixed_pt, radix 2: one threshold = 2^21 membrane units; |v| <= 2 fits 24 bits


class FewSpikeModelBase(WindowSpikesModel):
    """What both models share: the step weights and firing levels (float32, exact; radix 3: in
    units of the last step)."""

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        T, signed_digits = self.p["steps"], bool(self.p["signed_digits"])
        self.radix = int(self.p.get("radix", 2))
        if self.radix == 3:
            self.weights = [F32(3 ** (T - 1 - k)) for k in range(T)]
            self.levels = [F32(w / 2) for w in self.weights]
            return
        self.weights = [F32(2.0 ** -k) for k in range(T)]
        self.levels = [F32(self.weights[k] / 2) if signed_digits and k == T - 1
                       else F32(TWO_THIRDS * self.weights[k]) if signed_digits else self.weights[k]
                       for k in range(T)]

    def current(self) -> np.ndarray:
        """``u = x / theta`` in float32, as ``spikec.core.few_spike``."""
        return self._x.astype(F32) / self.p["threshold"].astype(F32)[:, None]

    def initial(self, u: np.ndarray) -> np.ndarray:
        """``v_0`` in float32: the rounding offset for binary digits, none for signed digits;
        radix 3: ``m_0 = u 3^(S-1)``."""
        if self.radix == 3:
            return u * F32(3 ** (self.p["steps"] - 1))
        if self.p["signed_digits"]:
            return u.copy()
        return u + np.sign(u) * F32(2.0 ** -self.p["steps"])


@implements(proc=FewSpike, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyFewSpikeModelFloat(FewSpikeModelBase):
    """float32 arithmetic, operation for operation as ``spikec.core.few_spike``."""

    v: np.ndarray = LavaPyType(np.ndarray, np.float32)

    def step(self, t: int) -> np.ndarray:
        if t == 0:
            self.v[:] = self.initial(self.current())
        if t >= self.p["steps"]:
            return np.zeros(self.v.shape, F32)
        v = self.v
        s = np.where(np.abs(v) >= self.levels[t], np.sign(v), F32(0)).astype(F32)
        self.v[:] = v - s * self.weights[t]
        return s


@implements(proc=FewSpike, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PyFewSpikeModelFixed(FewSpikeModelBase):
    """A 24-bit integer membrane: step weights are shifts (radix 2) or integers (radix 3), firing
    is a comparison.

    Radix 2: one threshold = ``2^MEMBRANE_SHIFT``. The float32 ``v_0`` (clipped to ``[-2, 2]``,
    which changes no spike) is truncated toward zero: with binary digits the membrane keeps its
    sign and every level is a power of two, so the spikes are the float model's; signed-digit
    levels are rounded up. Radix 3: one last step = ``2^f`` units (``ternary_fraction_bits``), the
    float32 ``m_0`` clamped and rounded to odd (``ternary_fixed_membrane``): the float model's
    spikes exactly."""

    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        if self.radix == 3:
            S = self.p["steps"]
            self.bits = ternary_fraction_bits(S)
            self.int_weights = [3 ** (S - 1 - k) << self.bits for k in range(S)]
            self.int_levels = [3 ** (S - 1 - k) << (self.bits - 1) for k in range(S)]

    def step(self, t: int) -> np.ndarray:
        if self.radix == 3:
            return self.ternary_step(t)
        scale = float(1 << MEMBRANE_SHIFT)
        if t == 0:
            v0 = np.clip(self.initial(self.current()), -2, 2).astype(np.float64)
            self.v[:] = np.clip(np.trunc(v0 * scale), -STATE_MAX, STATE_MAX).astype(np.int64)
        if t >= self.p["steps"]:
            return np.zeros(self.v.shape, np.int64)
        v = self.v.astype(np.int64)
        level = int(np.ceil(float(self.levels[t]) * scale))
        s = np.where(np.abs(v) >= level, np.sign(v), 0)
        self.v[:] = v - s * (1 << (MEMBRANE_SHIFT - t))
        return s

    def ternary_step(self, t: int) -> np.ndarray:
        """Step ``t`` of the integer balanced-ternary membrane (units of ``2^-bits`` last steps)."""
        if t == 0:
            self.v[:] = ternary_fixed_membrane(self.initial(self.current()), self.p["steps"], self.bits)
        if t >= self.p["steps"]:
            return np.zeros(self.v.shape, np.int64)
        v = self.v.astype(np.int64)
        s = np.where(np.abs(v) >= self.int_levels[t], np.sign(v), 0)
        self.v[:] = v - s * self.int_weights[t]
        return s
