"""Small torch.fx helpers shared by the passes: argument access by position or
keyword, tensor attributes behind ``get_attr`` nodes, fresh attribute names, the module's
device, and ``GraphRunner``, an interpreter whose attribute reads and calls a pass chooses."""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator

import torch
from torch import fx

from spikec.core.errors import UsageError


def calls(gm: fx.GraphModule, *targets: Callable) -> Iterator[fx.Node]:
    """The ``call_function`` nodes of ``gm`` whose target is one of ``targets``, in order
    (a snapshot, so the graph may be edited while iterating)."""
    return iter([n for n in gm.graph.nodes if n.op == "call_function" and n.target in targets])


def get_arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call node, given positionally at ``index`` or by keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def set_arg(node: fx.Node, index: int, name: str, value: Any) -> None:
    """Set argument ``name`` where it is given (position ``index`` or keyword)."""
    if len(node.args) > index:
        node.update_arg(index, value)
    else:
        node.update_kwarg(name, value)


def fetch_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    """The tensor a ``get_attr`` target names (dotted paths allowed)."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def attr_tensor(gm: fx.GraphModule, arg: Any) -> torch.Tensor | None:
    """The tensor behind ``arg`` if it is a ``get_attr`` node, else None."""
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = fetch_attr(gm, arg.target)
        return value if isinstance(value, torch.Tensor) else None
    return None


def new_attr(gm: fx.GraphModule, hint: str, tensor: torch.Tensor) -> str:
    """Register ``tensor`` as a fresh buffer of ``gm`` named after ``hint``; returns the name."""
    base = re.sub(r"\W", "_", hint).strip("_") or "t"
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    gm.register_buffer(name, tensor.detach())
    return name


def drop_unused_attrs(gm: fx.GraphModule, targets: set[str]) -> None:
    """Delete the attributes ``targets`` that no ``get_attr`` node reads any more (the
    tensors themselves are left alone: someone else may still hold them)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for target in targets - used:
        owner_path, _, attr = target.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if hasattr(owner, attr):
            delattr(owner, attr)


def erase_if_unused(gm: fx.GraphModule, nodes: list[Any]) -> set[str]:
    """Erase the ``get_attr`` nodes among ``nodes`` that have no users; returns their targets."""
    erased: set[str] = set()
    for n in dict.fromkeys(n for n in nodes if isinstance(n, fx.Node)):
        if n.op == "get_attr" and not n.users:
            erased.add(n.target)
            gm.graph.erase_node(n)
    return erased


def spikec_name(node: fx.Node) -> str:
    """The node's readable spikec name (its fx name when the meta key is missing)."""
    return str(node.meta.get("spikec_name", node.name))


def module_device(gm: fx.GraphModule) -> torch.device:
    """The device of the module's tensors: its first buffer's, else its first parameter's,
    else the CPU."""
    for t in gm.buffers():
        return t.device
    for t in gm.parameters():
        return t.device
    return torch.device("cpu")


def replace_attr(gm: fx.GraphModule, target: str, tensor: torch.Tensor) -> None:
    """Point the attribute ``target`` (dotted paths allowed) at ``tensor`` (detached, as a
    buffer); the old tensor is left untouched."""
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    delattr(owner, name)
    owner.register_buffer(name, tensor.detach())


class GraphRunner(fx.Interpreter):
    """Runs ``gm`` with each ``get_attr`` value given by ``attr(target)`` and each
    ``call_function`` node computed by ``call(node, args, kwargs)`` (defaults: the module's
    attribute, the node's own function); values are freed after their last use. Other node
    kinds (``call_module``, ``call_method``) raise ``UsageError`` naming ``what``."""

    def __init__(self, gm: fx.GraphModule, attr: Callable[[str], Any] | None = None,
                 call: Callable[[fx.Node, tuple, dict], Any] | None = None, what: str = "this pass"):
        super().__init__(gm, garbage_collect_values=True)
        self.attr = attr or (lambda target: fetch_attr(gm, target))
        self.call = call or (lambda node, args, kwargs: node.target(*args, **kwargs))
        self.what = what

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "get_attr":
            return self.attr(n.target)
        if n.op == "call_function":
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            return self.call(n, args, kwargs)
        if n.op in ("placeholder", "output"):
            return super().run_node(n)
        raise UsageError(f"{self.what} cannot run fx node kind {n.op!r} ({n.name})")
