"""Lowering: a converted canonical GraphModule -> a ``nir.NIRGraph``.

Each canonical operator maps to one NIR node (a readout affine to two: a standard
``Affine`` followed by its readout, ``READOUT_AFFINES``). Standard NIR nodes are used
wherever the semantics match (Affine); the rest are spikec extension nodes
(``spikec.core.ir``), built by the builders of ``spikec.lowering``. Node names are the
graph's ``spikec_name`` with dots replaced by underscores.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import nir
import numpy as np
import torch
from torch.fx.passes.shape_prop import ShapeProp

from spikec.core import ir, ops
from spikec.lowering import canonical, few_spike, ssa, streaming
from spikec.lowering.fields import Builder, own_arrays


def _bound(node: torch.fx.Node, gm: torch.fx.GraphModule) -> dict[str, Any]:
    """Arguments of a call_function node by parameter name, get_attr nodes resolved to tensors."""

    def resolve(a: Any) -> Any:
        if isinstance(a, torch.fx.Node) and a.op == "get_attr":
            return _fetch_attr(gm, a.target)
        return a

    sig = inspect.signature(node.target)
    bound = sig.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    return {k: resolve(v) for k, v in bound.arguments.items()}


def _fetch_attr(gm: torch.fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


LOWERINGS: dict[Callable, Builder] = {**canonical.BUILDERS, **ssa.BUILDERS, **streaming.BUILDERS,
                                       **few_spike.BUILDERS}
"""fx operator -> builder of its NIR node (readout affines are handled apart): the canonical
ops of ``spikec.core.ops``, spiking self-attention, the spike-softmax / token-encoding ops and
the few-spike neuron."""

READOUT_AFFINES: dict[Callable, type[ir.SpikecNode]] = {
    ops.rate_readout_affine: ir.SpikecRateReadout,
    ops.binary_readout_affine: ir.SpikecBinaryReadout,
}
"""Readout affine operator -> the readout node that follows its ``Affine``: the mean over T
(rate code) or the Horner sum with step weights 2^-k (few-spike code)."""


def readout_fields(target: Callable, args: dict[str, Any]) -> dict[str, Any]:
    """Fields of a readout node beyond ``features``: the few-spike readout's ``radix`` when it is 3."""
    radix = int(args.get("radix", 2)) if target is ops.binary_readout_affine else 2
    return {"radix": radix} if radix != 2 else {}


class LoweringError(Exception):
    """A node of the graph has no NIR lowering."""


def lower_to_nir(
    gm: torch.fx.GraphModule,
    example_ids: torch.Tensor,
    metadata: dict[str, Any] | None = None,
    positions: int | None = None,
    share_weights: bool = False,
) -> nir.NIRGraph:
    """Lower ``gm`` (canonical, converted or not) to a NIR graph.

    example_ids: ``[batch, P]`` token ids used once to propagate feature sizes (two
    positions suffice); positions: the ``Input`` node's declared length (default P).
    Guarantees: every call_function node becomes NIR node(s); edges follow the data
    flow, with the inputs of ``add`` in argument order (the simulator sums fan-in in
    edge order, so results match bit for bit).
    share_weights: the graph's arrays share memory with ``gm``'s float32 CPU parameters
    instead of copying them (one copy of the weights fewer, for a caller that changes
    neither afterwards, as ``spikec compile`` does); the values are the same either way.
    """
    ShapeProp(gm).propagate(example_ids)
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    out_name: dict[torch.fx.Node, str] = {}  # fx node -> NIR node that carries its value

    def name_of(node: torch.fx.Node) -> str:
        return str(node.meta.get("spikec_name", node.name)).replace(".", "_")

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            nodes["input"] = nir.Input(input_type={"input": np.array([positions or example_ids.shape[1]])})
            out_name[node] = "input"
        elif node.op == "get_attr":
            continue
        elif node.op == "call_function":
            args = _bound(node, gm)
            sources = [a for a in node.all_input_nodes if a.op != "get_attr"]
            name = name_of(node)
            if node.target in READOUT_AFFINES:
                nodes[name] = canonical.affine(args, node)
                readout = f"{name}_readout"
                nodes[readout] = READOUT_AFFINES[node.target](features=nodes[name].weight.shape[0],
                                                              **readout_fields(node.target, args))
                edges.append((name, readout))
                out_name[node] = readout
            elif node.target in LOWERINGS:
                nodes[name] = LOWERINGS[node.target](args, node)
                out_name[node] = name
            else:
                target = getattr(node.target, "__name__", str(node.target))
                raise LoweringError(f"node {node.name} calls {target}, which has no NIR lowering")
            edges.extend((out_name[s], name) for s in sources)
        elif node.op == "output":
            (result,) = node.all_input_nodes
            vocab = int(result.meta["tensor_meta"].shape[-1])
            nodes["output"] = nir.Output(output_type={"output": np.array([positions or example_ids.shape[1], vocab])})
            edges.append((out_name[result], "output"))
        else:
            raise LoweringError(f"unsupported fx node kind {node.op} ({node.name})")
    if not share_weights:
        for n in nodes.values():
            own_arrays(n)
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(metadata or {}), type_check=False)
    return graph
