"""The model of ``Embedding``, the same in both precisions."""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from runtime.numpy_ops import embedding, to_lava
from runtime.proc.embedding.process import Embedding


@implements(proc=Embedding, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt", "fixed_pt")
class PyEmbeddingModel(PyLoihiProcessModel):
    out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        p = proc_params
        self.value = to_lava(embedding(p["ids"], p["weight"], p["position_weight"]))
        if p["record"] is not None:
            p["record"][:] = self.value

    def run_spk(self) -> None:
        self.out.send(self.value)
