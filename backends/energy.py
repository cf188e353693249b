"""Operation counts and energy estimates of a spiking network against its ANN.

Counting is a pure function of a NIR graph and what the reference simulator measured on
it (the spike count of every spiking node, ``SimResult.spike_counts``) for a known
workload (sequences of ``positions`` tokens). It returns one :class:`LayerCount` per
layer operation, with the operations the ANN and the SNN spend on it *per token*.
Energy models (:class:`EnergyModel`) turn counts into picojoules. docs/energy.md states
every rule and constant with its source; in short:

* ``Affine`` fed by spiking neurons (spike-driven): the ANN does ``in * out`` MACs; the
  SNN does ``(sum of |spikes| of its input neurons) * out`` synaptic operations (a graded
  spike of value k counts k times), plus its readout: one scale by ``1/T`` and one bias
  add per output and window.
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
"""

from __future__ import annotations

import dataclasses
import graphlib
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import nir

from spikec.core import ir
from spikec.core.errors import InputError, UsageError
from spikec.core.ir import SpikecSpikeAttention, SpikecSpikeDecode, SpikecSSA

from .simulator import SimResult

OPS_PER_ELEMENT: dict[str, int] = {
    "layer_norm": 5,  # mean accumulate, subtract, square-accumulate, normalise, scale-and-shift
    "rms_norm": 3,  # square-accumulate, normalise, scale
    "relu": 1,
    "silu": 4,  # exp, add, divide, multiply
    "gelu": 8,
    "gelu_tanh": 8,
    "gate": 1,  # the multiply of a gated activation
    "softmax": 5,  # per score: scale, subtract max, exp, accumulate, normalise
    "rotary": 3,  # per rotated q/k element: two multiplies, one add (tables precomputed)
    "readout": 1,  # per output and window: the 1/T scale (the bias add is counted apart)
}
"""Real-valued operations per element of the non-MAC arithmetic (estimates, docs/energy.md)."""

PRECISIONS = ("fp32", "fp16", "int8")

ATTENTION_CORES = (ir.SpikecAttention, SpikecSpikeAttention, SpikecSSA)
"""Nodes that compute causal self-attention (softmax, spike-softmax, spiking self-attention);
the ANN's counterpart of each is softmax attention of the same shape."""

# ---------------------------------------------------------------------------
# counts
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpCounts:
    """Operations per token of one layer in one network (ANN or SNN).

    macs: real multiply-accumulates (affines, attention products).
    ops: other real arithmetic (norms, activations, softmax, rotary, readout scale),
    each charged as a MAC.
    adds: real additions (residual junctions, biases, learned positions).
    synops: synaptic operations (an input spike times its fan-out), accumulate-only.
    neuron_updates: neuron state updates (neurons x T).
    spikes: spikes emitted, graded spikes counted by value.
    weight_reads, state_accesses, activation_accesses: memory accesses (words) of
    parameters, membranes/accumulators, and activations.
    """

    macs: float = 0.0
    ops: float = 0.0
    adds: float = 0.0
    synops: float = 0.0
    neuron_updates: float = 0.0
    spikes: float = 0.0
    weight_reads: float = 0.0
    state_accesses: float = 0.0
    activation_accesses: float = 0.0

    def __add__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def scaled(self, factor: float) -> "OpCounts":
        return OpCounts(*(a * factor for a in dataclasses.astuple(self)))

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LayerCount:
    """The operations of one layer operation, per token, in the ANN and in the SNN.

    name: the NIR node that names the layer (an affine's name for an affine with its input
    neurons and readout). kind: ``affine`` (spike-driven), ``affine-real``, ``attention``,
    ``norm``, ``activation``, ``residual``, ``embedding``, ``neurons``, ``readout`` or
    ``uncounted`` (a node type with no counting rule; its cost is not included).
    block: ``h.N`` for nodes of transformer block N, else the name. attention: part of an
    attention block (qkv projection, attention core, output projection, their neurons).
    nodes: the NIR nodes counted here. neurons: spiking neurons per token position.
    firing_rate: mean ``|spikes|`` per neuron per step (None without neurons).
    """

    name: str
    kind: str
    block: str
    attention: bool
    nodes: tuple[str, ...]
    neurons: int
    ann: OpCounts
    snn: OpCounts
    firing_rate: float | None = None


@dataclass(frozen=True)
class Workload:
    """What was simulated: ``sequences`` sequences of ``positions`` tokens at ``timesteps``."""

    sequences: int
    positions: int
    timesteps: int

    @property
    def tokens(self) -> int:
        return self.sequences * self.positions


@dataclass(frozen=True)
class OperationCounts:
    """Per-layer counts of a network on a workload (what :func:`count_operations` returns)."""

    layers: list[LayerCount]
    workload: Workload

    def total(self, network: str, attention_only: bool = False) -> OpCounts:
        """Sum of ``ann`` or ``snn`` counts over the layers (or the attention layers only)."""
        out = OpCounts()
        for layer in self.layers:
            if not attention_only or layer.attention:
                out = out + getattr(layer, network)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (read back with :meth:`from_dict`)."""
        return {"workload": dataclasses.asdict(self.workload),
                "layers": [{**dataclasses.asdict(l), "nodes": list(l.nodes)} for l in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OperationCounts":
        try:
            layers = [LayerCount(**{**l, "nodes": tuple(l["nodes"]), "ann": OpCounts(**l["ann"]),
                                    "snn": OpCounts(**l["snn"])}) for l in data["layers"]]
            return cls(layers=layers, workload=Workload(**data["workload"]))
        except (KeyError, TypeError) as e:
            raise InputError(f"operation counts are malformed ({type(e).__name__}: {e})",
                             hint="run 'spikec energy DIR' again to rewrite them") from None


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
    if isinstance(node, ir.SpikecSignedIF):
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
        self.preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
        self.succs: dict[str, list[str]] = {n: [] for n in graph.nodes}
        for src, dst in graph.edges:
            if src not in self.nodes or dst not in self.nodes:
                raise InputError(f"edge ({src!r}, {dst!r}) names a node the graph does not have")
            self.preds[dst].append(src)
            self.succs[src].append(dst)
        try:
            self.order = list(graphlib.TopologicalSorter({n: self.preds[n] for n in self.nodes}).static_order())
        except graphlib.CycleError:
            raise InputError("the graph has a cycle; operations are counted on feed-forward graphs only") from None
        self.series: dict[str, bool] = {}  # does the node's output carry a time series
        for n in self.order:
            node = self.nodes[n]
            if ir.is_spiking(node):
                self.series[n] = True
            elif isinstance(node, (nir.Input, ir.SpikecRateReadout)):
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
        if len(succ) == 1 and isinstance(self.nodes[succ[0]], ir.SpikecRateReadout) and self.preds[succ[0]] == [name]:
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
                elif isinstance(node, ir.SpikecRateReadout) or self.spiking(n):  # readouts, q|k|v neurons
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
            snn = snn + OpCounts(ops=OPS_PER_ELEMENT["readout"] * n_out, adds=n_out if bias else 0,
                                 weight_reads=n_out if bias else 0, state_accesses=n_out, activation_accesses=n_out)
        return "affine", tuple(members), ann, snn, neurons
    # Real-valued input: not spike-driven; on a time series it runs at every step.
    steps = w.timesteps if g.input_series(name) else 1
    return "affine-real", tuple(members), ann, ann.scaled(steps), 0


def _neuron_counts(g: _Graph, name: str, counts: Mapping[str, int], w: Workload) -> OpCounts:
    updates = _features(g.nodes[name]) * w.timesteps
    return OpCounts(neuron_updates=updates, spikes=counts.get(name, 0) / w.tokens, state_accesses=2 * updates)


def _attention(node: nir.NIRNode, w: Workload) -> OpCounts:
    """Per token, one window: causal softmax attention over sequences of ``w.positions`` tokens
    (an ``ATTENTION_CORES`` node's shape; what the ANN does in every attention mode)."""
    h, kv, d, p = int(node.num_heads), int(node.num_kv_heads), int(node.head_dim), w.positions
    pairs = p * (p + 1) / 2  # causal query-key pairs per head and sequence
    macs = 2 * h * d * pairs  # q.k scores and the probability-weighted sum of v
    ops = OPS_PER_ELEMENT["softmax"] * h * pairs
    if float(node.rope_theta) > 0:
        ops += OPS_PER_ELEMENT["rotary"] * (h + kv) * d * p
    accesses = 2 * h * d * pairs + (h + 2 * kv) * d * p + h * d * p  # k and v per product; q, k, v in; out
    return OpCounts(macs=macs / p, ops=ops / p, activation_accesses=accesses / p)


def _ssa(g: _Graph, name: str, node: SpikecSSA, result: SimResult, w: Workload) -> tuple[OpCounts, int]:
    """SNN counts per token and neurons per position of spiking self-attention (docs/energy.md):
    Q, K, V and output neurons; the spike products as synaptic operations, as the kernel
    counted them (``qk_synops``, ``av_synops``); rotary on q, k, the normalisation and output
    scale per output and step, and the decay weight per non-zero map entry as real ops; with
    attention-map neurons, one neuron per head and causal pair (updated every step)."""
    h, kv, d, t = int(node.num_heads), int(node.num_kv_heads), int(node.head_dim), w.timesteps
    measured = {k: v / w.tokens for k, v in result.operations.get(name, {}).items()}
    neurons = (h + 2 * kv) * d + h * d
    steps = t if g.input_series(name) else 1
    rotary = OPS_PER_ELEMENT["rotary"] * (h + kv) * d * steps if float(node.rope_theta) > 0 else 0
    decayed = not bool((node.decay == 1).all())
    per_output = (2 if node.normalize else 1) * h * d * t
    synops = measured.get("qk_synops", 0.0) + measured.get("av_synops", 0.0)
    map_entries = measured.get("a_nonzero", 0.0)
    spikes = sum(measured.get(k, 0.0) for k in ("q_spikes", "k_spikes", "v_spikes"))
    map_neurons = 0.0  # attention-map neurons per position: one per head and causal pair
    if node.has_map_neurons:
        map_neurons = h * (w.positions + 1) / 2
        spikes += map_entries  # each non-zero map entry is one map-neuron spike
    updates = (neurons + map_neurons) * t
    return OpCounts(
        ops=rotary + per_output + (map_entries if decayed else 0), synops=synops, neuron_updates=updates,
        spikes=spikes + result.spike_counts.get(name, 0) / w.tokens,
        state_accesses=2 * updates + 2 * map_entries, activation_accesses=synops + (h + 2 * kv) * d * steps,
    ), neurons + round(map_neurons)


def _spike_attention(name: str, node: SpikecSpikeAttention, result: SimResult, w: Workload) -> tuple[OpCounts, int]:
    """SNN counts per token and probability neurons per position of spike-equivalent attention
    (docs/energy.md): the products as incremental synaptic operations (``qk_synops``,
    ``pv_synops``, counted by the kernel); every step re-evaluates the softmax of the
    accumulated scores, the rotary embedding and the decode (``1/t`` scale) of the accumulated
    q|k|v as real ops; one probability neuron per head and causal pair."""
    h, kv, d, t, p = int(node.num_heads), int(node.num_kv_heads), int(node.head_dim), w.timesteps, w.positions
    measured = {k: v / w.tokens for k, v in result.operations.get(name, {}).items()}
    pairs = h * p * (p + 1) / 2 / p  # probability neurons per token position
    ops = OPS_PER_ELEMENT["softmax"] * pairs + (h + 2 * kv) * d
    if float(node.rope_theta) > 0:
        ops += OPS_PER_ELEMENT["rotary"] * (h + kv) * d
    qk, pv = measured.get("qk_synops", 0.0), measured.get("pv_synops", 0.0)
    touched = min(qk, pairs * t) + min(pv, h * d * t)  # accumulators written in a step with input
    return OpCounts(
        ops=ops * t, synops=qk + pv, neuron_updates=pairs * t,
        spikes=result.spike_counts.get(name + "_probs", 0) / w.tokens,
        state_accesses=2 * pairs * t + 2 * touched, activation_accesses=qk + pv,
    ), int(round(pairs))


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
    if isinstance(node, ir.SpikecRateReadout):  # a readout not fused with an affine: sum over T, scale
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
                kind, ann = "attention", _attention(node, w)
            else:
                kind, ann = _real(g, name)
            if isinstance(node, SpikecSSA):
                snn, neurons = _ssa(g, name, node, result, w)
            elif isinstance(node, SpikecSpikeAttention):
                snn, neurons = _spike_attention(name, node, result, w)
            elif isinstance(node, SpikecSpikeDecode):  # one synapse per channel: an accumulate per spike
                synops = sum(counts.get(p, 0) for p in g.preds[name]) / w.tokens
                snn = OpCounts(synops=synops, weight_reads=synops, activation_accesses=_features(node) * w.timesteps)
            elif isinstance(node, ir.SpikecRateReadout) and g.input_series(name):
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


# ---------------------------------------------------------------------------
# energy models
# ---------------------------------------------------------------------------

_HOROWITZ = "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm"
_HOROWITZ_MEM = _HOROWITZ + ": 8 KB SRAM read of 64 bits 10 pJ (32 KB 20 pJ, 1 MB 100 pJ, DRAM 1.3-2.6 nJ)"
_YAN = ("Z. Yan, Z. Bai, W.-F. Wong, 'Reconsidering the energy efficiency of spiking neural networks', "
        "arXiv 2409.08290: counting compute only ignores memory traffic")
_DAVIES = ("M. Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', IEEE Micro 38(1), "
           "2018, table of pre-silicon minimum energies")

# Horowitz 45 nm arithmetic (pJ): MAC = multiply + add.
_ARITH = {"fp32": (4.6, 0.9), "fp16": (1.5, 0.4), "int8": (0.23, 0.03)}
_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
_SRAM_PJ_PER_BIT = 10.0 / 64  # 8 KB SRAM, 64-bit read: 10 pJ


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation, in picojoules. The ANN is charged ``mac_pj`` per MAC; the SNN
    ``synop_pj`` per synaptic operation, ``neuron_update_pj`` per neuron update and
    ``spike_pj`` per spike routed; both ``mac_pj`` per real op, ``add_pj`` per real addition
    and the memory constants per word accessed."""

    name: str
    mac_pj: float
    add_pj: float
    synop_pj: float
    neuron_update_pj: float
    spike_pj: float = 0.0
    weight_read_pj: float = 0.0
    state_access_pj: float = 0.0
    activation_access_pj: float = 0.0
    precision: str = "fp32"
    description: str = ""
    sources: tuple[str, ...] = ()

    CONSTANTS: ClassVar[tuple[str, ...]] = (
        "mac_pj", "add_pj", "synop_pj", "neuron_update_pj", "spike_pj", "weight_read_pj", "state_access_pj",
        "activation_access_pj")

    def terms(self, c: OpCounts) -> dict[str, float]:
        """Energy (pJ) of ``c`` split into compute, neurons, spikes and memory."""
        return {
            "compute": c.macs * self.mac_pj + c.ops * self.mac_pj + c.adds * self.add_pj + c.synops * self.synop_pj,
            "neurons": c.neuron_updates * self.neuron_update_pj,
            "spikes": c.spikes * self.spike_pj,
            "memory": c.weight_reads * self.weight_read_pj + c.state_accesses * self.state_access_pj
            + c.activation_accesses * self.activation_access_pj,
        }

    def energy(self, c: OpCounts) -> float:
        """Energy (pJ) of the operations ``c``."""
        return sum(self.terms(c).values())

    def describe(self) -> dict[str, Any]:
        """The model as JSON-friendly data (constants, precision, description, sources)."""
        return {"name": self.name, "precision": self.precision, "description": self.description,
                "sources": list(self.sources), **{k: getattr(self, k) for k in self.CONSTANTS}}


MODEL_NAMES = ("45nm", "45nm-memory", "loihi")


def builtin_model(name: str, precision: str = "fp32") -> EnergyModel:
    """A built-in model: ``45nm``, ``45nm-memory`` or ``loihi``, with ANN and real-valued
    arithmetic at ``precision`` (``fp32``, ``fp16``, ``int8``)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    mac, add = _ARITH[precision]
    if name == "45nm":
        return EnergyModel(
            name=name, precision=precision, mac_pj=mac, add_pj=add, synop_pj=add, neuron_update_pj=2 * add,
            description=(f"Horowitz 45 nm {precision} arithmetic only: ANN MAC {mac} pJ, SNN synaptic op = one add "
                         f"({add} pJ), neuron update = two adds (integrate; compare and subtract); no memory"),
            sources=(_HOROWITZ,),
        )
    if name == "45nm-memory":
        bits = _BITS[precision]
        state_bits = max(bits, 16)  # membranes and accumulators need more than 8 bits
        return EnergyModel(
            name=name, precision=precision, mac_pj=mac, add_pj=add, synop_pj=add, neuron_update_pj=2 * add,
            weight_read_pj=bits * _SRAM_PJ_PER_BIT, state_access_pj=state_bits * _SRAM_PJ_PER_BIT,
            activation_access_pj=bits * _SRAM_PJ_PER_BIT,
            description=(f"45nm plus on-chip SRAM traffic ({_SRAM_PJ_PER_BIT:.4f} pJ/bit, 8 KB array): weights "
                         f"({bits} bit), membranes and accumulators ({state_bits} bit), activations ({bits} bit)"),
            sources=(_HOROWITZ_MEM, _YAN),
        )
    if name == "loihi":
        return EnergyModel(
            name=name, precision=precision, mac_pj=mac, add_pj=add, synop_pj=23.6, neuron_update_pj=81.0,
            spike_pj=1.7,
            description=("Loihi: 23.6 pJ per synaptic op, 81 pJ per (active) neuron update, 1.7 pJ per spike within "
                         f"a tile; real-valued ops are not native to Loihi and are charged at Horowitz 45 nm "
                         f"{precision} (MAC {mac} pJ, add {add} pJ), as is the ANN"),
            sources=(_DAVIES, _HOROWITZ),
        )
    raise UsageError(f"unknown energy model {name!r}",
                     hint=f"choose one of {', '.join(MODEL_NAMES)} or give a .toml/.json file of constants")


def load_model_file(path: str | Path, precision: str = "fp32") -> EnergyModel:
    """An energy model from a TOML or JSON file of constants.

    Keys: ``base`` (a built-in model to start from, default ``45nm``), ``name``,
    ``description``, ``sources`` (list of strings) and any of the constants of
    :class:`EnergyModel` (``mac_pj``, ``add_pj``, ``synop_pj``, ``neuron_update_pj``,
    ``spike_pj``, ``weight_read_pj``, ``state_access_pj``, ``activation_access_pj``),
    non-negative numbers in pJ. Bad files raise ``InputError``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"energy model file {str(p)!r} does not exist", hint="give a .toml or .json file of constants")
    text = p.read_bytes()
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise InputError(f"energy model file {str(p)!r} is not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"energy model file {str(p)!r} must hold a table of constants, not {type(data).__name__}")
    base_name = data.get("base", "45nm")
    if base_name not in MODEL_NAMES:
        raise InputError(f"{str(p)!r}: unknown base {base_name!r}", hint=f"choose one of {', '.join(MODEL_NAMES)}")
    base = builtin_model(base_name, precision)
    allowed = {"base", "name", "description", "sources", *base.CONSTANTS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(f"{str(p)!r}: unknown keys {unknown}", hint=f"known keys: {', '.join(sorted(allowed))}")
    changes: dict[str, Any] = {"name": str(data.get("name", p.stem))}
    for key in base.CONSTANTS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{str(p)!r}: {key} must be a non-negative number of pJ, got {value!r}")
            changes[key] = float(value)
    if "description" in data:
        changes["description"] = str(data["description"])
    else:
        changes["description"] = f"user constants from {p.name} over {base_name}"
    sources = data.get("sources", [])
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise InputError(f"{str(p)!r}: sources must be a list of strings")
    changes["sources"] = (*sources, *base.sources) if sources else (f"user file {p.name}", *base.sources)
    return dataclasses.replace(base, **changes)


def resolve_model(spec: str, precision: str = "fp32") -> EnergyModel:
    """A built-in model by name, or a model file (a path ending in .toml or .json)."""
    if spec in MODEL_NAMES:
        return builtin_model(spec, precision)
    if spec.lower().endswith((".toml", ".json")) or Path(spec).is_file():
        return load_model_file(spec, precision)
    return builtin_model(spec, precision)  # raises with the known names


# ---------------------------------------------------------------------------
# estimates
# ---------------------------------------------------------------------------


def _reduction(ann: float, snn: float) -> float | None:
    return 1.0 - snn / ann if ann > 0 else None


def estimate(counts: OperationCounts, model: EnergyModel) -> dict[str, Any]:
    """Energy per token of the ANN and the SNN under ``model``, whole network, attention
    blocks alone, per layer and per block. JSON-friendly; ``reduction`` is ``1 - SNN/ANN``
    (negative when the SNN spends more)."""
    layers = []
    blocks: dict[str, dict[str, Any]] = {}
    for layer in counts.layers:
        ann, snn = model.energy(layer.ann), model.energy(layer.snn)
        layers.append({
            "name": layer.name, "kind": layer.kind, "block": layer.block, "attention": layer.attention,
            "nodes": list(layer.nodes), "neurons": layer.neurons, "firing_rate": layer.firing_rate,
            "ann_pj": ann, "snn_pj": snn, "reduction": _reduction(ann, snn),
            "ann": layer.ann.as_dict(), "snn": layer.snn.as_dict(),
        })
        b = blocks.setdefault(layer.block, {"block": layer.block, "ann_pj": 0.0, "snn_pj": 0.0, "spikes": 0.0,
                                            "neuron_updates": 0.0})
        b["ann_pj"] += ann
        b["snn_pj"] += snn
        b["spikes"] += layer.snn.spikes
        b["neuron_updates"] += layer.snn.neuron_updates
    for b in blocks.values():
        b["reduction"] = _reduction(b["ann_pj"], b["snn_pj"])
        b["firing_rate"] = b.pop("spikes") / b["neuron_updates"] if b["neuron_updates"] else None
        del b["neuron_updates"]
    ann_total, snn_total = counts.total("ann"), counts.total("snn")
    ann_att, snn_att = counts.total("ann", True), counts.total("snn", True)
    ann_pj, snn_pj = model.energy(ann_total), model.energy(snn_total)
    att_ann_pj, att_snn_pj = model.energy(ann_att), model.energy(snn_att)
    spike_driven = sum(l.ann.macs for l in counts.layers if l.kind == "affine")
    w = counts.workload
    return {
        "model": model.describe(),
        "workload": {"tokens": w.tokens, "sequences": w.sequences, "positions": w.positions, "timesteps": w.timesteps},
        "ann_pj_per_token": ann_pj,
        "snn_pj_per_token": snn_pj,
        "reduction": _reduction(ann_pj, snn_pj),
        "attention_ann_pj_per_token": att_ann_pj,
        "attention_snn_pj_per_token": att_snn_pj,
        "attention_reduction": _reduction(att_ann_pj, att_snn_pj),
        "ann_breakdown_pj": model.terms(ann_total),
        "snn_breakdown_pj": model.terms(snn_total),
        "ann_counts": ann_total.as_dict(),
        "snn_counts": snn_total.as_dict(),
        "spike_driven_mac_share": spike_driven / ann_total.macs if ann_total.macs else 0.0,
        "firing_rate": snn_total.spikes / snn_total.neuron_updates if snn_total.neuron_updates else None,
        "spikes_per_neuron_per_window": (snn_total.spikes * w.timesteps / snn_total.neuron_updates
                                         if snn_total.neuron_updates else None),
        "uncounted": [l.name for l in counts.layers if l.kind == "uncounted"],
        "layers": layers,
        "blocks": list(blocks.values()),
    }


# ---------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------


def format_energy(pj: float) -> str:
    """``pj`` picojoules with an SI prefix (``153 uJ``, ``4.2 nJ``)."""
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_estimate(est: Mapping[str, Any], per_op: bool = False) -> str:
    """A plain-text table of an :func:`estimate`: one row per block (or per layer operation
    with ``per_op``), then the totals, the attention blocks and the SNN energy breakdown."""
    w, m = est["workload"], est["model"]
    lines = [f"energy model {m['name']} ({m['precision']}): {m['description']}",
             f"workload: {w['tokens']} tokens ({w['sequences']} x {w['positions']} positions), T={w['timesteps']}", ""]
    rows = [(r["name"] if per_op else r["block"], r) for r in (est["layers"] if per_op else est["blocks"])]
    header = ("layer" if per_op else "block", "ANN/token", "SNN/token", "reduction", "rate/step", "spikes/window")
    table = []
    for label, r in rows:
        rate = r.get("firing_rate")
        table.append((label, format_energy(r["ann_pj"]), format_energy(r["snn_pj"]), _pct(r["reduction"]),
                      "-" if rate is None else f"{rate:.3f}", "-" if rate is None else f"{rate * w['timesteps']:.2f}"))
    rate = est["firing_rate"]
    table.append(("total", format_energy(est["ann_pj_per_token"]), format_energy(est["snn_pj_per_token"]),
                  _pct(est["reduction"]), "-" if rate is None else f"{rate:.3f}",
                  "-" if rate is None else f"{est['spikes_per_neuron_per_window']:.2f}"))
    table.append(("attention", format_energy(est["attention_ann_pj_per_token"]),
                  format_energy(est["attention_snn_pj_per_token"]), _pct(est["attention_reduction"]), "", ""))
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(wd) if i == 0 else c.rjust(wd) for i, (c, wd) in enumerate(zip(r, widths)))

    lines += [fmt(header), fmt(tuple("-" * wd for wd in widths))]
    lines += [fmt(r) for r in table[:-2]] + [fmt(tuple("-" * wd for wd in widths))] + [fmt(r) for r in table[-2:]]
    snn = est["snn_breakdown_pj"]
    total = sum(snn.values()) or 1.0
    lines += ["", "SNN energy by kind: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in snn.items()),
              f"spike-driven share of the ANN's MACs: {100 * est['spike_driven_mac_share']:.1f}% "
              "(the rest is real-valued in both networks)"]
    if est["uncounted"]:
        lines.append(f"not counted (no rule for their type): {', '.join(est['uncounted'])}")
    if est["reduction"] is not None and est["reduction"] < 0:
        lines.append("the SNN spends MORE energy than the ANN under this model")
    return "\n".join(lines)
