"""Lowering: a converted canonical GraphModule -> a ``nir.NIRGraph``.

Each canonical operator maps to one NIR node (``rate_readout_affine`` to two: a
standard ``Affine`` followed by ``SpikecRateReadout``). Standard NIR nodes are used
wherever the semantics match (Affine); the rest are spikec extension nodes
(``spikec.core.ir``). Node names are the graph's ``spikec_name`` with dots replaced
by underscores.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import nir
import numpy as np
import torch
from torch.fx.passes.shape_prop import ShapeProp

from spikec.core import ir, ops
from spikec.core import ssa
from spikec.core import streaming
from spikec.core.errors import UnsupportedError


def _array(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float32).cpu().numpy().copy()


def _features(node: torch.fx.Node) -> int:
    return int(node.meta["tensor_meta"].shape[-1])


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


def _embedding(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    w = _array(a["weight"])
    pw = _array(a["position_weight"])
    return ir.SpikecEmbedding(weight=w, position_weight=pw if pw is not None else np.zeros((0, w.shape[1]), np.float32))


def _layer_norm(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    d = _features(node)
    w = _array(a["weight"])
    b = _array(a["bias"])
    return ir.SpikecLayerNorm(
        weight=w if w is not None else np.ones(d, np.float32),
        bias=b if b is not None else np.zeros(d, np.float32),
        eps=float(a["eps"]),
    )


def _rms_norm(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    w = _array(a["weight"])
    return ir.SpikecRMSNorm(weight=w if w is not None else np.ones(_features(node), np.float32), eps=float(a["eps"]))


def _attention(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    if not a["causal"]:
        raise UnsupportedError("non-causal attention (encoder models such as BERT) has no NIR lowering yet")
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(a["head_dim"])
    return ir.SpikecAttention(
        num_heads=int(a["num_heads"]), num_kv_heads=int(a["num_kv_heads"]), head_dim=int(a["head_dim"]),
        rope_theta=float(a["rope_theta"]), scale=float(scale),
    )


def _affine(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    w = _array(a["weight"])
    b = _array(a["bias"])
    return nir.Affine(weight=w, bias=b if b is not None else np.zeros(w.shape[0], np.float32))


def _signed_if(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    return ir.SpikecSignedIF(
        threshold=_array(a["threshold"]), max_spikes=int(a["max_spikes"]), signed=bool(a["signed"]),
        v_init=_array(a["v_init"]) if isinstance(a["v_init"], torch.Tensor) else float(a["v_init"]),
    )


def _nir_if(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    """Standard NIR IF with one value per neuron for each parameter (portable conversion)."""
    n = _features(node)
    full = lambda v: np.full(n, float(v), np.float32)  # noqa: E731
    return nir.IF(r=full(a["r"]), v_threshold=full(a["v_threshold"]), v_reset=full(a["v_reset"]))


LOWERINGS: dict[Callable, Callable[[dict, torch.fx.Node], nir.NIRNode]] = {
    ops.embedding: _embedding,
    ops.layer_norm: _layer_norm,
    ops.rms_norm: _rms_norm,
    ops.attention: _attention,
    ops.activation: lambda a, n: ir.SpikecActivation(activation=a["kind"], features=_features(n)),
    ops.gated_activation: lambda a, n: ir.SpikecGatedActivation(activation=a["kind"], features=_features(n)),
    ops.add: lambda a, n: ir.SpikecAdd(features=_features(n)),
    ops.affine: _affine,
    ops.signed_if: _signed_if,
    ssa.spiking_self_attention: ssa.to_nir,
    ops.linear: lambda a, n: nir.Linear(weight=_array(a["weight"])),
    ops.nir_if: _nir_if,
}
"""Canonical operator -> builder of its NIR node (``rate_readout_affine`` is handled apart)."""
LOWERINGS.update(streaming.LOWERINGS)  # spike-softmax and token-encoding ops (spikec/core/streaming.py)


class LoweringError(Exception):
    """A node of the graph has no NIR lowering."""


def lower_to_nir(
    gm: torch.fx.GraphModule,
    example_ids: torch.Tensor,
    metadata: dict[str, Any] | None = None,
    positions: int | None = None,
) -> nir.NIRGraph:
    """Lower ``gm`` (canonical, converted or not) to a NIR graph.

    example_ids: ``[batch, P]`` token ids used once to propagate feature sizes (two
    positions suffice); positions: the ``Input`` node's declared length (default P).
    Guarantees: every call_function node becomes NIR node(s); edges follow the data
    flow, with the inputs of ``add`` in argument order (the simulator sums fan-in in
    edge order, so results match bit for bit).
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
            if node.target is ops.rate_readout_affine:
                w, b = _array(args["weight"]), _array(args["bias"])
                nodes[name] = nir.Affine(weight=w, bias=b if b is not None else np.zeros(w.shape[0], np.float32))
                readout = f"{name}_readout"
                nodes[readout] = ir.SpikecRateReadout(features=w.shape[0])
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
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(metadata or {}), type_check=False)
    return graph
