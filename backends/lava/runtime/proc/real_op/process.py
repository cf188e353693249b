"""The ``RealOp`` process (every real-valued node of the graph but the embedding)."""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess

from runtime.proc.common import QUIET


class RealOp(AbstractProcess):
    """A real-valued operator of the graph (norm, attention, activation, residual add, real
    affine: ``fn``). It computes once, at step ``ready`` when its input is complete, and holds
    the result on ``out``. Its input port sums the incoming edges (NIR fan-in): a residual
    junction is a RealOp whose ``fn`` is the identity."""

    def __init__(self, *, shape_in: tuple[int, int], shape_out: tuple[int, int], fn: Any, ready: int,
                 record: np.ndarray | None = None, name: str | None = None) -> None:
        super().__init__(shape_in=shape_in, shape_out=shape_out, fn=fn, ready=ready, record=record,
                         name=name, log_config=QUIET)
        self.inp = InPort(shape=shape_in)
        self.out = OutPort(shape=shape_out)

