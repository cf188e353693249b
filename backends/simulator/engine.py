"""The reference simulator's engine: runs a ``nir.NIRGraph`` node by node in topological order,
with the kernel table of every node family (semantics: the package docstring).

The kernel table is assembled here, explicitly, from the families' own tables; the streaming
family's wrappers of the shared Affine/Linear, RateReadout and Output kernels are applied here too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import nir
import torch
from tqdm import tqdm

from spikec.core import ir
from spikec.core.errors import InputError, NIRFormatError, UnsupportedError, UsageError
from spikec.core.graph import topology
from spikec.core.ir import is_spiking
from spikec.core.lazy import is_lazy, loaded

from . import few_spike, rate, ssa, standard, streaming
from .values import Context, Kernel, Value

MODES = ("fast", "reference")
SPARSE_POLICIES = ("auto", "never", "always", "inexact")


@dataclass
class SimResult:
    """What one simulation produced.

    outputs: value of every Output node by name (real or ``[T, ...]``).
    spike_counts: total ``|spikes|`` per spiking node over batch, neurons and steps.
    firing_rates: mean ``|spikes|`` per neuron per step, per spiking node.
    spikes: full spike trains ``[T, ...]`` per spiking node (only with ``record=True``).
    operations: what kernels counted inside a node, by node name then kind, summed over
    batch and steps (e.g. the synaptic operations of spiking attention's spike products;
    the kinds are listed where the kernel is, and ``spikec/analysis/attention_counts.py`` reads them).
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


KERNELS: dict[type, Kernel] = {
    **standard.KERNELS, **rate.KERNELS, **ssa.KERNELS, **streaming.KERNELS, **few_spike.KERNELS,
    # the shared kernels that streaming values reach, wrapped to take them (``streaming``)
    nir.Affine: streaming.spike_driven_affine(standard.KERNELS[nir.Affine]),
    nir.Linear: streaming.spike_driven_affine(standard.KERNELS[nir.Linear]),
    ir.SpikecRateReadout: streaming.stream_readout(rate.KERNELS[ir.SpikecRateReadout]),
    nir.Output: streaming.stream_output(standard.KERNELS[nir.Output]),
}
"""Node class -> kernel, for every node family. Input nodes are handled by ``Simulator.run`` itself."""

FUSED_READOUTS: dict[type, Callable] = {ir.SpikecRateReadout: standard.readout_affine, **few_spike.FUSED_READOUTS}
"""Readout class -> kernel of an Affine/Linear fused with the readout it feeds alone, called
``(ctx, name, affine, x, readout)``."""

COUNTING_NEURONS: dict[type, type] = {ir.SpikecSignedIF: ir.SpikecRateReadout,
                                      ir.SpikecFewSpike: ir.SpikecBinaryReadout}
"""Neuron class -> the readout whose fused affine takes its (weighted) spike counts instead of a
train in fast mode (spike counts for the mean, ``sum_k 2^-k s_k`` for the Horner readout)."""


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


def _fan_in(values: list[Value]) -> Value:
    """Sum of the incoming values, left to right in edge order."""
    if len(values) == 1:
        return values[0]
    acc = Value(values[0].dense(), values[0].series)
    for v in values[1:]:
        a, b = acc.data, v.dense()
        if not a.is_floating_point() and not b.is_floating_point():
            a = a.to(torch.int32)  # spike trains are int8: keep sums from wrapping
        acc = Value(a + b, acc.series or v.series)
    return acc


def _bind_inputs(
    graph: nir.NIRGraph, inputs: torch.Tensor | dict[str, torch.Tensor], timesteps: int, series: bool,
    device: torch.device,
) -> dict[str, Value]:
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
        bound[name] = Value(tensor.to(device), series)
    return bound


def _fused_readout(name: str, node: nir.NIRNode, graph: nir.NIRGraph, preds: dict, succs: dict) -> bool:
    """Whether ``name`` is an Affine/Linear feeding exactly one readout that has no other input."""
    if not isinstance(node, (nir.Affine, nir.Linear)) or len(succs[name]) != 1:
        return False
    (consumer,) = succs[name]
    return type(graph.nodes[consumer]) in FUSED_READOUTS and preds[consumer] == [name]


def _count_only(name: str, graph: nir.NIRGraph, fused: dict, preds: dict, succs: dict) -> bool:
    """Whether ``name`` is a counting neuron whose every consumer is a fused readout affine fed by
    it alone, reading out with the neuron's own readout (``COUNTING_NEURONS``)."""
    readout = COUNTING_NEURONS.get(type(graph.nodes[name]))
    return (readout is not None and bool(succs[name])
            and all(c in fused and preds[c] == [name] and type(graph.nodes[succs[c][0]]) is readout
                    for c in succs[name]))


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
    sparse: event-driven matmuls of spike trains in fast mode: ``"auto"`` (default: below
    ``native_loops.SPARSE_CROSSOVER`` spike density), ``"always"`` (at any density), both
    only where the event sum provably equals the dense product bit for bit; ``"never"``;
    ``"inexact"`` (opt-in: below the crossover density even where float sums in the event
    order differ from the dense product's in the last bits, which can flip spikes).
    keep_parameters: keep each node's parameters (as tensors on ``device``) and, for a graph
    read with ``nirio.read(path, lazy=True)``, its arrays once read, for the next runs (the
    default: about the memory of the weights); False forgets them once the node has run, so
    that with a lazy graph memory holds one node's arrays at a time (each run reads the file
    again). The same values either way.
    """

    def __init__(self, graph: nir.NIRGraph, *, device: str | torch.device | None = None, mode: str = "fast",
                 sparse: str = "auto", keep_parameters: bool = True):
        if mode not in MODES:
            raise UsageError(f"unknown simulator mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
        if sparse not in SPARSE_POLICIES:
            raise UsageError(f"unknown sparse policy {sparse!r}", hint=f"use one of {', '.join(SPARSE_POLICIES)}")
        self.graph = graph
        topo = topology(graph, feed_forward_hint="the reference simulator runs feed-forward graphs only")
        self.order, self.preds, self.succs = topo.order, topo.preds, topo.succs
        self.kernels = {n: _kernel_for(n, graph.nodes[n]) for n in self.order
                        if not isinstance(graph.nodes[n], nir.Input)}
        self.fused = {n: FUSED_READOUTS[type(graph.nodes[self.succs[n][0]])] for n in self.order
                      if _fused_readout(n, graph.nodes[n], graph, self.preds, self.succs)}
        self.ctx = Context(resolve_device(device), mode, sparse)
        self.keep_parameters = keep_parameters
        self.loaded: dict[str, nir.NIRNode] = {}  # lazy nodes read whole, kept with keep_parameters
        if self.ctx.fast:
            self.ctx.count_only = {n for n in self.order
                                   if _count_only(n, graph, self.fused, self.preds, self.succs)}

    def _reusable(self, name: str, x: Value, values: dict[str, Value], remaining: dict[str, int],
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

    def node(self, name: str) -> nir.NIRNode:
        """Node ``name`` with its arrays (read from the file when the graph is lazy)."""
        node = self.graph.nodes[name]
        if not is_lazy(node):
            return node
        if name in self.loaded:
            return self.loaded[name]
        node = loaded(node)
        if self.keep_parameters:
            self.loaded[name] = node
        return node

    @torch.no_grad()
    def run(
        self,
        inputs: torch.Tensor | dict[str, torch.Tensor],
        timesteps: int,
        *,
        record: bool = False,
        progress: bool = False,
        inputs_are_series: bool = False,
        record_positions: int | None = None,
    ) -> SimResult:
        """Run the graph for ``timesteps`` steps; arguments as for :func:`simulate`."""
        if int(timesteps) < 1:
            raise UsageError(f"timesteps must be at least 1, got {timesteps}")
        timesteps = int(timesteps)
        graph, succs, ctx = self.graph, self.succs, self.ctx
        values = _bind_inputs(graph, inputs, timesteps, inputs_are_series, ctx.device)
        if not any(isinstance(n, nir.Output) for n in graph.nodes.values()):
            raise NIRFormatError("the graph has no Output node", hint="add a nir.Output node after the last layer")
        remaining = {n: len(succs[n]) for n in graph.nodes}  # consumers (per edge) yet to run
        ctx.timesteps, ctx.recording = timesteps, record
        result = SimResult(outputs={}, spike_counts={}, firing_rates={}, timesteps=timesteps)
        self._run_nodes(self.order, values, remaining, result, progress, record_positions)
        return result

    def run_many(self, inputs: list[torch.Tensor | dict[str, torch.Tensor]], timesteps: int) -> Iterator[SimResult]:
        """``run`` on each of ``inputs`` in turn (real values), one result at a time, in order
        (the interface a pipeline over ranks shares, ``pipeline.PipelineHead``)."""
        for x in inputs:
            yield self.run(x, timesteps)

    @torch.no_grad()
    def run_stage(
        self,
        nodes: list[str],
        incoming: dict[str, Value],
        keep: set[str],
        timesteps: int,
        inputs: torch.Tensor | dict[str, torch.Tensor] | None = None,
    ) -> tuple[SimResult, dict[str, Value]]:
        """Run only ``nodes`` (a run of ``self.order``, e.g. one stage of a pipeline) for
        ``timesteps`` steps, with the same kernels and figures as ``run``.

        incoming: the values of the nodes before the run that ``nodes`` read, by node name.
        keep: names (in the run or in ``incoming``) whose values later nodes need: returned,
        never overwritten. inputs: the graph's inputs as for ``run`` (real values), when the
        run holds the Input nodes. Returns the run's figures (outputs of the Output nodes in
        it, spike counts, firing rates, operations; no spike trains) and the kept values."""
        timesteps = int(timesteps)
        graph, ctx = self.graph, self.ctx
        inside = set(nodes)
        values = dict(incoming)
        if inputs is not None:
            values.update(_bind_inputs(graph, inputs, timesteps, False, ctx.device))
        remaining = {n: sum(s in inside for s in self.succs[n]) + (n in keep) for n in [*values, *nodes]}
        ctx.timesteps, ctx.recording = timesteps, False
        result = SimResult(outputs={}, spike_counts={}, firing_rates={}, timesteps=timesteps)
        self._run_nodes(nodes, values, remaining, result, progress=False)
        return result, {n: values[n] for n in keep}

    def _run_nodes(self, order: list[str], values: dict[str, Value], remaining: dict[str, int],
                   result: SimResult, progress: bool, record_positions: int | None = None) -> None:
        """Run the nodes of ``order`` in turn, reading and freeing ``values`` (``remaining``:
        consumers per value yet to run) and filling ``result``'s figures."""
        graph, preds, ctx = self.graph, self.preds, self.ctx
        timesteps, record = ctx.timesteps, ctx.recording
        outputs, counts, rates = result.outputs, result.spike_counts, result.firing_rates
        recorded, operations = result.spikes, result.operations

        for name in tqdm(order, desc="simulate", unit="node", file=sys.stderr, disable=not progress):
            node = self.node(name)
            if not isinstance(node, nir.Input):
                if not preds[name]:
                    raise NIRFormatError(f"node {name!r} ({type(node).__name__}) has no incoming edge",
                                         hint="connect it or remove it")
                x = _fan_in([values[p] for p in preds[name]])
                if x.series and name in self.fused:
                    values[name] = self.fused[name](ctx, name, node, x, self.node(self.succs[name][0]))
                else:
                    if x.count:  # only readout affines take counts (see _count_only)
                        raise AssertionError(f"spike counts reached {name!r}, which is not a readout affine")
                    if x.logical is not None and not isinstance(node, (nir.Affine, nir.Linear)):
                        x = Value(x.dense(), x.series)
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
            if is_spiking(node) and value.series:
                counts[name] = value.total if value.total is not None else _count(value.data)
                neurons = value.data[0].numel() if value.count and isinstance(node, ir.SpikecFewSpike) \
                    else value.data.numel()  # few-spike counts are [readout groups, ...]
                neurons_steps = neurons * (timesteps if value.count else 1)
                rates[name] = counts[name] / max(neurons_steps, 1)
                if record:
                    recorded[name] = _kept(value.train if value.count else value.dense(), record_positions)
            for suffix, (count, steps, train) in getattr(value, "inner", {}).items():  # neurons inside a node
                counts[name + suffix], rates[name + suffix] = count, count / max(steps, 1)
                if record and train is not None:
                    recorded[name + suffix] = _kept(train, record_positions)
            if value.operations:
                operations[name] = dict(value.operations)
            if isinstance(node, nir.Output):
                outputs[name] = value.dense()
            if remaining[name] == 0 and not isinstance(node, nir.Output):
                del values[name]
            if not self.keep_parameters:
                ctx.forget(name)
            del node


def _kept(train: torch.Tensor, positions: int | None) -> torch.Tensor:
    """A recorded train, or a copy of its first ``positions`` along axis 2 (the positions of
    ``[T, batch, positions, ...]``), so that the whole train can be freed."""
    if positions is None or train.dim() < 3 or train.shape[2] <= positions:
        return train
    return train[:, :, :positions].clone()


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
    record_positions: int | None = None,
    keep_parameters: bool = True,
) -> SimResult:
    """Run ``graph`` for ``timesteps`` steps (see the module docstring for semantics).

    inputs: a tensor for the graph's single Input node, or a dict by Input node name;
    real values (no time axis) unless ``inputs_are_series`` (then ``[T, ...]``).
    record: keep the full spike train of every spiking node in ``SimResult.spikes``.
    record_positions: with ``record``, keep only each train's first positions (axis 2 of
    ``[T, batch, positions, ...]``): what a raster plot needs, without the memory of them all.
    progress: show a progress bar over nodes on stderr.
    device, mode, sparse, keep_parameters: see :class:`Simulator` (outputs stay on ``device``).
    To run one graph many times, build a ``Simulator`` once and call its ``run``.
    """
    if int(timesteps) < 1:
        raise UsageError(f"timesteps must be at least 1, got {timesteps}")
    return Simulator(graph, device=device, mode=mode, sparse=sparse, keep_parameters=keep_parameters).run(
        inputs, timesteps, record=record, progress=progress, inputs_are_series=inputs_are_series,
        record_positions=record_positions)
