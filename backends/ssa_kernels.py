"""The reference simulator's kernel for ``SpikecSSA`` (spiking self-attention).

Registered into ``simulator.KERNELS`` (and ``SPIKING_TYPES``, so its spikes are counted,
recorded and compared) by the import at the end of ``backends/simulator.py``. It calls
``spikec.core.ssa.spiking_self_attention``, the very function of the converted fx graph,
so both give the same spikes bit for bit, in both simulator modes.
"""

from __future__ import annotations

import nir

from spikec.core import ssa
from spikec.core.ir import SpikecSSA

from . import simulator

_FIELDS = ("q_threshold", "k_threshold", "v_threshold", "scale", "o_threshold")


def _ssa(ctx: simulator._Context, name: str, node: nir.NIRNode, x: simulator._Value) -> simulator._Value:
    """Real ``[b, P, (H + 2KV) D]`` (or a time series of it) -> int8 spikes ``[T, b, P, H D]``,
    with the operations of the spike products counted (``ssa._count_products``)."""
    params = [ctx.param(name, node, f) for f in _FIELDS]
    stats: dict[str, float] = {}
    spikes = ssa.spiking_self_attention(
        simulator._floating(x.dense()), *params, int(node.num_heads), int(node.num_kv_heads), int(node.head_dim),
        float(node.rope_theta), ctx.timesteps, bool(node.signed), float(node.tau), bool(node.normalize),
        None if (node.decay == 1).all() else ctx.param(name, node, "decay"), stats=stats,
        **({f: ctx.param(name, node, f) for f in ("map_threshold", "map_bias")} if node.has_map_neurons else {}))
    return simulator._Value(spikes, True, operations=stats)


simulator.KERNELS[SpikecSSA] = _ssa
if SpikecSSA not in simulator.SPIKING_TYPES:
    simulator.SPIKING_TYPES = (*simulator.SPIKING_TYPES, SpikecSSA)
