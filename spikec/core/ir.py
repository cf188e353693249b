"""spikec's NIR extension nodes: frozen-field dataclasses, no behaviour inside.

Standard NIR cannot express a transformer (no embedding, norm, attention between
activations, no signed soft-reset neuron). These nodes fill the gap. Each is a
``nir.NIRNode`` subclass, so ``nir.write`` stores it like any other node (its HDF5
``type`` is the class name); ``spikec.backends.nirio.read`` reads it back. The
semantics of every node are documented in docs/nir-extensions.md.

Value domains: an edge carries either a *real* tensor ``[batch, positions, features]``
(one value per window of T steps) or a *spike train* ``[T, batch, positions, features]``.
``SpikecSignedIF`` turns a real current into a spike train; ``SpikecRateReadout``
turns a time series back into a real value (its mean over the T steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import nir
import numpy as np

EXTENSION_TYPES: dict[str, type["SpikecNode"]] = {}
"""HDF5 type name -> class, for every extension node."""


def _coerce(value: Any, annotation: str) -> Any:
    if annotation == "str":
        return value.decode("utf8") if isinstance(value, bytes) else str(value)
    if annotation == "int":
        return int(value)
    if annotation == "float":
        return float(value)
    if annotation == "bool":
        return bool(value)
    return np.asarray(value)


@dataclass(eq=False)
class SpikecNode(nir.NIRNode):
    """Base of the extension nodes. ``features`` gives the node's input and output
    feature shapes for NIR's type fields; subclasses set them in ``__post_init__``."""

    kind: ClassVar[str] = "real"  # "real", "spiking" or "readout": the value domain it produces

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        EXTENSION_TYPES[cls.__name__] = cls

    def _set_types(self, n_in: int, n_out: int) -> None:
        self.input_type = {"input": np.array([n_in])}
        self.output_type = {"output": np.array([n_out])}

    @classmethod
    def from_dict(cls, kwargs: dict[str, Any]) -> "SpikecNode":
        kwargs = dict(kwargs)
        kwargs.pop("type", None)
        metadata = kwargs.pop("metadata", {}) or {}
        annotations = {f.name: str(f.type) for f in dataclasses.fields(cls) if f.init}
        unknown = set(kwargs) - set(annotations)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        fields = {k: _coerce(v, annotations[k]) for k, v in kwargs.items()}
        return cls(**fields, metadata=dict(metadata))


@dataclass(eq=False)
class SpikecEmbedding(SpikecNode):
    """Token embedding: ``weight[ids] + position_weight[0..P-1]``.
    Input: token ids ``[batch, positions]``; output real ``[batch, positions, d]``.
    ``position_weight`` has zero rows when the model has no learned positions."""

    weight: np.ndarray  # [vocab, d]
    position_weight: np.ndarray  # [max_positions, d] or [0, d]

    def __post_init__(self) -> None:
        self._set_types(1, self.weight.shape[1])


@dataclass(eq=False)
class SpikecLayerNorm(SpikecNode):
    """LayerNorm over features: ``(x - mean) / sqrt(var + eps) * weight + bias``."""

    weight: np.ndarray  # [d]
    bias: np.ndarray  # [d]
    eps: float

    def __post_init__(self) -> None:
        self._set_types(self.weight.shape[0], self.weight.shape[0])


@dataclass(eq=False)
class SpikecRMSNorm(SpikecNode):
    """RMSNorm over features: ``x / sqrt(mean(x^2) + eps) * weight`` (in float32)."""

    weight: np.ndarray  # [d]
    eps: float

    def __post_init__(self) -> None:
        self._set_types(self.weight.shape[0], self.weight.shape[0])


@dataclass(eq=False)
class SpikecAttention(SpikecNode):
    """Causal softmax self-attention between projections (``spikec.core.ops.attention``).
    Input: fused ``[q | k | v]`` real ``[batch, P, (H + 2*KV) * head_dim]``;
    output real ``[batch, P, H * head_dim]``. ``rope_theta`` 0 means no rotary embedding."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    scale: float

    def __post_init__(self) -> None:
        n_in = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self._set_types(n_in, self.num_heads * self.head_dim)


@dataclass(eq=False)
class SpikecActivation(SpikecNode):
    """Elementwise activation by name: ``gelu``, ``gelu_tanh``, ``relu``, ``silu``."""

    activation: str
    features: int

    def __post_init__(self) -> None:
        self._set_types(self.features, self.features)


@dataclass(eq=False)
class SpikecGatedActivation(SpikecNode):
    """Gated activation ``act(gate) * up`` of the input ``[gate | up]``; halves the features."""

    activation: str
    features: int  # output features (input has twice as many)

    def __post_init__(self) -> None:
        self._set_types(2 * self.features, self.features)


@dataclass(eq=False)
class SpikecAdd(SpikecNode):
    """Residual junction: the sum of its incoming edges (NIR fan-in), passed on unchanged."""

    features: int

    def __post_init__(self) -> None:
        self._set_types(self.features, self.features)


@dataclass(eq=False)
class SpikecSignedIF(SpikecNode):
    """Signed integrate-and-fire neurons with soft reset (``spikec.core.neurons``).

    Driven by a real current (constant over the T steps of a window) it emits a
    spike train of integers in ``[-max_spikes, max_spikes]`` per step
    (``[0, max_spikes]`` when not signed). Membrane starts at ``v_init * threshold``;
    ``v_init`` is one float for the layer or a float32 array ``[features]`` (per neuron)."""

    kind: ClassVar[str] = "spiking"
    threshold: np.ndarray  # [features]
    max_spikes: int
    signed: bool
    v_init: float | np.ndarray  # a float, or [features]

    def __post_init__(self) -> None:
        # A scalar (also a 0-d array read back from a file) stays a Python float.
        self.v_init = float(self.v_init) if np.ndim(self.v_init) == 0 else np.asarray(self.v_init, np.float32)
        self._set_types(self.threshold.shape[0], self.threshold.shape[0])


@dataclass(eq=False)
class SpikecRateReadout(SpikecNode):
    """Mean over the T steps of its time-series input: a real value per window."""

    kind: ClassVar[str] = "readout"
    features: int

    def __post_init__(self) -> None:
        self._set_types(self.features, self.features)


STANDARD_SPIKING_TYPES = (nir.IF, nir.LIF, nir.CubaLIF, nir.Threshold)
"""Standard NIR nodes that emit spikes."""


def is_spiking(node: nir.NIRNode) -> bool:
    """Whether ``node`` emits spikes: a standard spiking NIR node, or an extension node whose
    ``kind`` is ``"spiking"``. The one answer to that question in spikec."""
    return isinstance(node, STANDARD_SPIKING_TYPES) or (isinstance(node, SpikecNode) and node.kind == "spiking")


def is_extension(node: nir.NIRNode) -> bool:
    """Whether ``node`` is one of spikec's extension node types."""
    return isinstance(node, SpikecNode)


from . import ssa as _ssa  # noqa: E402,F401  (registers SpikecSSA; spikec/core/ssa.py imports torch lazily)
from . import streaming_ir as _streaming_ir  # noqa: E402,F401  (spike-softmax/token nodes; no torch)
