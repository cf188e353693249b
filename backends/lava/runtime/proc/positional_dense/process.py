"""The ``PositionalDense`` process (a Dense fed by a spiking layer)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.variable import Var
from lava.proc.dense.process import Dense

from runtime.proc.common import QUIET


class PositionalDense(Dense):
    """Lava's Dense with a ``[in, N]`` input (N = batch x positions): the same weights
    applied to every position. Graded spikes (num_message_bits = 8)."""

    def __init__(self, *, weights: np.ndarray, positions: int, weight_exp: int = 0,
                 low_groups: list | None = None, name: str | None = None) -> None:
        super().__init__(weights=weights, num_message_bits=8, weight_exp=weight_exp,
                         low_groups=low_groups or [], name=name, log_config=QUIET)
        n_out, n_in = weights.shape
        self.s_in = InPort(shape=(n_in, positions))
        self.a_out = OutPort(shape=(n_out, positions))
        self.a_buff = Var(shape=(n_out, positions), init=0)
