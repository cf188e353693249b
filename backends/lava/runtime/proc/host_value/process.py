"""The ``HostValue`` process (token embeddings given as input, a value from an earlier segment)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess

from runtime.proc.common import QUIET


class HostValue(AbstractProcess):
    """A real value known before the run (token embeddings, a value computed by an
    earlier segment); sent from step ``ready`` on."""

    def __init__(self, *, value: np.ndarray, ready: int = 1, name: str | None = None) -> None:
        super().__init__(value=value, ready=ready, name=name, log_config=QUIET)
        self.out = OutPort(shape=value.shape)
