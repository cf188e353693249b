"""The reference simulator: runs a ``nir.NIRGraph`` (standard nodes and spikec's
extension nodes) with torch, one node at a time, on CPU or a CUDA device.

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

Execution modes (``mode``)
--------------------------
``"reference"`` is the plain-torch definition: every neuron steps through T torch
iterations and every spike train is materialised. ``"fast"`` (the default) computes
the same spikes, bit for bit, and the same values (see docs/simulator.md):

* A ``SpikecSignedIF`` driven by a real current whose every consumer is a fused
  Affine -> RateReadout pair emits only its spike *counts* (sum over the T steps): the
  pair needs no more (``rate_readout_affine`` is ``W (sum_t s_t / T) + b``), so no
  ``[T, ...]`` tensor exists. The neuron loop runs fused over T in a compiled kernel
  (``spikec.backends.kernels``; torch in-place ops on CUDA or without a C compiler).
* NIR ``IF`` runs in a fused compiled kernel and its 0/1 spikes are kept as int8 (4x
  smaller than float32); they become the membrane's dtype wherever a value is read out.
* An Affine/Linear on a spike train (int8, or a float time series whose values are all
  small integers, e.g. spikes given as the graph's input) multiplies it as events (each
  spike adds a row of ``W.T``) when its spike density is below
  ``kernels.SPARSE_CROSSOVER`` (``sparse="auto"``; ``"never"`` / ``"always"`` force the
  choice). Event sums run in another order than a dense GEMM: equal up to float
  rounding, not bit for bit (exactly equal when the partial sums are exact).
* Spike counts for ``spike_counts`` come from the kernels (no extra pass); a neuron whose
  input no one else needs writes its counts over that input (no extra allocation).
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

from . import kernels

MODES = ("fast", "reference")
SPARSE_POLICIES = ("auto", "never", "always")


@dataclass
class SimResult:
    """What one simulation produced.

    outputs: value of every Output node by name (real or ``[T, ...]``).
    spike_counts: total ``|spikes|`` per spiking node over batch, neurons and steps.
    firing_rates: mean ``|spikes|`` per neuron per step, per spiking node.
    spikes: full spike trains ``[T, ...]`` per spiking node (only with ``record=True``).
    operations: what kernels counted inside a node, by node name then kind, summed over
    batch and steps (e.g. the synaptic operations of spiking attention's spike products;
    the kinds are listed where the kernel is, and ``backends/energy.py`` reads them).
    """

    outputs: dict[str, torch.Tensor]
    spike_counts: dict[str, int]
    firing_rates: dict[str, float]
    timesteps: int
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)
    operations: dict[str, dict[str, float]] = field(default_factory=dict)

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
    # fast mode only:
    count: bool = False  # data is sum_t of an integer time series (consumed by readout affines only)
    logical: torch.dtype | None = None  # data holds int8 spikes standing for this dtype's 0/1 values
    total: int | None = None  # sum of |spikes| over all neurons and steps, when a kernel knew it
    train: torch.Tensor | None = None  # with count: the spike train itself, kept only when recording
    operations: dict[str, float] | None = None  # counted inside the kernel (SimResult.operations)

    def dense(self) -> torch.Tensor:
        """The value in its logical dtype (compact int8 spikes widened)."""
        return self.data if self.logical is None else self.data.to(self.logical)


class _Context:
    """Per-simulator state: device, mode, the parameters converted to tensors by node name
    (kept across runs) and, per run, the timesteps."""

    def __init__(self, device: torch.device, mode: str, sparse: str):
        self.device = device
        self.fast = mode == "fast"
        self.sparse = sparse
        self.timesteps = 0
        self.count_only: set[str] = set()  # SignedIF nodes whose spikes only feed readout affines
        self.recording = False
        self.input_reusable = False  # set per node: no one else holds the input's storage
        self._params: dict[tuple[str, str], torch.Tensor] = {}

    def param(self, name: str, node: nir.NIRNode, field_name: str) -> torch.Tensor:
        key = (name, field_name)
        if key not in self._params:
            array = np.asarray(getattr(node, field_name))
            if not array.flags.writeable:
                array = array.copy()
            self._params[key] = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        return self._params[key]

    def double(self, name: str, node: nir.NIRNode, field_name: str) -> torch.Tensor:
        """A float32 parameter widened to float64 (exactly), for readouts (``ops.readout_from_counts``)."""
        key = (name, field_name + ":f64")
        if key not in self._params:
            self._params[key] = torch.from_numpy(np.asarray(getattr(node, field_name), np.float64)).to(self.device)
        return self._params[key]

    def packed(self, name: str, node: nir.NIRNode) -> torch.Tensor:
        """The Affine/Linear weight in ``kernels.event_matmul``'s layout (packed once)."""
        key = (name, "weight:packed")
        if key not in self._params:
            self._params[key] = kernels.pack_weight(self.param(name, node, "weight"))
        return self._params[key]

    def events(self, x: _Value) -> _Value | None:
        """``x`` as an int8 spike train to multiply as events, or None for a dense product
        (see ``sparse``). A float time series whose values are all small integers (spikes
        handed over as floats) counts as a spike train."""
        if not self.fast or self.sparse == "never" or x.data.device.type != "cpu":
            return None
        if x.data.dtype != torch.int8:
            if not x.data.is_floating_point():
                return None
            converted = kernels.as_spikes(x.data)
            if converted is None:
                return None
            x = _Value(converted[0], True, total=converted[1])  # total: the non-zeros, for the density
        if self.sparse == "always":
            return x
        numel = max(x.data.numel(), 1)
        active = x.total if x.total is not None else kernels.count_nonzero(x.data)
        return x if active / numel < kernels.SPARSE_CROSSOVER else None


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
            out = torch.empty((timesteps, *y.shape), dtype=y.dtype, device=y.device)
        out[t] = y
    assert out is not None
    return out


def _real_op(x: _Value, fn: Callable[[torch.Tensor], torch.Tensor]) -> _Value:
    """Apply a real-valued op over the last axis; on a time series that is every step."""
    return _Value(fn(_floating(x.data)), x.series)


def _matmul(x: _Value, weight: torch.Tensor, bias: torch.Tensor | None) -> _Value:
    if weight.ndim != 2:
        raise UnsupportedError(f"affine weight of shape {list(weight.shape)} is not [out, in]")
    data = x.dense()
    data = data if data.dtype == weight.dtype else data.to(weight.dtype)
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
    bias = ctx.param(name, node, "bias") if isinstance(node, nir.Affine) else None
    weight = ctx.param(name, node, "weight")
    spikes = ctx.events(x) if x.series else None
    if spikes is not None:
        y = kernels.event_matmul(spikes.data, ctx.packed(name, node), weight.shape[0], bias)
        if y is not None:
            return _Value(y, True)
    return _matmul(x, weight, bias)


def _readout_affine(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    """An Affine/Linear fused with the RateReadout it feeds alone: ``W mean_t(s_t) + b``,
    from the spike train or (fast mode) from its counts, computed in float64 and rounded
    once to float32 as ``ops.readout_from_counts`` defines it."""
    weight = ctx.double(name, node, "weight")
    bias = ctx.double(name, node, "bias") if isinstance(node, nir.Affine) else None
    if x.count:  # ops.rate_readout_affine after its sum over T
        return _Value(ops.readout_from_counts(x.data, weight, bias, ctx.timesteps).float(), False)
    return _Value(ops.rate_readout_affine(x.data, weight, bias).float(), False)


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
    if ctx.fast:
        fused = kernels.nir_if(x.data, x.series, ctx.timesteps, r, thr, reset)
        if fused is not None:
            spikes, total = fused
            return _Value(spikes, True, logical=x.data.dtype, total=total)
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
    max_spikes, signed = int(node.max_spikes), bool(node.signed)
    # Per-neuron initial membranes (an array, FAS calibration) take the kernels' torch path.
    v_init = ctx.param(name, node, "v_init") if np.ndim(node.v_init) else float(node.v_init)
    if not x.series and ctx.fast:
        count_only = name in ctx.count_only and not ctx.recording
        count, spikes, total = kernels.signed_if_constant(x.data, thr, ctx.timesteps, max_spikes, signed, v_init,
                                                          train=not count_only, inplace=ctx.input_reusable)
        if count_only:
            return _Value(count, True, count=True, total=total)
        if name in ctx.count_only:  # recording: pass the counts on, keep the train for the record
            return _Value(count, True, count=True, total=total, train=spikes)
        return _Value(spikes, True, total=total)
    if not x.series:
        return _Value(ops.signed_if(x.data, thr, ctx.timesteps, max_spikes, signed, v_init), True)
    # A time-varying current: the same neuron, stepped on each step's current.
    theta = thr.float()
    step = lambda i, v: neurons.signed_if_step(i.float() / theta, v, max_spikes, signed)  # noqa: E731
    v0 = v_init.float() if isinstance(v_init, torch.Tensor) else torch.full((), v_init, dtype=torch.float32)
    return _Value(_run_neuron(x, ctx.timesteps, step, v0).to(neurons.SPIKE_DTYPE), True)


def _rate_readout(ctx: _Context, name: str, node: nir.NIRNode, x: _Value) -> _Value:
    if not x.series:
        return x  # a real value is constant over the window: its mean is itself
    if x.data.is_floating_point():
        return _Value(x.data.mean(0), False)
    return _Value(x.data.sum(0, dtype=torch.float32) / x.data.shape[0], False)


KERNELS: dict[type, Kernel] = {
    nir.Affine: _affine,
    nir.Linear: _affine,
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
    if len(values) == 1:
        return values[0]
    acc = _Value(values[0].dense(), values[0].series)
    for v in values[1:]:
        a, b = acc.data, v.dense()
        if not a.is_floating_point() and not b.is_floating_point():
            a = a.to(torch.int32)  # spike trains are int8: keep sums from wrapping
        acc = _Value(a + b, acc.series or v.series)
    return acc


def _bind_inputs(
    graph: nir.NIRGraph, inputs: torch.Tensor | dict[str, torch.Tensor], timesteps: int, series: bool,
    device: torch.device,
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
        bound[name] = _Value(tensor.to(device), series)
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


def _count_only(name: str, node: nir.NIRNode, fused: set[str], preds: dict, succs: dict) -> bool:
    """Whether ``name`` is a SignedIF whose every consumer is a fused readout affine fed by it alone."""
    return (isinstance(node, ir.SpikecSignedIF) and bool(succs[name])
            and all(c in fused and preds[c] == [name] for c in succs[name]))


def _count(spikes: torch.Tensor) -> int:
    if spikes.is_floating_point():
        return int(round(spikes.abs().sum(dtype=torch.float64).item()))
    return int(spikes.abs().sum(dtype=torch.int64).item())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch.device; ``UsageError`` when unknown or absent."""
    try:
        dev = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"unknown device {device!r}", hint="use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {str(dev)!r} was asked for but torch sees no CUDA GPU",
                         hint="run on a machine with a GPU and a CUDA build of torch, or use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {str(dev)!r} is not supported", hint="use cpu or cuda")
    return dev


class Simulator:
    """A graph prepared for repeated runs: schedule, kernels and parameters (converted to
    tensors on ``device`` once, then reused by every ``run``).

    device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``.
    mode: ``"fast"`` (default: fused and compiled kernels, identical spikes) or
    ``"reference"`` (plain torch, every spike train materialised); see the module docstring.
    sparse: ``"auto"`` (default), ``"never"`` or ``"always"``: event-driven matmuls of
    spike trains in fast mode.
    """

    def __init__(self, graph: nir.NIRGraph, *, device: str | torch.device | None = None, mode: str = "fast",
                 sparse: str = "auto"):
        if mode not in MODES:
            raise UsageError(f"unknown simulator mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
        if sparse not in SPARSE_POLICIES:
            raise UsageError(f"unknown sparse policy {sparse!r}", hint=f"use one of {', '.join(SPARSE_POLICIES)}")
        self.graph = graph
        self.order, self.preds, self.succs = _schedule(graph)
        self.kernels = {n: _kernel_for(n, graph.nodes[n]) for n in self.order
                        if not isinstance(graph.nodes[n], nir.Input)}
        self.fused = {n for n in self.order if _fused_readout(n, graph.nodes[n], graph, self.preds, self.succs)}
        self.ctx = _Context(resolve_device(device), mode, sparse)
        if self.ctx.fast:
            self.ctx.count_only = {n for n in self.order
                                   if _count_only(n, graph.nodes[n], self.fused, self.preds, self.succs)}

    def _reusable(self, name: str, x: _Value, values: dict[str, _Value], remaining: dict[str, int],
                  held: list[torch.Tensor]) -> bool:
        """Whether ``name`` may overwrite its input: no later node, caller or result needs it.
        A fan-in of several edges is a new tensor; a single edge's value must be at its last
        consumer, come from neither an Input nor an Output node, and share storage with no
        other live value, output or recorded train (views)."""
        preds = self.preds[name]
        if len(preds) > 1:
            return True
        (p,) = preds
        if remaining[p] != 1 or isinstance(self.graph.nodes[p], (nir.Input, nir.Output)):
            return False
        storage = x.data.untyped_storage().data_ptr()
        others = [v.data for k, v in values.items() if k != p] + held
        return not any(t.untyped_storage().data_ptr() == storage for t in others)

    @torch.no_grad()
    def run(
        self,
        inputs: torch.Tensor | dict[str, torch.Tensor],
        timesteps: int,
        *,
        record: bool = False,
        progress: bool = False,
        inputs_are_series: bool = False,
    ) -> SimResult:
        """Run the graph for ``timesteps`` steps; arguments as for :func:`simulate`."""
        if int(timesteps) < 1:
            raise UsageError(f"timesteps must be at least 1, got {timesteps}")
        timesteps = int(timesteps)
        graph, preds, succs, ctx = self.graph, self.preds, self.succs, self.ctx
        values = _bind_inputs(graph, inputs, timesteps, inputs_are_series, ctx.device)
        if not any(isinstance(n, nir.Output) for n in graph.nodes.values()):
            raise NIRFormatError("the graph has no Output node", hint="add a nir.Output node after the last layer")
        remaining = {n: len(succs[n]) for n in graph.nodes}  # consumers (per edge) yet to run
        ctx.timesteps, ctx.recording = timesteps, record
        outputs: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        rates: dict[str, float] = {}
        recorded: dict[str, torch.Tensor] = {}
        operations: dict[str, dict[str, float]] = {}

        for name in tqdm(self.order, desc="simulate", unit="node", file=sys.stderr, disable=not progress):
            node = graph.nodes[name]
            if not isinstance(node, nir.Input):
                if not preds[name]:
                    raise NIRFormatError(f"node {name!r} ({type(node).__name__}) has no incoming edge",
                                         hint="connect it or remove it")
                x = _fan_in([values[p] for p in preds[name]])
                if x.series and name in self.fused:
                    values[name] = _readout_affine(ctx, name, node, x)
                else:
                    if x.count:  # only readout affines take counts (see _count_only)
                        raise AssertionError(f"spike counts reached {name!r}, which is not a readout affine")
                    if x.logical is not None and not isinstance(node, (nir.Affine, nir.Linear)):
                        x = _Value(x.dense(), x.series)
                    ctx.input_reusable = self._reusable(name, x, values, remaining,
                                                        [*outputs.values(), *recorded.values()])
                    values[name] = self.kernels[name](ctx, name, node, x)
                    ctx.input_reusable = False
                del x
                for p in preds[name]:
                    remaining[p] -= 1
                    if remaining[p] == 0 and not isinstance(graph.nodes[p], nir.Output):
                        del values[p]
            value = values[name]
            if isinstance(node, SPIKING_TYPES) and value.series:
                counts[name] = value.total if value.total is not None else _count(value.data)
                neurons_steps = value.data.numel() * (timesteps if value.count else 1)
                rates[name] = counts[name] / max(neurons_steps, 1)
                if record:
                    recorded[name] = value.train if value.count else value.dense()
            for suffix, (count, steps, train) in getattr(value, "inner", {}).items():  # neurons inside a node
                counts[name + suffix], rates[name + suffix] = count, count / max(steps, 1)
                if record and train is not None:
                    recorded[name + suffix] = train
            if value.operations:
                operations[name] = dict(value.operations)
            if isinstance(node, nir.Output):
                outputs[name] = value.dense()
            if remaining[name] == 0 and not isinstance(node, nir.Output):
                del values[name]
        return SimResult(outputs=outputs, spike_counts=counts, firing_rates=rates, timesteps=timesteps,
                         spikes=recorded, operations=operations)


@torch.no_grad()
def simulate(
    graph: nir.NIRGraph,
    inputs: torch.Tensor | dict[str, torch.Tensor],
    timesteps: int,
    *,
    record: bool = False,
    progress: bool = False,
    inputs_are_series: bool = False,
    device: str | torch.device | None = None,
    mode: str = "fast",
    sparse: str = "auto",
) -> SimResult:
    """Run ``graph`` for ``timesteps`` steps (see the module docstring for semantics).

    inputs: a tensor for the graph's single Input node, or a dict by Input node name;
    real values (no time axis) unless ``inputs_are_series`` (then ``[T, ...]``).
    record: keep the full spike train of every spiking node in ``SimResult.spikes``.
    progress: show a progress bar over nodes on stderr.
    device, mode, sparse: see :class:`Simulator` (outputs stay on ``device``).
    To run one graph many times, build a ``Simulator`` once and call its ``run``.
    """
    if int(timesteps) < 1:
        raise UsageError(f"timesteps must be at least 1, got {timesteps}")
    return Simulator(graph, device=device, mode=mode, sparse=sparse).run(
        inputs, timesteps, record=record, progress=progress, inputs_are_series=inputs_are_series)


from . import ssa_kernels as _ssa_kernels  # noqa: E402,F401  (registers the SpikecSSA kernel)
from . import streaming_kernels as _streaming_kernels  # noqa: E402,F401  (spike-softmax/token kernels)
