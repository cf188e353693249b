"""The ``FewSpike`` process (one few-spike neuron layer of the graph)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var

from runtime.proc.common import QUIET


class FewSpike(AbstractProcess):
    """Few-spike neurons (spikec.core.few_spike): at most one signed spike per step, step ``k``
    of the window standing for ``r^-k`` thresholds (r = ``radix``, 2 or 3: balanced ternary). The
    real input received at step ``start`` is the constant current of the T steps ``start ..
    start+T-1``; spikes leave on ``s_out``. steps: the layer's own code length S (0: T): the
    S-step code on the window's first S steps, no spike on the rest."""

    def __init__(self, *, shape: tuple[int, int], threshold: np.ndarray, signed_digits: bool, start: int,
                 timesteps: int, record: np.ndarray, steps: int = 0, radix: int = 2,
                 name: str | None = None) -> None:
        super().__init__(shape=shape, threshold=threshold, signed_digits=signed_digits, start=start,
                         timesteps=timesteps, steps=int(steps) or int(timesteps), radix=int(radix), record=record,
                         name=name, log_config=QUIET)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=0)
