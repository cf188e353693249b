"""The reference simulator's kernel for ``SpikecSSA`` (spiking self-attention).

It calls ``spikec.core.ssa.spiking_self_attention``, the very function of the converted fx
graph, so both give the same spikes bit for bit, in both simulator modes. ``SpikecSSA`` is a
spiking node (``spikec.core.ir.is_spiking``): the engine counts, records and compares its spikes.
"""

from __future__ import annotations

import nir

from spikec.core.ir import SpikecSSA
from spikec.core.ssa import spiking_self_attention

from .values import Context, Kernel, Value, floating

_FIELDS = ("q_threshold", "k_threshold", "v_threshold", "scale", "o_threshold")


def _ssa(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    """Real ``[b, P, (H + 2KV) D]`` (or a time series of it) -> int8 spikes ``[T, b, P, H D]``,
    with the operations of the spike products counted (``spikec.core.ssa``)."""
    params = [ctx.param(name, node, f) for f in _FIELDS]
    stats: dict[str, float] = {}
    spikes = spiking_self_attention(
        floating(x.dense()), *params, int(node.num_heads), int(node.num_kv_heads), int(node.head_dim),
        float(node.rope_theta), ctx.timesteps, bool(node.signed), float(node.tau), bool(node.normalize),
        None if (node.decay == 1).all() else ctx.param(name, node, "decay"), stats=stats,
        **({f: ctx.param(name, node, f) for f in ("map_threshold", "map_bias")} if node.has_map_neurons else {}))
    return Value(spikes, True, operations=stats)


KERNELS: dict[type, Kernel] = {SpikecSSA: _ssa}
"""Spiking self-attention node class -> kernel."""
