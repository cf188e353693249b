"""Operation counts of a spiking network against its ANN.

Counting is a pure function of a NIR graph and what the reference simulator measured on
it (the spike count of every spiking node, ``SimResult.spike_counts``) for a known
workload (sequences of ``positions`` tokens). It returns one :class:`LayerCount` per
layer operation, with the operations the ANN and the SNN spend on it *per token*.
Energy models (:mod:`spikec.analysis.energy_models`) turn counts into picojoules.
docs/energy.md states every rule and constant with its source; in short:

* ``Affine`` fed by spiking neurons (spike-driven): the ANN does ``in * out`` MACs; the
  SNN does ``(sum of |spikes| of its input neurons) * out`` synaptic operations (a graded
  spike of value k counts k times), plus its readout: one scale by ``1/T`` and one bias
  add per output and window (rate code), or, for the few-spike code's Horner readout, a
  shift and an add per output and step (both priced as additions: a shift costs less) and
  one bias add per output and window.
* Spiking neurons: ``neurons * T`` neuron updates per token (SNN only).
* Everything else is real-valued in both networks and costs the same in both: attention
  scores and weighted sums as MACs (causal: ``P (P+1) / 2`` query-key pairs per head and
  sequence), softmax/norm/activation/rotary arithmetic as a few ops per element
  (``OPS_PER_ELEMENT``), residual junctions as additions, the embedding as a lookup (no
  MAC; memory reads only). A real-valued op given a time series runs at every step (x T).
* Memory (charged only by models with non-zero memory constants): the ANN reads every
  weight once per token and each layer's input and output once; the SNN reads one weight
  per synaptic operation, reads and writes each output accumulator once per step in which
  it receives spikes (at most ``out * T``), and each membrane once per neuron update.

The attention cores' rules are in :mod:`spikec.analysis.attention_counts`; the records
counting returns in :mod:`spikec.analysis.operations`.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

import nir

from spikec.backends.simulator import SimResult
from spikec.core import ir
from spikec.core.errors import UsageError
from spikec.core.graph import topology
from spikec.core.ir import SpikecSpikeAttention, SpikecSpikeDecode, SpikecSSA

from .attention_counts import ann_attention_counts, spike_attention_counts, ssa_counts
from .operations import OPS_PER_ELEMENT, LayerCount, OpCounts, OperationCounts, Workload

READOUTS = (ir.SpikecRateReadout, ir.SpikecBinaryReadout)
"""Nodes that turn a time series into a window value (mean over T; Horner sum with weights 2^-k)."""

ATTENTION_CORES = (ir.SpikecAttention, SpikecSpikeAttention, SpikecSSA)
"""Nodes that compute causal self-attention (softmax, spike-softmax, spiking self-attention);
the ANN's counterpart of each is softmax attention of the same shape."""


def combine_results(results: Iterable[SimResult]) -> SimResult:
    """One ``SimResult`` for several runs of the same graph at the same T (e.g. the chunks of
    a text): spike counts summed, firing rates averaged (exact for equal-sized runs, which
    is how spikec cuts text). Outputs and spike trains are not kept."""
    results = list(results)
    if not results:
        raise UsageError("no simulation results to combine")
    steps = {r.timesteps for r in results}
    if len(steps) != 1:
        raise UsageError(f"cannot combine simulations run at different T ({sorted(steps)})")
    counts: dict[str, int] = {}
    rates: dict[str, float] = {}
    operations: dict[str, dict[str, float]] = {}
    for r in results:
        for name, c in r.spike_counts.items():
            counts[name] = counts.get(name, 0) + int(c)
        for name, rate in r.firing_rates.items():
            rates[name] = rates.get(name, 0.0) + float(rate) / len(results)
        for name, kinds in r.operations.items():
            mine = operations.setdefault(name, {})
            for kind, n in kinds.items():
                mine[kind] = mine.get(kind, 0.0) + float(n)
    return SimResult(outputs={}, spike_counts=counts, firing_rates=rates, timesteps=results[0].timesteps,
                     operations=operations)


def _features(node: nir.NIRNode) -> int:
    """Output features of a node (last axis of its output type)."""
    if isinstance(node, (nir.Affine, nir.Linear)):
        return int(node.weight.shape[0])
    if isinstance(node, (ir.SpikecSignedIF, ir.SpikecFewSpike)):
        return int(node.threshold.shape[0])
    if isinstance(node, ir.SpikecEmbedding):
        return int(node.weight.shape[1])
    if isinstance(node, (ir.SpikecLayerNorm, ir.SpikecRMSNorm)):
        return int(node.weight.shape[0])
    if isinstance(node, ATTENTION_CORES):
        return int(node.num_heads * node.head_dim)
    if hasattr(node, "features"):
        return int(node.features)
    shape = (node.output_type or {}).get("output")
    return int(math.prod(int(s) for s in shape)) if shape is not None and len(shape) else 0


def _block(name: str) -> str:
    m = re.match(r"^h_(\d+)_", name)
    return f"h.{m.group(1)}" if m else name


class _Graph:
    """Predecessors, successors and value domains (series or real) of a NIR graph."""

    def __init__(self, graph: nir.NIRGraph):
        self.nodes = graph.nodes
        topo = topology(graph, feed_forward_hint="operations are counted on feed-forward graphs only")
        self.preds, self.succs, self.order = topo.preds, topo.succs, topo.order
        self.series: dict[str, bool] = {}  # does the node's output carry a time series
        for n in self.order:
            node = self.nodes[n]
            if ir.is_spiking(node):
                self.series[n] = True
            elif isinstance(node, (nir.Input, *READOUTS)):
                self.series[n] = False
            else:
                self.series[n] = self.input_series(n)

    def input_series(self, name: str) -> bool:
        return any(self.series[p] for p in self.preds[name])

    def spiking(self, name: str) -> bool:
        return ir.is_spiking(self.nodes[name])

    def fused_readout(self, name: str) -> str | None:
        """The readout an affine feeds alone (the simulator fuses the pair), if any."""
        succ = self.succs[name]
        if len(succ) == 1 and isinstance(self.nodes[succ[0]], READOUTS) and self.preds[succ[0]] == [name]:
            return succ[0]
        return None

    def attention_nodes(self) -> set[str]:
        """The attention blocks: every attention core, the affine(s) producing its input (through
        readouts and junctions) and the affine(s) its output drives (through neurons), with the
        neurons and readouts between them."""
        marked: set[str] = set()
        for core in (n for n, node in self.nodes.items() if isinstance(node, ATTENTION_CORES)):
            marked.add(core)
            stack = list(self.preds[core])
            while stack:  # upstream to the qkv projection
                n = stack.pop()
                node = self.nodes[n]
                if isinstance(node, (nir.Affine, nir.Linear)):
                    marked.add(n)
                    marked.update(p for p in self.preds[n] if self.spiking(p))
                elif isinstance(node, READOUTS) or self.spiking(n):  # readouts, q|k|v neurons
                    marked.add(n)
                    stack.extend(self.preds[n])
            stack = list(self.succs[core])
            while stack:  # downstream to the output projection
                n = stack.pop()
                node = self.nodes[n]
                if isinstance(node, (nir.Affine, nir.Linear)):
                    marked.add(n)
                    if (r := self.fused_readout(n)) is not None:
                        marked.add(r)
                elif ir.is_spiking(node):
                    marked.add(n)
                    stack.extend(self.succs[n])
        return marked


def _affine(
    g: _Graph, name: str, counts: Mapping[str, int], w: Workload
) -> tuple[str, tuple[str, ...], OpCounts, OpCounts, int]:
    """Kind, member nodes, ANN and SNN counts and neurons of an affine with its neurons and readout."""
    node = g.nodes[name]
    n_out, n_in = (int(s) for s in node.weight.shape)
    bias = isinstance(node, nir.Affine)
    ann = OpCounts(macs=n_in * n_out, adds=n_out if bias else 0, weight_reads=n_in * n_out + (n_out if bias else 0),
                   activation_accesses=n_in + n_out)
    spiking_inputs = [p for p in g.preds[name] if g.spiking(p)]
    members = [name]
    neurons = 0
    if spiking_inputs and len(spiking_inputs) == len(g.preds[name]):
        # Spike-driven: every input spike (by value) reaches each of the n_out targets.
        in_spikes = sum(counts.get(p, 0) for p in spiking_inputs) / w.tokens
        synops = in_spikes * n_out
        # Each synaptic op reads its weight; each output's accumulator is read and written at
        # most once per step (the spikes of a step are gathered first) and once per synop.
        touched = min(synops, n_out * w.timesteps)
        snn = OpCounts(synops=synops, weight_reads=synops, state_accesses=2 * touched)
        for p in spiking_inputs:  # neurons that feed only this affine belong to it (not attention cores)
            if g.succs[p] == [name] and not isinstance(g.nodes[p], ATTENTION_CORES):
                members.insert(0, p)
                neurons += _features(g.nodes[p])
                snn = snn + _neuron_counts(g, p, counts, w)
        readout = g.fused_readout(name)
        if readout is not None:
            members.append(readout)
            steps = max((_code_steps(g.nodes[p], w.timesteps) for p in spiking_inputs), default=w.timesteps)
            snn = snn + _readout_counts(g.nodes[readout], n_out, bias, w, steps)
        return "affine", tuple(members), ann, snn, neurons
    # Real-valued input: not spike-driven; on a time series it runs at every step.
    steps = w.timesteps if g.input_series(name) else 1
    return "affine-real", tuple(members), ann, ann.scaled(steps), 0


def _code_steps(node: nir.NIRNode, timesteps: int) -> int:
    """Steps a neuron layer's code uses: a few-spike layer's own ``steps`` (``--budget``), else T."""
    return int(getattr(node, "steps", 0) or 0) or timesteps if isinstance(node, ir.SpikecFewSpike) else timesteps


def _readout_counts(readout: nir.NIRNode, n_out: int, bias: bool, w: Workload, code_steps: int) -> OpCounts:
    """The readout of a spike-driven affine per token: the rate code's ``1/T`` scale per output,
    or the Horner readout's shift and add per output and step of its input's code (``acc = 2 acc
    + y_k``, both counted as additions, the accumulator read and written each step; a shorter
    code's silent steps are one shift at the end, not counted; radix 3 triples, ``acc = 3 acc + y_k``
    = a shift and two adds, three additions); the bias add either way."""
    b = n_out if bias else 0
    if isinstance(readout, ir.SpikecBinaryReadout):
        steps = n_out * code_steps
        per_step = 3 if getattr(readout, "radix", 2) == 3 else 2
        return OpCounts(adds=per_step * steps + b, weight_reads=b, state_accesses=2 * steps + n_out,
                        activation_accesses=n_out)
    return OpCounts(ops=OPS_PER_ELEMENT["readout"] * n_out, adds=b, weight_reads=b, state_accesses=n_out,
                    activation_accesses=n_out)


def _neuron_counts(g: _Graph, name: str, counts: Mapping[str, int], w: Workload) -> OpCounts:
    updates = _features(g.nodes[name]) * _code_steps(g.nodes[name], w.timesteps)
    return OpCounts(neuron_updates=updates, spikes=counts.get(name, 0) / w.tokens, state_accesses=2 * updates)


def _real(g: _Graph, name: str) -> tuple[str, OpCounts]:
    """Kind and ANN counts per token of a real-valued node."""
    node = g.nodes[name]
    f = _features(node)
    if isinstance(node, ir.SpikecEmbedding):
        positions = int(node.position_weight.shape[0]) > 0
        return "embedding", OpCounts(adds=f if positions else 0, weight_reads=2 * f if positions else f,
                                     activation_accesses=f)
    if isinstance(node, ir.SpikecLayerNorm):
        return "norm", OpCounts(ops=OPS_PER_ELEMENT["layer_norm"] * f, weight_reads=2 * f, activation_accesses=2 * f)
    if isinstance(node, ir.SpikecRMSNorm):
        return "norm", OpCounts(ops=OPS_PER_ELEMENT["rms_norm"] * f, weight_reads=f, activation_accesses=2 * f)
    if isinstance(node, ir.SpikecActivation):
        return "activation", OpCounts(ops=OPS_PER_ELEMENT.get(str(node.activation), 4) * f, activation_accesses=2 * f)
    if isinstance(node, ir.SpikecGatedActivation):
        per = OPS_PER_ELEMENT.get(str(node.activation), 4) + OPS_PER_ELEMENT["gate"]
        return "activation", OpCounts(ops=per * f, activation_accesses=3 * f)
    if isinstance(node, ir.SpikecAdd):
        k = len(g.preds[name])
        return "residual", OpCounts(adds=(k - 1) * f, activation_accesses=(k + 1) * f if k > 1 else 0)
    if isinstance(node, READOUTS):  # a readout not fused with an affine: sum over T, scale
        return "readout", OpCounts()
    if isinstance(node, SpikecSpikeDecode):  # the ANN has no such synapses; the SNN's are counted apart
        return "decode", OpCounts()
    return "uncounted", OpCounts()


def count_operations(graph: nir.NIRGraph, result: SimResult, positions: int, sequences: int = 1) -> OperationCounts:
    """Per-layer operation counts, per token, of ``graph`` against its ANN.

    result: what the simulator measured on ``sequences`` sequences of ``positions`` tokens
    (its ``spike_counts`` summed over all of them; see :func:`combine_results`) at
    ``result.timesteps``. Layers come in the graph's topological order. Pure: reads the
    graph's parameters' shapes and the spike counts, nothing else.
    """
    if positions < 1 or sequences < 1:
        raise UsageError(f"positions and sequences must be at least 1, got {positions} and {sequences}")
    w = Workload(sequences=int(sequences), positions=int(positions), timesteps=int(result.timesteps))
    g = _Graph(graph)
    attention = g.attention_nodes()
    counts = result.spike_counts
    done: set[str] = set()
    layers: list[LayerCount] = []

    def rate(members: Iterable[str], neurons: int) -> float | None:
        spikes = sum(counts.get(m, 0) for m in members if g.spiking(m))
        return spikes / (neurons * w.tokens * w.timesteps) if neurons else None

    # affines first claim their neurons and readouts; the rest are counted in graph order
    claimed: dict[str, tuple] = {}
    for name in g.order:
        if isinstance(g.nodes[name], (nir.Affine, nir.Linear)):
            kind, members, ann, snn, neurons = _affine(g, name, counts, w)
            claimed[name] = (kind, members, ann, snn, neurons)
            done.update(members)
    for name in g.order:
        node = g.nodes[name]
        if isinstance(node, (nir.Input, nir.Output)):
            continue
        if name in claimed:
            kind, members, ann, snn, neurons = claimed[name]
        elif name in done:
            continue
        elif ir.is_spiking(node) and not isinstance(node, ATTENTION_CORES):
            kind, members, ann, neurons = "neurons", (name,), OpCounts(), _features(node)
            snn = _neuron_counts(g, name, counts, w)
        else:
            members, neurons = (name,), 0
            if isinstance(node, ATTENTION_CORES):
                kind, ann = "attention", ann_attention_counts(node, w)
            else:
                kind, ann = _real(g, name)
            if isinstance(node, SpikecSSA):
                snn, neurons = ssa_counts(name, node, result, w, g.input_series(name))
            elif isinstance(node, SpikecSpikeAttention):
                snn, neurons = spike_attention_counts(name, node, result, w)
            elif isinstance(node, SpikecSpikeDecode):  # one synapse per channel: an accumulate per spike
                synops = sum(counts.get(p, 0) for p in g.preds[name]) / w.tokens
                snn = OpCounts(synops=synops, weight_reads=synops, activation_accesses=_features(node) * w.timesteps)
            elif isinstance(node, READOUTS) and g.input_series(name):
                f = _features(node)
                snn = OpCounts(adds=f * w.timesteps, ops=f, activation_accesses=f * (w.timesteps + 1))
            else:
                snn = ann.scaled(w.timesteps if g.input_series(name) else 1)
        layers.append(LayerCount(
            name=name, kind=kind, block=_block(name), attention=any(m in attention for m in members),
            nodes=tuple(members), neurons=neurons, ann=ann, snn=snn,
            firing_rate=(snn.spikes / (neurons * w.timesteps) if neurons else None)
            if isinstance(node, ATTENTION_CORES) else rate(members, neurons),
        ))
    return OperationCounts(layers=layers, workload=w)

