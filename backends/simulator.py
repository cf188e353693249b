"""The reference simulator: runs a ``nir.NIRGraph`` (standard nodes and spikec's
extension nodes) on CPU with torch, one node at a time.

Semantics
---------
* Order: nodes run in topological order of the edges (``graphlib``). A node's input
  is the sum of its incoming edges (NIR fan-in), added left to right in the order the
  edges appear in ``graph.edges`` (so a ``SpikecAdd`` with edges ``a`` then ``b``
  computes ``a + b``, as the torch.fx module does). Dots in node names are ordinary
  characters; nested ``NIRGraph`` nodes are rejected.
* Values: an edge carries either a *real* tensor without a time axis (e.g.
  ``[batch, positions, features]``; token ids ``[batch, positions]`` int64 pass
  unchanged into ``SpikecEmbedding``) or a *time series* ``[T, ...]``. Input nodes
  take the given tensors as real values, or as time series when
  ``inputs_are_series=True``. Adding a real value and a time series broadcasts the
  real value over the T steps.
* Stateless standard nodes (Affine, Linear, Scale, Flatten, Threshold) apply to what
  they get; on a time series Affine/Linear do one matmul over all steps. Flatten's
  ``start_dim``/``end_dim`` count in the node's ``input_type`` (without batch and
  time axes). Threshold turns a real input into a constant spike train.
* Neurons (IF, LIF, LI, I, CubaLIF, CubaLI, SpikecSignedIF) run T steps with dt = 1 as
  NIR defines them (``spikec.core.neurons``); a real input is a constant current for
  all T steps. Membranes (and synaptic currents) start at 0, not at ``v_reset``;
  ``SpikecSignedIF`` starts at ``v_init * threshold``. CubaLIF/CubaLI update the
  synaptic current first, ``I += (-I + w_in * S) / tau_syn``, then the membrane with
  the new current. Their output is a time series ``[T, ...]`` (spikes 0/1 in the
  membrane's dtype; int8 for SpikecSignedIF).
* Extension nodes call the very functions of ``spikec.core.ops`` the converted fx
  module calls, so results agree bit for bit. An ``Affine`` (or ``Linear``) whose input
  is a time series and whose only consumer is a ``SpikecRateReadout`` fed by nothing
  else is computed as ``ops.rate_readout_affine(spikes, W, b)`` (mean over T of the
  affine) and the readout passes the real result on. A ``SpikecRateReadout`` of a real
  value is that value. Real-valued extension ops given a time series apply at every
  step independently.
* Memory: a node's value is freed as soon as all its consumers have run; only Output
  values and, with ``record=True``, the spike trains of spiking nodes are kept.
* Deterministic: no randomness anywhere.
"""

from __future__ import annotations

import graphlib
import sys
from dataclasses import dataclass, field
from typing import Callable

import nir
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from spikec.core import ir, neurons, ops
from spikec.core.errors import InputError, NIRFormatError, UnsupportedError, UsageError


@dataclass
class SimResult:
    """What one simulation produced.

    outputs: value of every Output node by name (real or ``[T, ...]``).
    spike_counts: total ``|spikes|`` per spiking node over batch, neurons and steps.
    firing_rates: mean ``|spikes|`` per neuron per step, per spiking node.
    spikes: full spike trains ``[T, ...]`` per spiking node (only with ``record=True``).
    """

    outputs: dict[str, torch.Tensor]
    spike_counts: dict[str, int]
    firing_rates: dict[str, float]
    timesteps: int
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def output(self) -> torch.Tensor:
        """The value of the graph's only Output node."""
        if len(self.outputs) != 1:
            raise UsageError(
                f"the graph has {len(self.outputs)} outputs ({', '.join(self.outputs)}), not one",
                hint="pick one from SimResult.outputs",
            )
        return next(iter(self.outputs.values()))


@dataclass
class _Value:
    data: torch.Tensor
    series: bool  # True: [T, ...] time series; False: real value, constant over the window


class _Context:
    """Per-call state: timesteps and the parameters converted to tensors, by node name."""

    def __init__(self, timesteps: int):
        self.timesteps = timesteps
        self._params: dict[tuple[str, str], torch.Tensor] = {}

    def param(self, name: str, node: nir.NIRNode, field_name: str) -> torch.Tensor:
        key = (name, field_name)
        if key not in self._params:
            array = np.asarray(getattr(node, field_name))
            if not array.flags.writeable:
                array = array.copy()
            self._params[key] = torch.from_numpy(np.ascontiguousarray(array))
        return self._params[key]


Kernel = Callable[[_Context, str, nir.NIRNode, _Value], _Value]

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _floating(x: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """Spike trains are integers; neurons and real ops compute in floating point."""
    if x.is_floating_point():
        return x
    return x.to(like.dtype if like is not None and like.is_floating_point() else torch.float32)


def _run_neuron(x: _Value, timesteps: int, step: Callable, state: torch.Tensor) -> torch.Tensor:
    """Drive ``step(current, state) -> (out, state)`` for T steps; a real input is a
    constant current. Returns the outputs ``[T, ...]``."""
    out: torch.Tensor | None = None
    for t in range(timesteps):
        current = x.data[t] if x.series else x.data
        y, state = step(current, state)
        if out is None:
            out = torch.empty((timesteps, *y.shape), dtype=y.dtype)
        out[t] = y
    assert out is not None
    return out


def _real_op(x: _Value, fn: Callable[[torch.Tensor], torch.Tensor]) -> _Value:
    """Apply a real-valued op over the last axis; on a time series that is every step."""
    return _Value(fn(_floating(x.data)), x.series)


def _matmul(x: _Value, weight: torch.Tensor, bias: torch.Tensor | None) -> _Value:
    if weight.ndim != 2:
        raise UnsupportedError(f"affine weight of shape {list(weight.shape)} is not [out, in]")
    data = x.data if x.data.dtype == weight.dtype else x.data.to(weight.dtype)
    if bias is not None and bias.dtype != weight.dtype:
        bias = bias.to(weight.dtype)
    if not x.series:
        return _Value(ops.affine(data, weight, bias), False)
    y = F.linear(data.reshape(-1, data.shape[-1]), weight, bias)  # one matmul over all steps
    return _Value(y.reshape(*data.shape[:-1], weight.shape[0]), True)


# ---------------------------------------------------------------------------
# kernels of standard nodes
# ---------------------------------------------------------------------------


def _affine(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    return _matmul(x, ctx.param(name, node, "weight"), ctx.param(name, node, "bias"))


def _linear(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    return _matmul(x, ctx.param(name, node, "weight"), None)


def _scale(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    s = ctx.param(name, node, "scale")
    return _Value(_floating(x.data, s) * s, x.series)


def _flatten(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    in_type = (node.input_type or {}).get("input")
    sample_dims = len(in_type) if in_type is not None else x.data.ndim - (2 if x.series else 1)
    lead = x.data.ndim - sample_dims
    start = int(node.start_dim) % sample_dims
    end = int(node.end_dim) % sample_dims
    return _Value(torch.flatten(x.data, lead + start, lead + end), x.series)


def _threshold(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    thr = ctx.param(name, node, "threshold")
    data = _floating(x.data, thr)
    spikes = (data > thr).to(torch.promote_types(data.dtype, thr.dtype))
    if not x.series:
        spikes = spikes.expand(ctx.timesteps, *spikes.shape)
    return _Value(spikes, True)


def _if(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    r, thr, reset = (ctx.param(name, node, f) for f in ("r", "v_threshold", "v_reset"))
    x = _Value(_floating(x.data, r), x.series)
    step = lambda i, v: neurons.nir_if_step(i, v, r, thr, reset)  # noqa: E731
    return _Value(_run_neuron(x, ctx.timesteps, step, torch.zeros((), dtype=x.data.dtype)), True)


def _lif(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    tau, r, leak, thr, reset = (ctx.param(name, node, f) for f in ("tau", "r", "v_leak", "v_threshold", "v_reset"))
    x = _Value(_floating(x.data, r), x.series)
    step = lambda i, v: neurons.nir_lif_step(i, v, tau, r, leak, thr, reset)  # noqa: E731
    return _Value(_run_neuron(x, ctx.timesteps, step, torch.zeros((), dtype=x.data.dtype)), True)


def _li(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    tau, r, leak = (ctx.param(name, node, f) for f in ("tau", "r", "v_leak"))
    x = _Value(_floating(x.data, r), x.series)
    step = lambda i, v: neurons.nir_li_step(i, v, tau, r, leak)  # noqa: E731
    return _Value(_run_neuron(x, ctx.timesteps, step, torch.zeros((), dtype=x.data.dtype)), True)


def _integrator(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    r = ctx.param(name, node, "r")
    x = _Value(_floating(x.data, r), x.series)
    step = lambda i, v: neurons.nir_i_step(i, v, r)  # noqa: E731
    return _Value(_run_neuron(x, ctx.timesteps, step, torch.zeros((), dtype=x.data.dtype)), True)


def _cuba(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    """CubaLIF / CubaLI: the synaptic current is an LI with r = w_in and v_leak = 0."""
    tau_syn, tau_mem, r, leak, w_in = (
        ctx.param(name, node, f) for f in ("tau_syn", "tau_mem", "r", "v_leak", "w_in")
    )
    spiking = isinstance(node, nir.CubaLIF)
    if spiking:
        thr, reset = ctx.param(name, node, "v_threshold"), ctx.param(name, node, "v_reset")
    x = _Value(_floating(x.data, r), x.series)
    zero = torch.zeros((), dtype=x.data.dtype)

    def step(s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        i_syn, v = state
        i_syn, _ = neurons.nir_li_step(s, i_syn, tau_syn, w_in, zero)
        if spiking:
            out, v = neurons.nir_lif_step(i_syn, v, tau_mem, r, leak, thr, reset)
        else:
            out, v = neurons.nir_li_step(i_syn, v, tau_mem, r, leak)
        return out, (i_syn, v)

    return _Value(_run_neuron(x, ctx.timesteps, step, (zero, zero)), True)


def _passthrough(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    return x


# ---------------------------------------------------------------------------
# kernels of spikec extension nodes
# ---------------------------------------------------------------------------


def _embedding(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    if x.series:
        raise UnsupportedError(f"SpikecEmbedding {name!r} got a time series; it takes token ids [batch, positions]")
    weight = ctx.param(name, node, "weight")
    position = ctx.param(name, node, "position_weight")
    return _Value(ops.embedding(x.data, weight, position if position.shape[0] > 0 else None), False)


def _layer_norm(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    w, b = ctx.param(name, node, "weight"), ctx.param(name, node, "bias")
    return _real_op(x, lambda d: ops.layer_norm(d, w, b, float(node.eps)))


def _rms_norm(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    w = ctx.param(name, node, "weight")
    return _real_op(x, lambda d: ops.rms_norm(d, w, float(node.eps)))


def _attention(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    def fn(d: torch.Tensor) -> torch.Tensor:
        return ops.attention(d, int(node.num_heads), int(node.num_kv_heads), int(node.head_dim),
                             float(node.rope_theta), float(node.scale))

    data = _floating(x.data)
    if not x.series:
        return _Value(fn(data), False)
    t, b = data.shape[:2]  # every step on its own: fold T into the batch
    return _Value(fn(data.reshape(t * b, *data.shape[2:])).reshape(t, b, *data.shape[2:-1], -1), True)


def _activation(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    return _real_op(x, lambda d: ops.activation(d, str(node.activation)))


def _gated_activation(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    return _real_op(x, lambda d: ops.gated_activation(d, str(node.activation)))


def _signed_if(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    thr = ctx.param(name, node, "threshold")
    max_spikes, signed, v_init = int(node.max_spikes), bool(node.signed), float(node.v_init)
    if not x.series:
        return _Value(ops.signed_if(x.data, thr, ctx.timesteps, max_spikes, signed, v_init), True)
    # A time-varying current: the same neuron, stepped on each step's current.
    theta = thr.float()
    step = lambda i, v: neurons.signed_if_step(i.float() / theta, v, max_spikes, signed)  # noqa: E731
    v0 = torch.full((), v_init, dtype=torch.float32)
    return _Value(_run_neuron(x, ctx.timesteps, step, v0).to(neurons.SPIKE_DTYPE), True)


def _rate_readout(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    if not x.series:
        return x  # a real value is constant over the window: its mean is itself
    if x.data.is_floating_point():
        return _Value(x.data.mean(0), False)
    return _Value(x.data.sum(0, dtype=torch.float32) / x.data.shape[0], False)


KERNELS: dict[type, Kernel] = {
    nir.Affine: _affine,
    nir.Linear: _linear,
    nir.Scale: _scale,
    nir.Flatten: _flatten,
    nir.Threshold: _threshold,
    nir.IF: _if,
    nir.LIF: _lif,
    nir.LI: _li,
    nir.I: _integrator,
    nir.CubaLIF: _cuba,
    nir.CubaLI: _cuba,
    nir.Output: _passthrough,
    ir.SpikecEmbedding: _embedding,
    ir.SpikecLayerNorm: _layer_norm,
    ir.SpikecRMSNorm: _rms_norm,
    ir.SpikecAttention: _attention,
    ir.SpikecActivation: _activation,
    ir.SpikecGatedActivation: _gated_activation,
    ir.SpikecAdd: _passthrough,
    ir.SpikecSignedIF: _signed_if,
    ir.SpikecRateReadout: _rate_readout,
}
"""Node class -> kernel. Input nodes are handled by ``simulate`` itself."""

SPIKING_TYPES = (nir.IF, nir.LIF, nir.CubaLIF, nir.Threshold, ir.SpikecSignedIF)
"""Nodes whose output is a spike train (counted in spike_counts and firing_rates)."""


def _kernel_for(name: str, node: nir.NIRNode) -> Kernel:
    for cls in type(node).__mro__:
        if cls in KERNELS:
            return KERNELS[cls]
    kind = type(node).__name__
    if isinstance(node, nir.NIRGraph):
        raise UnsupportedError(f"node {name!r} is a nested NIRGraph, which the reference simulator cannot run",
                               hint="flatten the subgraph into the parent graph")
    if isinstance(node, nir.Delay):
        raise UnsupportedError(f"node {name!r} is a Delay, which the reference simulator does not support",
                               hint="remove the delay or run the graph on another NIR backend")
    supported = ", ".join(sorted(c.__name__ for c in KERNELS) + ["Input"])
    raise UnsupportedError(f"node {name!r} has type {kind!r}, which the reference simulator cannot run",
                           hint=f"supported types: {supported}")


# ---------------------------------------------------------------------------
# the simulation loop
# ---------------------------------------------------------------------------


def _fan_in(values: list[_Value]) -> _Value:
    """Sum of the incoming values, left to right in edge order."""
    acc = values[0]
    for v in values[1:]:
        a, b = acc.data, v.data
        if not a.is_floating_point() and not b.is_floating_point():
            a = a.to(torch.int32)  # spike trains are int8: keep sums from wrapping
        acc = _Value(a + b, acc.series or v.series)
    return acc


def _bind_inputs(
    graph: nir.NIRGraph, inputs: torch.Tensor | dict[str, torch.Tensor], timesteps: int, series: bool
) -> dict[str, _Value]:
    names = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if not names:
        raise NIRFormatError("the graph has no Input node", hint="add a nir.Input node feeding the first layer")
    if isinstance(inputs, torch.Tensor):
        if len(names) != 1:
            raise InputError(f"the graph has {len(names)} Input nodes ({', '.join(names)}); one tensor was given",
                             hint="pass a dict of tensors by Input node name")
        inputs = {names[0]: inputs}
    missing = [n for n in names if n not in inputs]
    unknown = [n for n in inputs if n not in names]
    if missing or unknown:
        raise InputError(
            f"inputs do not match the graph's Input nodes (missing: {missing or 'none'}, unknown: {unknown or 'none'})",
            hint=f"give one tensor per Input node: {', '.join(names)}",
        )
    bound = {}
    for name in names:
        tensor = inputs[name]
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"input {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if series and (tensor.ndim == 0 or tensor.shape[0] != timesteps):
            raise InputError(f"input {name!r} of shape {list(tensor.shape)} is not a time series of {timesteps} steps",
                             hint="time series inputs are [T, batch, ...]")
        bound[name] = _Value(tensor, series)
    return bound


def _schedule(graph: nir.NIRGraph) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """Topological order, predecessors per edge (in edge order) and consumers per edge."""
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    succs: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for src, dst in graph.edges:
        for end in (src, dst):
            if end not in graph.nodes:
                raise NIRFormatError(f"edge ({src!r}, {dst!r}) names unknown node {end!r}",
                                     hint="every edge must connect two nodes of the graph")
        preds[dst].append(src)
        succs[src].append(dst)
    sorter = graphlib.TopologicalSorter({n: preds[n] for n in graph.nodes})
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as e:
        cycle = " -> ".join(e.args[1])
        raise NIRFormatError(f"the graph has a cycle ({cycle})",
                             hint="the reference simulator runs feed-forward graphs only") from None
    return order, preds, succs


def _fused_readout(name: str, node: nir.NIRNode, graph: nir.NIRGraph, preds: dict, succs: dict) -> bool:
    """Whether ``name`` is an Affine/Linear feeding exactly one readout that has no other input."""
    if not isinstance(node, (nir.Affine, nir.Linear)) or len(succs[name]) != 1:
        return False
    (consumer,) = succs[name]
    return isinstance(graph.nodes[consumer], ir.SpikecRateReadout) and preds[consumer] == [name]


def _count(spikes: torch.Tensor) -> int:
    if spikes.is_floating_point():
        return int(round(spikes.abs().sum(dtype=torch.float64).item()))
    return int(spikes.abs().sum(dtype=torch.int64).item())


@torch.no_grad()
def simulate(
    graph: nir.NIRGraph,
    inputs: torch.Tensor | dict[str, torch.Tensor],
    timesteps: int,
    *,
    record: bool = False,
    progress: bool = False,
    inputs_are_series: bool = False,
) -> SimResult:
    """Run ``graph`` for ``timesteps`` steps (see the module docstring for semantics).

    inputs: a tensor for the graph's single Input node, or a dict by Input node name;
    real values (no time axis) unless ``inputs_are_series`` (then ``[T, ...]``).
    record: keep the full spike train of every spiking node in ``SimResult.spikes``.
    progress: show a progress bar over nodes on stderr.
    """
    if int(timesteps) < 1:
        raise UsageError(f"timesteps must be at least 1, got {timesteps}")
    timesteps = int(timesteps)
    order, preds, succs = _schedule(graph)
    values = _bind_inputs(graph, inputs, timesteps, inputs_are_series)
    if not any(isinstance(n, nir.Output) for n in graph.nodes.values()):
        raise NIRFormatError("the graph has no Output node", hint="add a nir.Output node after the last layer")
    kernels = {n: _kernel_for(n, graph.nodes[n]) for n in order if not isinstance(graph.nodes[n], nir.Input)}
    remaining = {n: len(succs[n]) for n in graph.nodes}  # consumers (per edge) yet to run
    ctx = _Context(timesteps)
    outputs: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    rates: dict[str, float] = {}
    recorded: dict[str, torch.Tensor] = {}

    for name in tqdm(order, desc="simulate", unit="node", file=sys.stderr, disable=not progress):
        node = graph.nodes[name]
        if not isinstance(node, nir.Input):
            if not preds[name]:
                raise NIRFormatError(f"node {name!r} ({type(node).__name__}) has no incoming edge",
                                     hint="connect it or remove it")
            x = _fan_in([values[p] for p in preds[name]])
            if x.series and _fused_readout(name, node, graph, preds, succs):
                weight = ctx.param(name, node, "weight")
                bias = ctx.param(name, node, "bias") if isinstance(node, nir.Affine) else None
                values[name] = _Value(ops.rate_readout_affine(x.data, weight, bias), False)
            else:
                values[name] = kernels[name](ctx, name, node, x)
            del x
            for p in preds[name]:
                remaining[p] -= 1
                if remaining[p] == 0 and not isinstance(graph.nodes[p], nir.Output):
                    del values[p]
        value = values[name]
        if isinstance(node, SPIKING_TYPES) and value.series:
            counts[name] = _count(value.data)
            rates[name] = counts[name] / max(value.data.numel(), 1)
            if record:
                recorded[name] = value.data
        if isinstance(node, nir.Output):
            outputs[name] = value.data
        if remaining[name] == 0 and not isinstance(node, nir.Output):
            del values[name]
    return SimResult(outputs=outputs, spike_counts=counts, firing_rates=rates, timesteps=timesteps, spikes=recorded)
