"""``ssa``: spiking self-attention in place of softmax attention (NeurTransformer,
SpikeDecoder, Spikformer), initialised on calibration data.

The operator, its neurons and surrogate gradients are ``spikec.core.ssa``; its fine-tuning is
the ``ssa-finetune`` pass (``passes/ssa_finetune.py``); docs/ssa.md describes the method, its
options and measured figures. This module also holds what both passes share: the SSA node's
tensor fields, the calibration probe (``Probe``) and the checks on calibration token ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from tqdm import tqdm

from spikec.core import ops
from spikec.core import ssa as core_ssa
from spikec.core.errors import InputError, UnsupportedError, UsageError
from spikec.core.options import from_options, option_field
from spikec.core.passes import PassContext

from .fx_graph import (
    attr_tensor,
    calls,
    drop_unused_attrs,
    erase_if_unused,
    get_arg,
    module_device,
    new_attr,
    set_arg,
    spikec_name,
)
from .encode import NEURON_KEY

DECAYS = (1.0, 0.98, 0.95, 0.9, 0.8, 0.6, 0.3)  # per-head candidates of ``ssa_decay=fit``
NODE_KEY = "spikec_ssa"  # meta of an SSA node: its settings and the attention it replaced
FIELDS = ("q_threshold", "k_threshold", "v_threshold", "scale", "o_threshold")  # tensor args 1..5, in order
OPTIONAL_FIELDS = ("decay", "map_threshold", "map_bias")  # tensor keyword args, when in use
MIN_THRESHOLD_FRACTION = 1e-6  # a silent channel's threshold, relative to the layer's largest
MIN_THRESHOLD = 1e-12


@dataclass(frozen=True)
class SSAOptions:
    """Options of the ``ssa`` pass (docs/ssa.md)."""

    signed: bool = option_field("ssa_signed", True, "ternary spikes {-1, 0, 1}; false: binary {0, 1} (Spikformer)")
    tau: float = option_field("ssa_tau", 0.0, "0 for IF neurons, else the LIF time constant, at least 1 "
                              "(SpikeDecoder: 2)", low=0.0)
    normalize: bool = option_field("ssa_normalize", True, "divide A_t V_t by the number of attended positions")
    percentile: float = option_field("ssa_percentile", 99.0, "Q/K/V thresholds: this percentile of |current| "
                                     "per channel, in (0, 100]", low=0.0, high=100.0)
    output_percentile: float = option_field("ssa_output_percentile", 99.9, "output thresholds: this percentile "
                                            "per channel, in (0, 100]", low=0.0, high=100.0)
    samples: int = option_field("ssa_calibration_samples", 4, "calibration samples used to initialise", low=1)
    decay: str = option_field("ssa_decay", "none", "fit: a decaying causal mask decay**(i - j) per head, chosen "
                              "from DECAYS and trained by ssa-finetune; none: Spikformer's plain causal mask",
                              choices=("none", "fit"))
    map: str = option_field("ssa_map", "none", "spike: a spiking neuron on every entry of the attention map "
                            "(per head and causal pair); none: the raw spike products form the map",
                            choices=("none", "spike"))
    map_percentile: float = option_field("ssa_map_percentile", 90.0, "each head's initial map threshold: this "
                                         "percentile of |mean_t Q_t K_t^T| over its causal pairs, in (0, 100]",
                                         low=0.0, high=100.0)

    def __post_init__(self) -> None:
        if 0 < self.tau < 1:
            raise UsageError(f"ssa_tau must be 0 (IF neurons) or at least 1 (LIF), got {self.tau}")
        for name, value in (("ssa_percentile", self.percentile), ("ssa_output_percentile", self.output_percentile),
                            ("ssa_map_percentile", self.map_percentile)):
            if not value > 0:
                raise UsageError(f"{name} must be in (0, 100], got {value}")


class Probe(fx.Interpreter):
    """Runs a module; ``before[node](args)`` sees a node's argument values before it runs,
    ``replace[node](args)`` computes the value that stands for the node's own."""

    def __init__(self, gm: fx.GraphModule, before: dict[fx.Node, Callable] | None = None,
                 replace: dict[fx.Node, Callable] | None = None):
        super().__init__(gm, garbage_collect_values=True)
        self.before, self.replace = before or {}, replace or {}

    def run_node(self, n: fx.Node) -> Any:
        if n in self.before or n in self.replace:
            args, _ = self.fetch_args_kwargs_from_env(n)
            if n in self.before:
                self.before[n](args)
            if n in self.replace:
                return self.replace[n](args)
        return super().run_node(n)


def calibration_ids(ctx: PassContext, samples: int | None, what: str) -> torch.Tensor:
    """The first ``samples`` (all when 0 or None) calibration token ids ``[samples, positions]``;
    ``InputError`` naming pass ``what`` when there are none or they are not 2-D."""
    data = ctx.calibration
    if data is None or data.numel() == 0:
        raise InputError(f"no calibration data: the {what} pass needs token ids [samples, positions]",
                         "give calibration text (--calib-text) with enough tokens")
    if data.dim() != 2:
        raise InputError(f"calibration token ids must be [samples, positions], got shape {list(data.shape)}")
    return data[:samples] if samples else data


def _channel_percentile(x: torch.Tensor, percentile: float) -> torch.Tensor:
    """Per-channel ``percentile`` of ``x [tokens, channels]`` (a value of x, no interpolation),
    floored at a tiny positive threshold so that silent channels stay valid."""
    k = min(max(1, math.ceil(percentile / 100.0 * x.shape[0])), x.shape[0])
    theta = x.float().kthvalue(k, dim=0).values
    floor = max(float(theta.max()) * MIN_THRESHOLD_FRACTION, MIN_THRESHOLD)
    return torch.where(theta > floor, theta, torch.full_like(theta, floor))


def _by_channel(x: torch.Tensor) -> torch.Tensor:
    """``[b, heads, P, D]`` -> ``[b * P, heads * D]`` (the projections' channel order)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1] * x.shape[3])


def _input_thresholds(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: SSAOptions) -> dict[str, torch.Tensor]:
    """Q/K/V thresholds ``[H*D]``, ``[KV*D]``, ``[KV*D]`` of heads ``[b, heads, P, D]``: the
    ``cfg.percentile`` of |current| per channel (of its positive part for binary spikes)."""
    def magnitude(x: torch.Tensor) -> torch.Tensor:
        x = _by_channel(x)
        return x.abs() if cfg.signed else x.clamp(min=0)

    return {f: _channel_percentile(magnitude(x), cfg.percentile)
            for f, x in (("q_threshold", q), ("k_threshold", k), ("v_threshold", v))}


def _fit_scale(qkv: torch.Tensor, yc: torch.Tensor, thr: dict[str, torch.Tensor], shape: dict[str, Any],
               timesteps: int, cfg: SSAOptions, decay: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z (the mean over T of the normalised ``A_t V_t``, ``[b*P, H*D]``), the per-channel
    least-squares scale of the centred target ``yc`` by z, and the per-head unexplained variance."""
    h, kv, d, rope = shape["num_heads"], shape["num_kv_heads"], shape["head_dim"], shape["rope_theta"]
    ones = torch.ones(h * d, device=qkv.device)
    maps = {f: thr[f] for f in ("map_threshold", "map_bias") if f in thr}
    current = core_ssa.ssa_forward(qkv, thr["q_threshold"], thr["k_threshold"], thr["v_threshold"], ones, ones,
                                   h, kv, d, rope, timesteps, cfg.signed, cfg.tau, cfg.normalize,
                                   output="current", decay=decay, **maps).mean(0)
    z = current.reshape(-1, h * d).double()
    zc = z - z.mean(0)
    den = (zc * zc).sum(0)
    scale = torch.where(den > 0, (zc * yc).sum(0) / den.clamp(min=1e-300), torch.zeros_like(den))
    error = ((yc - scale * zc) ** 2).sum(0).reshape(h, d).sum(-1)
    return z, scale, error


def _fit_decay(qkv: torch.Tensor, yc: torch.Tensor, thr: dict[str, torch.Tensor], shape: dict[str, Any],
               timesteps: int, cfg: SSAOptions) -> torch.Tensor:
    """Per head ``[H]``, the candidate of ``DECAYS`` whose scale fit leaves the least error."""
    h = shape["num_heads"]
    best = torch.full((h,), math.inf, dtype=torch.float64)
    decay = torch.ones(h)
    for candidate in DECAYS:
        _, _, error = _fit_scale(qkv, yc, thr, shape, timesteps, cfg, torch.full((h,), candidate, device=qkv.device))
        better = error.cpu() < best
        best = torch.where(better, error.cpu(), best)
        decay = torch.where(better, torch.tensor(candidate), decay)
    return decay


def initial_parameters(qkv: torch.Tensor, shape: dict[str, Any], timesteps: int, cfg: SSAOptions) -> dict[str, torch.Tensor]:
    """Thresholds, scale and output offset of one SSA layer from its calibration currents ``qkv [b, P, F]``.

    Q/K/V thresholds: the ``cfg.percentile`` of |current| per channel (of its positive part
    for binary spikes). scale and ``offset``: per output channel, the least-squares fit
    ``y ~ scale * z + offset`` of the softmax attention's output y by z, the mean over T of
    ``A_t V_t`` (normalised). Output thresholds: the ``cfg.output_percentile`` of
    |scale * z| per channel. The offset (constant over positions: e.g. what attention
    sinks contribute) goes into the output projection's bias. With ``cfg.map == "spike"``:
    ``map_threshold`` per head (``_map_thresholds``) and ``map_bias`` 0, set before the fits.
    With ``cfg.decay == "fit"``: ``decay`` per head (``_fit_decay``). Returns cpu tensors keyed
    by ``FIELDS``, ``offset`` and the ``OPTIONAL_FIELDS`` in use."""
    h, kv, d, rope = shape["num_heads"], shape["num_kv_heads"], shape["head_dim"], shape["rope_theta"]
    qkv = qkv.float()
    q, k, v = core_ssa.split_heads(qkv, h, kv, d, rope)
    thr = _input_thresholds(q, k, v, cfg)
    if cfg.map == "spike":
        thr["map_threshold"] = _map_thresholds(q, k, thr, kv, timesteps, cfg)
        thr["map_bias"] = torch.zeros(h, device=qkv.device)
    target = ops.attention(qkv, h, kv, d, rope, shape["attention_scale"])
    y = target.reshape(-1, h * d).double()
    yc = y - y.mean(0)
    decay = None
    if cfg.decay == "fit":
        decay = thr["decay"] = _fit_decay(qkv, yc, thr, shape, timesteps, cfg)
    z, scale, _ = _fit_scale(qkv, yc, thr, shape, timesteps, cfg, None if decay is None else decay.to(qkv.device))
    thr["offset"] = (y.mean(0) - scale * z.mean(0)).float()
    out = (z * scale).float()
    thr["o_threshold"] = _channel_percentile(out.abs() if cfg.signed else out.clamp(min=0), cfg.output_percentile)
    thr["scale"] = scale.float()
    return {f: thr[f].cpu() for f in (*FIELDS, "offset", *OPTIONAL_FIELDS) if f in thr}


def _map_thresholds(q: torch.Tensor, k: torch.Tensor, thr: dict[str, torch.Tensor], num_kv_heads: int,
                    timesteps: int, cfg: SSAOptions) -> torch.Tensor:
    """Initial map threshold per head ``[H]``: the ``cfg.map_percentile`` of ``|mean_t Q_t K_t^T|``
    over the causal pairs of ``q [b, H, P, D]``, ``k [b, KV, P, D]`` (rotated), at the
    initial Q/K thresholds."""
    h, d = q.shape[1], q.shape[-1]
    tq = core_ssa.input_spikes(q / thr["q_threshold"].reshape(h, 1, d), timesteps, False, cfg.signed, cfg.tau)
    tk = core_ssa.input_spikes(k / thr["k_threshold"].reshape(num_kv_heads, 1, d), timesteps, False, cfg.signed,
                               cfg.tau)
    tk = tk.repeat_interleave(h // num_kv_heads, dim=-3)
    positions = q.shape[-2]
    causal = torch.ones(positions, positions, dtype=torch.bool, device=q.device).tril()
    # one head at a time: the [T, b, P, P] products of all heads at once can be large
    scores = torch.stack([(tq[:, :, i] @ tk[:, :, i].transpose(-1, -2)).mean(0)[:, causal].flatten()
                          for i in range(h)], dim=1)  # [b * causal pairs, H]
    return _channel_percentile(scores.abs(), cfg.map_percentile).clamp(min=1.0 / timesteps)


def _attention_shape(attn: fx.Node) -> dict[str, Any]:
    return {
        "num_heads": int(get_arg(attn, 1, "num_heads")), "num_kv_heads": int(get_arg(attn, 2, "num_kv_heads")),
        "head_dim": int(get_arg(attn, 3, "head_dim")), "rope_theta": float(get_arg(attn, 4, "rope_theta", 0.0)),
        "attention_scale": get_arg(attn, 5, "scale", None),
    }


def _check_consumers(attn: fx.Node) -> None:
    """SSA replaces the attention and the encoder of the affine(s) reading it: each user must be
    an affine, or a ``signed_if`` read only by rate-readout affines (after ``spike-encode``)."""
    name = spikec_name(attn)
    if get_arg(attn, 6, "causal", True) is not True:
        raise UnsupportedError(f"{name}: SSA is implemented for causal (decoder) attention only")
    if get_arg(attn, 7, "rotary_dim", 0):
        raise UnsupportedError(f"{name}: SSA does not implement partial rotary embeddings (GPT-NeoX, Phi)",
                               hint="use the default softmax attention")
    if get_arg(attn, 8, "window", 0):
        raise UnsupportedError(f"{name}: SSA does not implement sliding-window attention (Mistral, Qwen2)",
                               hint="use the default softmax attention")
    for user in attn.users:
        if user.target is ops.affine and get_arg(user, 0, "x") is attn:
            continue
        if user.target is ops.signed_if and all(
                r.target is ops.rate_readout_affine and get_arg(r, 0, "spikes") is user for r in user.users):
            continue
        raise UnsupportedError(f"{name}: its output feeds {spikec_name(user)} ({getattr(user.target, '__name__', user.target)}), "
                               "not an affine; SSA needs the attention's output to feed its projection directly")


def _read_through(gm: fx.GraphModule, readout: fx.Node, source: fx.Node, unfold: torch.Tensor | None,
                  theta_o: torch.Tensor, offset: torch.Tensor, stale: set[str]) -> None:
    """Make ``readout`` (a rate_readout_affine) read the SSA spikes ``source``: its real-valued
    weight ``W = weight * unfold`` (``unfold``: 1 / the encoder thresholds folded into it, or
    None) becomes ``W * theta_o`` and its bias ``b + W @ offset``."""
    w_node, b_node = get_arg(readout, 1, "weight"), get_arg(readout, 2, "bias")
    w = attr_tensor(gm, w_node)
    b = attr_tensor(gm, b_node) if b_node is not None else None
    if w is None or (b_node is not None and b is None):
        raise UnsupportedError(f"{spikec_name(readout)}: its weight and bias must be tensor attributes")
    real = w.double().cpu()
    if unfold is not None:
        real = real * unfold.double()[None, :]
    folded = (real * theta_o.double()[None, :]).to(w.dtype).to(w.device)
    bias = real @ offset.double() + (0.0 if b is None else b.double().cpu())
    name = spikec_name(readout)
    with gm.graph.inserting_before(readout):
        set_arg(readout, 1, "weight", gm.graph.get_attr(new_attr(gm, f"{name}.weight_ssa", folded)))
        set_arg(readout, 2, "bias", gm.graph.get_attr(new_attr(gm, f"{name}.bias_ssa", bias.to(w.dtype).to(w.device))))
    set_arg(readout, 0, "spikes", source)
    # The projection as it was (real-valued input): ssa-finetune's teacher.
    source.meta[NODE_KEY]["teacher"] = {"weight": real.float(), "bias": None if b is None else b.detach().float().cpu()}
    readout.meta.pop(NEURON_KEY, None)
    readout.meta["spikec_input"] = spikec_name(source)
    stale |= erase_if_unused(gm, [w_node, b_node])


def _rewire_consumers(gm: fx.GraphModule, attn: fx.Node, node: fx.Node, theta_o: torch.Tensor,
                      offset: torch.Tensor, stale: set[str]) -> None:
    """Make every reader of ``attn`` a rate readout of the SSA spikes ``node`` (``_read_through``):
    a ``signed_if`` encoder is removed and its readouts read the spikes; a real-valued affine
    becomes a ``rate_readout_affine``."""
    graph = gm.graph
    for user in list(attn.users):
        if user.target is ops.signed_if:  # spike-encode's encoder of the output projection: SSA spikes replace it
            theta_enc = attr_tensor(gm, get_arg(user, 1, "threshold")).float().cpu()
            for readout in list(user.users):
                _read_through(gm, readout, node, 1.0 / theta_enc, theta_o, offset, stale)
            args = list(user.all_input_nodes)
            graph.erase_node(user)
            stale |= erase_if_unused(gm, args)
        else:  # a real-valued affine: it becomes a rate readout of the SSA spikes
            with graph.inserting_before(user):
                readout = graph.call_function(
                    ops.rate_readout_affine, (attn, get_arg(user, 1, "weight"), get_arg(user, 2, "bias")))
            readout.meta.update(user.meta)
            user.replace_all_uses_with(readout)
            graph.erase_node(user)
            _read_through(gm, readout, node, None, theta_o, offset, stale)


def _replace(gm: fx.GraphModule, attn: fx.Node, init: dict[str, torch.Tensor], shape: dict[str, Any],
             timesteps: int, cfg: SSAOptions, stale: set[str]) -> fx.Node:
    """Put a ``spiking_self_attention`` node with parameters ``init`` in place of ``attn`` and
    make its readers read the spikes; returns the new node (``stale``: attributes to drop)."""
    graph = gm.graph
    name = spikec_name(attn)
    ssa_name = (name.removesuffix(".core")) + ".ssa"
    device = module_device(gm)
    with graph.inserting_before(attn):
        params = [graph.get_attr(new_attr(gm, f"{ssa_name}.{f}", init[f].to(device))) for f in FIELDS]
        node = graph.call_function(
            core_ssa.spiking_self_attention, (get_arg(attn, 0, "qkv"), *params),
            {"num_heads": shape["num_heads"], "num_kv_heads": shape["num_kv_heads"], "head_dim": shape["head_dim"],
             "rope_theta": shape["rope_theta"], "timesteps": timesteps, "signed": cfg.signed, "tau": cfg.tau,
             "normalize": cfg.normalize})
    for f in OPTIONAL_FIELDS:
        if f in init:
            with graph.inserting_before(node):
                node.update_kwarg(f, graph.get_attr(new_attr(gm, f"{ssa_name}.{f}", init[f].to(device))))
    node.meta.update({
        "spikec_name": ssa_name, "role": "attention", "module_path": attn.meta.get("module_path", ""),
        NODE_KEY: {"replaces": name, "attention_scale": shape["attention_scale"], "signed": cfg.signed,
                   "tau": cfg.tau, "normalize": cfg.normalize, "timesteps": timesteps, "map": cfg.map},
    })
    _rewire_consumers(gm, attn, node, init["o_threshold"], init["offset"], stale)
    graph.erase_node(attn)
    return node


def _record_currents(gm: fx.GraphModule, attns: list[fx.Node], data: torch.Tensor,
                     batch: int) -> dict[fx.Node, torch.Tensor]:
    """Each attention's input (its fused qkv current ``[samples, P, F]``) over ``data``."""
    currents: dict[fx.Node, list[torch.Tensor]] = {a: [] for a in attns}
    probe = Probe(gm, before={a: (lambda args, a=a: currents[a].append(args[0].detach().float())) for a in attns})
    device = module_device(gm)
    with torch.no_grad():
        for start in range(0, data.shape[0], batch):
            probe.run(data[start:start + batch].to(device))
    return {a: torch.cat(currents.pop(a)) for a in attns}  # one list at a time: peak memory as recorded


def ssa_pass(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Replace every softmax attention with causal spiking self-attention (SSA).

    Matches every ``ops.attention`` node (causal) whose output feeds affines, directly or
    through ``spike-encode``'s ``signed_if`` encoder. Each becomes
    ``core.ssa.spiking_self_attention(qkv, ...)`` named ``<block>.attn.ssa`` (int8 spikes
    ``[T, batch, positions, heads * head_dim]``, T = ``ctx.timesteps``), whose thresholds and
    scale are initialised on ``ssa_calibration_samples`` calibration samples
    (``initial_parameters``); the affines become rate readouts of the SSA spikes with the
    output thresholds folded into their weight columns, and the encoder is removed. The qkv
    projection is untouched. Options: see ``SSAOptions``. Run it after ``spike-encode`` (the
    default pipeline) or alone. Raises ``UsageError`` when there is no attention,
    ``UnsupportedError`` for non-causal attention or another consumer of its output.
    """
    cfg = from_options(SSAOptions, ctx.options)
    attns = list(calls(gm, ops.attention))
    if not attns:
        raise UsageError("the ssa pass found no softmax attention to replace",
                         "run it on a transformer graph, once (it may already have been replaced)")
    for attn in attns:
        _check_consumers(attn)
    data = calibration_ids(ctx, cfg.samples, "ssa")
    currents = _record_currents(gm, attns, data, int(ctx.option("calibration_batch", 4)))
    stale: set[str] = set()
    timesteps = ctx.timesteps
    decays: dict[str, list[float]] = {}
    for attn in tqdm(attns, desc="ssa", unit="layer", disable=None, leave=False):
        shape = _attention_shape(attn)
        with torch.no_grad():
            init = initial_parameters(currents.pop(attn), shape, timesteps, cfg)
        node = _replace(gm, attn, init, shape, timesteps, cfg, stale)
        if "decay" in init:
            decays[spikec_name(node)] = [round(x, 3) for x in init["decay"].tolist()]
    drop_unused_attrs(gm, stale)
    gm.graph.lint()
    gm.recompile()
    for key, value in (("layers", len(attns)), ("timesteps", timesteps), ("signed", cfg.signed),
                       ("neuron", "IF" if cfg.tau == 0 else f"LIF tau={cfg.tau}"), ("normalize", cfg.normalize),
                       ("map", cfg.map), ("calibration_samples", int(data.shape[0]))):
        ctx.record(key, value)
    if decays:
        ctx.record("decay", decays)
