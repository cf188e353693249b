"""``ssa`` and ``ssa-finetune``: spiking self-attention in place of softmax attention
(NeurTransformer, SpikeDecoder, Spikformer) and its surrogate-gradient fine-tuning.

The operator, its neurons and surrogate gradients are ``spikec.core.ssa``; docs/ssa.md
describes the method, its options and measured figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx
from tqdm import tqdm

from spikec.core import ops
from spikec.core import ssa as core_ssa
from spikec.core.errors import InputError, UnsupportedError, UsageError
from spikec.core.passes import PassContext, register_pass

from ._fx import (
    attr_tensor,
    calls,
    drop_unused_attrs,
    erase_if_unused,
    get_arg,
    new_attr,
    set_arg,
    spikec_name,
)
from .encode import NEURON_KEY
from .training import TrainConfig, train

DECAYS = (1.0, 0.98, 0.95, 0.9, 0.8, 0.6, 0.3)  # per-head candidates of ``ssa_decay=fit``
DECAY_UNIT = 0.05  # a decay's trained offset is in these units (one learning rate for all parameters)
MIN_DECAY = 1e-3
NODE_KEY = "spikec_ssa"  # meta of an SSA node: its settings and the attention it replaced
FIELDS = ("q_threshold", "k_threshold", "v_threshold", "scale", "o_threshold")  # tensor args 1..5, in order
OPTIONAL_FIELDS = ("decay", "map_threshold", "map_bias")  # tensor keyword args, when in use
MIN_THRESHOLD_FRACTION = 1e-6  # a silent channel's threshold, relative to the layer's largest
MIN_THRESHOLD = 1e-12


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise UsageError(f"option {name} must be a boolean (true/false or 1/0), got {value!r}")


@dataclass(frozen=True)
class SSAConfig:
    """Settings of the ``ssa`` pass (pass options in parentheses, defaults after =).

    signed (``ssa_signed`` = true): ternary spikes {-1, 0, 1}; false: binary {0, 1} (Spikformer).
    tau (``ssa_tau`` = 0): 0 for IF neurons, else the LIF time constant (SpikeDecoder: 2).
    normalize (``ssa_normalize`` = true): divide ``A_t V_t`` by the attended positions.
    percentile (``ssa_percentile`` = 99): Q/K/V thresholds, per channel, of |current|.
    output_percentile (``ssa_output_percentile`` = 99.9): output thresholds, per channel.
    samples (``ssa_calibration_samples`` = 4): calibration samples used to initialise.
    decay (``ssa_decay`` = none): ``fit`` gives each head a decaying causal mask
    ``decay ** (i - j)`` (chosen from ``DECAYS`` by least squares, trained by ``ssa-finetune``);
    ``none`` keeps Spikformer's plain causal mask.
    map (``ssa_map`` = none): ``spike`` puts a spiking neuron on every entry of the attention
    map (per head and causal pair, driven by ``(Q_t K_t^T) / map_threshold - map_bias``), so
    that only strong query-key matches pass; ``none``: the raw spike products form the map.
    map_percentile (``ssa_map_percentile`` = 90): each head's initial map threshold, the
    percentile of ``|mean_t Q_t K_t^T|`` over its causal pairs.
    """

    signed: bool = True
    tau: float = 0.0
    normalize: bool = True
    percentile: float = 99.0
    output_percentile: float = 99.9
    samples: int = 4
    decay: str = "none"
    map: str = "none"
    map_percentile: float = 90.0

    @classmethod
    def from_context(cls, ctx: PassContext) -> SSAConfig:
        d = cls()
        cfg = cls(
            signed=_bool(ctx.option("ssa_signed", d.signed), "ssa_signed"),
            tau=float(ctx.option("ssa_tau", d.tau)),
            normalize=_bool(ctx.option("ssa_normalize", d.normalize), "ssa_normalize"),
            percentile=float(ctx.option("ssa_percentile", d.percentile)),
            output_percentile=float(ctx.option("ssa_output_percentile", d.output_percentile)),
            samples=int(ctx.option("ssa_calibration_samples", d.samples)),
            decay=str(ctx.option("ssa_decay", d.decay)),
            map=str(ctx.option("ssa_map", d.map)),
            map_percentile=float(ctx.option("ssa_map_percentile", d.map_percentile)),
        )
        if cfg.decay not in ("none", "fit"):
            raise UsageError(f"ssa_decay must be none or fit, got {cfg.decay!r}")
        if cfg.map not in ("none", "spike"):
            raise UsageError(f"ssa_map must be none or spike, got {cfg.map!r}")
        if cfg.tau < 0 or (0 < cfg.tau < 1):
            raise UsageError(f"ssa_tau must be 0 (IF neurons) or at least 1 (LIF), got {cfg.tau}")
        for name, value in (("ssa_percentile", cfg.percentile), ("ssa_output_percentile", cfg.output_percentile),
                            ("ssa_map_percentile", cfg.map_percentile)):
            if not 0 < value <= 100:
                raise UsageError(f"{name} must be in (0, 100], got {value}")
        if cfg.samples < 1:
            raise UsageError(f"ssa_calibration_samples must be at least 1, got {cfg.samples}")
        return cfg


class _Probe(fx.Interpreter):
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


def _calibration(ctx: PassContext, samples: int | None, what: str) -> torch.Tensor:
    data = ctx.calibration
    if data is None or data.numel() == 0:
        raise InputError(f"no calibration data: the {what} pass needs token ids [samples, positions]",
                         "give calibration text (--calib-text) with enough tokens")
    if data.dim() != 2:
        raise InputError(f"calibration token ids must be [samples, positions], got shape {list(data.shape)}")
    return data[:samples] if samples else data


def _device(gm: fx.GraphModule) -> torch.device:
    for t in gm.buffers():
        return t.device
    return torch.device("cpu")


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


def initial_parameters(qkv: torch.Tensor, shape: dict[str, Any], timesteps: int, cfg: SSAConfig) -> dict[str, torch.Tensor]:
    """Thresholds, scale and output offset of one SSA layer from its calibration currents ``qkv [b, P, F]``.

    Q/K/V thresholds: the ``cfg.percentile`` of |current| per channel (of its positive part
    for binary spikes). scale and ``offset``: per output channel, the least-squares fit
    ``y ~ scale * z + offset`` of the softmax attention's output y by z, the mean over T of
    ``A_t V_t`` (normalised). Output thresholds: the ``cfg.output_percentile`` of
    |scale * z| per channel. The offset (constant over positions: e.g. what attention
    sinks contribute) goes into the output projection's bias. With ``cfg.map == "spike"``:
    ``map_threshold`` per head (``_map_thresholds``) and ``map_bias`` 0, set before the fits."""
    h, kv, d, rope = shape["num_heads"], shape["num_kv_heads"], shape["head_dim"], shape["rope_theta"]
    qkv = qkv.float()
    q, k, v = core_ssa.split_heads(qkv, h, kv, d, rope)

    def magnitude(x: torch.Tensor) -> torch.Tensor:
        x = _by_channel(x)
        return x.abs() if cfg.signed else x.clamp(min=0)

    thr = {f: _channel_percentile(magnitude(x), cfg.percentile)
           for f, x in (("q_threshold", q), ("k_threshold", k), ("v_threshold", v))}
    ones = torch.ones(h * d, device=qkv.device)
    maps = {}
    if cfg.map == "spike":
        maps = {"map_threshold": _map_thresholds(q, k, thr, kv, timesteps, cfg),
                "map_bias": torch.zeros(h, device=qkv.device)}
        thr.update(maps)
    target = ops.attention(qkv, h, kv, d, rope, shape["attention_scale"])
    y = target.reshape(-1, h * d).double()
    yc = y - y.mean(0)

    def fit(decay: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z, per-channel least-squares scale, and per-head unexplained variance."""
        current = core_ssa.ssa_forward(qkv, thr["q_threshold"], thr["k_threshold"], thr["v_threshold"], ones, ones,
                                       h, kv, d, rope, timesteps, cfg.signed, cfg.tau, cfg.normalize,
                                       output="current", decay=decay, **maps).mean(0)
        z = current.reshape(-1, h * d).double()
        zc = z - z.mean(0)
        den = (zc * zc).sum(0)
        scale = torch.where(den > 0, (zc * yc).sum(0) / den.clamp(min=1e-300), torch.zeros_like(den))
        error = ((yc - scale * zc) ** 2).sum(0).reshape(h, d).sum(-1)
        return z, scale, error

    decay = None
    if cfg.decay == "fit":
        best = torch.full((h,), math.inf, dtype=torch.float64)
        decay = torch.ones(h)
        for candidate in DECAYS:
            _, _, error = fit(torch.full((h,), candidate, device=qkv.device))
            better = error.cpu() < best
            best = torch.where(better, error.cpu(), best)
            decay = torch.where(better, torch.tensor(candidate), decay)
        thr["decay"] = decay
    z, scale, _ = fit(None if decay is None else decay.to(qkv.device))
    thr["offset"] = (y.mean(0) - scale * z.mean(0)).float()
    out = (z * scale).float()
    thr["o_threshold"] = _channel_percentile(out.abs() if cfg.signed else out.clamp(min=0), cfg.output_percentile)
    thr["scale"] = scale.float()
    return {f: thr[f].cpu() for f in (*FIELDS, "offset", *OPTIONAL_FIELDS) if f in thr}


def _map_thresholds(q: torch.Tensor, k: torch.Tensor, thr: dict[str, torch.Tensor], num_kv_heads: int,
                    timesteps: int, cfg: SSAConfig) -> torch.Tensor:
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


def _replace(gm: fx.GraphModule, attn: fx.Node, init: dict[str, torch.Tensor], shape: dict[str, Any],
             timesteps: int, cfg: SSAConfig, stale: set[str]) -> fx.Node:
    graph = gm.graph
    name = spikec_name(attn)
    ssa_name = (name.removesuffix(".core")) + ".ssa"
    device = _device(gm)
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
    theta_o, offset = init["o_threshold"], init["offset"]
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
    graph.erase_node(attn)
    return node


@register_pass("ssa")
def ssa_pass(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Replace every softmax attention with causal spiking self-attention (SSA).

    Matches every ``ops.attention`` node (causal) whose output feeds affines, directly or
    through ``spike-encode``'s ``signed_if`` encoder. Each becomes
    ``core.ssa.spiking_self_attention(qkv, ...)`` named ``<block>.attn.ssa`` (int8 spikes
    ``[T, batch, positions, heads * head_dim]``, T = ``ctx.timesteps``), whose thresholds and
    scale are initialised on ``ssa_calibration_samples`` calibration samples
    (``initial_parameters``); the affines become rate readouts of the SSA spikes with the
    output thresholds folded into their weight columns, and the encoder is removed. The qkv
    projection is untouched. Options: see ``SSAConfig``. Run it after ``spike-encode`` (the
    default pipeline) or alone. Raises ``UsageError`` when there is no attention,
    ``UnsupportedError`` for non-causal attention or another consumer of its output.
    """
    cfg = SSAConfig.from_context(ctx)
    attns = list(calls(gm, ops.attention))
    if not attns:
        raise UsageError("the ssa pass found no softmax attention to replace",
                         "run it on a transformer graph, once (it may already have been replaced)")
    for attn in attns:
        _check_consumers(attn)
    data = _calibration(ctx, cfg.samples, "ssa")
    currents: dict[fx.Node, list[torch.Tensor]] = {a: [] for a in attns}
    probe = _Probe(gm, before={a: (lambda args, a=a: currents[a].append(args[0].detach().float())) for a in attns})
    device = _device(gm)
    batch = int(ctx.option("calibration_batch", 4))
    with torch.no_grad():
        for start in range(0, data.shape[0], batch):
            probe.run(data[start:start + batch].to(device))
    stale: set[str] = set()
    timesteps = ctx.timesteps
    decays: dict[str, list[float]] = {}
    for attn in tqdm(attns, desc="ssa", unit="layer", disable=None, leave=False):
        shape = _attention_shape(attn)
        with torch.no_grad():
            init = initial_parameters(torch.cat(currents.pop(attn)), shape, timesteps, cfg)
        node = _replace(gm, attn, init, shape, timesteps, cfg, stale)
        if "decay" in init:
            decays[spikec_name(node)] = [round(x, 3) for x in init["decay"].tolist()]
    drop_unused_attrs(gm, stale)
    gm.graph.lint()
    gm.recompile()
    ctx.record("layers", len(attns))
    ctx.record("timesteps", timesteps)
    ctx.record("signed", cfg.signed)
    ctx.record("neuron", "IF" if cfg.tau == 0 else f"LIF tau={cfg.tau}")
    ctx.record("normalize", cfg.normalize)
    ctx.record("map", cfg.map)
    ctx.record("calibration_samples", int(data.shape[0]))
    if decays:
        ctx.record("decay", decays)


# ---------------------------------------------------------------------------
# fine-tuning
# ---------------------------------------------------------------------------

INPUTS = ("ann", "snn")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of ``ssa-finetune`` (pass options in parentheses, defaults after =).

    steps (``finetune_steps`` = 100), lr (``finetune_lr`` = 1e-2), batch (``finetune_batch``
    = 4 sequences a step), samples (``finetune_samples`` = 0: every calibration sample).
    rank (``finetune_rank`` = 8): rank of the trained updates of the qkv and output
    projections (0: projections frozen, only thresholds and scales train).
    inputs (``finetune_inputs`` = ``ann``): each layer's input is recorded with softmax
    attention in every layer (``ann``) or with the SSA layers in place (``snn``).
    surrogate (``surrogate`` = sigmoid | arctan), alpha (``surrogate_alpha``: its sharpness).
    e2e_steps (``finetune_e2e_steps`` = 0): steps after the layer-wise ones that minimise
    ``1 - cosine`` of the final hidden state (lm_head's input) to the unquantized model's,
    back-propagated through the whole converted network (slower per step), at learning rate
    e2e_lr (``finetune_e2e_lr`` = lr / 10: the whole network amplifies every update).
    checkpoint (``finetune_checkpoint``), checkpoint_every (``finetune_checkpoint_every`` = 10),
    seed (``finetune_seed`` = 0), progress (``progress`` = true).
    """

    steps: int = 100
    lr: float = 1e-2
    e2e_steps: int = 0
    e2e_lr: float | None = None  # None: lr / 10
    batch: int = 4
    samples: int = 0
    rank: int = 8
    inputs: str = "ann"
    surrogate: str = "sigmoid"
    alpha: float | None = None
    checkpoint: str | None = None
    checkpoint_every: int = 10
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_context(cls, ctx: PassContext) -> FinetuneConfig:
        d = cls()
        alpha = ctx.option("surrogate_alpha", d.alpha)
        cfg = cls(
            steps=int(ctx.option("finetune_steps", d.steps)), lr=float(ctx.option("finetune_lr", d.lr)),
            e2e_steps=int(ctx.option("finetune_e2e_steps", d.e2e_steps)),
            e2e_lr=None if ctx.option("finetune_e2e_lr") is None else float(ctx.option("finetune_e2e_lr")),
            batch=int(ctx.option("finetune_batch", d.batch)), samples=int(ctx.option("finetune_samples", d.samples)),
            rank=int(ctx.option("finetune_rank", d.rank)), inputs=str(ctx.option("finetune_inputs", d.inputs)),
            surrogate=str(ctx.option("surrogate", d.surrogate)), alpha=None if alpha is None else float(alpha),
            checkpoint=ctx.option("finetune_checkpoint", d.checkpoint),
            checkpoint_every=int(ctx.option("finetune_checkpoint_every", d.checkpoint_every)),
            seed=int(ctx.option("finetune_seed", d.seed)), progress=_bool(ctx.option("progress", d.progress), "progress"),
        )
        if cfg.surrogate not in core_ssa.SURROGATES:
            raise UsageError(f"unknown surrogate {cfg.surrogate!r}; choose one of {', '.join(core_ssa.SURROGATES)}")
        if cfg.alpha is not None and not cfg.alpha > 0:
            raise UsageError(f"surrogate_alpha must be positive, got {cfg.alpha}")
        if cfg.inputs not in INPUTS:
            raise UsageError(f"finetune_inputs must be one of {', '.join(INPUTS)}, got {cfg.inputs!r}")
        if cfg.e2e_steps < 0:
            raise UsageError(f"finetune_e2e_steps must be >= 0, got {cfg.e2e_steps}")
        if cfg.e2e_lr is not None and not cfg.e2e_lr > 0:
            raise UsageError(f"finetune_e2e_lr must be positive, got {cfg.e2e_lr}")
        if cfg.batch < 1 or cfg.rank < 0 or cfg.samples < 0:
            raise UsageError(f"finetune_batch must be >= 1 and finetune_rank, finetune_samples >= 0 "
                             f"(got {cfg.batch}, {cfg.rank}, {cfg.samples})")
        return cfg


@dataclass
class _Block:
    """One SSA layer, its projections and its recorded training data."""

    name: str
    node: fx.Node  # the spiking_self_attention call
    qkv: fx.Node  # producer of its input
    readout: fx.Node  # the output projection (rate_readout_affine)
    shape: dict[str, Any]
    settings: dict[str, Any]  # signed, tau, normalize, timesteps
    init: dict[str, torch.Tensor]  # FIELDS at the start
    w_o: torch.Tensor  # output projection on real values (thresholds unfolded)
    b_o: torch.Tensor | None
    teacher_w: torch.Tensor  # the projection before the ssa pass (the teacher's)
    teacher_b: torch.Tensor | None
    w_qkv: torch.Tensor | None  # qkv weight when a low-rank update may be trained
    x_in: list[torch.Tensor]  # qkv projection inputs [N, P, d_in] (rates), when w_qkv is set
    base: list[torch.Tensor]  # qkv currents [N, P, F]
    target: list[torch.Tensor]  # softmax attention block output [N, P, d_model]
    power: float = 1.0  # mean square of the target: the loss is relative to it


def _blocks(gm: fx.GraphModule, rank: int) -> list[_Block]:
    blocks = []
    for node in calls(gm, core_ssa.spiking_self_attention):
        name = spikec_name(node)
        users = list(node.users)
        if len(users) != 1 or users[0].target is not ops.rate_readout_affine:
            raise UnsupportedError(f"{name}: ssa-finetune needs the SSA output to feed one rate-readout projection")
        readout = users[0]
        w = attr_tensor(gm, get_arg(readout, 1, "weight"))
        bias_node = get_arg(readout, 2, "bias")
        b = attr_tensor(gm, bias_node) if bias_node is not None else None
        init = {f: attr_tensor(gm, node.args[1 + i]) for i, f in enumerate(FIELDS)}
        for f in OPTIONAL_FIELDS:
            if node.kwargs.get(f) is not None:
                init[f] = attr_tensor(gm, node.kwargs[f])
        if w is None or any(v is None for v in init.values()):
            raise UnsupportedError(f"{name}: its thresholds and projection weight must be tensor attributes")
        qkv = node.args[0]
        w_qkv = None
        if (rank > 0 and isinstance(qkv, fx.Node) and qkv.target in (ops.affine, ops.rate_readout_affine)
                and len(qkv.users) == 1):
            w_qkv = attr_tensor(gm, get_arg(qkv, 1, "weight"))
        meta = node.meta.get(NODE_KEY, {})
        shape = {"num_heads": int(node.kwargs["num_heads"]), "num_kv_heads": int(node.kwargs["num_kv_heads"]),
                 "head_dim": int(node.kwargs["head_dim"]), "rope_theta": float(node.kwargs["rope_theta"]),
                 "attention_scale": meta.get("attention_scale")}
        settings = {k: node.kwargs[k] for k in ("signed", "tau", "normalize", "timesteps")}
        w_o = (w.double().cpu() / init["o_threshold"].double().cpu()[None, :]).float()
        b_o = None if b is None else b.detach().float().cpu()
        teacher = meta.get("teacher", {"weight": w_o, "bias": b_o})
        blocks.append(_Block(
            name=name, node=node, qkv=qkv, readout=readout, shape=shape, settings=settings,
            init={k: v.detach().float().cpu().clone() for k, v in init.items()},
            w_o=w_o, b_o=b_o, teacher_w=teacher["weight"], teacher_b=teacher["bias"],
            w_qkv=None if w_qkv is None else w_qkv.detach().float().cpu(),
            x_in=[], base=[], target=[]))
    return blocks


def _record(gm: fx.GraphModule, blocks: list[_Block], data: torch.Tensor, inputs: str, batch: int) -> None:
    """Fill each block's ``x_in``, ``base`` and ``target`` from a run over ``data``. With
    ``inputs == "ann"`` every SSA layer is replaced by softmax attention during the run."""
    pending: dict[str, torch.Tensor] = {}
    before: dict[fx.Node, Callable] = {}
    replace: dict[fx.Node, Callable] = {}
    for blk in blocks:
        def at_ssa(args: tuple, blk: _Block = blk) -> None:
            qkv = args[0].detach().float().cpu()
            s = blk.shape
            y = ops.attention(qkv, s["num_heads"], s["num_kv_heads"], s["head_dim"], s["rope_theta"],
                              s["attention_scale"])
            target = F.linear(y, blk.teacher_w, blk.teacher_b)
            blk.base.append(qkv)
            blk.target.append(target)
            pending[blk.name] = target

        before[blk.node] = at_ssa
        if blk.w_qkv is not None:
            def at_qkv(args: tuple, blk: _Block = blk) -> None:
                x = args[0]
                if blk.qkv.target is ops.rate_readout_affine:
                    x = x.sum(0, dtype=torch.float32) / x.shape[0]
                blk.x_in.append(x.detach().float().cpu())

            before[blk.qkv] = at_qkv
        if inputs == "ann":
            replace[blk.node] = lambda args: args[0]  # not computed: its only reader is replaced below
            replace[blk.readout] = lambda args, blk=blk: pending[blk.name].to(args[1].device)
    probe = _Probe(gm, before, replace)
    device = _device(gm)
    with torch.no_grad():
        for start in tqdm(range(0, data.shape[0], batch), desc="ssa-finetune: recording", unit="batch",
                          disable=None, leave=False):
            probe.run(data[start:start + batch].to(device))
    for blk in blocks:  # one tensor each, indexed by sample
        blk.base, blk.target = [torch.cat(blk.base)], [torch.cat(blk.target)]
        blk.x_in = [torch.cat(blk.x_in)] if blk.x_in else []
        blk.power = max(float(blk.target[0].pow(2).mean()), 1e-30)


def _parameters(blocks: list[_Block], rank: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Leaf tensors to train (log thresholds, scale offsets, low-rank updates) and the unit of
    each offset (so that one learning rate suits parameters of very different magnitudes)."""
    gen = torch.Generator().manual_seed(seed)
    params: dict[str, torch.Tensor] = {}
    units: dict[str, float] = {}
    for blk in blocks:
        for f in ("q_threshold", "k_threshold", "v_threshold", "o_threshold"):
            params[f"{blk.name}.log_{f}"] = blk.init[f].clamp(min=MIN_THRESHOLD).log().requires_grad_()
        params[f"{blk.name}.scale_offset"] = torch.zeros_like(blk.init["scale"]).requires_grad_()
        units[f"{blk.name}.scale"] = float(blk.init["scale"].abs().mean()) or 1.0
        if "decay" in blk.init:
            params[f"{blk.name}.decay_offset"] = torch.zeros_like(blk.init["decay"]).requires_grad_()
        if "map_threshold" in blk.init:
            params[f"{blk.name}.log_map_threshold"] = blk.init["map_threshold"].log().requires_grad_()
            params[f"{blk.name}.map_bias"] = blk.init["map_bias"].clone().requires_grad_()
        params[f"{blk.name}.bias_offset"] = torch.zeros(blk.w_o.shape[0], requires_grad=True)
        units[f"{blk.name}.bias"] = math.sqrt(blk.power)
        if rank:
            d_out, d_in = blk.w_o.shape
            params[f"{blk.name}.out_a"] = (torch.randn(rank, d_in, generator=gen) / math.sqrt(d_in)).requires_grad_()
            params[f"{blk.name}.out_b"] = torch.zeros(d_out, rank, requires_grad=True)
            units[f"{blk.name}.out"] = float(blk.w_o.pow(2).mean().sqrt())
        if blk.w_qkv is not None:
            d_out, d_in = blk.w_qkv.shape
            params[f"{blk.name}.qkv_a"] = (torch.randn(rank, d_in, generator=gen) / math.sqrt(d_in)).requires_grad_()
            params[f"{blk.name}.qkv_b"] = torch.zeros(d_out, rank, requires_grad=True)
            units[f"{blk.name}.qkv"] = float(blk.w_qkv.pow(2).mean().sqrt())
    return params, units


def _current(blk: _Block, params: dict[str, torch.Tensor], units: dict[str, float],
             materialize: bool = True) -> dict[str, Any]:
    """The block's thresholds, scale, bias and projection updates from the trained parameters.
    The updates are full matrices (``delta_out``, ``delta_qkv``), or with ``materialize`` False
    their low-rank factors (``lora_out``, ``lora_qkv``: ``(a, b, unit)``, cheaper to apply)."""
    n = blk.name
    out: dict[str, Any] = {f: params[f"{n}.log_{f}"].exp()
                           for f in ("q_threshold", "k_threshold", "v_threshold", "o_threshold")}
    out["scale"] = blk.init["scale"] + params[f"{n}.scale_offset"] * units[f"{n}.scale"]
    bias = params[f"{n}.bias_offset"] * units[f"{n}.bias"]
    out["bias"] = bias if blk.b_o is None else blk.b_o + bias
    if f"{n}.decay_offset" in params:
        out["decay"] = (blk.init["decay"] + params[f"{n}.decay_offset"] * DECAY_UNIT).clamp(MIN_DECAY, 1.0)
    if f"{n}.log_map_threshold" in params:
        out["map_threshold"] = params[f"{n}.log_map_threshold"].exp()
        out["map_bias"] = params[f"{n}.map_bias"]
    for part in ("out", "qkv"):
        if f"{n}.{part}_a" in params:
            a, b, unit = params[f"{n}.{part}_a"], params[f"{n}.{part}_b"], units[f"{n}.{part}"]
            if materialize:
                out[f"delta_{part}"] = b @ a * unit
            else:
                out[f"lora_{part}"] = (a, b, unit)
    return out


def _optional(cur: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``ssa_forward`` for the optional fields in use."""
    return {f: cur[f] for f in OPTIONAL_FIELDS if f in cur}


def _low_rank(x: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor, float] | None) -> torch.Tensor | float:
    """``x @ (b a * unit)^T`` without forming the matrix (0 when there is no update)."""
    if factors is None:
        return 0.0
    a, b, unit = factors
    return F.linear(F.linear(x, a), b) * unit


def _block_loss(blk: _Block, idx: torch.Tensor, params: dict[str, torch.Tensor], units: dict[str, float],
                cfg: FinetuneConfig) -> torch.Tensor:
    """Relative squared error of the block's output (through its projection) against the softmax
    attention's on samples ``idx``, with surrogate gradients through the T steps."""
    cur = _current(blk, params, units, materialize=False)
    qkv = blk.base[0][idx]
    if "lora_qkv" in cur:
        qkv = qkv + _low_rank(blk.x_in[0][idx], cur["lora_qkv"])
    s, st = blk.shape, blk.settings
    spikes = core_ssa.ssa_forward(qkv, cur["q_threshold"], cur["k_threshold"], cur["v_threshold"], cur["scale"],
                                  cur["o_threshold"], s["num_heads"], s["num_kv_heads"], s["head_dim"], s["rope_theta"],
                                  int(st["timesteps"]), bool(st["signed"]), float(st["tau"]), bool(st["normalize"]),
                                  cfg.surrogate, cfg.alpha, **_optional(cur))
    y = spikes.mean(0) * cur["o_threshold"]
    out = F.linear(y, blk.w_o, cur["bias"]) + _low_rank(y, cur.get("lora_out"))
    return (out - blk.target[0][idx]).pow(2).mean() / blk.power


def _batches(n: int, batch: int, seed: int) -> Callable[[int], torch.Tensor]:
    """Sample indices of a step, from the step index alone (epochs of seeded permutations)."""
    batch = min(batch, n)
    per_epoch = n // batch

    def indices(step: int) -> torch.Tensor:
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        return perm[pos * batch:(pos + 1) * batch]

    return indices


def _write_back(gm: fx.GraphModule, blocks: list[_Block], params: dict[str, torch.Tensor],
                units: dict[str, float]) -> None:
    """Point each SSA node and its projections at new attributes holding the trained values."""
    stale: set[str] = set()
    graph = gm.graph
    device = _device(gm)
    with torch.no_grad():
        for blk in blocks:
            cur = {k: v.detach() for k, v in _current(blk, params, units).items()}
            old = list(blk.node.args[1:6])
            with graph.inserting_before(blk.node):
                for i, f in enumerate(FIELDS):
                    value = cur[f].float().to(device)
                    blk.node.update_arg(1 + i, graph.get_attr(new_attr(gm, f"{blk.name}.{f}_finetuned", value)))
                for f in OPTIONAL_FIELDS:
                    if f in cur:
                        old.append(blk.node.kwargs[f])
                        value = cur[f].float().to(device)
                        blk.node.update_kwarg(f, graph.get_attr(new_attr(gm, f"{blk.name}.{f}_finetuned", value)))
            w_o = blk.w_o + cur["delta_out"] if "delta_out" in cur else blk.w_o
            folded = (w_o.double() * cur["o_threshold"].double()[None, :]).float().to(device)
            old += [get_arg(blk.readout, 1, "weight"), get_arg(blk.readout, 2, "bias")]
            name = spikec_name(blk.readout)
            with graph.inserting_before(blk.readout):
                set_arg(blk.readout, 1, "weight", graph.get_attr(new_attr(gm, f"{name}.weight_finetuned", folded)))
                set_arg(blk.readout, 2, "bias",
                        graph.get_attr(new_attr(gm, f"{name}.bias_finetuned", cur["bias"].float().to(device))))
            if "delta_qkv" in cur:
                old.append(get_arg(blk.qkv, 1, "weight"))
                w = (blk.w_qkv.double() + cur["delta_qkv"].double()).float().to(device)
                with graph.inserting_before(blk.qkv):
                    set_arg(blk.qkv, 1, "weight",
                            graph.get_attr(new_attr(gm, f"{spikec_name(blk.qkv)}.weight_finetuned", w)))
            stale |= erase_if_unused(gm, old)
    drop_unused_attrs(gm, stale)
    gm.graph.lint()
    gm.recompile()


def _mean_loss(blocks: list[_Block], n: int, batch: int, params: dict[str, torch.Tensor], units: dict[str, float],
               cfg: FinetuneConfig) -> list[float]:
    """Each block's loss over all recorded samples (no gradient)."""
    out = []
    with torch.no_grad():
        for blk in blocks:
            total = 0.0
            for start in range(0, n, batch):
                idx = torch.arange(start, min(start + batch, n))
                total += float(_block_loss(blk, idx, params, units, cfg)) * len(idx)
            out.append(total / n)
    return out


def _hidden_node(gm: fx.GraphModule) -> fx.Node:
    """The node whose value is lm_head's real input (the final hidden state)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.meta.get("role") == "lm_head":
            x = get_arg(node, 0, "x" if node.target is ops.affine else "spikes")
            return get_arg(x, 0, "x") if x.target is ops.signed_if else x
    raise UnsupportedError("the graph has no lm_head: end-to-end fine-tuning needs the final hidden state")


class _Network(fx.Interpreter):
    """Runs the converted graph differentiably and keeps the final hidden state (``hidden``).

    As the student: SSA layers with the trained parameters (surrogate gradients over the T
    steps), SignedIF neurons as the rate quantizer they implement with straight-through
    gradients (``clamp(floor(T x / theta + v_init)) / T``; the iterative neuron differs from it
    only at exact float ties). As the teacher: the unquantized model (neurons pass their input,
    SSA layers are softmax attention with their original projection)."""

    def __init__(self, gm: fx.GraphModule, blocks: list[_Block], hidden: fx.Node, teacher: bool,
                 current: dict[str, dict[str, torch.Tensor]] | None = None, cfg: FinetuneConfig | None = None):
        super().__init__(gm, garbage_collect_values=True)
        self.ssa = {b.node: b for b in blocks}
        self.readout = {b.readout: b for b in blocks}
        self.qkv = {b.qkv: b for b in blocks}
        self.hidden_node, self.teacher, self.current, self.cfg = hidden, teacher, current or {}, cfg
        self.hidden: torch.Tensor | None = None

    def run_node(self, n: fx.Node) -> Any:
        if n.op != "call_function":
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        value = self._call(n, args, kwargs)
        if n is self.hidden_node:
            self.hidden = value
        return value

    def _call(self, n: fx.Node, args: tuple, kwargs: dict) -> Any:
        def arg(i: int, name: str, default: Any = None) -> Any:
            return args[i] if len(args) > i else kwargs.get(name, default)

        if n.target is ops.signed_if:
            u = args[0].float() / arg(1, "threshold").float()
            if self.teacher:
                return u
            steps, b, signed, v_init = arg(2, "timesteps"), arg(3, "max_spikes", 1), arg(4, "signed", True), \
                arg(5, "v_init", 0.5)
            q = torch.clamp(torch.floor(steps * u + v_init), -b * steps if signed else 0, b * steps) / steps
            return u + (q - u).detach()
        if n in self.ssa:
            blk = self.ssa[n]
            s, st = blk.shape, blk.settings
            if self.teacher:
                return ops.attention(args[0], s["num_heads"], s["num_kv_heads"], s["head_dim"], s["rope_theta"],
                                     s["attention_scale"])
            cur = self.current[blk.name]
            return core_ssa.ssa_forward(args[0], cur["q_threshold"], cur["k_threshold"], cur["v_threshold"],
                                        cur["scale"], cur["o_threshold"], s["num_heads"], s["num_kv_heads"],
                                        s["head_dim"], s["rope_theta"], int(st["timesteps"]), bool(st["signed"]),
                                        float(st["tau"]), bool(st["normalize"]), self.cfg.surrogate, self.cfg.alpha,
                                        **_optional(cur))
        if n.target is ops.rate_readout_affine:
            source = n.args[0]
            x, w, b = args[0], arg(1, "weight"), arg(2, "bias")
            if n in self.readout:
                blk = self.readout[n]
                if self.teacher:
                    return F.linear(x, blk.teacher_w.to(x.device), blk.teacher_b)
                cur = self.current[blk.name]
                w_o = blk.w_o + cur["delta_out"] if "delta_out" in cur else blk.w_o
                return F.linear(x.mean(0) * cur["o_threshold"], w_o, cur["bias"])
            if isinstance(source, fx.Node) and source.target is ops.signed_if:
                if n in self.qkv and not self.teacher and "delta_qkv" in self.current[self.qkv[n].name]:
                    w = w + self.current[self.qkv[n].name]["delta_qkv"]
                return F.linear(x, w.float(), None if b is None else b.float())
        return super().run_node(n)


def _run_network(gm: fx.GraphModule, blocks: list[_Block], hidden: fx.Node, ids: torch.Tensor,
                 cfg: FinetuneConfig, params: dict[str, torch.Tensor] | None = None,
                 units: dict[str, float] | None = None) -> torch.Tensor:
    """The final hidden state of the student (given ``params``) or the teacher on ``ids``."""
    current = None if params is None else {b.name: _current(b, params, units) for b in blocks}
    net = _Network(gm, blocks, hidden, teacher=params is None, current=current, cfg=cfg)
    net.run(ids)
    return net.hidden


def _fingerprint(blocks: list[_Block], cfg: FinetuneConfig, n: int) -> str:
    import hashlib

    h = hashlib.sha256()
    for blk in blocks:
        h.update(f"{blk.name}:{blk.shape}:{blk.settings};".encode())
        h.update(blk.target[0][:1].numpy().tobytes())
        h.update(blk.init["o_threshold"].numpy().tobytes())
    keys = ("batch", "samples", "rank", "inputs", "surrogate", "alpha", "steps")
    h.update(repr([(k, getattr(cfg, k)) for k in keys] + [n]).encode())
    return h.hexdigest()[:16]


@register_pass("ssa-finetune")
def ssa_finetune(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Fine-tune the SSA layers with surrogate-gradient BPTT, layer by layer, against softmax attention.

    Matches every ``core.ssa.spiking_self_attention`` node (``ssa`` must have run). Records,
    over the calibration samples, each SSA layer's input (see ``FinetuneConfig.inputs``) and
    the output the original softmax attention and projection give on it, then minimises the
    mean over layers of the relative squared error of the SSA block's output (its output
    projection applied to ``o_threshold * mean_t(O_t)``), with gradients through the spikes
    over the T steps (surrogate ``surrogate``). Trained: per-channel Q/K/V/output thresholds
    (in log space), per-channel scales, the output projection's bias and, with
    ``finetune_rank`` r > 0, rank-r updates of the qkv and output projection weights;
    everything else is frozen. The loop is
    ``passes.training.train`` (AdamW, progress bar, checkpoint/resume at
    ``finetune_checkpoint``). Guarantees: the graph keeps its structure; trained values are
    written to new attributes (no existing tensor is modified).
    """
    cfg = FinetuneConfig.from_context(ctx)
    blocks = _blocks(gm, cfg.rank)
    if not blocks:
        raise UsageError("ssa-finetune found no SSA layer", "run the ssa pass before ssa-finetune")
    data = _calibration(ctx, cfg.samples, "ssa-finetune")
    start = time.perf_counter()
    _record(gm, blocks, data, cfg.inputs, int(ctx.option("calibration_batch", 4)))
    recorded = time.perf_counter() - start
    n = int(data.shape[0])
    params, units = _parameters(blocks, cfg.rank, cfg.seed)
    indices = _batches(n, cfg.batch, cfg.seed)
    hidden = _hidden_node(gm) if cfg.e2e_steps else None
    device = _device(gm)
    teacher_hidden = None
    if hidden is not None:
        with torch.no_grad():
            teacher_hidden = torch.cat([_run_network(gm, blocks, hidden, data[i:i + cfg.batch].to(device), cfg)
                                        for i in range(0, n, cfg.batch)])

    def layer_loss(idx: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(())
        for blk in blocks:  # backward per block: one block's graph over T steps is alive at a time
            loss = _block_loss(blk, idx, params, units, cfg) / len(blocks)
            loss.backward()
            total += loss.detach()
        return total

    def e2e_loss(idx: torch.Tensor) -> torch.Tensor:
        student = _run_network(gm, blocks, hidden, data[idx].to(device), cfg, params, units)
        loss = 1 - F.cosine_similarity(student.float(), teacher_hidden[idx].to(student.device), dim=-1).mean()
        loss.backward()
        return loss.detach()

    def loss_fn(step: int) -> torch.Tensor:
        return layer_loss(indices(step)) if step < cfg.steps else e2e_loss(indices(step))

    before = _mean_loss(blocks, n, cfg.batch, params, units, cfg)
    train_cfg = TrainConfig(steps=cfg.steps + cfg.e2e_steps, lr=cfg.lr, checkpoint=cfg.checkpoint,
                            checkpoint_every=cfg.checkpoint_every, seed=cfg.seed, desc="ssa-finetune",
                            progress=cfg.progress, backward_in_loss=True,
                            lr_from=((cfg.steps, cfg.lr / 10 if cfg.e2e_lr is None else cfg.e2e_lr),)
                            if cfg.e2e_steps else ())
    result = train(params, loss_fn, train_cfg, extra_fingerprint=_fingerprint(blocks, cfg, n))
    after = _mean_loss(blocks, n, cfg.batch, params, units, cfg)
    _write_back(gm, blocks, params, units)
    if cfg.e2e_steps:
        ctx.record("e2e_steps", cfg.e2e_steps)
        ctx.record("e2e_lr", train_cfg.lr_at(cfg.steps))
        ctx.record("e2e_losses", [round(x, 6) for x in result.losses[cfg.steps:]])
    ctx.record("layers", len(blocks))
    ctx.record("steps", cfg.steps)
    ctx.record("resumed_from", result.resumed_from)
    ctx.record("lr", cfg.lr)
    ctx.record("batch", min(cfg.batch, n))
    ctx.record("samples", n)
    ctx.record("positions", int(data.shape[1]))
    ctx.record("rank", cfg.rank)
    ctx.record("inputs", cfg.inputs)
    ctx.record("surrogate", cfg.surrogate)
    ctx.record("trained_parameters", int(sum(p.numel() for p in params.values())))
    ctx.record("loss_before", sum(before) / len(before))
    ctx.record("loss_after", sum(after) / len(after))
    ctx.record("loss_per_layer", {b.name: [round(x, 6), round(y, 6)] for b, x, y in zip(blocks, before, after)})
    ctx.record("train_losses", [round(x, 6) for x in result.losses[:: max(1, len(result.losses) // 50)]])
    ctx.record("record_seconds", recorded)
    ctx.record("seconds", time.perf_counter() - start)
