"""``binary-encode``: the few-spike (binary) conversion of every calibrated affine (``--coding binary``).

The rate path's ``spike-encode`` spends about ``T |x| / theta`` spikes on a value; a binary
code spends one spike per set bit of ``round(|x| / LSB)`` in T steps, step k weighted
``2^-k`` of its first step (``spikec.core.few_spike``, docs/few-spike.md).

Thresholds: the first step's weight of input channel c is ``theta_c = 2^E_c * p_c`` where
``p_c`` is the calibration statistic (``binary_range``, default the percentile, times
``binary_range_scale``) and ``E_c >= 0`` the fewest leading steps whose code spans the
channel's calibration abs-max times ``binary_headroom`` (default ``HEADROOM``): outliers are
carried, not clipped, at the price of resolution in their own channel only.

Balanced ternary (``binary_digits=ternary``, ``--coding ternary``): step k weighted ``3^-k``,
``3^T`` levels in T steps; the code spans ``ternary_span * p_c`` in every channel (``theta_c =
ternary_span * p_c / (1.5 (1 - 3^-T))``): with 2,187 levels at T=7 range and resolution need
not be traded per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from spikec.core import few_spike, ops
from spikec.core.errors import UsageError
from spikec.core.options import from_options, option_field
from spikec.core.passes import PassContext

from .affine_rewrite import AffineSite, finish, fold_weight, replace_affine
from .calibrate import META_KEY as CALIBRATION_KEY
from .encode import NEURON_KEY, RANGES, thresholds
from .fx_graph import calls, new_attr, spikec_name

DIGITS = ("binary", "signed", "ternary")
HEADROOM = 2.0
"""Default ``binary_headroom``: chosen on text other than the held-out docstrings (calibration on
the GPL-3 text, perplexity on embedded:finetune_numpy_docstrings.txt, SmolLM2-135M, T=7): ratio
1.19 at 1, 1.098 at 2, 1.105 at 3, 1.27 at 4 (range against resolution; docs/few-spike.md)."""
TERNARY_SPAN = 16.0
"""Default ``ternary_span``: chosen as ``HEADROOM`` was, on the tuning text (never the held-out
docstrings), SmolLM2-135M, T=7, fake-quantized affine inputs: ppl ratio 1.061 at 4, 1.015 at 8,
1.013 at 16, 1.040 at 32 (docs/few-spike.md)."""


@dataclass(frozen=True)
class BinaryEncodeOptions:
    """Options of ``binary-encode``."""

    digits: str = option_field("binary_digits", "binary",
                               "digit set: binary (sign and bits), signed (non-adjacent signed digits) or "
                               "ternary (balanced ternary, step k weighted 3^-k; --coding ternary)",
                               choices=DIGITS)
    range: str = option_field("binary_range", "percentile", "per-channel statistic p: absmax or percentile",
                              choices=RANGES)
    range_scale: float = option_field("binary_range_scale", 1.0, "p = statistic * binary_range_scale")
    headroom: float = option_field("binary_headroom", HEADROOM,
                                   "the code spans at least the calibration abs-max times this")
    max_lead: int = option_field("binary_max_lead", 8, "most leading steps E above p", low=0, high=16)
    ternary_span: float = option_field("ternary_span", TERNARY_SPAN,
                                       "ternary digits: the code spans this multiple of p in every channel")

    def __post_init__(self) -> None:
        if not self.range_scale > 0 or not self.headroom > 0 or not self.ternary_span > 0:
            raise UsageError(f"binary_range_scale, binary_headroom and ternary_span must be positive, got "
                             f"{self.range_scale}, {self.headroom} and {self.ternary_span}")


def code_span(timesteps: int, signed_digits: bool, radix: int = 2) -> float:
    """The largest ``|u|`` (threshold units) a T-step code represents without saturating."""
    if radix == 3:
        return 1.5 * (1.0 - 3.0 ** -timesteps)
    return 4.0 / 3.0 if signed_digits else 2.0 - 2.0 ** (1 - timesteps)


def leading_steps(absmax: torch.Tensor, base: torch.Tensor, span: float, headroom: float, max_lead: int
                  ) -> torch.Tensor:
    """Per channel the fewest ``E`` in ``0..max_lead`` with ``span * 2^E * base >= headroom * absmax``
    (int64 ``[features]``)."""
    need = torch.log2((headroom * absmax.double()) / (span * base.double())).clamp(min=0.0)
    return torch.ceil(need - 1e-12).clamp(max=max_lead).to(torch.int64)


def binary_encode(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Replace each calibrated affine by few-spike neurons and a Horner-readout affine.

    Matches every ``ops.affine`` node with ``meta["spikec_calibration"]``. For input ``x`` it
    inserts ``spikes = ops.few_spike(x, theta, timesteps=ctx.timesteps, signed_digits=d[, radix=3])``
    (int8 ``[T, batch, positions, in]``, named ``<affine>.neuron``, role ``neuron``) and
    ``ops.binary_readout_affine(spikes, W * theta[None, :], b)``; theta per channel as the module
    docstring says (``BinaryEncodeOptions``). Guarantees: each affine now computes ``W @ Q(x) + b``
    with Q the few-spike quantizer (``few_spike.few_spike_value``); no existing tensor is modified.
    Records the leading steps per role (mean and max of E) and the digit set.
    Raises ``UsageError`` when no affine is calibrated or T is outside ``1..few_spike.MAX_STEPS``.
    """
    timesteps = ctx.timesteps
    opts = from_options(BinaryEncodeOptions, ctx.options)
    radix = 3 if opts.digits == "ternary" else 2
    coding = "ternary" if radix == 3 else "binary"
    if not 1 <= timesteps <= few_spike.max_steps(radix):
        raise UsageError(f"--coding {coding} takes -T 1..{few_spike.max_steps(radix)} (steps per token), got {timesteps}")
    signed_digits = opts.digits != "binary"
    span = code_span(timesteps, signed_digits, radix)
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
        if radix == 3:
            theta = (base.double() * (opts.ternary_span / span)).float()
            setting_range = {"ternary_span": opts.ternary_span}
        else:
            lead = leading_steps(stats["absmax"], base, span, opts.headroom, opts.max_lead)
            theta = (base.double() * torch.pow(2.0, lead.double())).float()
            setting_range = {"lead_mean": float(lead.double().mean()), "lead_max": int(lead.max())}
        site = AffineSite.of(gm, affine, theta)
        if radix == 2:
            leads.setdefault(site.role, []).extend(lead.tolist())
        graph = gm.graph
        with graph.inserting_before(affine):
            theta_node = graph.get_attr(new_attr(gm, f"{site.name}.neuron.threshold", theta.to(site.w.device)))
            kwargs = {"timesteps": timesteps, "signed_digits": signed_digits, **({"radix": 3} if radix == 3 else {})}
            spikes = graph.call_function(ops.few_spike, (site.x, theta_node), kwargs)
            setting = {"coding": coding, "digits": opts.digits, "timesteps": timesteps, **setting_range}
            spikes.meta.update({**site.neuron_meta(), NEURON_KEY: setting})
            readout = graph.call_function(ops.binary_readout_affine,
                                          (spikes, fold_weight(gm, site, theta), site.b_node),
                                          {"radix": 3} if radix == 3 else {})
        stale |= replace_affine(gm, site, readout)
        readout.meta[NEURON_KEY] = dict(setting)
        neurons[site.role] = neurons.get(site.role, 0) + int(theta.numel())
    finish(gm, ctx, stale, len(todo), neurons)
    ctx.record("digits", opts.digits)
    if radix == 3:
        ctx.record("ternary_span", opts.ternary_span)
    else:
        ctx.record("lead_mean", {r: sum(v) / len(v) for r, v in leads.items()})
        ctx.record("lead_max", {r: max(v) for r, v in leads.items()})
    ctx.record("skipped", [spikec_name(a) for a in affines if a not in todo][:20])

