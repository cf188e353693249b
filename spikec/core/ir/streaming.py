"""NIR extension nodes of the streaming (spike-softmax) network and of token encoding.

Semantics in docs/nir-extensions.md ("Streaming nodes"). The neuron nodes subclass
``SpikecSignedIF`` so that spikec's bookkeeping (spike counting, energy, file validation) treats
them as neuron layers with thresholds; the simulator runs their own dynamics. The
spike-equivalent operators subclass the real-valued nodes whose fields and window value they
share; they differ on a time series (running means, not step by step). Their dynamics (torch)
are in ``spikec.core.streaming``; the builders lowering its fx ops to these nodes are in
``spikec.lowering.streaming``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import SpikecNode
from .rate import SpikecSignedIF
from .real import SpikecActivation, SpikecAdd, SpikecGatedActivation, SpikecLayerNorm, SpikecRMSNorm


@dataclass(eq=False)
class SpikecSTBIF(SpikecSignedIF):
    """Signed bounded IF neurons (SpikeZIP-TF's ST-BIF) for time-varying input: cumulative
    count ``C_t = clamp(floor(sum_{s<=t} I_s / threshold + v_init), -B T, B T)`` (lower bound 0
    when not signed), spikes ``C_t - C_{t-1}`` (any integer)."""


@dataclass(eq=False)
class SpikecStreamLayerNorm(SpikecLayerNorm):
    """Spike-equivalent LayerNorm: emits ``t f(xbar_t) - (t-1) f(xbar_{t-1})``."""


@dataclass(eq=False)
class SpikecStreamRMSNorm(SpikecRMSNorm):
    """Spike-equivalent RMSNorm: emits ``t f(xbar_t) - (t-1) f(xbar_{t-1})``."""


@dataclass(eq=False)
class SpikecStreamActivation(SpikecActivation):
    """Spike-equivalent activation: emits ``t f(xbar_t) - (t-1) f(xbar_{t-1})``."""


@dataclass(eq=False)
class SpikecStreamGatedActivation(SpikecGatedActivation):
    """Spike-equivalent gated activation ``act(gate) * up`` of the accumulated input."""


@dataclass(eq=False)
class SpikecStreamAdd(SpikecAdd):
    """Residual junction of a streaming network: the sum of its incoming edges, step by step
    (as ``SpikecAdd``); it marks its inputs as the outputs of streaming nodes."""


@dataclass(eq=False)
class SpikecSpikeAttention(SpikecNode):
    """Spike-equivalent causal self-attention driven by the q|k|v spike train.

    ``input_scale`` ``[(H + 2 KV) D]``: the q|k|v neurons' thresholds (what a spike is worth);
    ``prob_threshold`` ``[H]``, ``prob_max_spikes``, ``prob_v_init``: the probability neurons
    (unsigned ST-BIF, one per head, query and key) between softmax and the product with v.
    Output: real time series ``[T, b, P, H D]``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    scale: float
    input_scale: np.ndarray
    prob_threshold: np.ndarray
    prob_max_spikes: int
    prob_v_init: float

    def __post_init__(self) -> None:
        self.set_feature_types(int(self.input_scale.shape[0]), self.num_heads * self.head_dim)


@dataclass(eq=False)
class SpikecTokenEncoder(SpikecSignedIF):
    """Token encoder: spikes for the embedding (a constant current). ``scheme`` ``rate``: ST-BIF
    neurons (``threshold``, ``max_spikes``, ``v_init``); ``binary``: the magnitude's ``bits`` most
    significant bits, one step each, signed."""

    scheme: str
    bits: int


@dataclass(eq=False)
class SpikecSpikeDecode(SpikecNode):
    """Synapses of a token encoder: spike ``s_t`` -> current ``c_t * weight * s_t`` with
    ``c_t = 1`` (rate) or ``T 2^(K-1-t) / (2^K - 1)`` for steps ``t = 0..K-1`` (binary)."""

    weight: np.ndarray
    scheme: str
    bits: int

    def __post_init__(self) -> None:
        self.set_feature_types(int(self.weight.shape[0]), int(self.weight.shape[0]))


STREAMING_NEURONS = (SpikecSTBIF, SpikecTokenEncoder)
STREAMING_TYPES = (SpikecSTBIF, SpikecStreamLayerNorm, SpikecStreamRMSNorm, SpikecStreamActivation,
                   SpikecStreamGatedActivation, SpikecStreamAdd, SpikecSpikeAttention)
"""Node types that only a streaming (spike-softmax) network holds."""
