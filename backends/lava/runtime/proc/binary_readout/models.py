"""Models of ``BinaryReadout``: float64 Horner accumulators (``floating_pt``) and Loihi's 24-bit
saturating ones, doubling by a shift or tripling by a shift and an add (``fixed_pt``).

Both keep one accumulator per readout group of ``GROUP`` steps (spikec.core.few_spike's
``READOUT_GROUP``): within a group ``acc = r acc + a`` (r the radix, 2 or 3); at the end of the
window the groups are scaled by ``r^-(their last step)`` (float64; radix 3, ``3.0 ** -(stop-1)``
rounded once as ``few_spike.group_scales``) and added in order, which is the float64 sum spikec's
reference computes (each group's sum exact), and keeps the 24-bit accumulators within ``r^7`` of
``(r^8 - 1) / (r - 1)`` steps' input."""

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
    """What both models share: the radix, the step's group, its accumulator and the groups' scales."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        T = self.p["timesteps"]
        self.radix = int(self.p.get("radix", 2))
        self.groups = [(g, min(g + GROUP, T)) for g in range(0, T, GROUP)]
        self.scales = [float(self.radix) ** -(stop - 1) for _, stop in self.groups]
        self.partial = [np.zeros(self.p["shape"], self.dtype) for _ in self.groups]

    def group(self) -> int:
        """The readout group of this step's input (steps start+1 .. start+T carry window steps 0 .. T-1)."""
        return (self.time_step - self.p["start"] - 1) // GROUP

    def combined(self) -> np.ndarray:
        """``sum_g acc_g r^-(last step of g)`` in float64, groups in order."""
        out = self.partial[0] * self.scales[0]
        for acc, scale in zip(self.partial[1:], self.scales[1:]):
            out = out + acc * scale
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
        self.partial[g] = float(self.radix) * self.partial[g] + a

    def finish(self) -> np.ndarray:
        return (self.combined() + self.p["bias"][:, None]).astype(F32)


@implements(proc=BinaryReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PyBinaryReadoutModelFixed(GroupedHorner):
    """24-bit saturating accumulators: each step a left shift (radix 3: and an add of the old
    value) and the Dense input. Radix 2: the Loihi bias enters on the first step, so after the
    first group's doublings it counts like the first step's input. Radix 3: the bias is added with
    the scaled groups at the end of the window, as the reference adds it (``3^-(stop-1)`` is not a
    power of two: a bias tripled in the accumulator would come back rounded)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64)
    acc: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    dtype = np.int64

    def add(self, a: np.ndarray) -> None:
        g = self.group()
        first = self.time_step - self.p["start"] == 1 and self.radix == 2
        total = self.radix * self.partial[g] + a + (self.p["bias"][:, None] if first else 0)
        self.partial[g] = np.clip(total, -STATE_MAX, STATE_MAX)
        stats = self.p["stats"]
        stats[0] = max(stats[0], float(np.abs(total).max(initial=0)))
        stats[1] += float(np.count_nonzero(np.abs(total) > STATE_MAX))

    def finish(self) -> np.ndarray:
        if self.radix == 3:
            return (self.combined() * self.p["unit"] + self.p["bias"][:, None] * self.p["unit"]).astype(F32)
        return (self.combined() * self.p["unit"]).astype(F32)
