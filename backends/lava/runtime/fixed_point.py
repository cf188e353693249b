"""Loihi fixed-point encodings of neurons, weights and biases.

No Lava import: shared with the export's quantization report and ``quantized_graph``.
Limits from lava/proc/lif/models.py and lava/utils/weightutils.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .network import Network, NetworkError

PRECISIONS = ("floating_pt", "fixed_pt")

BIAS_MANT_MAX = 4095  # 13-bit signed bias mantissa: -4096..4095
BIAS_EXP_MAX = 7  # 3-bit unsigned bias exponent
VTH_MAX = 2**17 - 1  # 17-bit unsigned threshold mantissa
VTH_SHIFT = 6  # the threshold is MSB-aligned by 6 bits: theta = vth << 6
STATE_MAX = 2**23 - 1  # 24-bit signed membrane / accumulator
WEIGHT_MANT_MAX = 127  # 8-bit signed weight mantissa (mixed sign: Lava stores 2*m)


CURRENT_ENCODINGS = ("bias13", "graded24")


def signed_if_encoding(max_spikes: int, timesteps: int, current: str = "graded24") -> dict[str, Any]:
    """Loihi encoding of a SignedIF layer for the fixed-point model.

    In threshold units the neuron integrates ``u = x / theta`` clipped to ``[-B, B]`` (``[0, B]``
    when unsigned), which changes no spike: a larger current already gives B spikes every
    step, a non-positive one none for an unsigned neuron. The membrane then stays within
    ``(B + 1) * theta``, which must fit 24 bits; the threshold is ``vth << 6`` (17-bit
    ``vth``). ``timesteps`` does not constrain it. The constant current is either
    ``bias13``: a LIF-style bias ``mant << bias_exp`` (13-bit signed mantissa, 3-bit exponent),
    or ``graded24``: a 24-bit value (a Loihi 2 graded-spike payload / 24-bit state), i.e.
    ``bias_exp`` 0 and a mantissa bounded only by the 24-bit range. We pick ``vth`` and
    ``bias_exp`` maximising the current's resolution (steps per threshold). Returns vth,
    theta (``vth << 6``), bias_exp, mant_max, resolution and ``current_step`` (threshold units)."""
    B, T = int(max_spikes), int(timesteps)
    if current not in CURRENT_ENCODINGS:
        raise NetworkError(f"unknown current encoding {current!r}; choose one of {CURRENT_ENCODINGS}")
    membrane_cap = STATE_MAX // ((B + 1) << VTH_SHIFT)
    mant_max = BIAS_MANT_MAX if current == "bias13" else STATE_MAX
    best: tuple[float, int, int] | None = None
    for exp in range(BIAS_EXP_MAX + 1 if current == "bias13" else 1):
        vth = min(VTH_MAX, (mant_max << exp) // (B << VTH_SHIFT), membrane_cap)
        if vth < 1:
            continue
        resolution = (vth << VTH_SHIFT) / (1 << exp)
        if best is None or resolution > best[0]:
            best = (resolution, vth, exp)
    if best is None:
        raise NetworkError(f"max_spikes={B} does not fit Loihi's 24-bit membrane (T={T})")
    resolution, vth, exp = best
    return {"current": current, "vth": int(vth), "theta": int(vth) << VTH_SHIFT, "bias_exp": int(exp),
            "mant_max": int(mant_max), "resolution": float(resolution), "current_step": 1.0 / resolution}


def fixed_point_current(u: np.ndarray, v_init: float, theta: int, bias_exp: int, mant_max: int, timesteps: int,
                        low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer currents and initial membranes for the real currents ``u`` (threshold units,
    float32 ``[N, ...]``) of a fixed-point SignedIF layer: ``(mant, v0)``, the bias being
    ``mant << bias_exp``. Spike-preserving: the integer neurons emit the spikes of the float32
    neurons (the reference simulator's arithmetic, from ``v_init``) at every step.

    Within ``[low, high]`` nothing clips, so the integer neuron's cumulative count is
    ``floor((v0 + t b) / theta)``, and the float32 neuron's counts ``C_t`` (``t <= T``) bound the
    bias ``b`` (and ``v0``) by linear inequalities. The mantissa is the one nearest
    ``u theta / 2**bias_exp`` that meets them with ``v0 = round(v_init theta)``; where none does
    (``t u + v_init`` within float32 rounding of an integer: the float32 sums are then not those
    of any exact current), ``v0`` is chosen too, in ``[0, theta)``. Plain rounding to nearest
    with ``v0 = round(v_init theta)`` is kept where no pair fits and outside the bounds (where
    both neurons emit ``low`` or ``high`` every step)."""
    u32 = np.asarray(u, np.float32)
    unit, steps = 1 << int(bias_exp), int(timesteps)
    nearest = np.rint(np.clip(u32, low, high).astype(np.float64) * (theta / unit)).astype(np.int64)
    v = np.full(u32.shape, np.float32(v_init), np.float32)
    counts = np.zeros((steps + 1,) + u32.shape, np.int64)  # C_0 = 0: v0 itself emits nothing
    for t in range(steps):  # the float32 neuron, as PySignedIFModelFloat runs it
        v = v + u32
        spikes = np.clip(np.floor(v), low, high)
        v = v - spikes
        counts[t + 1] = counts[t] + spikes.astype(np.int64)
    v_default = int(round(float(v_init) * theta))
    v0 = np.full(u32.shape, v_default, np.int64)
    t = np.arange(1, steps + 1, dtype=np.int64).reshape(-1, *([1] * u32.ndim))
    # C_t theta <= v0 + t b < (C_t + 1) theta for t = 1..T, with v0 fixed
    lo = _ceil_div(_ceil_div(counts[1:] * theta - v_default, t).max(0), unit)
    hi = (((counts[1:] + 1) * theta - 1 - v_default) // t).min(0) // unit
    mant = np.where(lo <= hi, np.clip(nearest, lo, hi), nearest)
    stuck = np.flatnonzero(((lo > hi) & (u32 >= low) & (u32 <= high)).ravel())
    if stuck.size:  # choose v0 too: for every pair t < t', (C_t' - C_t - 1) theta < (t' - t) b < (C_t' - C_t + 1) theta
        c = counts.reshape(steps + 1, -1)[:, stuck]
        b_lo = np.full(stuck.size, np.iinfo(np.int64).min // 4, np.int64)
        b_hi = np.full(stuck.size, np.iinfo(np.int64).max // 4, np.int64)
        for a in range(steps + 1):
            for z in range(a + 1, steps + 1):
                b_lo = np.maximum(b_lo, _ceil_div((c[z] - c[a] - 1) * theta + 1, z - a))
                b_hi = np.minimum(b_hi, ((c[z] - c[a] + 1) * theta - 1) // (z - a))
        m_lo, m_hi = _ceil_div(b_lo, unit), b_hi // unit
        m = np.clip(nearest.ravel()[stuck], m_lo, m_hi)
        b = m * unit
        tt = np.arange(steps + 1, dtype=np.int64)[:, None]
        v_lo = (c * theta - tt * b).max(0)
        v_hi = ((c + 1) * theta - 1 - tt * b).min(0)
        ok = (m_lo <= m_hi) & (v_lo <= v_hi)
        mant.ravel()[stuck[ok]] = m[ok]
        v0.ravel()[stuck[ok]] = np.clip(v_default, v_lo, v_hi)[ok]
    return np.clip(mant, -mant_max - 1, mant_max), v0


def _ceil_div(a: np.ndarray, b: Any) -> np.ndarray:
    return -((-a) // b)


TERNARY_MIN_FRACTION_BITS = 2
"""A balanced-ternary membrane needs its levels ``W_k / 2`` (multiples of 1/2) on a grid one bit
coarser than its own: one bit for the halves, one below them for rounding to odd."""


def ternary_fraction_bits(steps: int) -> int:
    """Fractional bits ``f`` of a fixed_pt balanced-ternary membrane of an S-step code (units of
    the code's last step): the most for which its bound ``3^S / 2`` times ``2^f`` fits the 24-bit
    state. Raises ``NetworkError`` below ``TERNARY_MIN_FRACTION_BITS`` (S >= 14): no exact
    integer membrane."""
    S = int(steps)
    bits = 0
    while 3**S << (bits + 1) <= 2 * STATE_MAX:  # 3^S / 2 * 2^(bits+1) <= STATE_MAX
        bits += 1
    if bits < TERNARY_MIN_FRACTION_BITS:
        raise NetworkError(f"a balanced-ternary code of {S} steps has no exact 24-bit membrane "
                           f"(at most {MAX_TERNARY_FIXED_STEPS} steps)")
    return bits


MAX_TERNARY_FIXED_STEPS = 13
"""The longest balanced-ternary code with an exact 24-bit membrane: 3^13 * 2 <= 2^23 - 1 < 3^14 * 2."""


def ternary_fixed_membrane(m0: np.ndarray, steps: int, bits: int) -> np.ndarray:
    """The integer initial membrane (int64, shaped like ``m0``, units of ``2^-bits`` of the last
    step) of fixed_pt balanced-ternary neurons whose float32 initial membrane is ``m0``.

    ``m0`` is clamped to ``+-3^S / 2``: beyond it every step fires with the sign of ``m0``, and at
    it too, so no spike changes. It is then rounded to odd on the ``2^-bits`` grid: truncated
    toward zero, and where that was inexact the last bit is set. ``m0`` and the integer then lie
    in the same open interval of the ``2^-(bits-1)`` grid (or are the same point of it), which
    holds every level ``+-W_k / 2`` and is moved onto itself by the integer subtractions of the
    steps: every comparison, hence every spike, equals the float32 model's. Plain truncation
    would not do: ``m0 = 2.5 + 2^-20`` (S = 2) fires +1 then 0 in float32 (``|-0.5 + 2^-20| <
    1/2``) but +1, -1 from the truncated 2.5."""
    bound = 3 ** int(steps) / 2
    x = np.clip(np.asarray(m0, np.float64), -bound, bound) * 2.0**bits  # exact: a float32 times 2^bits
    whole = np.trunc(x)
    n = whole.astype(np.int64)
    odd = (x != whole) & (n % 2 == 0)
    return np.where(odd, n + np.sign(x).astype(np.int64), n)


def weight_int_max(synapses: int) -> int:
    """Largest |integer weight| with ``synapses`` 8-bit synapse groups (shifts 7*i apart)."""
    if synapses not in (1, 2):
        raise NetworkError(f"synapses must be 1 or 2, got {synapses}")
    return WEIGHT_MANT_MAX if synapses == 1 else (WEIGHT_MANT_MAX << 7) + 63


def quantize_weights(weight: np.ndarray, synapses: int = 1) -> tuple[np.ndarray, int]:
    """Loihi weights for a Dense layer: ``weight ~ w_int * 2**weight_exp`` with one
    power-of-two exponent per layer (as Lava's ``optimize_weight_bits``) and integers
    ``|w_int| <= weight_int_max(synapses)``: 127 for one 8-bit synapse group, 16319 for two
    (a high group shifted by 7 bits plus a low group, both 8-bit). Returns (w_int int32, exp)."""
    w = np.asarray(weight, np.float64)
    amax = float(np.abs(w).max()) if w.size else 0.0
    top = weight_int_max(synapses)
    exp = int(math.ceil(math.log2(amax / top))) if amax > 0 else 0
    w_int = np.clip(np.rint(w / 2.0**exp), -top, top).astype(np.int32)
    return w_int, exp


def split_synapses(w_int: np.ndarray, synapses: int) -> list[tuple[np.ndarray, int]]:
    """The 8-bit synapse groups of integer weights: [(mant int8, shift)], sum of
    ``mant << shift`` = ``w_int``. Two groups: high = rint(w/128) in [-127, 127], low in [-64, 64]."""
    if synapses == 1:
        return [(w_int.astype(np.int8), 0)]
    hi = np.clip(np.rint(w_int / 128.0), -WEIGHT_MANT_MAX, WEIGHT_MANT_MAX).astype(np.int32)
    return [(hi.astype(np.int8), 7), ((w_int - (hi << 7)).astype(np.int8), 0)]


def quantize_bias(bias_units: np.ndarray) -> tuple[np.ndarray, int]:
    """A per-step bias in accumulator units as Loihi encodes it: ``mant << exp`` with a
    13-bit signed mantissa and a 3-bit exponent. Returns (effective integer bias, exp)."""
    b = np.asarray(bias_units, np.float64)
    amax = float(np.abs(b).max()) if b.size else 0.0
    exp = 0
    while exp < BIAS_EXP_MAX and amax / (1 << exp) > BIAS_MANT_MAX:
        exp += 1
    mant = np.clip(np.rint(b / (1 << exp)), -BIAS_MANT_MAX - 1, BIAS_MANT_MAX).astype(np.int64)
    return mant << exp, exp


def dense_fixed(net: Network, name: str) -> dict[str, Any]:
    """The fixed-point form of Dense ``name``: synapse groups, readout unit (real value of one
    accumulator step, ``2**weight_exp``) and the readout's integer bias per step."""
    w_int = net.array(name, "weight_int").astype(np.int32)
    exp = int(net.array(name, "weight_exp").item())
    synapses = int(net.array(name, "synapses").item())
    unit = 2.0**exp
    bias_int, bias_exp = quantize_bias(net.array(name, "bias").astype(np.float64) / unit)
    return {"groups": split_synapses(w_int, synapses), "unit": unit, "bias_int": bias_int, "bias_exp": bias_exp,
            "w_int": w_int, "weight_exp": exp, "synapses": synapses}
