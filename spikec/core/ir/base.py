"""The base of spikec's NIR extension nodes and the questions asked of any node.

Standard NIR cannot express a transformer (no embedding, norm, attention between
activations, no signed soft-reset neuron); spikec's extension nodes fill the gap. Each is a
``nir.NIRNode`` subclass of ``SpikecNode``, so ``nir.write`` stores it like any other node
(its HDF5 ``type`` is the class name); ``spikec.backends.nirio.read`` reads it back through
``SpikecNode.from_dict``. The semantics of every node are documented in docs/nir-extensions.md.

Value domains: an edge carries either a *real* tensor ``[batch, positions, features]``
(one value per window of T steps) or a *spike train* ``[T, batch, positions, features]``.
A node's ``kind`` says which it produces: ``"real"``, ``"spiking"`` or ``"readout"`` (the mean
of a time series over the T steps: a real value).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import nir
import numpy as np


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
    """Base of the extension nodes: frozen-field dataclasses, no behaviour inside. Subclasses
    set NIR's input and output type fields in ``__post_init__`` with ``set_feature_types``."""

    kind: ClassVar[str] = "real"  # "real", "spiking" or "readout": the value domain it produces

    def set_feature_types(self, n_in: int, n_out: int) -> None:
        """Set NIR's ``input_type`` / ``output_type`` to ``n_in`` input and ``n_out`` output features."""
        self.input_type = {"input": np.array([n_in])}
        self.output_type = {"output": np.array([n_out])}

    @classmethod
    def from_dict(cls, kwargs: dict[str, Any]) -> "SpikecNode":
        """The node of a dict read from a NIR file (its fields, ``type`` and ``metadata``);
        each field is coerced to its annotated type. Unknown fields raise ``ValueError``."""
        kwargs = dict(kwargs)
        kwargs.pop("type", None)
        metadata = kwargs.pop("metadata", {}) or {}
        annotations = {f.name: str(f.type) for f in dataclasses.fields(cls) if f.init}
        unknown = set(kwargs) - set(annotations)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        fields = {k: _coerce(v, annotations[k]) for k, v in kwargs.items()}
        return cls(**fields, metadata=dict(metadata))


STANDARD_SPIKING_TYPES = (nir.IF, nir.LIF, nir.CubaLIF, nir.Threshold)
"""Standard NIR nodes that emit spikes."""


def is_spiking(node: nir.NIRNode) -> bool:
    """Whether ``node`` emits spikes: a standard spiking NIR node, or an extension node whose
    ``kind`` is ``"spiking"``. The one answer to that question in spikec."""
    return isinstance(node, STANDARD_SPIKING_TYPES) or (isinstance(node, SpikecNode) and node.kind == "spiking")


def is_extension(node: nir.NIRNode) -> bool:
    """Whether ``node`` is one of spikec's extension node types."""
    return isinstance(node, SpikecNode)
