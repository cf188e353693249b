"""Reading a captured (aten-level) graph as regions, and the values the builder tracks through it.

torch.export's ``nn_module_stack`` names the module instance every aten node ran in. A
*region* is the set of captured nodes of one call of a module whose class has a region kind
(see :mod:`spikec.frontend.architectures`); every other node stays a loose node. The builder
then walks regions and loose nodes in data-flow order, giving each captured node one of the
symbolic values below (``AUX``, ``BAD``, ``IDS`` or an instance of a ``DATA`` class).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .capture import WRAPPED_PREFIX

aten = torch.ops.aten

# Captured ops that only re-label a value when its shape, dtype and device stay the same.
NEUTRAL_OPS = frozenset({
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.alias.default,
    aten.clone.default, aten.contiguous.default, aten._to_copy.default, aten.detach.default,
    aten.expand.default, aten.slice.Tensor, aten.lift_fresh_copy.default,
    aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.to.other,
})
# Captured ops that only check or query metadata.
IGNORED_OPS = frozenset({aten._assert_tensor_metadata.default, aten.sym_size.int})


# ---------------------------------------------------------------------------- values flowing through the captured graph


class Aux:
    """A value that does not depend on the hidden states (sizes, masks, positions, rotary tables)."""


class Bad:
    """The result of an op that could not be mapped (the reason is recorded once)."""


class Ids:
    """The token ids (the placeholder, possibly re-viewed)."""


AUX, BAD, IDS = Aux(), Bad(), Ids()


@dataclass(eq=False)
class Hidden:
    """A hidden state that already has its canonical node."""

    node: fx.Node


@dataclass(eq=False)
class TokenEmbedding:
    """A token embedding lookup, emitted when used (alone or summed with position embeddings);
    ``weight`` ``[vocab, d]`` is the module's, times its scale where it has one."""

    path: str
    module: nn.Embedding
    weight: torch.Tensor
    node: fx.Node | None = None


@dataclass(eq=False)
class PositionEmbedding:
    """A position embedding lookup (by positions made from sizes alone); ``weight``
    ``[positions, d]`` holds the rows of positions 0, 1, ... (past the module's offset)."""

    path: str
    module: nn.Embedding
    weight: torch.Tensor


@dataclass(eq=False)
class PendingLinear:
    """A projection whose role (and fusion with its siblings) its consumer decides."""

    path: str
    module: nn.Module
    x: Any
    node: fx.Node | None = None


@dataclass(eq=False)
class PendingActivation:
    """An activation that may still merge with a gate product into ``gated_activation``."""

    path: str
    kind: str
    x: Any
    node: fx.Node | None = None


# The values that depend on the hidden states.
DATA = (Hidden, TokenEmbedding, PositionEmbedding, PendingLinear, PendingActivation)


class Refused(Exception):
    """A region or op that cannot be mapped; collected into one UnsupportedError."""


@dataclass
class Region:
    """The captured nodes of one call of a module of region kind ``kind``."""

    kind: str
    path: str  # Hugging Face module path
    cls: str
    module: nn.Module
    nodes: list[fx.Node] = field(default_factory=list)


# ---------------------------------------------------------------------------- captured nodes


def hf_path(path: str) -> str:
    """The Hugging Face module path of a path inside :class:`~spikec.frontend.capture.LogitsOnly`."""
    if path == WRAPPED_PREFIX.rstrip("."):
        return ""
    return path[len(WRAPPED_PREFIX):] if path.startswith(WRAPPED_PREFIX) else path


def innermost(node: fx.Node) -> tuple[str, str, str] | None:
    """(call key, HF module path, class qualname) of the innermost module ``node`` ran in."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    key, (path, cls) = list(stack.items())[-1]
    return key, hf_path(path), cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))


def is_neutral(node: fx.Node) -> bool:
    """Whether ``node`` only re-labels its first argument (given an unchanged :func:`shape_key`)."""
    if node.target == aten.dropout.default:  # only in graphs that were not decomposed
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
        return train is False
    return node.target in NEUTRAL_OPS


def shape_key(value: Any) -> tuple | None:
    """(shape, dtype, device) of a captured tensor value, ``None`` for other values."""
    if not isinstance(value, torch.Tensor):
        return None
    return tuple(str(s) for s in value.shape), value.dtype, str(value.device)


# Captured ops that only re-view a value's memory (see :func:`rows_key`).
RESHAPE_OPS = frozenset({aten.view.default, aten.reshape.default, aten._unsafe_view.default})


def rows_key(value: Any) -> tuple | None:
    """(elements, last axis, dtype, device) of a captured tensor value, ``None`` for other values.

    A reshape that keeps this key only regroups whole rows of features (OPT flattens
    ``[batch, positions, d]`` to ``[batch * positions, d]`` around its MLP and views it back);
    canonical ops are row-wise but for attention, whose HF shape checks see the regrouping."""
    if not isinstance(value, torch.Tensor) or value.dim() < 1:
        return None
    return str(value.numel()), str(value.shape[-1]), value.dtype, str(value.device)


def op_name(node: fx.Node) -> str:
    """Printable name of the op ``node`` calls (``aten.mul.Tensor``)."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def describe(node: fx.Node) -> str:
    """``"<op> in <module path> (<class>)"`` for refusal messages."""
    info = innermost(node)
    where = f"{info[1] or '<root>'} ({info[2].rsplit('.', 1)[-1]})" if info else "<no module>"
    return f"{op_name(node)} in {where}"


def submodule(model: nn.Module, path: str) -> nn.Module | None:
    """``model.get_submodule(path)``, ``None`` where there is none."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def group_units(gm: fx.GraphModule, model: nn.Module, kinds: dict[type, str]) -> tuple[dict[Any, Any], dict[fx.Node, Any]]:
    """Group the captured nodes of ``gm`` into regions (one per call of a module of ``model``
    whose exact class is a key of ``kinds``) and loose nodes.

    Returns ``(units, unit_of)``: units by id (``("region", call key)`` -> :class:`Region`,
    ``("node", name)`` -> ``fx.Node``) in graph order, and the unit id of every captured node.
    """
    units: dict[Any, Any] = {}
    unit_of: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        region = None
        info = innermost(node) if node.op == "call_function" else None
        if info is not None:
            key, path, cls = info
            module = submodule(model, path)
            kind = kinds.get(type(module)) if module is not None else None
            if kind is not None:
                region = units.get(("region", key))
                if region is None:
                    region = units[("region", key)] = Region(kind, path, cls, module)
                region.nodes.append(node)
                unit_of[node] = ("region", key)
        if region is None:
            units[("node", node.name)] = node
            unit_of[node] = ("node", node.name)
    return units, unit_of
