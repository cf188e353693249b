"""Spiking self-attention (SSA): Spikformer's attention with SpikeDecoder's causal mask,
as NeurTransformer puts it in place of a pretrained model's softmax attention.

One definition serves the converted fx graph (``spiking_self_attention``, int8 spikes,
no gradient), fine-tuning (``ssa_forward`` with surrogate gradients, back-propagated
through the T steps) and the reference simulator (which calls
``spiking_self_attention`` on the ``SpikecSSA`` node's fields), so all three produce
the same spikes bit for bit.

Per window of T steps, on the fused projections ``qkv = [q | k | v]`` (real,
``[batch, P, (H + 2*KV) * D]``; rotary embeddings applied to q and k when
``rope_theta > 0``):

* Q, K, V neurons (one per channel) are driven by the constant currents
  ``q / q_threshold``, ``k / k_threshold``, ``v / v_threshold`` and emit spike trains
  ``Q_t, K_t, V_t`` (``{0, 1}``, or ``{-1, 0, 1}`` when ``signed``).
* Per step and head (K, V repeated over the H / KV query heads of a group):
  ``A_t = tril(Q_t K_t^T)`` (the causal mask zeroes entries above the diagonal),
  ``Y_t = A_t V_t``, divided by the number of attended positions ``i + 1`` when
  ``normalize``. These are exact integer sums of spike products.
* Optionally (``map_threshold`` given), one unsigned neuron per head and causal pair
  ``(i, j)`` is driven by ``(Q_t K_t^T)_ij / map_threshold_h - map_bias_h`` and its
  spikes ``M_t`` (``{0, 1}``) take the place of the raw products in ``A_t``: a spiking
  attention map that passes only strong query-key matches (a thresholded, saturating
  map instead of a linear one; still no softmax and no data-dependent division).
* Output neurons (one per channel) are driven by ``Y_t * scale / o_threshold`` and
  emit ``O_t``, the node's output ``[T, batch, P, H * D]``. No softmax anywhere. A
  consumer reads ``o_threshold * mean_t(O_t)`` (the threshold is folded into its weight).

Neurons (all four populations) work in threshold units with membrane ``v`` starting at
``V_INIT = 0.5``: integrate ``v += u`` (IF, ``tau == 0``) or leak ``v += (u - v) / tau``
(LIF); spike ``+1`` when ``v >= 1``, ``-1`` when ``v < 0`` (signed only); reset by
subtraction ``v -= s``. With a constant current, an IF neuron's count over T steps is
``round(T u)`` clipped to ``[-T, T]`` (``[0, T]`` unsigned): a rate code of step 1/T.

Surrogate gradients: the spike's Heaviside step is exact in the forward pass; its
derivative is replaced by that of a sigmoid (``alpha * sig(alpha x) (1 - sig(alpha x))``)
or of an arctan (``alpha / 2 / (1 + (pi alpha x / 2)^2)``). Resets are not
differentiated (detached), as is usual in SNN training.

The NIR node ``SpikecSSA`` that holds these fields is ``spikec.core.ir.SpikecSSA``; its lowering
builder is ``spikec.lowering.ssa``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .ops import rotary_cos_sin

SURROGATES: dict[str, float] = {"sigmoid": 4.0, "arctan": 2.0}
"""Surrogate gradient name -> default sharpness ``alpha`` (SpikingJelly's defaults)."""

V_INIT = 0.5  # initial membrane, in threshold units: symmetric rounding for a constant current


# ---------------------------------------------------------------------------
# surrogate-gradient spike function
# ---------------------------------------------------------------------------


def surrogate_derivative(x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """The surrogate of ``d Heaviside(x) / dx``: a sigmoid's or an arctan's derivative."""
    if surrogate == "sigmoid":
        s = torch.sigmoid(alpha * x)
        return alpha * s * (1 - s)
    if surrogate == "arctan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)
    raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")


class _Spike(torch.autograd.Function):
    """``[v >= 1] - signed * [v < 0]`` forward; ``surrogate_derivative(v - 1) + signed *
    surrogate_derivative(v)`` backward (one autograd node per neuron step)."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, signed: bool, surrogate: str, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.signed, ctx.surrogate, ctx.alpha = signed, surrogate, alpha
        return _spike_value(v, signed)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (v,) = ctx.saved_tensors
        d = surrogate_derivative(v - 1.0, ctx.surrogate, ctx.alpha)
        if ctx.signed:
            d = d + surrogate_derivative(v, ctx.surrogate, ctx.alpha)
        return grad * d, None, None, None


def _spike_value(v: torch.Tensor, signed: bool) -> torch.Tensor:
    s = (v >= 1.0).to(v.dtype)
    return s - (v < 0).to(v.dtype) if signed else s


def spike(v: torch.Tensor, signed: bool, surrogate: str = "sigmoid", alpha: float | None = None) -> torch.Tensor:
    """The spike of a membrane ``v`` in threshold units: ``+1`` where ``v >= 1``, ``-1`` where
    ``v < 0`` when ``signed``, else 0 (v's dtype). Differentiable through the surrogate when
    ``v`` requires a gradient; the forward value never depends on the surrogate."""
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")
    if not v.requires_grad:
        return _spike_value(v, signed)
    return _Spike.apply(v, signed, surrogate, SURROGATES[surrogate] if alpha is None else float(alpha))


def neuron_step(
    current: torch.Tensor, v: torch.Tensor, signed: bool, tau: float = 0.0,
    surrogate: str = "sigmoid", alpha: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of an SSA neuron in threshold units: ``(spikes, new membrane)``.

    IF (``tau == 0``): ``v += current``; LIF: ``v += (current - v) / tau``. Spike ``+1`` when
    ``v >= 1``; when ``signed``, ``-1`` when ``v < 0``; then ``v -= spike`` (soft reset,
    not differentiated)."""
    v = v + current if tau == 0 else v + (current - v) / tau
    s = spike(v, signed, surrogate, alpha)
    return s, v - s.detach()


# ---------------------------------------------------------------------------
# the operator
# ---------------------------------------------------------------------------


def input_spikes(
    u: torch.Tensor, timesteps: int, series: bool, signed: bool, tau: float = 0.0,
    surrogate: str = "sigmoid", alpha: float | None = None,
) -> torch.Tensor:
    """Spike trains ``[T, ...]`` of the Q, K or V neurons driven by ``u`` (threshold units).

    A constant current into IF neurons (``tau == 0``, ``u`` not a series) is computed for all
    steps at once: the count after t steps is ``N(t) = clamp(floor(u * t + 0.5), -t, t)``
    (``0..t`` unsigned), the membrane at step t is ``(u * t + 0.5) - N(t - 1)``, and the spike
    is ``spike`` of it. That is ``neuron_step`` iterated (the same values in exact arithmetic;
    this closed form is the definition, so every backend gets the same float32 spikes), with
    the gradient of BPTT through IF neurons with detached resets. Otherwise ``neuron_step``
    is iterated."""
    if series or tau != 0:
        v = torch.full(u.shape[1:] if series else u.shape, V_INIT, device=u.device)
        out = []
        for t in range(timesteps):
            s, v = neuron_step(u[t] if series else u, v, signed, tau, surrogate, alpha)
            out.append(s)
        return torch.stack(out)
    steps = torch.arange(1, timesteps + 1, device=u.device, dtype=torch.float32).reshape(-1, *([1] * u.dim()))
    with torch.no_grad():
        before = torch.floor(u * (steps - 1) + V_INIT)
        before = torch.minimum(torch.maximum(before, -(steps - 1) if signed else torch.zeros_like(steps)), steps - 1)
    return spike(u * steps + V_INIT - before, signed, surrogate, alpha)


def split_heads(
    qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int, rope_theta: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qkv [..., b, P, (H + 2KV) D]`` -> ``q [..., b, H, P, D]``, ``k, v [..., b, KV, P, D]``,
    with rotary embeddings of positions 0..P-1 applied to q and k when ``rope_theta > 0``
    (the convention of ``ops.attention``). A leading time axis is allowed."""
    *lead, p, _ = qkv.shape
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q = q.reshape(*lead, p, num_heads, head_dim).transpose(-2, -3)
    k = k.reshape(*lead, p, num_kv_heads, head_dim).transpose(-2, -3)
    v = v.reshape(*lead, p, num_kv_heads, head_dim).transpose(-2, -3)
    if rope_theta > 0:
        cos, sin = rotary_cos_sin(p, head_dim, rope_theta, device=qkv.device, dtype=qkv.dtype)

        def rotate(x: torch.Tensor) -> torch.Tensor:
            x1, x2 = x.chunk(2, dim=-1)
            return x * cos + torch.cat((-x2, x1), dim=-1) * sin

        q, k = rotate(q), rotate(k)
    return q, k, v


def ssa_forward(
    qkv: torch.Tensor,
    q_threshold: torch.Tensor,
    k_threshold: torch.Tensor,
    v_threshold: torch.Tensor,
    scale: torch.Tensor,
    o_threshold: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    rope_theta: float = 0.0,
    timesteps: int = 16,
    signed: bool = True,
    tau: float = 0.0,
    normalize: bool = True,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    output: str = "spikes",
    decay: torch.Tensor | None = None,
    stats: dict[str, float] | None = None,
    map_threshold: torch.Tensor | None = None,
    map_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """SSA over T steps (module docstring), differentiable through surrogate gradients.

    qkv: real ``[b, P, (H + 2KV) D]`` (a constant current), or a time series
    ``[T, b, P, (H + 2KV) D]`` (one current per step). Thresholds: ``q_threshold``,
    ``scale``, ``o_threshold`` ``[H D]``; ``k_threshold``, ``v_threshold`` ``[KV D]``
    (positive, channel order of the projections). Returns float32 ``[T, b, P, H D]``:
    the output spikes (``output="spikes"``), or the output neurons' input currents
    ``Y_t * scale`` in the units of ``o_threshold`` (``output="current"``).
    decay: ``[H]`` in (0, 1], or None (all 1): the causal mask of head h weighs position j
    seen from position i by ``decay[h] ** (i - j)`` (1 = Spikformer's plain causal mask), and
    ``normalize`` divides by the sum of those weights.
    map_threshold, map_bias: ``[H]`` (threshold positive), or None: no map neurons (the raw
    spike products form the map). When given, the map neurons of head h integrate
    ``(Q_t K_t^T) / map_threshold[h] - map_bias[h]`` (membrane from ``V_INIT``, unsigned, reset
    by subtraction; IF, or LIF with ``tau``) and their spikes form the map, weighted by the causal mask.
    stats: when given, receives the operation counts of the spike products (summed over batch
    and steps, see ``_count_products``) and the ``q_spikes``, ``k_spikes``, ``v_spikes`` of the
    input neurons, for energy estimates (with map neurons, ``a_nonzero`` counts their spikes)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if output not in ("spikes", "current"):
        raise ValueError(f"output must be 'spikes' or 'current', got {output!r}")
    series = qkv.dim() == 4
    if series and qkv.shape[0] != timesteps:
        raise ValueError(f"a time-series input has {qkv.shape[0]} steps, not {timesteps}")
    qkv = qkv.float()
    q, k, v = split_heads(qkv, num_heads, num_kv_heads, head_dim, rope_theta)

    def per_head(t: torch.Tensor, heads: int) -> torch.Tensor:  # [heads * D] -> [heads, 1, D]
        return t.float().reshape(heads, 1, head_dim)

    uq = q / per_head(q_threshold, num_heads)
    uk = k / per_head(k_threshold, num_kv_heads)
    uv = v / per_head(v_threshold, num_kv_heads)
    scale_h = per_head(scale, num_heads)
    gain = scale_h / per_head(o_threshold, num_heads)
    positions = q.shape[-2]
    rep = num_heads // num_kv_heads
    mask = None  # [KV, rep, P, P] weights of the causal mask, when decaying
    counts = torch.arange(1, positions + 1, device=qkv.device, dtype=torch.float32).unsqueeze(-1)
    if decay is not None:
        i = torch.arange(positions, device=qkv.device, dtype=torch.float32)
        distance = i[:, None] - i[None, :]
        base = decay.float().reshape(num_kv_heads, rep, 1, 1)
        mask = torch.where(distance >= 0, base ** distance.clamp(min=0), torch.zeros((), device=qkv.device))
        counts = mask.sum(-1, keepdim=True).reshape(num_heads, positions, 1)
    inv_count = 1.0 / counts if normalize else None
    if map_threshold is not None:
        map_gain = 1.0 / map_threshold.float().reshape(num_kv_heads, rep, 1, 1)
        map_shift = (torch.zeros(num_heads, device=qkv.device) if map_bias is None else map_bias.float()).reshape(
            num_kv_heads, rep, 1, 1)
    trains = [input_spikes(u, timesteps, series, signed, tau, surrogate, alpha) for u in (uq, uk, uv)]
    vo = torch.full(trains[0].shape[1:], V_INIT, device=qkv.device)
    vm = None  # membranes of the map neurons [b, KV, rep, P, P]
    outs = []
    for t in range(timesteps):
        sq, sk, sv = (x[t] for x in trains)
        # Query heads g*rep .. g*rep+rep-1 share K, V group g (grouped-query attention). Without
        # decay, integer sums of spike products: exact in float32 for P * D < 2**24, in any order.
        lead = sq.shape[:-3]
        a = sq.reshape(*lead, num_kv_heads, rep * positions, head_dim) @ sk.transpose(-1, -2)
        a = a.reshape(*lead, num_kv_heads, rep, positions, positions)
        if map_threshold is not None:
            if vm is None:
                vm = torch.full_like(a, V_INIT)
            a, vm = neuron_step(a * map_gain - map_shift, vm, False, tau, surrogate, alpha)
        a = torch.tril(a) if mask is None else a * mask
        if stats is not None:
            _count_products(stats, sq, sk, sv, a)
        y = (a @ sv.unsqueeze(-3)).reshape(sq.shape)
        if inv_count is not None:
            y = y * inv_count
        if output == "current":
            outs.append(y * scale_h)
            continue
        so, vo = neuron_step(y * gain, vo, signed, tau, surrogate, alpha)
        outs.append(so)
    out = torch.stack(outs)  # [T, b, H, P, D]
    return out.transpose(-2, -3).reshape(*out.shape[:-3], positions, num_heads * head_dim)


def _count_products(stats: dict[str, float], sq: torch.Tensor, sk: torch.Tensor, sv: torch.Tensor,
                    a: torch.Tensor) -> None:
    """Add one step's operations of the spike products to ``stats``.

    ``sq [..., H, P, D]``, ``sk, sv [..., KV, P, D]``: the step's spikes; ``a [..., KV, rep, P, P]``:
    the masked attention map. ``qk_synops``: spike coincidences of ``Q K^T`` over causal pairs
    (``sum_{j <= i, d} |Q_id| |K_jd|``: one accumulate each); ``a_nonzero``: non-zero map
    entries; ``av_synops``: each V spike ``(j, c)`` times the non-zero entries of column ``j``
    of the map (its fan-out); ``q_spikes``, ``k_spikes``, ``v_spikes``: ``|spikes|``."""
    kv = sk.shape[-3]
    qa, ka, va = sq.abs(), sk.abs(), sv.abs()
    grouped = qa.reshape(*qa.shape[:-3], kv, -1, *qa.shape[-2:])  # [..., KV, rep, P, D]
    keys_so_far = torch.cumsum(ka, dim=-2).unsqueeze(-3)  # |K| summed over positions j <= i
    nonzero = (a != 0).to(torch.float64)
    fan_out = nonzero.sum(-2).sum(-2)  # [..., KV, P]: queries reached from key position j, all heads of the group
    for key, value in (("q_spikes", qa.sum(dtype=torch.float64)), ("k_spikes", ka.sum(dtype=torch.float64)),
                       ("v_spikes", va.sum(dtype=torch.float64)),
                       ("qk_synops", (grouped.double() * keys_so_far.double()).sum()),
                       ("a_nonzero", nonzero.sum()),
                       ("av_synops", (fan_out * va.sum(-1, dtype=torch.float64)).sum())):
        stats[key] = stats.get(key, 0.0) + float(value)


def spiking_self_attention(
    qkv: torch.Tensor,
    q_threshold: torch.Tensor,
    k_threshold: torch.Tensor,
    v_threshold: torch.Tensor,
    scale: torch.Tensor,
    o_threshold: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    rope_theta: float = 0.0,
    timesteps: int = 16,
    signed: bool = True,
    tau: float = 0.0,
    normalize: bool = True,
    decay: torch.Tensor | None = None,
    stats: dict[str, float] | None = None,
    map_threshold: torch.Tensor | None = None,
    map_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Graph form of ``ssa_forward``: the output spike train ``[T, b, P, H D]`` as int8,
    without gradients. The canonical op of a converted graph and the simulator's kernel
    (which passes ``stats`` to count the spike products' operations)."""
    with torch.no_grad():
        spikes = ssa_forward(qkv, q_threshold, k_threshold, v_threshold, scale, o_threshold, num_heads,
                             num_kv_heads, head_dim, rope_theta, timesteps, signed, tau, normalize, decay=decay,
                             stats=stats, map_threshold=map_threshold, map_bias=map_bias)
    return spikes.to(torch.int8)
