"""The ``Embedding`` process (the Embedding node of the graph)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess

from runtime.proc.common import QUIET


class Embedding(AbstractProcess):
    """Token (+ learned position) embedding of the ids given at build time."""

    def __init__(self, *, ids: np.ndarray, weight: np.ndarray, position_weight: np.ndarray,
                 record: np.ndarray | None = None, name: str | None = None) -> None:
        super().__init__(ids=ids, weight=weight, position_weight=position_weight, record=record,
                         name=name, log_config=QUIET)
        self.out = OutPort(shape=(weight.shape[1], ids.size))
