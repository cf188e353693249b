"""The few-spike neuron: a signed binary (bit-plane) code, most significant step first.

Time is the first axis of every time series: ``[T, batch, ..., features]``; dt = 1.

A layer of few-spike neurons (Stöckl & Maass 2021's idea, bit-serial "essential bits")
is driven by a real current ``x`` that is constant over a window of ``T`` steps. In
threshold units ``u = x / theta`` (float32 division, as ``SignedIF``) the step weights
are ``w_k = 2^-k`` (``k = 0 .. T-1``): the first step carries the threshold itself (the
pass puts the outlier headroom there: ``theta = 2^E * theta_percentile``, the "leading
steps" of the code), every later step half of the previous one. Each step the neuron
emits at most one spike of sign ``sgn(v)``:

    fire_k = |v_k| >= l_k                       (l_k: the firing level of step k)
    s_k    = sgn(v_k) * fire_k                   in {-1, 0, +1}
    v_k+1  = v_k - s_k * w_k                    (reset by subtraction of the step weight)

Two digit sets (``signed_digits``):

* binary (False): ``v_0 = u + sgn(u) * 2^-T`` (half the last step's weight: the rounding
  offset sits in the initial membrane, as ``SignedIF``'s ``v_init = 0.5``), ``l_k = w_k``.
  The membrane never changes sign, the spikes are the sign times the bits of
  ``n = min(floor(|v_0| * 2^(T-1)), 2^T - 1)``: the code of ``round(u * 2^(T-1))`` (half away
  from zero), saturating at ``|u| = 2 - 2^(1-T)``.
* signed (True): ``v_0 = u``, ``l_k = fl32(2/3) * w_k`` for ``k < T-1`` and ``l_(T-1) = w_(T-1) / 2``:
  greedy non-adjacent signed digits (no two spikes on consecutive steps, but for the last
  step, which rounds; about a third fewer spikes than binary at the same step), rounding to the nearest
  multiple of ``2^(1-T)`` on the last step, saturating at ``|u| = 4/3``.

The value the spikes stand for is ``theta * sum_k 2^-k s_k`` (``weighted_count``); the
readout accumulates the steps' synaptic inputs ``y_k = W s_k`` with Horner's rule
(``acc = 2 acc + y_k``, value ``acc * 2^-(T-1)``), a shift and an add per output and step.

Balanced ternary (``radix = 3``, a third digit set): step k weighted ``w_k = 3^-k``. A signed
spike train of T steps has ``3^T`` patterns; binary digits use ``2^(T+1) - 1`` of them, balanced
ternary every one: 2,187 levels in 7 steps against binary's 255. The membrane is kept in units of
the last step, ``m = u * 3^(S-1)`` (float32; S the code's steps), where every step weight
``W_k = 3^(S-1-k)`` and firing level ``W_k / 2`` is an exact float32 number:

    m_0    = fl32(fl32(x / theta) * 3^(S-1))
    s_k    = sgn(m_k) [|m_k| >= W_k / 2]
    m_k+1  = m_k - s_k W_k

(greedy balanced-ternary digits: the code rounds ``m_0`` to an integer, saturating at
``|u| = 3/2 (1 - 3^-S)``; each subtraction is exact while ``|m_0| < 2^24``). The readout's Horner
rule triples instead of doubling (``acc = 3 acc + y_k``: a shift and two adds per output and step).

Exactness: every implementation (the fx op, the simulator, Lava's float and fixed models)
computes ``u``, ``v_0`` and each update with these float32 operations in this order; the
step weights and levels are exact float32 numbers, so the spikes agree bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

SPIKE_DTYPE = torch.int8
TWO_THIRDS = float(np.float32(2.0 / 3.0))
"""The signed digits' firing fraction, the float32 nearest 2/3 (exact as a Python float)."""
MAX_STEPS = 24  # step weights 2^-k stay normal float32 numbers with room for the levels
MAX_TERNARY_STEPS = 15  # 3^14 < 2^24: the membrane's step weights and subtractions stay exact float32
RADICES = (2, 3)


@dataclass(frozen=True)
class FewSpikeParams:
    """Parameters of a layer of few-spike neurons.

    threshold: ``[features]`` positive, the weight of the first step in units of the input
    current (the code spans about ``[-2 theta, 2 theta]``, ``[-4/3 theta, 4/3 theta]`` with
    signed digits). signed_digits: the digit set (module docstring). radix: 2 (step k weighted
    ``2^-k``) or 3 (balanced ternary, step k weighted ``3^-k``; its digits are signed, so
    ``signed_digits`` is True; the code spans about ``[-1.5 theta, 1.5 theta]``).
    """

    threshold: torch.Tensor
    signed_digits: bool = False
    radix: int = 2

    def __post_init__(self) -> None:
        check_radix(self.radix, self.signed_digits)


def check_radix(radix: int, signed_digits: bool) -> None:
    """Raise ``ValueError`` unless ``radix`` is 2, or 3 with signed digits."""
    if int(radix) not in RADICES:
        raise ValueError(f"a few-spike code has radix 2 or 3, got {radix}")
    if int(radix) == 3 and not signed_digits:
        raise ValueError("a radix-3 (balanced ternary) code has signed digits")


def max_steps(radix: int = 2) -> int:
    """The longest code of a radix: ``MAX_STEPS`` (2) or ``MAX_TERNARY_STEPS`` (3)."""
    return MAX_TERNARY_STEPS if int(radix) == 3 else MAX_STEPS


def check_steps(timesteps: int, radix: int = 2) -> None:
    """Raise ``ValueError`` unless ``1 <= timesteps <= max_steps(radix)``."""
    if not 1 <= int(timesteps) <= max_steps(radix):
        raise ValueError(f"a radix-{int(radix)} few-spike code has 1..{max_steps(radix)} steps, got {timesteps}")


def step_weight(k: int) -> float:
    """``w_k = 2^-k``, the weight of step ``k`` in threshold units (exact float32)."""
    return 2.0 ** -k


def fire_level(k: int, timesteps: int, signed_digits: bool) -> float:
    """``l_k``, the membrane magnitude (threshold units) at which step ``k`` fires (exact float32)."""
    if not signed_digits:
        return step_weight(k)
    return step_weight(k) / 2 if k == timesteps - 1 else TWO_THIRDS * step_weight(k)


def initial_membrane(u: torch.Tensor, timesteps: int, signed_digits: bool) -> torch.Tensor:
    """``v_0`` (float32, shaped like ``u``): ``u + sgn(u) 2^-T`` (binary) or ``u`` (signed digits)."""
    if signed_digits:
        return u.clone()
    return u + torch.sign(u) * (2.0 ** -timesteps)


def few_spike_step(v: torch.Tensor, level: float, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: spikes ``sgn(v) [|v| >= level]`` (float32 -1/0/1) and the membrane minus
    ``spikes * weight``. v: ``[..., features]`` in threshold units."""
    spikes = torch.where(v.abs() >= level, torch.sign(v), torch.zeros_like(v))
    return spikes, v - spikes * weight


def code_steps(timesteps: int, steps: int = 0) -> int:
    """The steps a layer's code uses in a window of ``timesteps``: ``steps`` when set (``1 ..
    timesteps``; ``--budget`` chooses it per layer), else the whole window."""
    if not steps:
        return int(timesteps)
    if not 1 <= int(steps) <= int(timesteps):
        raise ValueError(f"a few-spike layer's steps must be 1..{timesteps} (the window), got {steps}")
    return int(steps)


def few_spike_encode(x: torch.Tensor, params: FewSpikeParams, timesteps: int, steps: int = 0) -> torch.Tensor:
    """Drive few-spike neurons with the constant current ``x [..., features]`` for ``timesteps``
    steps. Returns the spike train ``[T, ..., features]`` as ``SPIKE_DTYPE`` (-1, 0, 1).

    steps: a shorter code (``S = code_steps(timesteps, steps)``): the S-step code of ``x`` on
    steps ``0 .. S-1`` (its rounding offset ``2^-S``), silence on the rest of the window, so the
    readout's weighted count is the S-step code's value."""
    check_steps(timesteps, params.radix)
    n = code_steps(timesteps, steps)
    u = x.float() / params.threshold.float()
    out = torch.zeros((timesteps, *u.shape), dtype=SPIKE_DTYPE, device=u.device)
    if params.radix == 3:
        m = ternary_membrane(u, n)
        for k in range(n):
            weight = float(3 ** (n - 1 - k))
            spikes, m = few_spike_step(m, weight / 2, weight)
            out[k] = spikes.to(SPIKE_DTYPE)
        return out
    v = initial_membrane(u, n, params.signed_digits)
    for k in range(n):
        spikes, v = few_spike_step(v, fire_level(k, n, params.signed_digits), step_weight(k))
        out[k] = spikes.to(SPIKE_DTYPE)
    return out


def ternary_membrane(u: torch.Tensor, steps: int) -> torch.Tensor:
    """``m_0 = fl32(u * 3^(S-1))``: a balanced-ternary neuron's initial membrane in units of its last
    step (float32, shaped like ``u``, the current in threshold units)."""
    return u.float() * float(3 ** (steps - 1))


def ternary_code(x: torch.Tensor, threshold: torch.Tensor, timesteps: int, steps: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The balanced-ternary neurons' readout inputs without their spike train: ``(group counts
    float64 [G, ..., F], spikes per neuron int64 [..., F])`` for the constant current ``x`` over a
    window of ``timesteps`` (``group_counts(few_spike_encode(...), 3)`` and its ``|spikes|`` sum,
    computed with the same float32 steps but no ``[T, ...]`` tensor)."""
    check_steps(timesteps, 3)
    n = code_steps(timesteps, steps)
    m = ternary_membrane(x.float() / threshold.float(), n)
    groups = step_groups(timesteps)
    counts = torch.zeros((len(groups), *m.shape), dtype=torch.float64, device=m.device)
    total = torch.zeros(m.shape, dtype=torch.int64, device=m.device)
    for g, group in enumerate(groups):
        for k in group:
            if k >= n:
                break
            weight = float(3 ** (n - 1 - k))
            spikes, m = few_spike_step(m, weight / 2, weight)
            counts[g].mul_(3).add_(spikes)
            total += spikes.abs().to(torch.int64)
        if group.stop > n and n > group.start:
            counts[g].mul_(3 ** (group.stop - n))  # the group's silent tail: Horner still triples
    return counts, total


READOUT_GROUP = 8
"""Steps the readout sums exactly in one float64 accumulator (Horner). A longer code is read in
groups of 8 steps, each group's sum rounded once and the groups added in order: with a 24-bit
weight and 8 steps a group's products need 32 bits, so float64 holds its sums exactly in any
order (a 16-step Horner sum does not), and Loihi's 24-bit accumulator keeps its headroom."""


def step_groups(timesteps: int) -> list[range]:
    """The steps of each readout group: ``range(0, 8)``, ``range(8, 16)``, ... up to T."""
    return [range(g, min(g + READOUT_GROUP, timesteps)) for g in range(0, timesteps, READOUT_GROUP)]


def group_counts(spikes: torch.Tensor, radix: int = 2) -> torch.Tensor:
    """``[G, ...]`` float64 per readout group of a spike train ``[T, ...]`` (exact): radix 2,
    ``sum_(k in group) 2^-k s_k`` (their sum is ``weighted_count``); radix 3, the integer
    ``sum_(k in group) 3^(stop-1-k) s_k`` that the group's Horner rule (``acc = 3 acc + s_k``)
    accumulates, to be scaled by ``group_scales`` (``3^-k`` is not a float)."""
    if radix == 3:
        return torch.stack([torch.tensordot(
            torch.tensor([float(3 ** (g.stop - 1 - k)) for k in g], dtype=torch.float64, device=spikes.device),
            spikes[g.start:g.stop].to(torch.float64), dims=1) for g in step_groups(spikes.shape[0])])
    w = step_weights(spikes.shape[0], spikes.device)
    return torch.stack([torch.tensordot(w[g.start:g.stop], spikes[g.start:g.stop].to(torch.float64), dims=1)
                        for g in step_groups(spikes.shape[0])])


def group_scales(timesteps: int, radix: int = 2) -> list[float] | None:
    """What multiplies each group's readout product: None for radix 2 (its counts carry their
    weights exactly), ``3^-(stop-1)`` (float64, rounded once) per group for radix 3."""
    if radix != 3:
        return None
    return [3.0 ** -(g.stop - 1) for g in step_groups(timesteps)]


def step_weights(timesteps: int, device=None) -> torch.Tensor:
    """``[T]`` float64 ``2^-k``: the readout's weight of each step."""
    return torch.tensor([step_weight(k) for k in range(timesteps)], dtype=torch.float64, device=device)


def weighted_count(spikes: torch.Tensor, radix: int = 2) -> torch.Tensor:
    """``sum_k r^-k s_k`` over the first axis of a spike train ``[T, ...]`` (float64): the value of
    the code in threshold units, what the Horner readout accumulates. Exact for radix 2; for radix
    3 the groups' integer counts scaled by ``group_scales`` and added in order."""
    if radix == 3:
        counts = group_counts(spikes, 3)
        scales = group_scales(spikes.shape[0], 3)
        out = counts[0] * scales[0]
        for g in range(1, counts.shape[0]):
            out = out + counts[g] * scales[g]
        return out
    w = step_weights(spikes.shape[0], spikes.device)
    return torch.tensordot(w, spikes.to(torch.float64), dims=1)


def binary_code(x: torch.Tensor, threshold: torch.Tensor, timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed form of the binary digit set (not signed digits): ``(group counts float64
    [G, ..., F], spikes per neuron int64 [..., F])`` for the constant current ``x`` over
    ``timesteps`` steps, equal to ``group_counts(few_spike_encode(...))`` and its ``|spikes|``
    sum (the spikes are the bits of ``n``; module docstring). ``|v_0|`` is computed as
    ``|u| + 2^-T``, the same float32 number (rounding to nearest is symmetric)."""
    check_steps(timesteps)
    u = x.float() / threshold.float()
    n = u.abs().add_(2.0 ** -timesteps).mul_(2.0 ** (timesteps - 1)).floor_().clamp_(max=2 ** timesteps - 1)
    sign = torch.sign(u)
    groups = step_groups(timesteps)
    if len(groups) == 1:
        values = (sign * n).double().mul_(2.0 ** (1 - timesteps))[None]
    else:
        whole = n.to(torch.int64)
        values = torch.stack([(sign.double() * ((whole >> (timesteps - g.stop)) & ((1 << len(g)) - 1)).double())
                              .mul_(2.0 ** (1 - g.stop)) for g in groups])
    return values, popcount(n.to(torch.int32), timesteps)


def popcount(n: torch.Tensor, bits: int) -> torch.Tensor:
    """Set bits of each non-negative integer ``n < 2^bits`` (integer tensor; int64, same shape)."""
    if bits <= POPCOUNT_TABLE_BITS:
        return popcount_table(bits).to(n.device)[n]
    out = torch.zeros_like(n, dtype=torch.int64)
    for k in range(bits):
        out += (n >> k) & 1
    return out


POPCOUNT_TABLE_BITS = 12


@functools.lru_cache(maxsize=None)
def popcount_table(bits: int) -> torch.Tensor:
    """``[2^bits]`` int64: the set bits of every integer below ``2^bits``."""
    return torch.tensor([bin(i).count("1") for i in range(2 ** bits)], dtype=torch.int64)


def few_spike_value(x: torch.Tensor, params: FewSpikeParams, timesteps: int, steps: int = 0) -> torch.Tensor:
    """The quantizer the neurons implement, in the units of ``x`` (float32): ``theta *
    weighted_count``. For calibration and tests, not for simulation."""
    code = weighted_count(few_spike_encode(x, params, timesteps, steps), params.radix)
    return (code * params.threshold.double()).float()
