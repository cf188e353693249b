"""Models of ``BinaryReadout``: a float64 Horner accumulator (``floating_pt``) and Loihi's 24-bit
saturating one, doubling by a shift (``fixed_pt``)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from runtime.fixed_point import STATE_MAX
from runtime.numpy_ops import F32
from runtime.proc.binary_readout.process import BinaryReadout
from runtime.proc.rate_readout.models import ReadoutModelBase


@implements(proc=BinaryReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyBinaryReadoutModelFloat(ReadoutModelBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    acc: np.ndarray = LavaPyType(np.ndarray, np.float64)

    def add(self, a: np.ndarray) -> None:
        self.acc[:] = 2.0 * self.acc + a

    def finish(self) -> np.ndarray:
        return (self.acc * 2.0 ** (1 - self.p["timesteps"]) + self.p["bias"][:, None]).astype(F32)


@implements(proc=BinaryReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PyBinaryReadoutModelFixed(ReadoutModelBase):
    """A 24-bit saturating accumulator: each step a left shift and the Dense input; the Loihi
    bias enters on the first step, so after T-1 doublings it counts 2^(T-1) times, like the first
    step's input."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64)
    acc: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)

    def add(self, a: np.ndarray) -> None:
        first = self.time_step - self.p["start"] == 1
        total = 2 * self.acc + a + (self.p["bias"][:, None] if first else 0)
        self.acc[:] = np.clip(total, -STATE_MAX, STATE_MAX)
        stats = self.p["stats"]
        stats[0] = max(stats[0], float(np.abs(total).max(initial=0)))
        stats[1] += float(np.count_nonzero(np.abs(total) > STATE_MAX))

    def finish(self) -> np.ndarray:
        return (self.acc * (self.p["unit"] * 2.0 ** (1 - self.p["timesteps"]))).astype(F32)
