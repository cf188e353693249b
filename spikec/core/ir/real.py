"""NIR extension nodes of real-valued operators: one value per window of T steps in, one out.

Shapes: real ``[batch, positions, features]`` (token ids ``[batch, positions]`` into the
embedding). Semantics in docs/nir-extensions.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import SpikecNode


@dataclass(eq=False)
class SpikecEmbedding(SpikecNode):
    """Token embedding: ``weight[ids] + position_weight[0..P-1]``.
    Input: token ids ``[batch, positions]``; output real ``[batch, positions, d]``.
    ``position_weight`` has zero rows when the model has no learned positions."""

    weight: np.ndarray  # [vocab, d]
    position_weight: np.ndarray  # [max_positions, d] or [0, d]

    def __post_init__(self) -> None:
        self.set_feature_types(1, self.weight.shape[1])


@dataclass(eq=False)
class SpikecLayerNorm(SpikecNode):
    """LayerNorm over features: ``(x - mean) / sqrt(var + eps) * weight + bias``."""

    weight: np.ndarray  # [d]
    bias: np.ndarray  # [d]
    eps: float

    def __post_init__(self) -> None:
        self.set_feature_types(self.weight.shape[0], self.weight.shape[0])


@dataclass(eq=False)
class SpikecRMSNorm(SpikecNode):
    """RMSNorm over features: ``x / sqrt(mean(x^2) + eps) * weight`` (in float32)."""

    weight: np.ndarray  # [d]
    eps: float

    def __post_init__(self) -> None:
        self.set_feature_types(self.weight.shape[0], self.weight.shape[0])


@dataclass(eq=False)
class SpikecAttention(SpikecNode):
    """Softmax self-attention between projections (``spikec.core.ops.attention``), causal unless
    ``causal`` is False (an encoder's bidirectional attention: every query sees every key).
    Input: fused ``[q | k | v]`` real ``[batch, P, (H + 2*KV) * head_dim]``;
    output real ``[batch, P, H * head_dim]``. ``rope_theta`` 0 means no rotary embedding;
    ``rotary_dim`` the features of each head it rotates (0: all); ``window`` the keys a query
    sees, itself included (0: all before it; sliding-window attention). Both are written to a
    file only when not 0, and ``causal`` only when False, so that files of models without them
    are unchanged."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    scale: float
    rotary_dim: int = 0
    window: int = 0
    causal: bool = True

    def __post_init__(self) -> None:
        n_in = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.set_feature_types(n_in, self.num_heads * self.head_dim)

    def to_dict(self) -> dict[str, Any]:
        """NIR's serialization, without ``rotary_dim`` and ``window`` where they are 0 and without
        ``causal`` where it is True."""
        out = super().to_dict()
        for field in ("rotary_dim", "window"):
            if not getattr(self, field):
                out.pop(field, None)
        if self.causal:
            out.pop("causal", None)
        return out


@dataclass(eq=False)
class SpikecActivation(SpikecNode):
    """Elementwise activation by name: ``gelu``, ``gelu_tanh``, ``relu``, ``silu``."""

    activation: str
    features: int

    def __post_init__(self) -> None:
        self.set_feature_types(self.features, self.features)


@dataclass(eq=False)
class SpikecGatedActivation(SpikecNode):
    """Gated activation ``act(gate) * up`` of the input ``[gate | up]``; halves the features."""

    activation: str
    features: int  # output features (input has twice as many)

    def __post_init__(self) -> None:
        self.set_feature_types(2 * self.features, self.features)


@dataclass(eq=False)
class SpikecAdd(SpikecNode):
    """Residual junction: the sum of its incoming edges (NIR fan-in), passed on unchanged."""

    features: int

    def __post_init__(self) -> None:
        self.set_feature_types(self.features, self.features)
