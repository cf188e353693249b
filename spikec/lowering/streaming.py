"""Builders of the NIR nodes of ``spikec.core.streaming``'s fx operators (spike-softmax network,
token encoding); the nodes are those of ``spikec.core.ir.streaming``."""

from __future__ import annotations

from typing import Any

import nir
import torch

from spikec.core import ir, streaming

from .canonical import affine, layer_norm_fields, rms_norm_fields
from .fields import Builder, array, features, v_init


def _stbif(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    return ir.SpikecSTBIF(threshold=array(a["threshold"]), max_spikes=int(a["max_spikes"]), signed=bool(a["signed"]),
                          v_init=v_init(a["v_init"]))


def _attention(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    return ir.SpikecSpikeAttention(
        num_heads=int(a["num_heads"]), num_kv_heads=int(a["num_kv_heads"]), head_dim=int(a["head_dim"]),
        rope_theta=float(a["rope_theta"]), scale=float(a["scale"]), input_scale=array(a["input_scale"]),
        prob_threshold=array(a["prob_threshold"]), prob_max_spikes=int(a["prob_max_spikes"]),
        prob_v_init=float(a["prob_v_init"]))


def _token_encoder(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    return ir.SpikecTokenEncoder(threshold=array(a["threshold"]), max_spikes=int(a["max_spikes"]), signed=True,
                                 v_init=float(a["v_init"]), scheme=str(a["scheme"]), bits=int(a["bits"]))


def _token_decode(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    return ir.SpikecSpikeDecode(weight=array(a["weight"]), scheme=str(a["scheme"]), bits=int(a["bits"]))


BUILDERS: dict[Any, Builder] = {
    streaming.stbif: _stbif,
    streaming.count_affine: affine,
    streaming.count_readout_affine: affine,
    streaming.readout: lambda a, n: ir.SpikecRateReadout(features=features(n)),
    streaming.stream_add: lambda a, n: ir.SpikecStreamAdd(features=features(n)),
    streaming.stream_layer_norm: lambda a, n: ir.SpikecStreamLayerNorm(**layer_norm_fields(a, n)),
    streaming.stream_rms_norm: lambda a, n: ir.SpikecStreamRMSNorm(**rms_norm_fields(a, n)),
    streaming.stream_activation: lambda a, n: ir.SpikecStreamActivation(activation=a["kind"], features=features(n)),
    streaming.stream_gated_activation: lambda a, n: ir.SpikecStreamGatedActivation(activation=a["kind"],
                                                                                   features=features(n)),
    streaming.spike_attention: _attention,
    streaming.token_code: _token_encoder,
    streaming.token_decode: _token_decode,
}
"""fx operator of ``spikec.core.streaming`` -> builder of its NIR node."""
