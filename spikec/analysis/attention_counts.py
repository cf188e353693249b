"""Operation counts of the attention cores (docs/energy.md): what the ANN's causal softmax
attention spends, and what spiking self-attention (``SpikecSSA``) and spike-equivalent
attention (``SpikecSpikeAttention``) spend in the SNN, per token, from the operations the
simulator's kernels counted (``SimResult.operations``)."""

from __future__ import annotations

import nir

from spikec.backends.simulator import SimResult
from spikec.core.ir import SpikecSpikeAttention, SpikecSSA

from .operations import OPS_PER_ELEMENT, OpCounts, Workload


def ann_attention_counts(node: nir.NIRNode, w: Workload) -> OpCounts:
    """Per token, one window: causal softmax attention over sequences of ``w.positions`` tokens
    (an ``ATTENTION_CORES`` node's shape; what the ANN does in every attention mode)."""
    h, kv, d, p = int(node.num_heads), int(node.num_kv_heads), int(node.head_dim), w.positions
    window = int(getattr(node, "window", 0))  # sliding-window attention: each query sees `window` keys at most
    # causal query-key pairs per head and sequence
    pairs = window * (window + 1) / 2 + (p - window) * window if 0 < window < p else p * (p + 1) / 2
    macs = 2 * h * d * pairs  # q.k scores and the probability-weighted sum of v
    ops = OPS_PER_ELEMENT["softmax"] * h * pairs
    if float(node.rope_theta) > 0:
        ops += OPS_PER_ELEMENT["rotary"] * (h + kv) * (int(getattr(node, "rotary_dim", 0)) or d) * p
    accesses = 2 * h * d * pairs + (h + 2 * kv) * d * p + h * d * p  # k and v per product; q, k, v in; out
    return OpCounts(macs=macs / p, ops=ops / p, activation_accesses=accesses / p)


def ssa_counts(
    name: str, node: SpikecSSA, result: SimResult, w: Workload, input_series: bool
) -> tuple[OpCounts, int]:
    """SNN counts per token and neurons per position of spiking self-attention (docs/energy.md):
    Q, K, V and output neurons; the spike products as synaptic operations, as the kernel
    counted them (``qk_synops``, ``av_synops``); rotary on q, k, the normalisation and output
    scale per output and step, and the decay weight per non-zero map entry as real ops; with
    attention-map neurons, one neuron per head and causal pair (updated every step).
    ``input_series``: whether the node's input currents are a time series (rotary then runs
    at every step)."""
    h, kv, d, t = int(node.num_heads), int(node.num_kv_heads), int(node.head_dim), w.timesteps
    measured = {k: v / w.tokens for k, v in result.operations.get(name, {}).items()}
    neurons = (h + 2 * kv) * d + h * d
    steps = t if input_series else 1
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


def spike_attention_counts(
    name: str, node: SpikecSpikeAttention, result: SimResult, w: Workload
) -> tuple[OpCounts, int]:
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

