"""The model of ``RealOp``, the same in both precisions."""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from runtime.proc.real_op.process import RealOp


@implements(proc=RealOp, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt", "fixed_pt")
class PyRealOpModel(PyLoihiProcessModel):
    """Real-valued ops compute in float32/float64 in both precisions (they have no
    Loihi neuro-core counterpart; on a chip they run on the embedded CPUs)."""

    inp: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float32)
    out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        self.p = proc_params
        self.value = np.zeros(self.p["shape_out"], np.float32)

    def run_spk(self) -> None:
        x = self.inp.recv()
        if self.time_step == self.p["ready"]:
            self.value = self.p["fn"](x).astype(np.float32)
            if self.p["record"] is not None:
                self.p["record"][:] = self.value
        self.out.send(self.value)

