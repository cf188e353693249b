"""Real-valued operators in numpy, mirroring ``spikec.core.ops`` (layout ``[batch, positions, features]``).

No Lava import. They reproduce torch's float32 CPU kernels where numpy can (LayerNorm and
RMSNorm bit for bit for a given SIMD width), so that floating_pt spikes equal spikec's
reference simulator; see docs/lava.md for what remains (MKL readouts, attention).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .network import Network, NetworkError

F32 = np.float32  # the dtype of every real value on a port


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


TORCH_VEC_WIDTH = 8  # floats per SIMD vector in torch's CPU kernels: 8 (AVX2, NEON, default), 16 (AVX-512)


def _fma(a: Any, b: Any, c: Any) -> np.ndarray:
    """float32 fused multiply-add: the float64 product of two float32 is exact, so one
    rounding to float64 then float32 (a double rounding that differs only at exact ties)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(F32)


def _ceil_log2(x: int) -> int:
    return 0 if x <= 1 else int(math.ceil(math.log2(x)))


def torch_sum(x: np.ndarray, width: int = TORCH_VEC_WIDTH) -> np.ndarray:
    """Sum over the last axis of float32 ``[rows, N]`` in the order of torch's CPU
    ``cascade_sum`` (vectors of ``width`` lanes, 4-way ILP, 4 cascade levels), so that the
    float32 result is bit-identical to ``torch.sum``. Returns ``[rows]``."""
    rows, n = x.shape
    n_vec = n // width
    vecs = x[:, : n_vec * width].reshape(rows, n_vec, width)
    ilp, levels = 4, 4
    size = n_vec // ilp
    blocks = vecs[:, : size * ilp].reshape(rows, size, ilp, width)
    power = max(4, _ceil_log2(size) // levels)
    step, mask = 1 << power, (1 << power) - 1
    acc = [np.zeros((rows, ilp, width), F32) for _ in range(levels)]
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] = acc[0] + blocks[:, i]
            i += 1
        for j in range(1, levels):
            acc[j], acc[j - 1] = acc[j] + acc[j - 1], np.zeros_like(acc[0])
            if i & (mask << (j * power)):
                break
    for k in range(i, size):
        acc[0] = acc[0] + blocks[:, k]
    for j in range(1, levels):
        acc[0] = acc[0] + acc[j]
    partial = acc[0][:, 0]
    for k in range(size * ilp, n_vec):
        partial = partial + vecs[:, k]
    for k in range(1, ilp):
        partial = partial + acc[0][:, k]
    total = np.zeros(rows, F32)
    for k in range(n_vec * width, n):
        total = total + x[:, k]
    for k in range(width):
        total = total + partial[:, k]
    return total


def torch_moments(x: np.ndarray, width: int = TORCH_VEC_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance over the last axis of float32 ``[rows, N]`` as torch's CPU
    ``RowwiseMoments`` (LayerNorm) computes them: Welford per lane over chunks of 16 vectors,
    merged in a binary cascade, then across lanes; multiply-adds fused where the compiled
    kernel fuses them. Bit-identical to torch (checked for AVX2 builds)."""
    rows, n = x.shape
    n_vec, chunk = n // width, 16
    m = -(-n_vec // chunk)
    depth = _ceil_log2(m)
    zero = np.zeros((rows, width), F32)
    stack = [[0, zero, zero] for _ in range(max(depth, 1))]
    inv = [F32(1) / F32(i + 1) for i in range(chunk)]

    def merge(m0_add: int, m1_add: np.ndarray, m2_add: np.ndarray, m0: int, m1: np.ndarray, m2: np.ndarray):
        total = m0 + m0_add
        c = F32(0) if total == 0 else F32(m0_add) / F32(total)
        delta = m1_add - m1
        c_delta = c * delta
        return [total, m1 + c_delta, _fma(delta * F32(m0), c_delta, m2 + m2_add)]

    for i in range(m):
        count = min(chunk, n_vec - i * chunk)
        m1, m2 = zero, zero
        for j in range(count):
            col = (i * chunk + j) * width
            xv = x[:, col:col + width]
            delta = xv - m1
            m1 = _fma(inv[j], delta, m1)
            m2 = _fma(delta, xv - m1, m2)
        stack[0] = merge(count, m1, m2, *stack[0])
        bits, j = i + 1, 1
        while j < depth and (bits & 1) == 0:
            stack[j] = merge(*stack[j - 1], *stack[j])
            stack[j - 1] = [0, zero, zero]
            bits >>= 1
            j += 1
    for j in range(1, depth):
        stack[0] = merge(*stack[j], *stack[0])
    lanes_m1, lanes_m2 = stack[0][1], stack[0][2]
    m0, mean, m2 = 0, np.zeros(rows, F32), np.zeros(rows, F32)
    for k in range(n_vec * width, n):  # the tail, element by element
        xk = x[:, k]
        delta = xk - mean
        m0 += 1
        mean = mean + delta / F32(m0)
        m2 = m2 + delta * (xk - mean)
    for k in range(width):  # merge the lanes (scalar code: the compiler fuses these)
        total = m0 + n_vec
        c = F32(n_vec) / F32(total)
        delta = lanes_m1[:, k] - mean
        mean = _fma(c, delta, mean)
        m2 = m2 + _fma((delta * delta) * c, F32(m0), lanes_m2[:, k])
        m0 = total
    return mean, m2 / F32(n)


def activation(x: np.ndarray, kind: str) -> np.ndarray:
    """Elementwise activation, float32 in and out, with torch's float32 formulas (the
    transcendental part correctly rounded)."""
    x = x.astype(F32)
    if kind == "relu":
        return np.maximum(x, F32(0))
    if kind == "gelu":
        return (x * F32(0.5)) * (F32(1) + _erf((x * F32(1 / math.sqrt(2.0)))).astype(F32))
    if kind == "gelu_tanh":
        inner = F32(math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5) * (x + F32(0.044715) * (x * x * x))
        return F32(0.5) * x * (F32(1) + np.tanh(inner.astype(np.float64)).astype(F32))
    if kind == "silu":
        return x / (F32(1) + np.exp(-x.astype(np.float64)).astype(F32))
    raise NetworkError(f"unknown activation {kind!r}")


def gated_activation(x: np.ndarray, kind: str) -> np.ndarray:
    f = x.shape[-1] // 2
    return activation(x[..., :f], kind) * x[..., f:]


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
               width: int = TORCH_VEC_WIDTH) -> np.ndarray:
    """torch's CPU LayerNorm: ``fma((x - mean) * rstd, weight, bias)`` in float32 with its moments."""
    flat = x.astype(F32).reshape(-1, x.shape[-1])
    mean, var = torch_moments(flat, width)
    rstd = F32(1) / np.sqrt(np.maximum(var, F32(0)) + F32(eps))
    y = _fma((flat - mean[:, None]) * rstd[:, None], weight.astype(F32), bias.astype(F32))
    return y.reshape(x.shape)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, width: int = TORCH_VEC_WIDTH) -> np.ndarray:
    """``x * rsqrt(mean(x^2) + eps) * weight`` in float32 with torch's summation order."""
    flat = x.astype(F32).reshape(-1, x.shape[-1])
    ms = torch_sum(flat * flat, width) / F32(flat.shape[-1])
    r = F32(1) / np.sqrt(ms + F32(eps))
    return ((flat * r[:, None]) * weight.astype(F32)).reshape(x.shape)


def rotary_cos_sin(positions: int, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(F32) / F32(head_dim)
    inv_freq = (F32(1.0) / np.power(F32(base), exponent)).astype(F32)
    freqs = np.outer(np.arange(positions, dtype=F32), inv_freq).astype(F32)
    emb = np.concatenate([freqs, freqs], -1).astype(np.float64)
    return np.cos(emb).astype(F32), np.sin(emb).astype(F32)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def apply_rotary(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate the first ``cos.shape[-1]`` features of each head of ``x`` ``[..., P, D]``; the
    rest pass unchanged (partial rotary); ``spikec.core.ops.apply_rotary``'s twin."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rot = x[..., :r]
    return np.concatenate([rot * cos + _rotate_half(rot) * sin, x[..., r:]], -1)


def split_heads(qkv: np.ndarray, heads: int, kv_heads: int, head_dim: int, rope_theta: float,
                rotary_dim: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q, k, v ``[b, heads or kv_heads, P, D]`` of the fused ``[q | k | v]`` ``[b, P, (H+2KV)D]``,
    the first ``rotary_dim`` features (0: all) of q and k rotated (RoPE) when ``rope_theta > 0``;
    in the dtype of ``qkv``."""
    b, p, _ = qkv.shape
    hq, hk = heads * head_dim, kv_heads * head_dim
    q = qkv[..., :hq].reshape(b, p, heads, head_dim).transpose(0, 2, 1, 3)
    k = qkv[..., hq:hq + hk].reshape(b, p, kv_heads, head_dim).transpose(0, 2, 1, 3)
    v = qkv[..., hq + hk:hq + 2 * hk].reshape(b, p, kv_heads, head_dim).transpose(0, 2, 1, 3)
    if rope_theta > 0:
        cos, sin = rotary_cos_sin(p, rotary_dim or head_dim, rope_theta)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
    return q, k, v


def attention(qkv: np.ndarray, heads: int, kv_heads: int, head_dim: int, rope_theta: float,
              scale: float, rotary_dim: int = 0, window: int = 0, causal: bool = True) -> np.ndarray:
    """Softmax attention of the fused ``[q | k | v]``; ``[b, P, (H+2KV)D] -> [b, P, HD]``; causal
    unless ``causal`` is False (an encoder: every query sees every key);
    ``window > 0``: query ``i`` sees keys ``i - window < j <= i`` only."""
    b, p, _ = qkv.shape
    q, k, v = split_heads(qkv, heads, kv_heads, head_dim, rope_theta, rotary_dim)
    if kv_heads != heads:
        k = np.repeat(k, heads // kv_heads, axis=1)
        v = np.repeat(v, heads // kv_heads, axis=1)
    scores = np.matmul(q.astype(np.float64), k.astype(np.float64).transpose(0, 1, 3, 2)) * scale
    visible = np.tril(np.ones((p, p), bool)) if causal else np.ones((p, p), bool)
    if causal and window > 0:
        visible &= ~np.tril(np.ones((p, p), bool), -window)
    scores = np.where(visible, scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    out = np.matmul(probs, v.astype(np.float64)).astype(F32)
    return out.transpose(0, 2, 1, 3).reshape(b, p, heads * head_dim)


def ssa_spikes(qkv: np.ndarray, p: dict[str, np.ndarray], heads: int, kv_heads: int, head_dim: int,
               rope_theta: float, timesteps: int, signed: bool, tau: float, normalize: bool) -> np.ndarray:
    """Spiking self-attention (``spikec.core.ssa.spiking_self_attention``, plain causal mask) in
    numpy float32, operation for operation: ``qkv [b, P, (H+2KV)D]`` -> int8 ``[T, b, P, HD]``.
    ``p``: ``q_threshold``, ``k_threshold``, ``v_threshold``, ``scale``, ``o_threshold``. The
    spike products are integer sums, exact in float32 in any order."""
    b, n, _ = qkv.shape
    hq, rep = heads * head_dim, heads // kv_heads
    q, k, v = split_heads(qkv.astype(F32), heads, kv_heads, head_dim, rope_theta)
    per_head = lambda a, h: a.astype(F32).reshape(h, 1, head_dim)  # noqa: E731
    u = [q / per_head(p["q_threshold"], heads), k / per_head(p["k_threshold"], kv_heads),
         v / per_head(p["v_threshold"], kv_heads)]
    scale_h = per_head(p["scale"], heads)
    gain = scale_h / per_head(p["o_threshold"], heads)
    inv_count = F32(1.0) / np.arange(1, n + 1, dtype=F32)[:, None] if normalize else None

    def fire(v_: np.ndarray) -> np.ndarray:
        s_ = (v_ >= 1.0).astype(F32)
        return s_ - (v_ < 0).astype(F32) if signed else s_

    trains = []
    for ui in u:  # the Q, K, V neurons driven by a constant current (ssa.input_spikes)
        if tau == 0:
            steps = np.arange(1, timesteps + 1, dtype=F32).reshape(-1, *([1] * ui.ndim))
            before = np.floor(ui * (steps - 1) + F32(0.5))
            before = np.minimum(np.maximum(before, -(steps - 1) if signed else np.zeros_like(steps)), steps - 1)
            trains.append(fire(ui * steps + F32(0.5) - before))
        else:
            vm, out = np.full(ui.shape, F32(0.5), F32), []
            for _ in range(timesteps):
                vm = vm + (ui - vm) / F32(tau)
                s_ = fire(vm)
                vm = vm - s_
                out.append(s_)
            trains.append(np.stack(out))
    vo = np.full(trains[0].shape[1:], F32(0.5), F32)
    outs = []
    for t in range(timesteps):
        sq, sk, sv = (tr[t] for tr in trains)
        a = sq.reshape(b, kv_heads, rep * n, head_dim) @ sk.transpose(0, 1, 3, 2)
        a = np.tril(a.reshape(b, kv_heads, rep, n, n))
        y = (a @ sv[:, :, None]).reshape(sq.shape)
        if inv_count is not None:
            y = y * inv_count
        current = y * gain
        vo = vo + current if tau == 0 else vo + (current - vo) / F32(tau)
        so = fire(vo)
        vo = vo - so
        outs.append(so)
    out = np.stack(outs)  # [T, b, H, P, D]
    return out.transpose(0, 1, 3, 2, 4).reshape(timesteps, b, n, hq).astype(np.int8)


SSA_PARAMS = ("q_threshold", "k_threshold", "v_threshold", "scale", "o_threshold")


def embedding(ids: np.ndarray, weight: np.ndarray, position_weight: np.ndarray) -> np.ndarray:
    out = weight[ids].astype(F32)
    if position_weight.shape[0] > 0:
        out = out + position_weight[: ids.shape[-1]].astype(F32)
    return out


def real_op(net: Network, name: str, x: np.ndarray, width: int = TORCH_VEC_WIDTH) -> np.ndarray:
    """Apply the real-valued node ``name`` to ``x`` ``[b, P, F]`` (float32). ``width``: the
    SIMD width of the torch build whose rounding the norms reproduce."""
    node = net.nodes[name]
    a = node.attrs
    if node.type == "Add":
        return x
    if node.type == "LayerNorm":
        return layer_norm(x, net.array(name, "weight"), net.array(name, "bias"), float(a["eps"]), width)
    if node.type == "RMSNorm":
        return rms_norm(x, net.array(name, "weight"), float(a["eps"]), width)
    if node.type == "Attention":
        return attention(x, int(a["num_heads"]), int(a["num_kv_heads"]), int(a["head_dim"]),
                         float(a["rope_theta"]), float(a["scale"]), int(a.get("rotary_dim", 0)),
                         int(a.get("window", 0)), bool(a.get("causal", True)))
    if node.type == "Activation":
        return activation(x, str(a["activation"]))
    if node.type == "GatedActivation":
        return gated_activation(x, str(a["activation"]))
    if node.type == "Affine":
        y = x.astype(np.float64) @ net.array(name, "weight").astype(np.float64).T + net.array(name, "bias")
        return y.astype(F32)
    raise NetworkError(f"node {name!r} ({node.type}) is not a real-valued op")


def to_lava(x: np.ndarray) -> np.ndarray:
    """``[b, P, F]`` -> the port layout ``[F, b*P]``."""
    return np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)


def from_lava(x: np.ndarray, batch: int) -> np.ndarray:
    """The port layout ``[F, b*P]`` -> ``[b, P, F]``."""
    return np.ascontiguousarray(x.T.reshape(batch, -1, x.shape[0]))
