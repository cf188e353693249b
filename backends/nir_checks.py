"""What a NIR node and graph must satisfy to be run, checked as ``nirio.read`` reads a file:
values and shapes of each node against each other, spikec extension nodes' fields, feature
counts across edges and no cycle in a spikec graph. Every failure is a ``NIRFormatError`` made
by the caller's ``error(message, hint)``, which names the file (docs/errors.md lists the checks).
"""

from __future__ import annotations

import dataclasses
import graphlib
import math
from typing import Callable

import nir
import numpy as np

from spikec.core.errors import NIRFormatError
from spikec.core.few_spike import RADICES, check_radix, max_steps
from spikec.core.ir import (
    SpikecActivation,
    SpikecAdd,
    SpikecAttention,
    SpikecBinaryReadout,
    SpikecEmbedding,
    SpikecFewSpike,
    SpikecGatedActivation,
    SpikecLayerNorm,
    SpikecNode,
    SpikecRMSNorm,
    SpikecRateReadout,
    SpikecSignedIF,
)

ErrorFactory = Callable[[str, "str | None"], NIRFormatError]
"""``error(message, hint)``: the exception naming the file being read."""

CORRUPT_HINT = "the file is damaged or was not written by a NIR tool; write it again"
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")  # spikec.core.ops.activation
NEURONS = (nir.IF, nir.LIF, nir.LI, nir.I, nir.CubaLIF, nir.CubaLI)
"""Standard neuron nodes: all their parameter arrays have one shape (the neurons')."""
NOT_PARAMETERS = ("input_type", "output_type", "metadata")
MAX_COUNT = 2**31 - 1  # feature and head counts


def check_node(node: nir.NIRNode, name: str, kind: str, error: ErrorFactory) -> None:
    """Values and shapes of one node, against each other (see docs/errors.md); ``error(message,
    hint)`` makes the exception that names the file."""
    def bad(problem: str) -> NIRFormatError:
        return error(f"node {name!r} ({kind}) {problem}", CORRUPT_HINT)

    for field in dataclasses.fields(node):
        if field.name in NOT_PARAMETERS:
            continue
        value = getattr(node, field.name, None)
        if (isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)
                and not np.isfinite(value).all()) or (isinstance(value, float) and not math.isfinite(value)):
            raise error(f"node {name!r} ({kind}) has NaN or Inf in {field.name!r}",
                        "the model that was exported holds non-finite parameters")
    if isinstance(node, (nir.Affine, nir.Linear)):
        weight = np.asarray(node.weight)
        if weight.ndim != 2 or not np.issubdtype(weight.dtype, np.floating):
            raise bad(f"has weight {list(weight.shape)} of {weight.dtype}; expected a 2-D float [out, in]")
        if isinstance(node, nir.Affine):
            bias = np.asarray(node.bias)
            if bias.shape != weight.shape[:1] or not np.issubdtype(bias.dtype, np.floating):
                raise error(
                    f"node {name!r} (Affine) has weight {list(weight.shape)} and bias {list(bias.shape)}; "
                    "expected weight [out, in] and bias [out] (floats)", CORRUPT_HINT)
    elif isinstance(node, NEURONS):
        shapes = {f.name: np.shape(getattr(node, f.name)) for f in dataclasses.fields(node)
                  if f.name not in NOT_PARAMETERS and isinstance(getattr(node, f.name, None), np.ndarray)}
        if len({s for s in shapes.values() if s != ()}) > 1:
            raise bad("has parameters of different shapes: "
                      + ", ".join(f"{k} {list(v)}" for k, v in shapes.items()))
    elif isinstance(node, (nir.Input, nir.Output)):
        types = node.input_type if isinstance(node, nir.Input) else node.output_type
        for shape in types.values():
            shape = np.asarray(shape)
            if shape.ndim != 1 or (shape.size and (shape.dtype.kind not in "iu" or (shape < 0).any())):
                raise bad(f"has shape {shape.tolist()!r}; expected a list of non-negative integers")
    elif isinstance(node, SpikecNode):
        check_extension(node, bad)

def check_extension(node: SpikecNode, bad: Callable[[str], NIRFormatError]) -> None:
    """The fields of one spikec extension node; ``bad(problem)`` makes the exception."""
    def float_array(field: str, ndim: int) -> np.ndarray:
        value = np.asarray(getattr(node, field))
        if value.ndim != ndim or not np.issubdtype(value.dtype, np.floating):
            raise bad(f"has {field!r} {list(value.shape)} of {value.dtype}; expected a {ndim}-D float array")
        return value

    if isinstance(node, SpikecSignedIF):
        threshold = float_array("threshold", 1)
        if not (threshold > 0).all():
            raise bad("has a threshold <= 0; thresholds must be positive")
        if not 1 <= node.max_spikes <= 127:
            raise bad(f"has max_spikes {node.max_spikes}; expected 1..127 (spikes are int8)")
        if np.ndim(node.v_init) and np.shape(node.v_init) != threshold.shape:
            raise bad(f"has v_init {list(np.shape(node.v_init))} and threshold {list(threshold.shape)}; "
                      "expected one float or one value per neuron")
    elif isinstance(node, SpikecFewSpike):
        threshold = float_array("threshold", 1)
        if not (threshold > 0).all() or not np.isfinite(threshold).all():
            raise bad("has a threshold <= 0 or not finite; thresholds must be positive")
        if not isinstance(node.signed_digits, (bool, np.bool_)):
            raise bad(f"has signed_digits {node.signed_digits!r}; expected a bool")
        try:
            check_radix(node.radix, bool(node.signed_digits))
        except ValueError as e:
            raise bad(f"has radix {node.radix} (signed_digits {node.signed_digits}): {e}") from None
        top = max_steps(node.radix)
        if not 0 <= node.steps <= top:
            raise bad(f"has steps {node.steps}; expected 0 (the whole window) or 1..{top}")
    elif isinstance(node, SpikecAttention):
        for field in ("num_heads", "num_kv_heads", "head_dim"):
            if not 1 <= getattr(node, field) <= MAX_COUNT:
                raise bad(f"has {field} {getattr(node, field)}; expected a positive count")
        if node.num_heads % node.num_kv_heads:
            raise bad(f"has num_heads {node.num_heads} not divisible by num_kv_heads {node.num_kv_heads}")
        if node.rope_theta < 0:
            raise bad(f"has rope_theta {node.rope_theta}; expected 0 (no rotary embedding) or positive")
        if not 0 <= node.rotary_dim <= node.head_dim or node.rotary_dim % 2:
            raise bad(f"has rotary_dim {node.rotary_dim}; expected an even count up to head_dim {node.head_dim}")
        if node.window < 0:
            raise bad(f"has window {node.window}; expected 0 (no sliding window) or positive")
        if not isinstance(node.causal, (bool, np.bool_)):
            raise bad(f"has causal {node.causal!r}; expected a bool")
    elif isinstance(node, SpikecEmbedding):
        weight, positions = float_array("weight", 2), float_array("position_weight", 2)
        if weight.shape[0] < 1 or positions.shape[1] != weight.shape[1]:
            raise bad(f"has weight {list(weight.shape)} and position_weight {list(positions.shape)}; "
                      "expected [vocab >= 1, d] and [positions, d]")
    elif isinstance(node, (SpikecLayerNorm, SpikecRMSNorm)):
        weight = float_array("weight", 1)
        if isinstance(node, SpikecLayerNorm) and float_array("bias", 1).shape != weight.shape:
            raise bad(f"has weight {list(weight.shape)} and bias {list(np.shape(node.bias))}; expected equal")
        if node.eps < 0:
            raise bad(f"has eps {node.eps}; expected >= 0")
    elif isinstance(node, (SpikecActivation, SpikecGatedActivation, SpikecAdd, SpikecRateReadout, SpikecBinaryReadout)):
        if not 1 <= node.features <= MAX_COUNT:
            raise bad(f"has features {node.features}; expected a positive count below 2**31")
        if isinstance(node, SpikecBinaryReadout) and node.radix not in RADICES:
            raise bad(f"has radix {node.radix}; expected 2 or 3")
        activation = getattr(node, "activation", None)
        if activation is not None and activation not in ACTIVATIONS:
            raise bad(f"has unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")

def check_edges(nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]], where: str,
                error: ErrorFactory) -> None:
    """Feature counts across every edge at an Affine/Linear end, and no cycles in a
    spikec graph (its nodes run in topological order once per window)."""
    for src, dst in edges:
        if not isinstance(nodes[src], (nir.Affine, nir.Linear)) and not isinstance(
                nodes[dst], (nir.Affine, nir.Linear)):
            continue
        n_out, n_in = feature_count(nodes[src], "out"), feature_count(nodes[dst], "in")
        if n_out is not None and n_in is not None and n_out != n_in:
            raise error(f"edge ({src!r}, {dst!r}){where} joins {n_out} output features to {n_in} inputs",
                        CORRUPT_HINT)
    if any(isinstance(n, SpikecNode) for n in nodes.values()):
        sorter = graphlib.TopologicalSorter({name: set() for name in nodes})
        for src, dst in edges:
            sorter.add(dst, src)
        try:
            sorter.prepare()
        except graphlib.CycleError as e:
            cycle = " -> ".join(map(repr, e.args[1]))
            raise error(f"edges{where} form a cycle: {cycle}",
                        "spikec graphs are feed-forward within a window; write the file again") from None


def feature_count(node: nir.NIRNode, side: str) -> int | None:
    """A node's input (``side="in"``) or output (``"out"``) feature count where it is certain
    (Affine/Linear weights, extension nodes' types, 1-D standard neuron parameters), else None."""
    if isinstance(node, (nir.Affine, nir.Linear)):
        return int(np.shape(node.weight)[0 if side == "out" else 1])
    if isinstance(node, SpikecNode) and not (isinstance(node, SpikecEmbedding) and side == "in"):
        types = node.input_type if side == "in" else node.output_type
        (shape,) = types.values()
        return int(np.asarray(shape).reshape(-1)[-1])
    if isinstance(node, NEURONS):
        shape = np.shape(getattr(node, "r", ()))
        return int(shape[0]) if len(shape) == 1 else None
    return None
