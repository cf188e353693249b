"""Models of ``SignedIF``: float32 (``floating_pt``) and Loihi's integer neurons (``fixed_pt``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from runtime.fixed_point import STATE_MAX, fixed_point_current
from runtime.numpy_ops import F32
from runtime.proc.common import WindowSpikesModel
from runtime.proc.signed_if.process import SignedIF


class SignedIFModelBase(WindowSpikesModel):
    """What both models share: the lowest spike count (``-max_spikes`` when signed, else 0)."""

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        self.low = -self.p["max_spikes"] if self.p["signed"] else 0


@implements(proc=SignedIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySignedIFModelFloat(SignedIFModelBase):
    """float32 arithmetic, operation for operation as ``spikec.core.neurons``."""

    v: np.ndarray = LavaPyType(np.ndarray, np.float32)

    def step(self, t: int) -> np.ndarray:
        if t == 0:
            self.u = self._x.astype(F32) / self.p["threshold"].astype(F32)[:, None]
            self.v[:] = F32(self.p["v_init"])
        v = self.v + self.u
        s = np.clip(np.floor(v), self.low, self.p["max_spikes"])
        self.v[:] = v - s
        return s


@implements(proc=SignedIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PySignedIFModelFixed(SignedIFModelBase):
    """Integer neurons with Loihi's encodings: threshold ``vth << 6``, the current as a
    bias ``mant << exp`` (``fixed_point_current``), a 24-bit saturating membrane."""

    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def step(self, t: int) -> np.ndarray:
        enc = self.p["encoding"]
        theta, B = enc["theta"], self.p["max_spikes"]
        if t == 0:
            u = self._x.astype(F32) / self.p["threshold"].astype(F32)[:, None]
            # u is used within [low, B]: that changes no spike and bounds the membrane by (B+1) theta
            mant, v0 = fixed_point_current(u, self.p["v_init"], theta, enc["bias_exp"], enc["mant_max"],
                                           self.p["timesteps"], self.low, B)
            self.bias = mant << enc["bias_exp"]
            self.v[:] = v0
        v = np.clip(self.v.astype(np.int64) + self.bias, -STATE_MAX, STATE_MAX)
        s = np.clip(np.floor_divide(v, theta), self.low, B)
        self.v[:] = v - s * theta
        return s
