"""Streaming (spike-equivalent) execution, SpikeZIP-TF style: one definition of its neuron
and operators, shared by the converted fx graph (the quantized ANN) and the simulator.

Convention (the one of the whole NIR dialect, docs/nir-extensions.md): a time series
``x_1 .. x_T`` stands for the window value ``mean_t x_t``; a real value is a constant
current. The *running mean* of a series is ``xbar_t = (x_1 + ... + x_t) / t``.

* **ST-BIF neuron** (threshold ``theta``, bound ``B``, ``signed``, ``v_init``). Its cumulative
  spike count after ``t`` steps is ``C_t = clamp(floor(t * xbar_t / theta + v_init), L, B*T)``
  with ``L = -B*T`` (signed) or 0, and it emits ``s_t = C_t - C_{t-1}`` (``C_0 = 0``): integer
  spikes, negative ones included (corrections), any size per step, the *total* bounded. Its
  membrane ``v_t = v_init + (I_1 + .. + I_t) / theta - C_{t-1}`` is a soft-reset IF membrane.
  After T steps ``C_T`` is ``neurons.signed_if_rate``'s count of the window value: the same
  quantizer as the rate path's ``SignedIF``, now for time-varying input.
* **Spike-equivalent operator** ``f`` (norms, activations, softmax, the products ``Q K^T`` and
  ``P V``): it emits ``o_t = t f(xbar_t) - (t-1) f(xbar_{t-1})``, so the running mean of its
  output is ``f(xbar_t)`` and its window value ``f(window value of its input)``.

Hence after T steps every window value of the streaming network equals that of the
*quantized ANN* in which each neuron site is the quantizer ``q(x) = theta C_T(x) / T``. The fx
ops below compute that ANN in one forward; the simulator computes every prefix ``t = 1..T``
(for the spike trains) and its last one with these same functions on the same shapes, so the
two agree bit for bit. Shapes: real ``[batch, positions, features]``; prefixes are stacked on
a new leading axis ``[N, batch, positions, features]`` with ``steps`` (an int, or a float32
tensor broadcastable from ``[N, 1, ..]``) saying how many steps each prefix covers.

Also here: the window spike counts ``spikec.verify`` compares (``fx_counts``, ``sim_counts``).
The NIR nodes are those of ``spikec.core.ir.streaming``; the builders lowering these fx ops to
them are ``spikec.lowering.streaming``.
"""

from __future__ import annotations

from collections.abc import Callable

import nir
import torch
import torch.nn.functional as F

from . import ops
from .ir import SpikecTokenEncoder

QUERY_CHUNK = 128
"""Query rows of one attention chunk (fx and simulator use the same chunks)."""

SCHEMES = ("rate", "binary")
"""Token encodings: ``rate`` (ST-BIF rate code of the constant embedding current) and
``binary`` (the magnitude's bits, most significant first, one step each, with its sign)."""

MAX_BITS = 16  # binary codes stay exact float32 integers


# ---------------------------------------------------------------------------
# the ST-BIF neuron
# ---------------------------------------------------------------------------


def stbif_counts(
    mean: torch.Tensor, threshold: torch.Tensor, steps, timesteps: int, max_spikes: int, signed: bool,
    v_init: float | torch.Tensor, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cumulative ST-BIF spike counts ``C_t`` (float32 integers) after ``steps`` steps of input
    whose running mean is ``mean`` ``[..., F]``; ``threshold`` ``[F]``; bounds ``[-B T, B T]``
    (``[0, B T]`` unsigned) with ``T = timesteps``. With ``steps == timesteps`` this is exactly
    ``neurons.signed_if_rate``'s count (same float operations in the same order). ``out``: where
    to write (may be ``mean`` itself)."""
    low = -max_spikes * timesteps if signed else 0
    counts = torch.mul(mean.float(), steps, out=out) if out is not None else steps * mean.float()
    counts.div_(threshold.float()).add_(v_init).floor_()
    return counts.clamp_(low, max_spikes * timesteps)


def spikes_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Spike trains ``s_t = C_t - C_{t-1}`` of cumulative counts ``[T, ...]``, in the smallest
    integer dtype that holds them (int8 when it can)."""
    spikes = counts.clone()
    spikes[1:] -= counts[:-1]
    peak = max(float(spikes.max()), -float(spikes.min())) if spikes.numel() else 0.0
    dtype = torch.int8 if peak <= 127 else torch.int16 if peak <= 32767 else torch.int32
    return spikes.to(dtype)


def stbif(
    x: torch.Tensor, threshold: torch.Tensor, timesteps: int, max_spikes: int = 1, signed: bool = True,
    v_init: float | torch.Tensor = 0.5,
) -> torch.Tensor:
    """fx op: the spike counts ``C_T`` ``[..., F]`` (float32) of ST-BIF neurons after a window
    of T steps whose currents average ``x``. Its consumers read ``theta C_T / T``."""
    return stbif_counts(x, threshold, timesteps, timesteps, max_spikes, signed, v_init)


def decode(counts: torch.Tensor, scale: torch.Tensor, steps) -> torch.Tensor:
    """Running mean ``(C_t * theta) / t`` of the currents a spike train delivers through
    synapses of weight ``scale`` ``[F]`` (the thresholds)."""
    return (counts * scale).div_(steps)


def count_affine(
    counts: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, steps
) -> torch.Tensor:
    """fx op (and, per prefix, the simulator's): running mean ``W (C_t / t) + b`` of an Affine
    driven by spikes; ``weight`` ``[out, in]`` holds the thresholds folded into its columns."""
    return F.linear(counts / steps, weight, bias)


def count_readout_affine(
    counts: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, timesteps: int
) -> torch.Tensor:
    """fx op: an Affine driven by spikes whose output is read out (the logits): what the
    simulator's fused ``Affine -> SpikecRateReadout`` gives for spike counts ``C_T``
    (``ops.readout_from_counts``)."""
    return ops.readout_from_counts(counts, weight, bias, timesteps)


def readout(x: torch.Tensor) -> torch.Tensor:
    """fx op: a ``SpikecRateReadout`` (mean over T). On window values it is the identity."""
    return x


# ---------------------------------------------------------------------------
# spike-equivalent elementwise operators (fx ops; same math as spikec.core.ops)
# ---------------------------------------------------------------------------


def stream_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      eps: float) -> torch.Tensor:
    """Spike-equivalent ``ops.layer_norm``: LayerNorm of the accumulated input."""
    return ops.layer_norm(x, weight, bias, eps)


def stream_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Spike-equivalent ``ops.rms_norm``."""
    return ops.rms_norm(x, weight, eps)


def stream_activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Spike-equivalent ``ops.activation``."""
    return ops.activation(x, kind)


def stream_gated_activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Spike-equivalent ``ops.gated_activation`` (the product ``act(gate) * up`` included)."""
    return ops.gated_activation(x, kind)


def stream_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A residual junction of a streaming network (``ops.add``; sums are linear per step)."""
    return ops.add(a, b)


STREAM_OPS = {
    ops.add: stream_add,
    ops.layer_norm: stream_layer_norm,
    ops.rms_norm: stream_rms_norm,
    ops.activation: stream_activation,
    ops.gated_activation: stream_gated_activation,
}
"""Canonical real-valued operator -> its streaming fx op (same arguments)."""


# ---------------------------------------------------------------------------
# spike-equivalent attention
# ---------------------------------------------------------------------------


def attention_heads(
    means: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int, rope_theta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split running means ``[N, b, P, (H + 2 KV) D]`` of q|k|v into contiguous ``q [N, b, H, P, D]``,
    ``k, v [N, b, KV, P, D]``, rotary embedding applied to q and k (linear per position)."""
    n, b, p, _ = means.shape
    q, k, v = means.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q = q.reshape(n, b, p, num_heads, head_dim).transpose(2, 3)
    k = k.reshape(n, b, p, num_kv_heads, head_dim).transpose(2, 3)
    v = v.reshape(n, b, p, num_kv_heads, head_dim).transpose(2, 3)
    if rope_theta > 0:
        cos, sin = ops.rotary_cos_sin(p, head_dim, rope_theta, device=means.device, dtype=means.dtype)
        q = q * cos + ops.rotate_half(q) * sin
        k = k * cos + ops.rotate_half(k) * sin
    return q.contiguous(), k.contiguous(), v.contiguous()


def attention_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, stop: int, steps, timesteps: int,
    scale: float, prob_threshold: torch.Tensor, prob_max_spikes: int, prob_v_init: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query rows ``start:stop`` of spike-equivalent causal attention over prefixes.

    q ``[N, b, H, P, D]``, k, v ``[N, b, KV, P, D]`` (running means, contiguous); scores
    ``(scale q) k^T`` with keys after the query masked, softmax, then the probability neurons
    (unsigned ST-BIF, threshold ``prob_threshold`` ``[H]``, counts ``C = floor(P (t / theta) +
    v_init)``) and their product with v, ``((C v) theta) / t``. Returns the output ``[N, b, H, c, D]`` and the probability spike
    counts ``[N, b, H, c, stop]`` (keys beyond ``stop`` are all masked for these rows)."""
    n, b, heads, _, d = q.shape
    kv = k.shape[2]
    rep, rows = heads // kv, stop - start
    qc = q[:, :, :, start:stop].reshape(n, b, kv, rep * rows, d).mul_(scale)  # heads g * rep + r share kv head g
    scores = torch.matmul(qc, k[:, :, :, :stop].transpose(-1, -2)).view(n, b, kv, rep, rows, stop)
    diagonal = torch.arange(rows, device=q.device)
    scores[..., start:stop].masked_fill_(diagonal[None, :] > diagonal[:, None], float("-inf"))
    counts = torch.softmax(scores, dim=-1)
    del scores
    theta = prob_threshold.float().view(kv, rep, 1, 1)
    steps = _expand_steps(steps, counts.ndim)
    low, high = 0, prob_max_spikes * timesteps
    # softmax <= 1 and theta * B >= 1: the count never leaves [0, B T], so the clamp is skipped
    bounded = float(theta.min()) * prob_max_spikes >= 1 and 0 <= prob_v_init <= 0.5
    counts.mul_(steps / theta).add_(prob_v_init).floor_()  # C = floor(P t / theta + v_init), t / theta first
    if not bounded:
        counts.clamp_(low, high)
    out = torch.matmul(counts.view(n, b, kv, rep * rows, stop), v[:, :, :, :stop])
    out = out.view(n, b, kv, rep, rows, d).mul_(theta).div_(steps)
    return out.view(n, b, heads, rows, d), counts.view(n, b, heads, rows, stop)


def _expand_steps(steps, ndim: int):
    """Per-prefix step counts ``[N]`` (tensor) shaped to broadcast over ``ndim`` axes."""
    if isinstance(steps, torch.Tensor):
        return steps.reshape(-1, *([1] * (ndim - 1)))
    return steps


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """``[N, b, H, P, D]`` -> ``[N, b, P, H D]``."""
    n, b, h, p, d = out.shape
    return out.transpose(2, 3).reshape(n, b, p, h * d)


def spike_attention(
    counts: torch.Tensor, input_scale: torch.Tensor, timesteps: int, num_heads: int, num_kv_heads: int,
    head_dim: int, rope_theta: float, scale: float, prob_threshold: torch.Tensor, prob_max_spikes: int,
    prob_v_init: float = 0.5,
) -> torch.Tensor:
    """fx op: spike-equivalent causal self-attention on the window spike counts ``C_T``
    ``[b, P, (H + 2 KV) D]`` of the q|k|v neurons (thresholds ``input_scale``). Equals
    ``Q_P(softmax(scale rope(q) rope(k)^T + mask)) v`` with q, k, v the quantized window
    values and ``Q_P`` the probability neurons' quantizer. Returns ``[b, P, H D]``."""
    means = decode(counts, input_scale, timesteps).unsqueeze(0)
    q, k, v = attention_heads(means, num_heads, num_kv_heads, head_dim, rope_theta)
    positions = counts.shape[1]
    out = q.new_empty(q.shape)
    for start in range(0, positions, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, positions)
        out[:, :, :, start:stop] = attention_rows(q, k, v, start, stop, timesteps, timesteps, scale, prob_threshold,
                                                  prob_max_spikes, prob_v_init)[0]
    return merge_heads(out)[0]


def attention_probability_counts(
    counts: torch.Tensor, input_scale: torch.Tensor, timesteps: int, num_heads: int, num_kv_heads: int,
    head_dim: int, rope_theta: float, scale: float, prob_threshold: torch.Tensor, prob_max_spikes: int,
    prob_v_init: float = 0.5,
) -> torch.Tensor:
    """The probability neurons' window counts of ``spike_attention`` (same arguments), laid
    out as the simulator records them: ``[b, P, H * P]`` (query position; head-major keys)."""
    means = decode(counts, input_scale, timesteps).unsqueeze(0)
    q, k, v = attention_heads(means, num_heads, num_kv_heads, head_dim, rope_theta)
    b, positions = counts.shape[:2]
    out = counts.new_zeros(b, num_heads, positions, positions)
    for start in range(0, positions, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, positions)
        out[:, :, start:stop, :stop] = attention_rows(q, k, v, start, stop, timesteps, timesteps, scale,
                                                      prob_threshold, prob_max_spikes, prob_v_init)[1][0]
    return probability_layout(out)


def probability_layout(counts: torch.Tensor) -> torch.Tensor:
    """``[..., b, H, P, P]`` -> ``[..., b, P, H * P]``: one neuron per (head, key), per query."""
    *lead, b, h, p, k = counts.shape
    return counts.transpose(-3, -2).reshape(*lead, b, p, h * k)


# ---------------------------------------------------------------------------
# token encodings
# ---------------------------------------------------------------------------


def binary_bits(bits: int, timesteps: int) -> int:
    """Bits a binary code uses at T steps: ``min(bits, T)``."""
    return max(1, min(int(bits), int(timesteps)))


def token_code(
    x: torch.Tensor, threshold: torch.Tensor, timesteps: int, scheme: str, max_spikes: int = 1,
    v_init: float = 0.5, bits: int = 8,
) -> torch.Tensor:
    """fx op: the integer code (float32) a token encoder sends for the embedding ``x`` ``[..., d]``
    over a window. ``rate``: the ST-BIF count ``C_T`` (bound ``B = max_spikes``); ``binary``:
    ``sign(x) * clamp(floor(|x| / theta * L + v_init), 0, L)``, ``L = 2^K - 1``, ``K = min(bits, T)``."""
    if scheme == "rate":
        return stbif_counts(x, threshold, timesteps, timesteps, max_spikes, True, v_init)
    if scheme == "binary":
        levels = float(2 ** binary_bits(bits, timesteps) - 1)
        magnitude = torch.clamp(torch.floor(x.float().abs() / threshold.float() * levels + v_init), 0, levels)
        return torch.sign(x.float()) * magnitude
    raise ValueError(f"unknown token encoding {scheme!r}; known: {', '.join(SCHEMES)}")


def token_partial_codes(code: torch.Tensor, x: torch.Tensor, threshold: torch.Tensor, timesteps: int, scheme: str,
                        max_spikes: int, v_init: float, bits: int) -> torch.Tensor:
    """The code sent after each step ``t = 1..T`` ``[T, ..., d]`` (float32; the last is ``code``).
    ``rate``: ST-BIF counts ``C_t`` of the constant current ``x``; ``binary``: the ``t`` most
    significant bits of the magnitude, with the sign."""
    steps = torch.arange(1, timesteps, dtype=torch.float32, device=x.device).reshape(-1, *([1] * x.ndim))
    if scheme == "rate":
        head = stbif_counts(x, threshold, steps, timesteps, max_spikes, True, v_init)
    else:
        k = binary_bits(bits, timesteps)
        weight = torch.exp2(torch.clamp(k - steps, min=0))  # the bits still to come are dropped
        head = torch.sign(code) * torch.floor(code.abs() / weight) * weight
    return torch.cat([head, code.unsqueeze(0)])


def token_spike_code(spikes: torch.Tensor, scheme: str, bits: int) -> torch.Tensor:
    """The code a token encoder's spike train ``[T, ...]`` carries (float32)."""
    if scheme == "rate":
        return spikes.sum(0, dtype=torch.float32)
    weight = binary_step_weights(bits, spikes.shape[0], spikes.device)
    return (spikes.float() * weight.reshape(-1, *([1] * (spikes.ndim - 1)))).sum(0)


def binary_step_weights(bits: int, timesteps: int, device=None) -> torch.Tensor:
    """What the bit sent at step ``k = 0..T-1`` is worth in code units: ``2^(K-1-k)`` for
    ``k < K``, 0 after (float32 ``[T]``)."""
    k = binary_bits(bits, timesteps)
    step = torch.arange(timesteps, dtype=torch.float32, device=device)
    return torch.where(step < k, torch.exp2(k - 1 - step), torch.zeros_like(step))


def token_spikes(partial: torch.Tensor, scheme: str, bits: int) -> torch.Tensor:
    """The encoder's spike train ``[T, ...]`` from its partial codes: ``C_t - C_{t-1}`` (rate,
    graded); ``(M_t - M_{t-1}) / 2^(K-t)`` in ``{-1, 0, 1}`` (binary)."""
    if scheme == "rate":
        return spikes_from_counts(partial)
    diff = torch.diff(partial, dim=0, prepend=torch.zeros_like(partial[:1]))
    weight = binary_step_weights(bits, partial.shape[0], partial.device)
    weight = torch.where(weight > 0, weight, torch.ones_like(weight)).reshape(-1, *([1] * (partial.ndim - 1)))
    return (diff / weight).to(torch.int8)


def token_decode(code: torch.Tensor, weight: torch.Tensor, timesteps: int, scheme: str, bits: int = 8) -> torch.Tensor:
    """fx op: the window value a token code stands for: ``code * theta / T`` (rate) or
    ``code * theta / (2^K - 1)`` (binary)."""
    if scheme == "rate":
        return decode(code, weight, timesteps)
    return code * weight / float(2 ** binary_bits(bits, timesteps) - 1)


def token_running(partial: torch.Tensor, weight: torch.Tensor, steps, timesteps: int, scheme: str,
                  bits: int) -> torch.Tensor:
    """Running means of the currents a token decoder delivers after ``steps`` steps, from the
    partial codes: ``theta C_t / t`` (rate), ``(T / t) theta M_t / (2^K - 1)`` (binary: the bit
    sent at step ``k`` carries ``T theta 2^(K-k) / (2^K - 1)``)."""
    if scheme == "rate":
        return decode(partial, weight, steps)
    return token_decode(partial, weight, timesteps, scheme, bits) * (timesteps / steps)


def causal_pairs(positions: int) -> int:
    """Query-key pairs of causal attention over ``positions`` positions."""
    return positions * (positions + 1) // 2


def prob_thresholds(num_heads: int, prob_max_spikes: int) -> torch.Tensor:
    """Default probability thresholds ``1 / B`` per head: the neurons cover ``[0, 1]`` exactly,
    in steps of ``1 / (B T)``."""
    return torch.full((num_heads,), 1.0 / prob_max_spikes, dtype=torch.float32)


# ---------------------------------------------------------------------------
# window spike counts, for comparing the fx graph with a simulation (spikec.verify)
# ---------------------------------------------------------------------------

COUNTED_OPS = (stbif, token_code, spike_attention)
"""fx ops whose neurons' window counts ``fx_counts`` gives."""


def fx_counts(target: Callable, args: tuple, kwargs: dict, result: torch.Tensor) -> dict[str, torch.Tensor]:
    """Window counts of the neurons of one fx node, by NIR name suffix: the node's own
    (``""``: ST-BIF counts, token codes) and, for ``spike_attention``, ``"_probs"``."""
    if target is spike_attention:
        return {"_probs": attention_probability_counts(*args, **kwargs)}
    return {"": result}


def sim_counts(node: nir.NIRNode | None, spikes: torch.Tensor) -> torch.Tensor:
    """What a recorded spike train ``[T, ...]`` of a streaming neuron node (``None``: a node's
    inner population) counts as: its sum, or a binary token encoder's code."""
    if isinstance(node, SpikecTokenEncoder):
        return token_spike_code(spikes, str(node.scheme), int(node.bits))
    return spikes.sum(0, dtype=torch.float32)
