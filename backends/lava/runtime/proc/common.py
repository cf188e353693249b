"""What spikec's Lava processes and models share: the log config, the window-spike model and the
readout processes' base."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

QUIET = LogConfig(level=logging.ERROR, level_console=logging.ERROR)
"""Log config of every spikec process: errors only (Lava logs each process otherwise)."""


class WindowSpikesModel(PyLoihiProcessModel):
    """Base model of a spiking layer driven by a real input: ``step(t)`` gives the spikes of
    window step ``t`` (the input is ``self._x``), recorded into the shared ``record``
    ``[T, F, N]``; outside the window it sends zeros. Not a model of any process itself."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int8, precision=8)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        self.p = proc_params
        self.zeros = np.zeros(self.p["shape"], np.int8)  # the output's

    def run_spk(self) -> None:
        self._x = self.a_in.recv()
        t = self.time_step - self.p["start"]
        if 0 <= t < self.p["timesteps"]:
            s = self.step(t).astype(np.int8)
            self.p["record"][t] = s
            self.s_out.send(s)
        else:
            self.s_out.send(self.zeros)


class WindowReadout(AbstractProcess):
    """Base of the readout processes (``RateReadout``, ``BinaryReadout``): an accumulator over the
    Dense output of the steps ``start+1 .. start+T``, a real value on ``out`` from then on. Lava
    matches models to a process's exact class, so this base has none of its own."""

    def __init__(self, *, shape: tuple[int, int], bias: np.ndarray, start: int, timesteps: int,
                 unit: float = 1.0, record: np.ndarray | None = None, stats: np.ndarray | None = None,
                 name: str | None = None) -> None:
        super().__init__(shape=shape, bias=bias, start=start, timesteps=timesteps, unit=unit,
                         record=record, stats=stats, name=name, log_config=QUIET)
        self.a_in = InPort(shape=shape)
        self.out = OutPort(shape=shape)
        self.acc = Var(shape=shape, init=0)
