"""The ``SignedIF`` process (one SignedIF layer of the graph)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var

from runtime.proc.common import QUIET


class SignedIF(AbstractProcess):
    """Signed integrate-and-fire neurons with soft reset and graded spikes (up to
    ``max_spikes`` per step). The real input received at step ``start`` is the constant
    current (bias) of the T steps ``start .. start+T-1``; spikes leave on ``s_out``."""

    def __init__(self, *, shape: tuple[int, int], threshold: np.ndarray, max_spikes: int,
                 signed: bool, v_init: float, start: int, timesteps: int, record: np.ndarray,
                 encoding: dict | None = None, name: str | None = None) -> None:
        super().__init__(shape=shape, threshold=threshold, max_spikes=max_spikes, signed=signed,
                         v_init=v_init, start=start, timesteps=timesteps, record=record,
                         encoding=encoding, name=name, log_config=QUIET)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=0)
