"""The ``BinaryReadout`` process (one SpikecBinaryReadout node of the graph)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var

from runtime.proc.common import QUIET


class BinaryReadout(AbstractProcess):
    """Horner's rule over the Dense output of the steps ``start+1 .. start+T`` (the spikes of
    window steps 0 .. T-1): ``acc = 2 acc + a``; the real value is ``acc 2^-(T-1) + bias``
    (float) or ``acc * unit 2^-(T-1)`` with the bias added on the first step (fixed)."""

    def __init__(self, *, shape: tuple[int, int], bias: np.ndarray, start: int, timesteps: int,
                 unit: float = 1.0, record: np.ndarray | None = None, stats: np.ndarray | None = None,
                 name: str | None = None) -> None:
        super().__init__(shape=shape, bias=bias, start=start, timesteps=timesteps, unit=unit,
                         record=record, stats=stats, name=name, log_config=QUIET)
        self.a_in = InPort(shape=shape)
        self.out = OutPort(shape=shape)
        self.acc = Var(shape=shape, init=0)
