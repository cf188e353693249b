"""Which parts of a spiking network spike and which do not, layer by layer (report.json).

``spiking_parts(graph)`` classifies every node of a NIR graph written by spikec:

* ``neurons``: nodes that emit spikes (``spikec.core.ir.is_spiking``), and the probability neurons inside
  a ``SpikecSpikeAttention`` (``<name>_probs``);
* ``spike_driven``: weight layers and products whose every input is spikes (an Affine/Linear
  fed by neurons only; the ``Q K^T`` and ``P V`` products of a ``SpikecSpikeAttention``; a
  token encoder's synapses ``SpikecSpikeDecode``) - the synaptic operations energy models
  count as accumulates;
* ``spike_equivalent``: real arithmetic on accumulated spike input, emitted step by step
  (the ``SpikecStream*`` norms and activations, the softmax of ``SpikecSpikeAttention``);
* ``real``: real-valued arithmetic on window values (the embedding lookup, the rate path's
  norms, softmax attention and activations, readouts, affines fed by real values: MACs);
* ``junction``: residual additions.

It also names the attention mode (``softmax``, ``spike-softmax`` or ``ssa``; several joined
by commas) and the token encoding (scheme, encoder node, and the real-valued layers
before it, which an energy estimate must count as non-spiking MACs/lookups).
"""

from __future__ import annotations

import re
from typing import Any

import nir

from spikec.core import ir
from spikec.core.graph import topology

ATTENTION_MODES: dict[type, str] = {
    ir.SpikecAttention: "softmax", ir.SpikecSpikeAttention: "spike-softmax", ir.SpikecSSA: "ssa"}
"""Attention node type -> mode name (``ssa``: spiking self-attention, spikec/core/ssa.py)."""

_STREAM_OPS = (ir.SpikecStreamLayerNorm, ir.SpikecStreamRMSNorm, ir.SpikecStreamActivation,
               ir.SpikecStreamGatedActivation)


def _layer(name: str) -> str:
    """``h.N`` for the nodes of block N; otherwise the node's name without the suffix of a part
    (``lm_head_neuron`` -> ``lm_head``, ``embed_encoder`` -> ``embed``)."""
    m = re.match(r"^h_(\d+)_", name)
    return f"h.{m.group(1)}" if m else re.sub(r"_(neuron|readout|encoder|decode)$", "", name)


def _attention_mode(graph: nir.NIRGraph) -> str | None:
    modes = {mode for node in graph.nodes.values() for kind, mode in ATTENTION_MODES.items()
             if isinstance(node, kind)}
    return ", ".join(sorted(modes)) if modes else None


def spiking_parts(graph: nir.NIRGraph) -> dict[str, Any]:
    """Per layer (``h.N`` blocks; other nodes by name) the node names in each category (see the
    module docstring), the attention mode, the token encoding and totals."""
    preds = topology(graph).preds
    spiking = {n for n, node in graph.nodes.items() if ir.is_spiking(node)}
    layers: dict[str, dict[str, list[str]]] = {}
    weight_layers = spike_driven_weights = 0

    def put(name: str, part: str, label: str | None = None) -> None:
        layers.setdefault(_layer(name), {}).setdefault(part, []).append(label or name)

    for name, node in graph.nodes.items():
        if isinstance(node, (nir.Input, nir.Output)):
            continue
        if name in spiking:
            put(name, "neurons")
        elif isinstance(node, (nir.Affine, nir.Linear)):
            weight_layers += 1
            driven = bool(preds[name]) and all(p in spiking for p in preds[name])
            spike_driven_weights += driven
            put(name, "spike_driven" if driven else "real")
        elif isinstance(node, ir.SpikecSpikeAttention):
            put(name, "neurons", f"{name}_probs")
            put(name, "spike_driven", f"{name} (q k^T, p v)")
            put(name, "spike_equivalent", f"{name} (softmax)")
        elif isinstance(node, ir.SpikecSpikeDecode):
            put(name, "spike_driven")
        elif isinstance(node, _STREAM_OPS):
            put(name, "spike_equivalent")
        elif isinstance(node, (ir.SpikecAdd, ir.SpikecStreamAdd)):
            put(name, "junction")
        else:
            put(name, "real")
    encoders = [n for n, node in graph.nodes.items() if isinstance(node, ir.SpikecTokenEncoder)]
    token = None
    if encoders:
        first = graph.nodes[encoders[0]]
        before = sorted({p for e in encoders for p in preds[e]})
        token = {"scheme": str(first.scheme), "encoder": encoders if len(encoders) > 1 else encoders[0],
                 "non_spiking": before, "bits": int(first.bits) if str(first.scheme) == "binary" else None}
    return {
        "attention": _attention_mode(graph),
        "token_encoding": token,
        "weight_layers": weight_layers,
        "spike_driven_weight_layers": spike_driven_weights,
        "layers": layers,
    }
