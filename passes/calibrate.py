"""``calibrate``: per-channel statistics of every affine's input over calibration text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from tqdm import tqdm

from spikec.core import ops
from spikec.core.errors import InputError, ResourceError, UsageError
from spikec.core.options import from_options, option_field
from spikec.core.passes import PassContext

from .fx_graph import attr_tensor, calls, get_arg, module_device

META_KEY = "spikec_calibration"
DEFAULT_PERCENTILE = 99.9  # per channel; measured better than 99.99 and abs-max with burst neurons
TOPK_BUDGET_BYTES = 1 << 30  # memory allowed for the exact percentile buffers of all layers


@dataclass(frozen=True)
class CalibrateOptions:
    """Options of the ``calibrate`` pass, also read by the passes that observe activations the
    same way (``spike-softmax``, ``token-encode``, ``portable-encode``)."""

    percentile: float = option_field("calibration_percentile", DEFAULT_PERCENTILE,
                                     "the per-channel percentile of |x| measured, in (0, 100]")
    batch: int = option_field("calibration_batch", 4, "calibration samples run at a time")

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise UsageError(f"calibration_percentile must be in (0, 100], got {self.percentile}")
        if self.batch < 1:
            raise UsageError(f"calibration_batch must be at least 1, got {self.batch}")


class ChannelStats:
    """Running per-channel statistics of ``|x|`` over a known number of tokens.

    Keeps the abs-max and the ``k`` largest values per channel, which is all an exact
    high percentile needs: with linear interpolation (``torch.quantile``'s rule) the
    ``q``-quantile of ``n`` values lies between the sorted values ``floor(q*(n-1))``
    and the one above it, i.e. among the ``n - floor(q*(n-1))`` largest.
    """

    def __init__(self, channels: int, tokens: int, q: float):
        self.tokens, self.q = tokens, q
        self.lo = math.floor(q * (tokens - 1))
        self.k = tokens - self.lo
        self.seen = 0
        self.top = torch.empty(0, channels)  # [<= k, channels], descending

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).abs().float().cpu()
        self.seen += flat.shape[0]
        both = torch.cat([self.top, flat])
        self.top = torch.topk(both, min(self.k, both.shape[0]), dim=0).values

    def result(self) -> dict[str, Any]:
        if self.seen != self.tokens:
            raise RuntimeError(f"calibration saw {self.seen} tokens, expected {self.tokens}")
        pos = self.q * (self.tokens - 1)
        lower = self.top[self.tokens - 1 - self.lo]
        upper = self.top[max(self.tokens - 2 - self.lo, 0)]
        percentile = torch.lerp(lower, upper, pos - self.lo) if pos > self.lo else lower
        return {
            "absmax": self.top[0].clone(),
            "percentile": percentile.clone(),
            "q": self.q * 100.0,
            "tokens": self.tokens,
        }


class _Observer(fx.Interpreter):
    """Runs the module and feeds each watched node's value to its statistics; values
    are freed as soon as no later node needs them (Interpreter's garbage collection)."""

    def __init__(self, gm: fx.GraphModule, watch: dict[fx.Node, ChannelStats]):
        super().__init__(gm, garbage_collect_values=True)
        self.watch = watch

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.watch:
            self.watch[n].update(out)
        return out


def observe_nodes(gm: fx.GraphModule, data: torch.Tensor, watch: dict[fx.Node, Any], batch: int,
                  desc: str | None = None) -> None:
    """Run ``gm`` on the token ids ``data [samples, positions]``, ``batch`` samples at a time,
    feeding each watched node's value to its statistics (any object with ``update(value)``);
    ``desc``: a progress bar's label (None: no bar)."""
    device = module_device(gm)
    observer = _Observer(gm, watch)
    with torch.no_grad():
        bar = tqdm(range(0, data.shape[0], batch), desc=desc, unit="batch", disable=None if desc else True,
                   leave=False)
        for start in bar:
            observer.run(data[start:start + batch].to(device))


def calibrate(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Measure per-channel abs-max and a high percentile of |x| at every affine input.

    Matches every ``ops.affine`` node. Runs ``ctx.calibration`` (int64
    ``[samples, positions]``) through the module in batches of
    ``ctx.option("calibration_batch", 4)`` samples and stores in
    ``node.meta["spikec_calibration"]`` a dict with ``absmax`` and ``percentile``
    (float32 ``[in_features]`` CPU tensors, units of the input), ``q`` (the percentile,
    ``calibration_percentile``, default ``DEFAULT_PERCENTILE``; ``CalibrateOptions``) and ``tokens``. The percentile is
    exact (``torch.quantile``'s linear interpolation over all calibration tokens) yet
    memory stays small: only the few largest values per channel are kept, one layer's
    activations are live at a time. An input feeding several affines is measured once.
    Raises ``InputError`` when calibration data is missing or empty. Graph unchanged.
    """
    data = ctx.calibration
    if data is None or data.numel() == 0:
        raise InputError("no calibration data: the calibrate pass needs token ids [samples, positions]",
                         "give calibration text (--calib-text) with enough tokens, or drop the pass")
    if data.dim() != 2:
        raise InputError(f"calibration token ids must be [samples, positions], got shape {list(data.shape)}")
    opts = from_options(CalibrateOptions, ctx.options)
    percentile, batch = opts.percentile, opts.batch

    tokens = data.shape[0] * data.shape[1]
    watch: dict[fx.Node, ChannelStats] = {}
    affines = list(calls(gm, ops.affine))
    for affine in affines:
        x = get_arg(affine, 0, "x")
        if x not in watch:
            weight = attr_tensor(gm, get_arg(affine, 1, "weight"))
            if weight is None:
                raise UsageError(f"affine {affine.name} has no tensor weight; cannot size its statistics")
            watch[x] = ChannelStats(weight.shape[1], tokens, percentile / 100.0)
    need = sum(s.k * s.top.shape[1] * 4 for s in watch.values())
    if need > TOPK_BUDGET_BYTES:
        raise ResourceError(
            f"an exact {percentile}th percentile over {tokens} tokens needs {need / 2**30:.1f} GiB of buffers",
            "use a higher calibration_percentile or fewer calibration tokens")

    observe_nodes(gm, data, watch, batch, "calibrate")
    for affine in affines:
        affine.meta[META_KEY] = watch[get_arg(affine, 0, "x")].result()
    ctx.record("affines", len(affines))
    ctx.record("inputs_observed", len(watch))
    ctx.record("tokens", tokens)
    ctx.record("percentile", percentile)
    ctx.record("percentile_method", "exact (top-k per channel, linear interpolation)")
