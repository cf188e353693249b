"""The ``SpikingSelfAttention`` process (one SSA node of the graph)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess

from runtime.proc.common import QUIET


class SpikingSelfAttention(AbstractProcess):
    """Spiking self-attention (``ssa_spikes``): the real q|k|v received at step ``start``
    drives its Q, K, V neurons for T steps; the output neurons' spikes leave on ``s_out``
    at steps ``start .. start+T-1``, like a SignedIF layer's."""

    def __init__(self, *, shape_in: tuple[int, int], shape_out: tuple[int, int], params: dict,
                 attrs: dict, batch: int, start: int, timesteps: int, record: np.ndarray,
                 name: str | None = None) -> None:
        super().__init__(shape_in=shape_in, shape=shape_out, params=params, attrs=attrs, batch=batch,
                         start=start, timesteps=timesteps, record=record, name=name, log_config=QUIET)
        self.a_in = InPort(shape=shape_in)
        self.s_out = OutPort(shape=shape_out)
