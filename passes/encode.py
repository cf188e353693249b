"""``spike-encode``: the rate-coded conversion of every calibrated affine."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from spikec.core import ops
from spikec.core.errors import UsageError
from spikec.core.passes import PassContext, register_pass

from .fx_graph import attr_tensor, calls, drop_unused_attrs, erase_if_unused, get_arg, new_attr, spikec_name
from .calibrate import META_KEY as CALIBRATION_KEY

NEURON_KEY = "spikec_neuron"
RANGES = ("absmax", "percentile")
V_INIT = 0.5
MIN_THRESHOLD_FRACTION = 1e-6  # a dead channel's threshold, relative to the layer's largest
MIN_THRESHOLD = 1e-12


def neuron_config(node: fx.Node, ctx: PassContext) -> dict[str, Any]:
    """The neuron settings of an affine's input: ``node.meta["spikec_neuron"]`` over the
    defaults ``ctx.option("range", "absmax")``, ``ctx.option("range_scale", 1.0)``,
    ``ctx.option("max_spikes", 1)``; validated."""
    cfg = {
        "range": ctx.option("range", "absmax"),
        "range_scale": ctx.option("range_scale", 1.0),
        "max_spikes": ctx.option("max_spikes", 1),
        **node.meta.get(NEURON_KEY, {}),
    }
    name = spikec_name(node)
    if cfg["range"] not in RANGES:
        raise UsageError(f"{name}: unknown neuron range {cfg['range']!r}; choose one of {', '.join(RANGES)}")
    cfg["range_scale"] = float(cfg["range_scale"])
    if not cfg["range_scale"] > 0:
        raise UsageError(f"{name}: range_scale must be positive, got {cfg['range_scale']}")
    if int(cfg["max_spikes"]) != cfg["max_spikes"] or not 1 <= int(cfg["max_spikes"]) <= 127:
        raise UsageError(f"{name}: max_spikes must be an integer in 1..127 (int8 spikes), got {cfg['max_spikes']}")
    cfg["max_spikes"] = int(cfg["max_spikes"])
    return cfg


def thresholds(stats: dict[str, Any], cfg: dict[str, Any]) -> torch.Tensor:
    """Per-channel thresholds ``theta = stats[range] * range_scale`` (float32, > 0): a
    neuron with ``max_spikes`` B represents ``[-B*theta, B*theta]`` in steps of
    ``theta / T``. Channels silent during calibration get a tiny positive threshold."""
    theta = stats[cfg["range"]].float() * cfg["range_scale"]
    floor = max(float(theta.max()) * MIN_THRESHOLD_FRACTION, MIN_THRESHOLD) if theta.numel() else MIN_THRESHOLD
    return torch.where(theta > floor, theta, torch.full_like(theta, floor))


def provably_nonnegative(x: fx.Node) -> bool:
    """Whether the value of ``x`` can never be negative (a ReLU's output)."""
    return (x.op == "call_function" and x.target is ops.activation
            and get_arg(x, 1, "kind") == "relu")


@register_pass("spike-encode")
def spike_encode(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Replace each calibrated affine by SignedIF neurons and a rate-readout affine.

    Matches every ``ops.affine`` node with ``meta["spikec_calibration"]`` (set by
    ``calibrate``; others are left real-valued and listed as ``skipped``). For input
    ``x`` it inserts ``spikes = ops.signed_if(x, theta, timesteps=ctx.timesteps,
    max_spikes=B, signed=s, v_init=0.5)`` (int8 ``[T, batch, positions, in]``) and
    ``ops.rate_readout_affine(spikes, W * theta[None, :], b)``; theta, B come from
    ``neuron_config`` and ``thresholds``; s is False only after a ReLU. The neuron node
    is named ``<affine>.neuron`` with role ``neuron``; the readout keeps the affine's meta.
    Guarantees: each affine now computes ``W @ Q(x) + b`` with Q the SignedIF rate
    quantizer ``neurons.signed_if_rate`` (theta, B, s, T, v_init 0.5); no existing
    tensor is modified; thresholds and folded weights are new buffers.
    Raises ``UsageError`` when no affine is calibrated (run ``calibrate`` first).
    """
    timesteps = ctx.timesteps
    affines = list(calls(gm, ops.affine))
    todo = [a for a in affines if CALIBRATION_KEY in a.meta]
    if affines and not todo:
        raise UsageError("spike-encode found no calibrated affine", "run the calibrate pass before spike-encode")
    neurons: dict[str, int] = {}
    max_spikes: dict[str, int] = {}
    unsigned = 0
    stale: set[str] = set()
    for affine in todo:
        cfg = neuron_config(affine, ctx)
        theta = thresholds(affine.meta[CALIBRATION_KEY], cfg)
        x, w_node, b_node = get_arg(affine, 0, "x"), get_arg(affine, 1, "weight"), get_arg(affine, 2, "bias")
        w = attr_tensor(gm, w_node)
        if w is None or w.shape[1] != theta.shape[0]:
            raise UsageError(f"{spikec_name(affine)}: weight does not match its calibration statistics",
                             "re-run calibrate after passes that change affine weights")
        signed = not provably_nonnegative(x)
        name, role = spikec_name(affine), affine.meta.get("role", "")
        graph = gm.graph
        with graph.inserting_before(affine):
            theta_node = graph.get_attr(new_attr(gm, f"{name}.neuron.threshold", theta.to(w.device)))
            spikes = graph.call_function(
                ops.signed_if, (x, theta_node),
                {"timesteps": timesteps, "max_spikes": cfg["max_spikes"], "signed": signed, "v_init": V_INIT})
            spikes.meta.update({
                "spikec_name": f"{name}.neuron", "role": "neuron", "spikec_neuron_of": name,
                "module_path": affine.meta.get("module_path", ""),
                NEURON_KEY: {**cfg, "signed": signed, "timesteps": timesteps, "v_init": V_INIT},
            })
            folded = (w.float() * theta.to(w.device)[None, :]).to(w.dtype)
            w_folded = graph.get_attr(new_attr(gm, f"{name}.weight_spiking", folded))
            readout = graph.call_function(ops.rate_readout_affine, (spikes, w_folded, b_node))
        readout.meta.update(affine.meta)
        readout.meta[NEURON_KEY] = dict(spikes.meta[NEURON_KEY])
        affine.replace_all_uses_with(readout)
        graph.erase_node(affine)
        stale |= erase_if_unused(gm, [w_node])
        neurons[role] = neurons.get(role, 0) + int(theta.numel())
        max_spikes[role] = max(max_spikes.get(role, 0), cfg["max_spikes"])
        unsigned += not signed
    drop_unused_attrs(gm, stale)
    gm.graph.lint()
    gm.recompile()
    ctx.record("timesteps", timesteps)
    ctx.record("affines_encoded", len(todo))
    ctx.record("neurons", neurons)
    ctx.record("max_spikes", max_spikes)
    ctx.record("unsigned_layers", unsigned)
    ctx.record("skipped", [spikec_name(a) for a in affines if a not in todo][:20])
