"""Models of ``PositionalDense``: Lava's float Dense (``floating_pt``) and its bit-accurate
8-bit Dense (``fixed_pt``), both skipping steps without spikes."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.dense.models import AbstractPyDenseModelBitAcc, AbstractPyDenseModelFloat
from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

from runtime.proc.positional_dense.process import PositionalDense


class DenseSkip:
    """Mixin: event-driven like Loihi, a step without spikes costs no synaptic operation;
    the model's ``accumulate(s_in)`` gives the next output."""

    def run_spk(self) -> None:
        self.a_out.send(self.a_buff)
        s_in = self.s_in.recv()
        if not s_in.any():
            self.a_buff = np.zeros_like(self.a_buff)
            return
        self.a_buff = self.accumulate(s_in)


@implements(proc=PositionalDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyPositionalDenseModelFloat(DenseSkip, AbstractPyDenseModelFloat):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)

    def accumulate(self, s_in: np.ndarray) -> np.ndarray:
        return self.weights.dot(s_in)


def eight_bit(w: np.ndarray) -> np.ndarray:
    """Weights as Lava's bit-accurate Dense holds them: clipped and truncated to 8 bits."""
    mode = determine_sign_mode(w)
    return truncate_weights(clip_weights(w, mode, num_bits=8), mode, 8)


@implements(proc=PositionalDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PyPositionalDenseModelBitAcc(DenseSkip, AbstractPyDenseModelBitAcc):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)

    def accumulate(self, s_in: np.ndarray) -> np.ndarray:
        # Lava's bit-accurate Dense: 8-bit weights (clip/truncate once), W.s << weight_exp;
        # a second synapse group (low bits, shift 0) adds onto the same accumulator.
        if not self.weights_set:
            self.weights = eight_bit(self.weights)
            self.low = [(eight_bit(w), shift) for w, shift in self.proc_params.get("low_groups", [])]
            self.weights_set = True
        s = s_in.astype(np.int64)
        acc = np.left_shift(self.weights.dot(s), self.proc_params.get("weight_exp", 0))
        for w, shift in self.low:
            acc += np.left_shift(w.dot(s), shift)
        return acc
