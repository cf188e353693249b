"""The ``RateReadout`` process (one RateReadout node of the graph)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var

from runtime.proc.common import QUIET


class RateReadout(AbstractProcess):
    """Sums the Dense output of the steps ``start+1 .. start+T`` and turns it into the
    real value ``mean + bias`` (float) or ``(acc + T*bias_int) * unit / T`` (fixed)."""

    def __init__(self, *, shape: tuple[int, int], bias: np.ndarray, start: int, timesteps: int,
                 unit: float = 1.0, record: np.ndarray | None = None, stats: np.ndarray | None = None,
                 name: str | None = None) -> None:
        super().__init__(shape=shape, bias=bias, start=start, timesteps=timesteps, unit=unit,
                         record=record, stats=stats, name=name, log_config=QUIET)
        self.a_in = InPort(shape=shape)
        self.out = OutPort(shape=shape)
        self.acc = Var(shape=shape, init=0)
