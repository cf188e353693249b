"""The model of ``HostValue``, the same in both precisions."""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from runtime.proc.host_value.process import HostValue


@implements(proc=HostValue, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt", "fixed_pt")
class PyHostValueModel(PyLoihiProcessModel):
    out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        self.p = proc_params
        self.zeros = np.zeros_like(self.p["value"])

    def run_spk(self) -> None:
        self.out.send(self.p["value"] if self.time_step >= self.p["ready"] else self.zeros)
