"""Models of ``BinaryReadout``: float64 Horner accumulators (``floating_pt``) and Loihi's 24-bit
saturating ones, doubling by a shift (``fixed_pt``).

Both keep one accumulator per readout group of ``GROUP`` steps (spikec.core.few_spike's
``READOUT_GROUP``): within a group ``acc = 2 acc + a``; at the end of the window the groups are
scaled by ``2^-(their last step)`` and added in order, which is the float64 sum spikec's
reference computes (each group's sum exact), and keeps the 24-bit accumulators within 2^7 of
one step's input."""

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

GROUP = 8


class GroupedHorner(ReadoutModelBase):
    """What both models share: the step's group, its accumulator and the groups' scales."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        T = self.p["timesteps"]
        self.groups = [(g, min(g + GROUP, T)) for g in range(0, T, GROUP)]
        self.partial = [np.zeros(self.p["shape"], self.dtype) for _ in self.groups]

    def group(self) -> int:
        """The readout group of this step's input (steps start+1 .. start+T carry window steps 0 .. T-1)."""
        return (self.time_step - self.p["start"] - 1) // GROUP

    def combined(self) -> np.ndarray:
        """``sum_g acc_g 2^-(last step of g)`` in float64, groups in order."""
        out = self.partial[0] * 2.0 ** (1 - self.groups[0][1])
        for acc, (_, stop) in zip(self.partial[1:], self.groups[1:]):
            out = out + acc * 2.0 ** (1 - stop)
        return out


@implements(proc=BinaryReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyBinaryReadoutModelFloat(GroupedHorner):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    acc: np.ndarray = LavaPyType(np.ndarray, np.float64)
    dtype = np.float64

    def add(self, a: np.ndarray) -> None:
        g = self.group()
        self.partial[g] = 2.0 * self.partial[g] + a

    def finish(self) -> np.ndarray:
        return (self.combined() + self.p["bias"][:, None]).astype(F32)


@implements(proc=BinaryReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PyBinaryReadoutModelFixed(GroupedHorner):
    """24-bit saturating accumulators: each step a left shift and the Dense input; the Loihi
    bias enters on the first step, so after the first group's doublings it counts like the first
    step's input."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64)
    acc: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    dtype = np.int64

    def add(self, a: np.ndarray) -> None:
        g = self.group()
        first = self.time_step - self.p["start"] == 1
        total = 2 * self.partial[g] + a + (self.p["bias"][:, None] if first else 0)
        self.partial[g] = np.clip(total, -STATE_MAX, STATE_MAX)
        stats = self.p["stats"]
        stats[0] = max(stats[0], float(np.abs(total).max(initial=0)))
        stats[1] += float(np.count_nonzero(np.abs(total) > STATE_MAX))

    def finish(self) -> np.ndarray:
        return (self.combined() * self.p["unit"]).astype(F32)
