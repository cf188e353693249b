"""Energy per token of the ANN and the SNN: operation counts under an energy model, for the
whole network, the attention blocks alone, each layer operation and each block."""

from __future__ import annotations

from typing import Any

from .energy_models import EnergyModel
from .operations import OperationCounts


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
