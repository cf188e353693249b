"""Canonical operators of a captured transformer.

After capture and canonicalization a spikec graph calls only these functions (plus
the neuron encoder of ``neurons``), and the reference simulator executes the NIR
nodes with the very same functions, so that both agree bit for bit.

Real-valued tensors are ``[batch, positions, features]``; spike trains are
``[T, batch, positions, features]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .few_spike import FewSpikeParams, few_spike_encode, group_counts, group_scales
from .neurons import SignedIFParams, nir_if_encode, signed_if_encode

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def embedding(
    ids: torch.Tensor, weight: torch.Tensor, position_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Token embedding ``weight[ids]`` plus, if given, learned positions
    ``position_weight[0..P-1]``. ids: ``[batch, positions]`` int64 -> ``[batch, positions, d]``."""
    out = F.embedding(ids, weight)
    if position_weight is not None:
        out = out + position_weight[: ids.shape[-1]]
    return out


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LayerNorm over the last axis; ``weight``/``bias`` may be folded away (None)."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis (Llama convention, computed in float32)."""
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = out.to(x.dtype)
    return out if weight is None else out * weight


def activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Elementwise activation by name (one of ``ACTIVATIONS``)."""
    return ACTIVATIONS[kind](x)


def gated_activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Gated MLP activation: ``act(gate) * up`` where ``x = [gate | up]`` on the last axis."""
    gate, up = x.chunk(2, dim=-1)
    return ACTIVATIONS[kind](gate) * up


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Residual addition."""
    return a + b


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias``; weight is ``[out, in]`` (nn.Linear layout)."""
    return F.linear(x, weight, bias)


def rate_readout_affine(
    spikes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Mean over time of ``affine(spikes[t])``: the current an Affine layer driven by
    a spike train delivers over a window of T steps, read out as a real value.

    spikes: ``[T, ..., in]`` integers; weight ``[out, in]`` already holds the folded
    thresholds. By linearity this equals ``affine(sum_t spikes[t]) / T``, which is how
    it is computed (one matmul instead of T, see ``readout_from_counts``). Returns
    ``[..., out]`` in ``dtype`` (default ``weight.dtype``).
    """
    return readout_from_counts(spikes.sum(0, dtype=torch.float64), weight, bias, spikes.shape[0], dtype)


READOUT_BLOCK = 1 << 17
"""Weight elements ``readout_from_counts`` widens to float64 at a time (1 MiB of float64:
small enough that glibc keeps little of it around, large enough for full-speed matmuls)."""


def binary_readout_affine(
    spikes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, radix: int = 2
) -> torch.Tensor:
    """The Horner readout of a few-spike train: ``sum_k r^-k affine(spikes[k])`` without the
    bias, plus the bias once (``spikec.core.few_spike``; r the radix, 2 or 3).

    spikes: ``[T, ..., in]`` in {-1, 0, 1}; weight ``[out, in]`` already holds the folded
    first-step weights (thresholds). By linearity each readout group of 8 steps is ``affine`` of
    its group count (``few_spike.group_counts``); see ``readout_from_group_counts``.
    Returns ``[..., out]``.
    """
    return readout_from_group_counts(group_counts(spikes, radix), weight, bias,
                                      group_scales(spikes.shape[0], radix))


def readout_from_group_counts(
    counts: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scales: list[float] | None = None
) -> torch.Tensor:
    """``sum_g s_g W counts[g] + b`` for the group counts ``[G, ..., in]`` of a few-spike train:
    each group's product in float64 (exact: 8 steps of 24-bit weights, so a backend's
    Horner sum ``acc = r acc + W s_k`` over the group gives the same number), times the group's
    scale ``s_g`` (``few_spike.group_scales``: none for radix 2, ``3^-(stop-1)`` for radix 3),
    the groups added in order, the bias last, rounded once to ``weight.dtype``."""
    w = weight.to(torch.float64)
    out = F.linear(counts[0].to(torch.float64), w)
    if scales is not None:
        out = out * scales[0]
    for g in range(1, counts.shape[0]):
        part = F.linear(counts[g].to(torch.float64), w)
        out = out + (part * scales[g] if scales is not None else part)
    if bias is not None:
        out = out + bias.to(torch.float64)
    return out.to(weight.dtype)


def readout_from_counts(
    counts: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, timesteps: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``(W @ counts) / T + b`` for spike counts ``[..., in]`` (sums over the T steps).

    Computed in float64 and rounded once to ``dtype`` (default ``weight.dtype``): the float64
    sum of integer multiples of float32 weights is exact up to far below float32's
    resolution, so every backend that accumulates ``W s_t`` in float64 in any order (the
    reference simulator, Lava's Dense + readout) gets the same float32 value, not one that
    depends on a BLAS library's summation order.

    The weight is widened ``READOUT_BLOCK`` elements (whole rows) at a time, so that a
    float64 copy of a whole weight (twice its float32 size; GPT-2's 50257 x 768 head alone
    is 295 MiB) never exists. A BLAS may order a block's float64 sums otherwise than the
    whole product's (MKL does, by the block's width); by the argument above that leaves the
    float32 values alone.
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (counts, weight, bias)):
        # training: one whole product, as the blocks' out= and in-place ops do not differentiate
        acc = F.linear(counts.to(torch.float64), weight.to(torch.float64)) / timesteps
        if bias is not None:
            acc = acc + bias.to(torch.float64)
        return acc.to(dtype or weight.dtype)
    return _readout_in_blocks(counts, weight, bias, timesteps, dtype or weight.dtype)


def _readout_in_blocks(
    counts: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, timesteps: int, dtype: torch.dtype
) -> torch.Tensor:
    features, width = weight.shape
    out = torch.empty((*counts.shape[:-1], features), dtype=dtype, device=weight.device)
    wide = counts.to(torch.float64).reshape(-1, counts.shape[-1])
    rows = max(1, min(features, READOUT_BLOCK // max(width, 1)))
    # one float64 weight block and one accumulator, reused: few allocations, little fragmentation
    block = torch.empty((rows, width), dtype=torch.float64, device=weight.device)
    acc = torch.empty((wide.shape[0] * rows,), dtype=torch.float64, device=weight.device)
    flat = out.view(-1, features)
    for start in range(0, features, rows):
        n = min(rows, features - start)
        part = acc[:wide.shape[0] * n].view(wide.shape[0], n)
        torch.mm(wide, block[:n].copy_(weight[start:start + n]).t(), out=part)
        part /= timesteps
        if bias is not None:
            part += bias[start:start + n].to(torch.float64)
        flat[:, start:start + n] = part  # the one rounding
    return out


def rotary_cos_sin(
    positions: int, head_dim: int, base: float, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position tables (Hugging Face Llama convention). Returns ``cos, sin``
    of shape ``[positions, head_dim]``."""
    inv_freq = 1.0 / (
        base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim)
    )
    t = torch.arange(positions, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings' half rotation: ``[x1 | x2] -> [-x2 | x1]`` over the last axis (any shape)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` features of each head of ``x`` ``[..., P, head_dim]``
    by the tables ``[P, rotary_dim]``; the rest pass unchanged (partial rotary, GPT-NeoX, Phi)."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot = x[..., :r]
    return torch.cat((rot * cos + rotate_half(rot) * sin, x[..., r:]), dim=-1)


def attention(
    qkv: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    rope_theta: float = 0.0,
    scale: float | None = None,
    causal: bool = True,
    rotary_dim: int = 0,
    window: int = 0,
) -> torch.Tensor:
    """Softmax self-attention core between projections.

    qkv: ``[batch, positions, (num_heads + 2*num_kv_heads) * head_dim]``, the fused
    query/key/value projections. Rotary embeddings are applied when ``rope_theta > 0``
    (positions 0..P-1) to the first ``rotary_dim`` features of each head (0: all of them);
    grouped-query attention when ``num_kv_heads < num_heads``. ``window > 0`` (sliding-window
    attention, Mistral, Qwen2) lets query ``i`` see keys ``i - window < j <= i`` only.
    Returns ``[batch, positions, num_heads * head_dim]``.
    """
    b, p, _ = qkv.shape
    q, k, v = qkv.split(
        [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1
    )
    q = q.view(b, p, num_heads, head_dim).transpose(1, 2)
    k = k.view(b, p, num_kv_heads, head_dim).transpose(1, 2)
    v = v.view(b, p, num_kv_heads, head_dim).transpose(1, 2)
    if rope_theta > 0:
        cos, sin = rotary_cos_sin(p, rotary_dim or head_dim, rope_theta, device=qkv.device, dtype=qkv.dtype)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
    if num_kv_heads != num_heads:
        rep = num_heads // num_kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if causal and 0 < window < p:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(p, window, qkv.device), scale=scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return out.transpose(1, 2).reshape(b, p, num_heads * head_dim)


def sliding_window_mask(positions: int, window: int, device=None) -> torch.Tensor:
    """Bool ``[positions, positions]``: query ``i`` may attend key ``j`` iff ``i - window < j <= i``."""
    i = torch.arange(positions, device=device)[:, None]
    j = torch.arange(positions, device=device)[None, :]
    return (j <= i) & (j > i - window)


def signed_if(
    x: torch.Tensor,
    threshold: torch.Tensor,
    timesteps: int,
    max_spikes: int = 1,
    signed: bool = True,
    v_init: float | torch.Tensor = 0.5,
) -> torch.Tensor:
    """Graph form of ``neurons.signed_if_encode``: real current ``[..., F]`` ->
    spike train ``[T, ..., F]`` (int8). Flat arguments so that an fx node can hold
    the threshold as a ``get_attr`` tensor (and ``v_init``, when it is per neuron ``[F]``)."""
    params = SignedIFParams(threshold, max_spikes=max_spikes, signed=signed, v_init=v_init)
    return signed_if_encode(x, params, timesteps)


def few_spike(
    x: torch.Tensor, threshold: torch.Tensor, timesteps: int, signed_digits: bool = False, steps: int = 0,
    radix: int = 2,
) -> torch.Tensor:
    """Graph form of ``few_spike.few_spike_encode``: real current ``[..., F]`` -> spike train
    ``[T, ..., F]`` (int8, -1/0/1, step k weighted r^-k, r = ``radix``); ``steps`` (0: all T) the
    layer's own shorter code, silent after it (``--budget``)."""
    return few_spike_encode(x, FewSpikeParams(threshold, signed_digits=signed_digits, radix=radix), timesteps, steps)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` without a bias (NIR ``Linear``); weight is ``[out, in]``."""
    return F.linear(x, weight)


def nir_if(
    x: torch.Tensor, timesteps: int, r: float = 1.0, v_threshold: float = 1.0, v_reset: float = 0.0
) -> torch.Tensor:
    """Graph form of ``neurons.nir_if_encode``: standard NIR ``IF`` neurons (one spike a
    step at most, reset to ``v_reset``, membrane from 0) driven by the real current
    ``[..., F]`` for ``timesteps`` steps -> 0/1 spike train ``[T, ..., F]`` (int8)."""
    return nir_if_encode(x, timesteps, r, v_threshold, v_reset)
