"""``spike-encode``: the rate-coded conversion of every calibrated affine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from spikec.core import ops
from spikec.core.errors import UsageError
from spikec.core.options import from_options, option_field
from spikec.core.passes import PassContext

from .affine_rewrite import AffineSite, finish, fold_weight, replace_affine
from .fx_graph import calls, get_arg, new_attr, spikec_name
from .calibrate import META_KEY as CALIBRATION_KEY

NEURON_KEY = "spikec_neuron"
RANGES = ("absmax", "percentile")
V_INIT = 0.5
MIN_THRESHOLD_FRACTION = 1e-6  # a dead channel's threshold, relative to the layer's largest
MIN_THRESHOLD = 1e-12


@dataclass(frozen=True)
class EncodeOptions:
    """The default neuron settings of ``spike-encode`` (also read through ``neuron_config`` by
    ``qcfs-finetune`` and ``spike-softmax``); an affine's ``meta["spikec_neuron"]`` overrides them."""

    range: str = option_field("range", "absmax", "threshold statistic: absmax or percentile", choices=RANGES)
    range_scale: float = option_field("range_scale", 1.0, "threshold = statistic * range_scale")
    max_spikes: int = option_field("max_spikes", 1, "spikes a neuron may emit per step (B)")


def neuron_config(node: fx.Node, ctx: PassContext) -> dict[str, Any]:
    """The neuron settings of an affine's input: ``node.meta["spikec_neuron"]`` over the
    defaults of ``EncodeOptions`` (options ``range``, ``range_scale``, ``max_spikes``); validated."""
    opts = from_options(EncodeOptions, ctx.options)
    cfg = {
        "range": opts.range,
        "range_scale": opts.range_scale,
        "max_spikes": opts.max_spikes,
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
        site = AffineSite.of(gm, affine, theta)
        signed = not provably_nonnegative(site.x)
        graph = gm.graph
        with graph.inserting_before(affine):
            theta_node = graph.get_attr(new_attr(gm, f"{site.name}.neuron.threshold", theta.to(site.w.device)))
            spikes = graph.call_function(
                ops.signed_if, (site.x, theta_node),
                {"timesteps": timesteps, "max_spikes": cfg["max_spikes"], "signed": signed, "v_init": V_INIT})
            spikes.meta.update({
                **site.neuron_meta(),
                NEURON_KEY: {**cfg, "signed": signed, "timesteps": timesteps, "v_init": V_INIT},
            })
            readout = graph.call_function(ops.rate_readout_affine, (spikes, fold_weight(gm, site, theta), site.b_node))
        stale |= replace_affine(gm, site, readout)
        readout.meta[NEURON_KEY] = dict(spikes.meta[NEURON_KEY])
        neurons[site.role] = neurons.get(site.role, 0) + int(theta.numel())
        max_spikes[site.role] = max(max_spikes.get(site.role, 0), cfg["max_spikes"])
        unsigned += not signed
    finish(gm, ctx, stale, len(todo), neurons)
    ctx.record("max_spikes", max_spikes)
    ctx.record("unsigned_layers", unsigned)
    ctx.record("skipped", [spikec_name(a) for a in affines if a not in todo][:20])
