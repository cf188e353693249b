"""Outlier handling: passes that choose neuron settings for some affine inputs.

They only write ``node.meta["spikec_neuron"]`` (read by ``spike-encode``), so they
run before it. FIELD.md section 8: in SmolLM2 almost all conversion loss comes from
clipping the MLP down-projection input (role ``mlp_out``), driven far past any
calibration range by rare tokens.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from spikec.core import ops
from spikec.core.errors import UsageError
from spikec.core.passes import PassContext

from .fx_graph import calls
from .encode import NEURON_KEY


def _configure(gm: fx.GraphModule, ctx: PassContext, roles: set[str] | None, cfg: dict[str, Any]) -> None:
    count = 0
    for affine in calls(gm, ops.affine):
        if roles is None or affine.meta.get("role") in roles:
            affine.meta[NEURON_KEY] = {**affine.meta.get(NEURON_KEY, {}), **cfg}
            count += 1
    ctx.record("affines", count)
    for key, value in cfg.items():
        ctx.record(key, value)


def _burst(ctx: PassContext) -> dict[str, Any]:
    spikes = ctx.option("burst_spikes", 8)
    if int(spikes) != spikes or not 1 <= int(spikes) <= 127:
        raise UsageError(f"burst_spikes must be an integer in 1..127, got {spikes}")
    scale = float(ctx.option("burst_range_scale", 1.0))
    if not scale > 0:
        raise UsageError(f"burst_range_scale must be positive, got {scale}")
    return {"range": "percentile", "range_scale": scale, "max_spikes": int(spikes)}


def burst_mlp_out(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Give the MLP down-projection input burst neurons: percentile threshold, B spikes a step.

    Matches every ``ops.affine`` with role ``mlp_out``; sets its neuron config to
    ``range="percentile"``, ``range_scale=ctx.option("burst_range_scale", 1.0)``,
    ``max_spikes=ctx.option("burst_spikes", 8)``.
    Guarantees (after spike-encode): the same resolution ``theta/T`` as binary neurons
    over the percentile range, and no clipping up to ``B`` times that range.
    """
    _configure(gm, ctx, {"mlp_out"}, _burst(ctx))


def wide_range_mlp_out(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Give the MLP down-projection input binary neurons over a widened abs-max range.

    Matches every ``ops.affine`` with role ``mlp_out``; sets its neuron config to
    ``range="absmax"``, ``range_scale=ctx.option("wide_range_scale", 2.0)``,
    ``max_spikes=1``. Guarantees (after spike-encode): no clipping up to that multiple
    of the calibration abs-max, at a proportionally coarser step.
    """
    scale = float(ctx.option("wide_range_scale", 2.0))
    if not scale > 0:
        raise UsageError(f"wide_range_scale must be positive, got {scale}")
    _configure(gm, ctx, {"mlp_out"}, {"range": "absmax", "range_scale": scale, "max_spikes": 1})


def burst_all(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Give every affine input burst neurons (percentile threshold, B spikes a step).

    Matches every ``ops.affine``; the same settings as ``burst-mlp-out``. The default:
    measured on SmolLM2-135M (held-out text, T=32) it gives ppl ratio 1.044 against
    1.17 for burst neurons at the MLP down-projection alone, because every layer's
    inputs exceed their calibration range on rare tokens (benchmarks/accuracy_curve.py).
    """
    _configure(gm, ctx, None, _burst(ctx))
