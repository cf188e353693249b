"""Builders of the NIR nodes of ``spikec.core.ops``'s canonical operators.

Standard NIR nodes wherever the semantics match (``Affine``, ``Linear``, ``IF``); the rest are
spikec extension nodes (``spikec.core.ir``). ``rate_readout_affine`` (two nodes) is lowered by
``spikec.lower`` itself.
"""

from __future__ import annotations

import math
from typing import Any

import nir
import numpy as np
import torch

from spikec.core import ir, ops

from .fields import Builder, array, features, v_init


def layer_norm_fields(a: dict[str, Any], node: torch.fx.Node) -> dict[str, Any]:
    """``weight``, ``bias`` ``[d]`` (ones, zeros when absent) and ``eps`` of a layer norm call."""
    d = features(node)
    w, b = array(a["weight"]), array(a["bias"])
    return {"weight": w if w is not None else np.ones(d, np.float32),
            "bias": b if b is not None else np.zeros(d, np.float32), "eps": float(a["eps"])}


def rms_norm_fields(a: dict[str, Any], node: torch.fx.Node) -> dict[str, Any]:
    """``weight`` ``[d]`` (ones when absent) and ``eps`` of an RMS norm call."""
    w = array(a["weight"])
    return {"weight": w if w is not None else np.ones(features(node), np.float32), "eps": float(a["eps"])}


def affine(a: dict[str, Any], node: torch.fx.Node) -> nir.Affine:
    """Standard NIR ``Affine`` of ``weight [out, in]`` and ``bias [out]`` (zeros when absent)."""
    w, b = array(a["weight"]), array(a["bias"])
    return nir.Affine(weight=w, bias=b if b is not None else np.zeros(w.shape[0], np.float32))


def _embedding(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    w = array(a["weight"])
    pw = array(a["position_weight"])
    return ir.SpikecEmbedding(weight=w, position_weight=pw if pw is not None else np.zeros((0, w.shape[1]), np.float32))


def _attention(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(a["head_dim"])
    return ir.SpikecAttention(
        num_heads=int(a["num_heads"]), num_kv_heads=int(a["num_kv_heads"]), head_dim=int(a["head_dim"]),
        rope_theta=float(a["rope_theta"]), scale=float(scale), rotary_dim=int(a["rotary_dim"]),
        window=int(a["window"]), causal=bool(a["causal"]),
    )


def _signed_if(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    return ir.SpikecSignedIF(threshold=array(a["threshold"]), max_spikes=int(a["max_spikes"]),
                             signed=bool(a["signed"]), v_init=v_init(a["v_init"]))


def _nir_if(a: dict, node: torch.fx.Node) -> nir.NIRNode:
    """Standard NIR IF with one value per neuron for each parameter (portable conversion)."""
    n = features(node)
    full = lambda v: np.full(n, float(v), np.float32)  # noqa: E731
    return nir.IF(r=full(a["r"]), v_threshold=full(a["v_threshold"]), v_reset=full(a["v_reset"]))


BUILDERS: dict[Any, Builder] = {
    ops.embedding: _embedding,
    ops.layer_norm: lambda a, n: ir.SpikecLayerNorm(**layer_norm_fields(a, n)),
    ops.rms_norm: lambda a, n: ir.SpikecRMSNorm(**rms_norm_fields(a, n)),
    ops.attention: _attention,
    ops.activation: lambda a, n: ir.SpikecActivation(activation=a["kind"], features=features(n)),
    ops.gated_activation: lambda a, n: ir.SpikecGatedActivation(activation=a["kind"], features=features(n)),
    ops.add: lambda a, n: ir.SpikecAdd(features=features(n)),
    ops.affine: affine,
    ops.signed_if: _signed_if,
    ops.linear: lambda a, n: nir.Linear(weight=array(a["weight"])),
    ops.nir_if: _nir_if,
}
"""Canonical operator of ``spikec.core.ops`` -> builder of its NIR node."""
