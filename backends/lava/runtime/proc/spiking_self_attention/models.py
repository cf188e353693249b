"""The model of ``SpikingSelfAttention``, the same in both precisions."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from runtime.numpy_ops import from_lava, ssa_spikes, to_lava
from runtime.proc.common import WindowSpikesModel
from runtime.proc.spiking_self_attention.process import SpikingSelfAttention


@implements(proc=SpikingSelfAttention, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt", "fixed_pt")
class PySpikingSelfAttentionModel(WindowSpikesModel):
    """float32 arithmetic in both precisions (Loihi has no spike-matrix product)."""

    def step(self, t: int) -> np.ndarray:
        if t == 0:
            a = self.p["attrs"]
            train = ssa_spikes(from_lava(self._x, self.p["batch"]), self.p["params"], int(a["num_heads"]),
                               int(a["num_kv_heads"]), int(a["head_dim"]), float(a["rope_theta"]),
                               self.p["timesteps"], bool(a["signed"]), float(a["tau"]), bool(a["normalize"]))
            self.train = [to_lava(s) for s in train]
        return self.train[t]
