"""``portable-encode``: the rate-coded conversion with neurons standard NIR can express.

``spike-encode`` drives every affine with ``SpikecSignedIF`` neurons (signed, reset by
subtraction, bursts), which only spikec's extension node can describe. This pass uses
what every NIR importer agrees on instead: NIR ``IF`` neurons with ``r = 1``,
``v_threshold = 1``, ``v_reset = 0`` (one spike a step at most, reset to zero, membrane
from 0), fed through a standard ``Linear`` that splits the real input ``x`` into the
two unsigned currents ``[x / theta; -x / theta]``, and read out by a standard ``Affine``
holding the columns ``[W * g | -W * g]`` (``g = theta * gain``) followed by ``SpikecRateReadout``.
In ``model.nir`` everything but the readout is standard NIR, so
``spikec export-nir --profile portable`` can write every spiking affine as a
stand-alone standard NIR graph (``spikec.backends.portable``).

The reset to zero costs accuracy: with a constant current ``u = x / theta`` the neuron
fires every ``floor(1/u) + 1`` steps, so its rate ``1 / (floor(1/u) + 1)`` lies between
``u / (1 + u)`` and ``u`` and takes only about ``2 sqrt(T)`` distinct values over T steps
(the soft-reset SignedIF takes ``2BT + 1``), and it falls short of ``u`` (by up to half near
``u = 1``).
Fitting each channel's threshold and a readout gain on calibration data recovers part of
the loss. Measured figures: docs/interop.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from spikec.core import ops
from spikec.core.errors import UsageError
from spikec.core.options import from_options, option_field
from spikec.core.passes import PassContext

from .affine_rewrite import AffineSite, finish, replace_affine
from .fx_graph import calls, get_arg, new_attr, spikec_name
from .calibrate import META_KEY as CALIBRATION_KEY
from .calibrate import CalibrateOptions, observe_nodes
from .encode import NEURON_KEY, RANGES, provably_nonnegative, thresholds

PORTABLE_KEY = "spikec_portable"
DEFAULT_RANGE = "percentile"
DEFAULT_RANGE_SCALE = 1.5
DEFAULT_GAIN = 1.0
FITS = ("mse", "none")
FIT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)
"""Candidate thresholds of the ``mse`` fit, as multiples of the calibration statistic."""
IF_PARAMS = {"r": 1.0, "v_threshold": 1.0, "v_reset": 0.0}
"""The portable neuron: the values every NIR importer reads alike (SpikingJelly needs
``r = 1/dt`` with ``dt = 1``, uniform parameters; Norse ignores ``r`` and ``v_reset``)."""


@dataclass(frozen=True)
class PortableOptions:
    """Options of the ``portable-encode`` pass (docs/interop.md)."""

    range: str = option_field("portable_range", DEFAULT_RANGE, "threshold statistic: percentile or absmax",
                              choices=RANGES)
    range_scale: float = option_field("portable_range_scale", DEFAULT_RANGE_SCALE,
                                      "portable_fit=none: theta = statistic * scale")
    gain: float = option_field("portable_gain", DEFAULT_GAIN, "portable_fit=none: the readout gain")
    fit: str = option_field("portable_fit", "mse", "mse: per-channel threshold and readout gain fitted on the "
                            "calibration activations (fit_channels); none: the two options above", choices=FITS)

    def __post_init__(self) -> None:
        for key, value in (("range_scale", self.range_scale), ("gain", self.gain)):
            if not value > 0:
                raise UsageError(f"portable_{key} must be a positive number, got {value}")


def portable_config(ctx: PassContext) -> dict[str, Any]:
    """The pass options (``PortableOptions``) as the dict the neurons' meta records:
    ``range``, ``range_scale``, ``gain``, ``fit``."""
    opts = from_options(PortableOptions, ctx.options)
    return {"range": opts.range, "range_scale": opts.range_scale, "gain": opts.gain, "fit": opts.fit}


def sign_split(theta: torch.Tensor, signed: bool) -> torch.Tensor:
    """The encoder weight ``[2F, F]`` (``[F, F]`` when not signed): rows ``diag(1/theta)``
    then ``-diag(1/theta)``, so that neuron ``i`` gets ``x_i / theta_i`` and neuron
    ``F + i`` gets ``-x_i / theta_i``."""
    inv = torch.diag(1.0 / theta.float())
    return torch.cat([inv, -inv]) if signed else inv


def if_rate(u: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Closed form of the spike rate of ``ops.nir_if`` (r = 1, threshold 1, reset 0) under
    the constant current ``u``: ``floor(T / (floor(1/u) + 1)) / T`` for ``0 < u <= 1``, 1 above,
    0 at and below 0 (up to float rounding where ``v`` meets the threshold; used to fit, never
    to simulate)."""
    period = torch.floor(1.0 / u.clamp_min(1e-30)) + 1.0
    count = torch.where(u > 1, float(timesteps), torch.floor(timesteps / period))
    return torch.where(u > 0, count, torch.zeros_like(count)) / timesteps


class ChannelFit:
    """Running sums that choose, per input channel, the threshold (among ``base * FIT_SCALES``)
    and readout gain minimising the squared error of the portable rate code on what flows by."""

    def __init__(self, base: torch.Tensor, signed: bool, timesteps: int):
        self.theta = torch.stack([base.float().cpu() * s for s in FIT_SCALES])  # [S, F]
        self.signed, self.timesteps = signed, timesteps
        self.sxq = torch.zeros_like(self.theta, dtype=torch.float64)
        self.sqq = torch.zeros_like(self.sxq)
        self.sxx = torch.zeros(base.shape[0], dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).float().cpu()
        self.sxx += flat.pow(2).sum(0, dtype=torch.float64)
        # signed: rate(u) - rate(-u) = sign(u) rate(|u|), one rate per value
        magnitude, sign = (flat.abs(), flat.sign()) if self.signed else (flat, None)
        for j, theta in enumerate(self.theta):
            q = if_rate(magnitude / theta, self.timesteps) * theta
            if sign is not None:
                q = q * sign
            self.sxq[j] += (flat * q).sum(0, dtype=torch.float64)
            self.sqq[j] += q.pow(2).sum(0, dtype=torch.float64)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(theta [F], gain [F])``: least-squares gain ``sum(x q) / sum(q q)`` for every
        candidate threshold, then the candidate with the smallest remaining error."""
        live = self.sqq > 0
        gain = torch.where(live, self.sxq / self.sqq.clamp_min(1e-300), torch.ones_like(self.sqq))
        err = torch.where(live, self.sxx - self.sxq.pow(2) / self.sqq.clamp_min(1e-300), self.sxx)
        best = err.argmin(0)
        pick = lambda t: t.gather(0, best[None]).squeeze(0)  # noqa: E731
        return pick(self.theta).float(), pick(gain).clamp(0.5, 4.0).float()


def fit_channels(gm: fx.GraphModule, ctx: PassContext, fits: dict[fx.Node, ChannelFit]) -> None:
    """Run ``ctx.calibration`` through ``gm`` (batches of ``calibration_batch``) feeding each
    watched node's value to its ``ChannelFit``."""
    data = ctx.calibration
    if data is None or data.numel() == 0:
        raise UsageError("portable_fit=mse needs calibration data", "give calibration text or set portable_fit=none")
    observe_nodes(gm, data, fits, from_options(CalibrateOptions, ctx.options).batch)


def portable_encode(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Replace each calibrated affine by standard NIR IF neurons (reset to zero) and a readout affine.

    Matches every ``ops.affine`` with ``meta["spikec_calibration"]`` (others stay real
    and are listed as ``skipped``); burst settings of other passes do not apply (standard
    IF emits one spike a step). Per input channel it chooses a threshold ``theta`` and a
    readout gain: with ``portable_fit=mse`` (default) the pair, among ``FIT_SCALES`` times
    the calibration statistic, that minimises the squared error of the rate code on the
    calibration activations (one more run over ``ctx.calibration``, see ``ChannelFit``);
    with ``none``, ``theta = statistic * portable_range_scale`` and ``portable_gain``. For
    input ``x`` ``[.., F]`` it inserts
    ``u = ops.linear(x, E)`` with ``E = sign_split(theta, signed)`` (named
    ``<affine>.encode``, role ``encode``), ``s = ops.nir_if(u, T, r=1, v_threshold=1,
    v_reset=0)`` (``<affine>.neuron``, role ``neuron``, int8 ``[T, .., 2F]``) and
    ``ops.rate_readout_affine(s, [W*g | -W*g], b)`` with ``g = theta * gain`` per input
    column (keeps the affine's meta). ``signed`` is False only after a ReLU (then just the
    ``F`` positive neurons). Guarantees: each affine computes ``W q(x) + b`` with
    ``q(x) = g (rate(x/theta) - rate(-x/theta))``, ``rate`` the IF spike count over T
    divided by T; no existing tensor is modified. Raises ``UsageError`` when no affine is
    calibrated.
    """
    timesteps = ctx.timesteps
    cfg = portable_config(ctx)
    affines = list(calls(gm, ops.affine))
    todo = [a for a in affines if CALIBRATION_KEY in a.meta]
    if affines and not todo:
        raise UsageError("portable-encode found no calibrated affine", "run the calibrate pass before portable-encode")
    neurons: dict[str, int] = {}
    stale: set[str] = set()
    unsigned = 0
    fits: dict[fx.Node, ChannelFit] = {}
    if cfg["fit"] == "mse":
        for affine in todo:
            x = get_arg(affine, 0, "x")
            if x not in fits:
                base = thresholds(affine.meta[CALIBRATION_KEY], {**cfg, "range_scale": 1.0})
                fits[x] = ChannelFit(base, not provably_nonnegative(x), timesteps)
        fit_channels(gm, ctx, fits)
    fitted = {x: f.result() for x, f in fits.items()}
    for affine in todo:
        x = get_arg(affine, 0, "x")
        if x in fitted:
            theta, gain = fitted[x]
        else:
            theta = thresholds(affine.meta[CALIBRATION_KEY], cfg)
            gain = torch.full_like(theta, cfg["gain"])
        site = AffineSite.of(gm, affine, theta)
        w = site.w
        signed = not provably_nonnegative(x)
        theta, gain = theta.to(w.device), gain.to(w.device)
        settings = {**cfg, "signed": signed, "timesteps": timesteps, **IF_PARAMS}
        graph = gm.graph
        with graph.inserting_before(affine):
            enc = graph.get_attr(new_attr(gm, f"{site.name}.encode.weight", sign_split(theta, signed).to(w.dtype)))
            current = graph.call_function(ops.linear, (x, enc))
            current.meta.update(site.neuron_meta("encode", "encode"))
            spikes = graph.call_function(ops.nir_if, (current,), {"timesteps": timesteps, **IF_PARAMS})
            spikes.meta.update({**site.neuron_meta(), PORTABLE_KEY: settings})
            folded = w.float() * (theta * gain)[None, :]
            readout_w = torch.cat([folded, -folded], dim=1) if signed else folded
            w_readout = graph.get_attr(new_attr(gm, f"{site.name}.weight_spiking", readout_w.to(w.dtype)))
            readout = graph.call_function(ops.rate_readout_affine, (spikes, w_readout, site.b_node))
        stale |= replace_affine(gm, site, readout)
        readout.meta.pop(NEURON_KEY, None)
        readout.meta[PORTABLE_KEY] = settings
        neurons[site.role] = neurons.get(site.role, 0) + int(theta.numel()) * (2 if signed else 1)
        unsigned += not signed
    finish(gm, ctx, stale, len(todo), neurons)
    ctx.record("neuron", "NIR IF r=1 v_threshold=1 v_reset=0 (sign-split, one spike a step, reset to zero)")
    ctx.record("range", cfg["range"])
    ctx.record("fit", cfg["fit"])
    if fitted:
        scales = torch.cat([f.result()[0] / f.theta[FIT_SCALES.index(1.0)] for f in fits.values()])
        gains = torch.cat([g for _, g in fitted.values()])
        ctx.record("fitted_range_scale_median", float(scales.median()))
        ctx.record("fitted_gain_median", float(gains.median()))
    else:
        ctx.record("range_scale", cfg["range_scale"])
        ctx.record("gain", cfg["gain"])
    ctx.record("unsigned_layers", unsigned)
    ctx.record("skipped", [spikec_name(a) for a in affines if a not in todo][:20])
