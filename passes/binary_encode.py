"""``binary-encode``: the few-spike (binary) conversion of every calibrated affine (``--coding binary``).

The rate path's ``spike-encode`` spends about ``T |x| / theta`` spikes on a value; a binary
code spends one spike per set bit of ``round(|x| / LSB)`` in T steps, step k weighted
``2^-k`` of its first step (``spikec.core.few_spike``, docs/few-spike.md).

Thresholds: the first step's weight of input channel c is ``theta_c = 2^E_c * p_c`` where
``p_c`` is the calibration statistic (``binary_range``, default the percentile, times
``binary_range_scale``) and ``E_c >= 0`` the fewest leading steps whose code spans the
channel's calibration abs-max times ``binary_headroom`` (default ``HEADROOM``): outliers are
carried, not clipped, at the price of resolution in their own channel only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from spikec.core import few_spike, ops
from spikec.core.errors import UsageError
from spikec.core.options import from_options, option_field
from spikec.core.passes import PassContext, register_pass

from .affine_rewrite import AffineSite, finish, fold_weight, replace_affine
from .calibrate import META_KEY as CALIBRATION_KEY
from .encode import NEURON_KEY, RANGES, thresholds
from .fx_graph import calls, new_attr, spikec_name

DIGITS = ("binary", "signed")
HEADROOM = 2.0
"""Default ``binary_headroom``: chosen on text other than the held-out docstrings (calibration on
the GPL-3 text, perplexity on embedded:finetune_numpy_docstrings.txt, SmolLM2-135M, T=7): ratio
1.19 at 1, 1.098 at 2, 1.105 at 3, 1.27 at 4 (range against resolution; docs/few-spike.md)."""


@dataclass(frozen=True)
class BinaryEncodeOptions:
    """Options of ``binary-encode``."""

    digits: str = option_field("binary_digits", "binary",
                               "digit set: binary (sign and bits) or signed (non-adjacent signed digits)",
                               choices=DIGITS)
    range: str = option_field("binary_range", "percentile", "per-channel statistic p: absmax or percentile",
                              choices=RANGES)
    range_scale: float = option_field("binary_range_scale", 1.0, "p = statistic * binary_range_scale")
    headroom: float = option_field("binary_headroom", HEADROOM,
                                   "the code spans at least the calibration abs-max times this")
    max_lead: int = option_field("binary_max_lead", 8, "most leading steps E above p", low=0, high=16)

    def __post_init__(self) -> None:
        if not self.range_scale > 0 or not self.headroom > 0:
            raise UsageError(f"binary_range_scale and binary_headroom must be positive, got "
                             f"{self.range_scale} and {self.headroom}")


def code_span(timesteps: int, signed_digits: bool) -> float:
    """The largest ``|u|`` (threshold units) a T-step code represents without saturating."""
    return 4.0 / 3.0 if signed_digits else 2.0 - 2.0 ** (1 - timesteps)


def leading_steps(absmax: torch.Tensor, base: torch.Tensor, span: float, headroom: float, max_lead: int
                  ) -> torch.Tensor:
    """Per channel the fewest ``E`` in ``0..max_lead`` with ``span * 2^E * base >= headroom * absmax``
    (int64 ``[features]``)."""
    need = torch.log2((headroom * absmax.double()) / (span * base.double())).clamp(min=0.0)
    return torch.ceil(need - 1e-12).clamp(max=max_lead).to(torch.int64)


@register_pass("binary-encode")
def binary_encode(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Replace each calibrated affine by few-spike neurons and a Horner-readout affine.

    Matches every ``ops.affine`` node with ``meta["spikec_calibration"]``. For input ``x`` it
    inserts ``spikes = ops.few_spike(x, theta, timesteps=ctx.timesteps, signed_digits=d)``
    (int8 ``[T, batch, positions, in]``, named ``<affine>.neuron``, role ``neuron``) and
    ``ops.binary_readout_affine(spikes, W * theta[None, :], b)``; theta per channel as the module
    docstring says (``BinaryEncodeOptions``). Guarantees: each affine now computes ``W @ Q(x) + b``
    with Q the few-spike quantizer (``few_spike.few_spike_value``); no existing tensor is modified.
    Records the leading steps per role (mean and max of E) and the digit set.
    Raises ``UsageError`` when no affine is calibrated or T is outside ``1..few_spike.MAX_STEPS``.
    """
    timesteps = ctx.timesteps
    if not 1 <= timesteps <= few_spike.MAX_STEPS:
        raise UsageError(f"--coding binary takes -T 1..{few_spike.MAX_STEPS} (steps per token), got {timesteps}")
    opts = from_options(BinaryEncodeOptions, ctx.options)
    signed_digits = opts.digits == "signed"
    span = code_span(timesteps, signed_digits)
    affines = list(calls(gm, ops.affine))
    todo = [a for a in affines if CALIBRATION_KEY in a.meta]
    if affines and not todo:
        raise UsageError("binary-encode found no calibrated affine", "run the calibrate pass before binary-encode")
    cfg = {"range": opts.range, "range_scale": opts.range_scale}
    neurons: dict[str, int] = {}
    leads: dict[str, list[float]] = {}
    stale: set[str] = set()
    for affine in todo:
        stats = affine.meta[CALIBRATION_KEY]
        base = thresholds(stats, cfg)
        lead = leading_steps(stats["absmax"], base, span, opts.headroom, opts.max_lead)
        theta = (base.double() * torch.pow(2.0, lead.double())).float()
        site = AffineSite.of(gm, affine, theta)
        graph = gm.graph
        with graph.inserting_before(affine):
            theta_node = graph.get_attr(new_attr(gm, f"{site.name}.neuron.threshold", theta.to(site.w.device)))
            spikes = graph.call_function(ops.few_spike, (site.x, theta_node),
                                         {"timesteps": timesteps, "signed_digits": signed_digits})
            setting = {"coding": "binary", "digits": opts.digits, "timesteps": timesteps,
                       "lead_mean": float(lead.double().mean()), "lead_max": int(lead.max())}
            spikes.meta.update({**site.neuron_meta(), NEURON_KEY: setting})
            readout = graph.call_function(ops.binary_readout_affine,
                                          (spikes, fold_weight(gm, site, theta), site.b_node))
        stale |= replace_affine(gm, site, readout)
        readout.meta[NEURON_KEY] = dict(setting)
        neurons[site.role] = neurons.get(site.role, 0) + int(theta.numel())
        leads.setdefault(site.role, []).extend(lead.tolist())
    finish(gm, ctx, stale, len(todo), neurons)
    ctx.record("digits", opts.digits)
    ctx.record("lead_mean", {r: sum(v) / len(v) for r, v in leads.items()})
    ctx.record("lead_max", {r: max(v) for r, v in leads.items()})
    ctx.record("skipped", [spikec_name(a) for a in affines if a not in todo][:20])

