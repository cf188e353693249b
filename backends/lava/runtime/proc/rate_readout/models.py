"""Models of ``RateReadout``: a float accumulator (``floating_pt``) and Loihi's 24-bit
saturating one with an encoded bias (``fixed_pt``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from runtime.fixed_point import STATE_MAX
from runtime.numpy_ops import F32
from runtime.proc.rate_readout.process import RateReadout


class ReadoutModelBase(PyLoihiProcessModel):
    """What both models share: ``add(a)`` each step of the window, ``finish()`` at its end
    gives the value, held on ``out`` from then on (and copied into ``record``)."""

    out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        self.p = proc_params
        self.value = np.zeros(self.p["shape"], np.float32)

    def run_spk(self) -> None:
        a = self.a_in.recv()
        k = self.time_step - self.p["start"]
        T = self.p["timesteps"]
        if 1 <= k <= T:
            self.add(a)
            if k == T:
                self.value = self.finish()
                if self.p["record"] is not None:
                    self.p["record"][:] = self.value
        self.out.send(self.value)


@implements(proc=RateReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyRateReadoutModelFloat(ReadoutModelBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    acc: np.ndarray = LavaPyType(np.ndarray, np.float64)

    def add(self, a: np.ndarray) -> None:
        self.acc += a

    def finish(self) -> np.ndarray:
        return (self.acc / self.p["timesteps"] + self.p["bias"][:, None]).astype(F32)


@implements(proc=RateReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PyRateReadoutModelFixed(ReadoutModelBase):
    """A 24-bit saturating accumulator with the bias as a Loihi bias per step; the
    window's sum times the layer's weight unit / T is the real value."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64)
    acc: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)

    def add(self, a: np.ndarray) -> None:
        total = self.acc + a + self.p["bias"][:, None]
        self.acc[:] = np.clip(total, -STATE_MAX, STATE_MAX)
        stats = self.p["stats"]
        stats[0] = max(stats[0], float(np.abs(total).max(initial=0)))
        stats[1] += float(np.count_nonzero(np.abs(total) > STATE_MAX))

    def finish(self) -> np.ndarray:
        return (self.acc * (self.p["unit"] / self.p["timesteps"])).astype(F32)
