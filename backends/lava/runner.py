#!/usr/bin/env python3
"""Run a spikec Lava export on Intel Lava's Loihi 2 CPU simulator (``Loihi2SimCfg``).

This file is copied into every export as ``DIR/lava/run_lava.py`` and runs there::

    python run_lava.py --input tokens.npy --timesteps 8 --precision floating_pt --out out.npz

It imports only lava-nc, numpy and the standard library (Python 3.10, numpy < 2), so the
folder runs on any host with ``pip install lava-nc==0.10.0 nir numpy<2``. The numpy part
(network description, schedule, Loihi encodings, real-valued operators) has no Lava import
and is shared with ``spikec.backends.lava.export``; the Lava processes are defined by
``lava_backend()`` on first use.

Mapping (one Lava process per graph node, vectorised over batch x positions; every port
carries a ``[features, batch*positions]`` array):

* ``SignedIF``    -> custom process ``SignedIF`` (signed, graded, soft-reset neurons),
                     driven by its real input as a constant current (a bias) for T steps.
* ``SSA``         -> custom process ``SpikingSelfAttention``: spiking self-attention on the
                     real q|k|v, scheduled like a SignedIF layer (spikes for T steps).
* ``Affine`` fed by neurons -> ``PositionalDense``, a subclass of Lava's ``Dense`` with
                     graded spikes (num_message_bits = 8) and a ``[in, N]`` input port;
                     its model runs Lava's Dense arithmetic (float, or Loihi's 8-bit
                     bit-accurate weights) and skips steps without spikes.
* ``RateReadout`` -> custom process ``RateReadout``: sums the Dense output of the T steps
                     of its window, adds the bias, divides by T: the real value.
* real-valued ops (embedding, norms, attention, activations, residual add, a real Affine)
                  -> custom processes computing once their inputs are complete.

Schedule (the delay alignment, see docs/lava.md): a real value becomes valid at a
step ``ready`` and is then held on the port. A SignedIF layer whose current is ready at
step ``w`` spikes at steps ``w .. w+T-1`` (reference step ``t`` = Lava step ``w+t``).
Lava's Dense delivers ``W s(g)`` at step ``g+1``, so the readout sums steps ``w+1 .. w+T``
and its value is ready at ``w+T``, exactly when the next layer's window starts: the
one-step Dense delay is absorbed and each neuron layer costs T steps.

Numerics: the real-valued ops reproduce torch's float32 CPU kernels where that is possible in
numpy (LayerNorm/RMSNorm bit for bit, ``--torch-vec-width``), so that floating_pt spikes equal
spikec's reference simulator; see docs/lava.md for what remains (MKL readouts, attention).

Segments: Lava's simulator runs every process as an OS process and synchronises all of
them at every step, so a 30-block model in one network costs ~0.2-0.5 s per step. The
runner therefore splits the stages into segments (``--stages-per-run``, default 4, about
one transformer block) and runs each segment as its own Lava network; the real values
crossing a cut are read back on the host and fed to the next segment by ``HostValue``
processes. ``--stages-per-run 0`` runs the whole graph as one network.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "spikec-lava/1"
NETWORK_FILE = "network.json"
WEIGHTS_FILE = "weights.npz"
PRECISIONS = ("floating_pt", "fixed_pt")
CHANNEL_SLOTS = 2

# Loihi fixed-point limits (lava/proc/lif/models.py, lava/utils/weightutils.py).
BIAS_MANT_MAX = 4095  # 13-bit signed bias mantissa: -4096..4095
BIAS_EXP_MAX = 7  # 3-bit unsigned bias exponent
VTH_MAX = 2**17 - 1  # 17-bit unsigned threshold mantissa
VTH_SHIFT = 6  # the threshold is MSB-aligned by 6 bits: theta = vth << 6
STATE_MAX = 2**23 - 1  # 24-bit signed membrane / accumulator
WEIGHT_MANT_MAX = 127  # 8-bit signed weight mantissa (mixed sign: Lava stores 2*m)

SPIKING = "SignedIF"
DENSE = "Dense"
READOUT = "RateReadout"
REAL_OPS = ("Embedding", "LayerNorm", "RMSNorm", "Attention", "Activation", "GatedActivation", "Add", "Affine")
SSA = "SSA"  # spiking self-attention: real q|k|v in, spikes out, like a SignedIF layer
NEURON_TYPES = (SPIKING, SSA)
NODE_TYPES = ("Input", "Output", SPIKING, SSA, DENSE, READOUT, *REAL_OPS)


class NetworkError(ValueError):
    """The network description is inconsistent or asks for something the runner cannot do."""


# ---------------------------------------------------------------------------
# network description
# ---------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    type: str
    attrs: dict[str, Any]
    preds: list[str] = field(default_factory=list)  # in edge order (fan-in sums in this order)
    succs: list[str] = field(default_factory=list)


@dataclass
class Network:
    """The graph of ``network.json`` plus lazy access to ``weights.npz``."""

    nodes: "OrderedDict[str, Node]"  # topological order
    edges: list[tuple[str, str]]
    meta: dict[str, Any]
    arrays: Any = None  # np.lib.npyio.NpzFile or a dict

    def array(self, node: str, key: str) -> np.ndarray:
        return np.asarray(self.arrays[f"{node}/{key}"])

    @property
    def timesteps(self) -> int:
        return int(self.meta["timesteps"])


def network_from_dict(desc: dict[str, Any], arrays: Any) -> Network:
    """Build a ``Network`` from the parsed ``network.json`` and its arrays; checks the format,
    node types and edges, and orders the nodes topologically (stable: file order)."""
    if desc.get("format") != FORMAT:
        raise NetworkError(f"network format {desc.get('format')!r} is not {FORMAT!r}")
    nodes: OrderedDict[str, Node] = OrderedDict()
    for entry in desc["nodes"]:
        if entry["type"] not in NODE_TYPES:
            raise NetworkError(f"node {entry['name']!r} has unknown type {entry['type']!r}")
        nodes[entry["name"]] = Node(entry["name"], entry["type"], dict(entry.get("attrs", {})))
    edges = [(str(a), str(b)) for a, b in desc["edges"]]
    for src, dst in edges:
        if src not in nodes or dst not in nodes:
            raise NetworkError(f"edge ({src!r}, {dst!r}) names an unknown node")
        nodes[src].succs.append(dst)
        nodes[dst].preds.append(src)
    order: list[str] = []
    indegree = {n: len(node.preds) for n, node in nodes.items()}
    ready = [n for n in nodes if indegree[n] == 0]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for s in nodes[n].succs:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    if len(order) != len(nodes):
        raise NetworkError("the network has a cycle")
    return Network(OrderedDict((n, nodes[n]) for n in order), edges, dict(desc.get("meta", {})), arrays)


def load_network(folder: str | Path) -> Network:
    """Read ``network.json`` and ``weights.npz`` from an export folder."""
    folder = Path(folder)
    desc = json.loads((folder / NETWORK_FILE).read_text())
    return network_from_dict(desc, np.load(folder / WEIGHTS_FILE))


# ---------------------------------------------------------------------------
# schedule: when each value is ready, stages and segments
# ---------------------------------------------------------------------------


@dataclass
class Schedule:
    """Global Lava steps (the first step is 1).

    ready: step at which a real value (Input, real op, readout, Output) is valid.
    window: first step of a SignedIF layer (and of the Dense it drives).
    stage: index of the neuron layer window (-1: real ops computed before any window).
    windows: the distinct window starts, in order (stage s starts at windows[s]).
    """

    timesteps: int
    ready: dict[str, int]
    window: dict[str, int]
    stage: dict[str, int]
    windows: list[int]

    @property
    def steps(self) -> int:
        ends = list(self.ready.values()) + [w + self.timesteps - 1 for w in self.window.values()]
        return max(ends) if ends else 1


def schedule(net: Network, timesteps: int) -> Schedule:
    """Compute when every node runs. Raises ``NetworkError`` for structures the Lava mapping
    does not cover (a Dense not fed by exactly one SignedIF, a readout not fed by one Dense,
    a SignedIF driving anything but Dense nodes)."""
    T = int(timesteps)
    ready: dict[str, int] = {}
    window: dict[str, int] = {}
    for name, node in net.nodes.items():
        kind, preds = node.type, node.preds
        if kind == "Input":
            ready[name] = 1
        elif kind in NEURON_TYPES:
            if not preds or any(p not in ready for p in preds):
                raise NetworkError(f"{kind} {name!r} must be driven by real values")
            bad = [s for s in node.succs if net.nodes[s].type != DENSE]
            if bad:
                raise NetworkError(f"{kind} {name!r} drives {bad[0]!r}; only Dense (Affine) nodes may read spikes")
            window[name] = max(ready[p] for p in preds)
        elif kind == DENSE:
            if len(preds) != 1 or net.nodes[preds[0]].type not in NEURON_TYPES:
                raise NetworkError(f"Dense {name!r} must be fed by exactly one SignedIF or SSA layer")
            if len(node.succs) != 1 or net.nodes[node.succs[0]].type != READOUT:
                raise NetworkError(f"Dense {name!r} must feed exactly one RateReadout")
            window[name] = window[preds[0]]
        elif kind == READOUT:
            if len(preds) != 1 or net.nodes[preds[0]].type != DENSE:
                raise NetworkError(f"RateReadout {name!r} must be fed by exactly one Dense")
            ready[name] = window[preds[0]] + T
        else:  # real ops and Output: zero latency, valid once all inputs are
            if not preds:
                raise NetworkError(f"node {name!r} has no input")
            missing = [p for p in preds if p not in ready]
            if missing:
                raise NetworkError(f"node {name!r} ({kind}) reads spikes from {missing[0]!r}; real ops need real inputs")
            ready[name] = max(ready[p] for p in preds)
    windows = sorted(set(window.values()))
    index = {w: i for i, w in enumerate(windows)}
    ends = {w + T: i for i, w in enumerate(windows)}
    stage: dict[str, int] = {}
    for name, node in net.nodes.items():
        if name in window:
            stage[name] = index[window[name]]
        elif node.type == READOUT:
            stage[name] = index[window[node.preds[0]]]
        else:
            stage[name] = ends.get(ready[name], -1)
    return Schedule(T, ready, window, stage, windows)


@dataclass
class Segment:
    """A run of consecutive stages executed as one Lava network. ``offset`` maps global
    steps to local ones (local = global - offset)."""

    index: int
    stages: tuple[int, int]  # first, last (inclusive)
    nodes: list[str]
    offset: int
    steps: int
    inputs: list[str]  # values produced before this segment and read in it
    outputs: list[str]  # values of this segment read later (or by an Output)


def plan_segments(net: Network, sched: Schedule, stages_per_run: int) -> list[Segment]:
    """Cut the stages into segments of at most ``stages_per_run`` stages (0: one segment).
    Only real values cross a cut: a SignedIF, its Dense and readout share a stage."""
    n_stages = len(sched.windows)
    per = n_stages if stages_per_run <= 0 else stages_per_run
    groups = [(a, min(a + per, n_stages) - 1) for a in range(0, max(n_stages, 1), max(per, 1))]
    if not groups:
        groups = [(0, -1)]
    owner: dict[str, int] = {}
    for name, node in net.nodes.items():
        if node.type in ("Input", "Output"):
            continue
        s = sched.stage[name]
        owner[name] = 0 if s < 0 else next(i for i, (a, b) in enumerate(groups) if a <= s <= b)
    segments = []
    for i, (a, b) in enumerate(groups):
        members = [n for n in net.nodes if owner.get(n) == i]
        offset = sched.windows[a] - 1 if n_stages else 0
        local_ends = []
        for n in members:
            if n in sched.window:
                local_ends.append(sched.window[n] + sched.timesteps - 1 - offset)
            if n in sched.ready:
                local_ends.append(sched.ready[n] - offset)
        inputs = []
        for n in members:
            for p in net.nodes[n].preds:
                if owner.get(p) != i and p not in inputs:
                    inputs.append(p)
        outputs = [n for n in members
                   if any(owner.get(s) != i for s in net.nodes[n].succs)]
        segments.append(Segment(i, (a, b), members, offset, max(local_ends, default=1), inputs, outputs))
    return segments


# ---------------------------------------------------------------------------
# Loihi fixed-point encodings (shared with the export's quantization report)
# ---------------------------------------------------------------------------


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


def dense_fixed(net: "Network", name: str) -> dict[str, Any]:
    """The fixed-point form of Dense ``name``: synapse groups, readout unit (real value of one
    accumulator step, ``2**weight_exp``) and the readout's integer bias per step."""
    w_int = net.array(name, "weight_int").astype(np.int32)
    exp = int(net.array(name, "weight_exp").item())
    synapses = int(net.array(name, "synapses").item())
    unit = 2.0**exp
    bias_int, bias_exp = quantize_bias(net.array(name, "bias").astype(np.float64) / unit)
    return {"groups": split_synapses(w_int, synapses), "unit": unit, "bias_int": bias_int, "bias_exp": bias_exp,
            "w_int": w_int, "weight_exp": exp, "synapses": synapses}


# ---------------------------------------------------------------------------
# real-valued operators, numpy (mirror spikec.core.ops; layout [batch, positions, features])
# ---------------------------------------------------------------------------

_F32 = np.float32


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


TORCH_VEC_WIDTH = 8  # floats per SIMD vector in torch's CPU kernels: 8 (AVX2, NEON, default), 16 (AVX-512)


def _fma(a: Any, b: Any, c: Any) -> np.ndarray:
    """float32 fused multiply-add: the float64 product of two float32 is exact, so one
    rounding to float64 then float32 (a double rounding that differs only at exact ties)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(_F32)


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
    acc = [np.zeros((rows, ilp, width), _F32) for _ in range(levels)]
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
    total = np.zeros(rows, _F32)
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
    zero = np.zeros((rows, width), _F32)
    stack = [[0, zero, zero] for _ in range(max(depth, 1))]
    inv = [_F32(1) / _F32(i + 1) for i in range(chunk)]

    def merge(m0_add: int, m1_add: np.ndarray, m2_add: np.ndarray, m0: int, m1: np.ndarray, m2: np.ndarray):
        total = m0 + m0_add
        c = _F32(0) if total == 0 else _F32(m0_add) / _F32(total)
        delta = m1_add - m1
        c_delta = c * delta
        return [total, m1 + c_delta, _fma(delta * _F32(m0), c_delta, m2 + m2_add)]

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
    m0, mean, m2 = 0, np.zeros(rows, _F32), np.zeros(rows, _F32)
    for k in range(n_vec * width, n):  # the tail, element by element
        xk = x[:, k]
        delta = xk - mean
        m0 += 1
        mean = mean + delta / _F32(m0)
        m2 = m2 + delta * (xk - mean)
    for k in range(width):  # merge the lanes (scalar code: the compiler fuses these)
        total = m0 + n_vec
        c = _F32(n_vec) / _F32(total)
        delta = lanes_m1[:, k] - mean
        mean = _fma(c, delta, mean)
        m2 = m2 + _fma((delta * delta) * c, _F32(m0), lanes_m2[:, k])
        m0 = total
    return mean, m2 / _F32(n)


def activation(x: np.ndarray, kind: str) -> np.ndarray:
    """Elementwise activation, float32 in and out, with torch's float32 formulas (the
    transcendental part correctly rounded)."""
    x = x.astype(_F32)
    if kind == "relu":
        return np.maximum(x, _F32(0))
    if kind == "gelu":
        return (x * _F32(0.5)) * (_F32(1) + _erf((x * _F32(1 / math.sqrt(2.0)))).astype(_F32))
    if kind == "gelu_tanh":
        inner = _F32(math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5) * (x + _F32(0.044715) * (x * x * x))
        return _F32(0.5) * x * (_F32(1) + np.tanh(inner.astype(np.float64)).astype(_F32))
    if kind == "silu":
        return x / (_F32(1) + np.exp(-x.astype(np.float64)).astype(_F32))
    raise NetworkError(f"unknown activation {kind!r}")


def gated_activation(x: np.ndarray, kind: str) -> np.ndarray:
    f = x.shape[-1] // 2
    return activation(x[..., :f], kind) * x[..., f:]


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
               width: int = TORCH_VEC_WIDTH) -> np.ndarray:
    """torch's CPU LayerNorm: ``fma((x - mean) * rstd, weight, bias)`` in float32 with its moments."""
    flat = x.astype(_F32).reshape(-1, x.shape[-1])
    mean, var = torch_moments(flat, width)
    rstd = _F32(1) / np.sqrt(np.maximum(var, _F32(0)) + _F32(eps))
    y = _fma((flat - mean[:, None]) * rstd[:, None], weight.astype(_F32), bias.astype(_F32))
    return y.reshape(x.shape)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, width: int = TORCH_VEC_WIDTH) -> np.ndarray:
    """``x * rsqrt(mean(x^2) + eps) * weight`` in float32 with torch's summation order."""
    flat = x.astype(_F32).reshape(-1, x.shape[-1])
    ms = torch_sum(flat * flat, width) / _F32(flat.shape[-1])
    r = _F32(1) / np.sqrt(ms + _F32(eps))
    return ((flat * r[:, None]) * weight.astype(_F32)).reshape(x.shape)


def rotary_cos_sin(positions: int, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(_F32) / _F32(head_dim)
    inv_freq = (_F32(1.0) / np.power(_F32(base), exponent)).astype(_F32)
    freqs = np.outer(np.arange(positions, dtype=_F32), inv_freq).astype(_F32)
    emb = np.concatenate([freqs, freqs], -1).astype(np.float64)
    return np.cos(emb).astype(_F32), np.sin(emb).astype(_F32)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def attention(qkv: np.ndarray, heads: int, kv_heads: int, head_dim: int, rope_theta: float,
              scale: float) -> np.ndarray:
    """Causal softmax attention of the fused ``[q | k | v]``; ``[b, P, (H+2KV)D] -> [b, P, HD]``."""
    b, p, _ = qkv.shape
    hq, hk = heads * head_dim, kv_heads * head_dim
    q = qkv[..., :hq].reshape(b, p, heads, head_dim).transpose(0, 2, 1, 3)
    k = qkv[..., hq:hq + hk].reshape(b, p, kv_heads, head_dim).transpose(0, 2, 1, 3)
    v = qkv[..., hq + hk:hq + 2 * hk].reshape(b, p, kv_heads, head_dim).transpose(0, 2, 1, 3)
    if rope_theta > 0:
        cos, sin = rotary_cos_sin(p, head_dim, rope_theta)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
    if kv_heads != heads:
        k = np.repeat(k, heads // kv_heads, axis=1)
        v = np.repeat(v, heads // kv_heads, axis=1)
    scores = np.matmul(q.astype(np.float64), k.astype(np.float64).transpose(0, 1, 3, 2)) * scale
    scores = np.where(np.tril(np.ones((p, p), bool)), scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    out = np.matmul(probs, v.astype(np.float64)).astype(_F32)
    return out.transpose(0, 2, 1, 3).reshape(b, p, heads * head_dim)


def ssa_spikes(qkv: np.ndarray, p: dict[str, np.ndarray], heads: int, kv_heads: int, head_dim: int,
               rope_theta: float, timesteps: int, signed: bool, tau: float, normalize: bool) -> np.ndarray:
    """Spiking self-attention (``spikec.core.ssa.spiking_self_attention``, plain causal mask) in
    numpy float32, operation for operation: ``qkv [b, P, (H+2KV)D]`` -> int8 ``[T, b, P, HD]``.
    ``p``: ``q_threshold``, ``k_threshold``, ``v_threshold``, ``scale``, ``o_threshold``. The
    spike products are integer sums, exact in float32 in any order."""
    b, n, _ = qkv.shape
    hq, hk, rep = heads * head_dim, kv_heads * head_dim, heads // kv_heads
    x = qkv.astype(_F32)
    q = x[..., :hq].reshape(b, n, heads, head_dim).transpose(0, 2, 1, 3)
    k = x[..., hq:hq + hk].reshape(b, n, kv_heads, head_dim).transpose(0, 2, 1, 3)
    v = x[..., hq + hk:hq + 2 * hk].reshape(b, n, kv_heads, head_dim).transpose(0, 2, 1, 3)
    if rope_theta > 0:
        cos, sin = rotary_cos_sin(n, head_dim, rope_theta)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
    per_head = lambda a, h: a.astype(_F32).reshape(h, 1, head_dim)  # noqa: E731
    u = [q / per_head(p["q_threshold"], heads), k / per_head(p["k_threshold"], kv_heads),
         v / per_head(p["v_threshold"], kv_heads)]
    scale_h = per_head(p["scale"], heads)
    gain = scale_h / per_head(p["o_threshold"], heads)
    inv_count = _F32(1.0) / np.arange(1, n + 1, dtype=_F32)[:, None] if normalize else None

    def fire(v_: np.ndarray) -> np.ndarray:
        s_ = (v_ >= 1.0).astype(_F32)
        return s_ - (v_ < 0).astype(_F32) if signed else s_

    trains = []
    for ui in u:  # the Q, K, V neurons driven by a constant current (ssa.input_spikes)
        if tau == 0:
            steps = np.arange(1, timesteps + 1, dtype=_F32).reshape(-1, *([1] * ui.ndim))
            before = np.floor(ui * (steps - 1) + _F32(0.5))
            before = np.minimum(np.maximum(before, -(steps - 1) if signed else np.zeros_like(steps)), steps - 1)
            trains.append(fire(ui * steps + _F32(0.5) - before))
        else:
            vm, out = np.full(ui.shape, _F32(0.5), _F32), []
            for _ in range(timesteps):
                vm = vm + (ui - vm) / _F32(tau)
                s_ = fire(vm)
                vm = vm - s_
                out.append(s_)
            trains.append(np.stack(out))
    vo = np.full(trains[0].shape[1:], _F32(0.5), _F32)
    outs = []
    for t in range(timesteps):
        sq, sk, sv = (tr[t] for tr in trains)
        a = sq.reshape(b, kv_heads, rep * n, head_dim) @ sk.transpose(0, 1, 3, 2)
        a = np.tril(a.reshape(b, kv_heads, rep, n, n))
        y = (a @ sv[:, :, None]).reshape(sq.shape)
        if inv_count is not None:
            y = y * inv_count
        current = y * gain
        vo = vo + current if tau == 0 else vo + (current - vo) / _F32(tau)
        so = fire(vo)
        vo = vo - so
        outs.append(so)
    out = np.stack(outs)  # [T, b, H, P, D]
    return out.transpose(0, 1, 3, 2, 4).reshape(timesteps, b, n, hq).astype(np.int8)


SSA_PARAMS = ("q_threshold", "k_threshold", "v_threshold", "scale", "o_threshold")


def embedding(ids: np.ndarray, weight: np.ndarray, position_weight: np.ndarray) -> np.ndarray:
    out = weight[ids].astype(_F32)
    if position_weight.shape[0] > 0:
        out = out + position_weight[: ids.shape[-1]].astype(_F32)
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
                         float(a["rope_theta"]), float(a["scale"]))
    if node.type == "Activation":
        return activation(x, str(a["activation"]))
    if node.type == "GatedActivation":
        return gated_activation(x, str(a["activation"]))
    if node.type == "Affine":
        y = x.astype(np.float64) @ net.array(name, "weight").astype(np.float64).T + net.array(name, "bias")
        return y.astype(_F32)
    raise NetworkError(f"node {name!r} ({node.type}) is not a real-valued op")


def to_lava(x: np.ndarray) -> np.ndarray:
    """``[b, P, F]`` -> the port layout ``[F, b*P]``."""
    return np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)


def from_lava(x: np.ndarray, batch: int) -> np.ndarray:
    """The port layout ``[F, b*P]`` -> ``[b, P, F]``."""
    return np.ascontiguousarray(x.T.reshape(batch, -1, x.shape[0]))


def features(net: Network, name: str) -> int:
    """Output features of a node."""
    return int(net.nodes[name].attrs["features"])


# ---------------------------------------------------------------------------
# shared-memory records (Lava's Var.get sends one element per message: far too slow
# for logits; these buffers are mapped before Lava forks its processes)
# ---------------------------------------------------------------------------


def shared_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


# ---------------------------------------------------------------------------
# Lava processes and process models
# ---------------------------------------------------------------------------

_LAVA: Any = None


def lava_backend() -> Any:
    """Import Lava and define spikec's processes and models (once). Returns a namespace."""
    global _LAVA
    if _LAVA is not None:
        return _LAVA
    import logging
    from types import SimpleNamespace

    from lava.magma.core.decorator import implements, requires, tag
    from lava.magma.core.model.py.model import PyLoihiProcessModel
    from lava.magma.core.model.py.ports import PyInPort, PyOutPort
    from lava.magma.core.model.py.type import LavaPyType
    from lava.magma.core.process.ports.ports import InPort, OutPort
    from lava.magma.core.process.process import AbstractProcess, LogConfig
    from lava.magma.core.process.variable import Var
    from lava.magma.core.resources import CPU
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
    from lava.proc.dense.models import AbstractPyDenseModelBitAcc, AbstractPyDenseModelFloat
    from lava.proc.dense.process import Dense

    quiet = LogConfig(level=logging.ERROR, level_console=logging.ERROR)

    # -- processes -----------------------------------------------------------------

    class SignedIF(AbstractProcess):
        """Signed integrate-and-fire neurons with soft reset and graded spikes (up to
        ``max_spikes`` per step). The real input received at step ``start`` is the constant
        current (bias) of the T steps ``start .. start+T-1``; spikes leave on ``s_out``."""

        def __init__(self, *, shape: tuple[int, int], threshold: np.ndarray, max_spikes: int,
                     signed: bool, v_init: float, start: int, timesteps: int, record: np.ndarray,
                     encoding: dict | None = None, name: str | None = None) -> None:
            super().__init__(shape=shape, threshold=threshold, max_spikes=max_spikes, signed=signed,
                             v_init=v_init, start=start, timesteps=timesteps, record=record,
                             encoding=encoding, name=name, log_config=quiet)
            self.a_in = InPort(shape=shape)
            self.s_out = OutPort(shape=shape)
            self.v = Var(shape=shape, init=0)

    class SpikingSelfAttention(AbstractProcess):
        """Spiking self-attention (``ssa_spikes``): the real q|k|v received at step ``start``
        drives its Q, K, V neurons for T steps; the output neurons' spikes leave on ``s_out``
        at steps ``start .. start+T-1``, like a SignedIF layer's."""

        def __init__(self, *, shape_in: tuple[int, int], shape_out: tuple[int, int], params: dict,
                     attrs: dict, batch: int, start: int, timesteps: int, record: np.ndarray,
                     name: str | None = None) -> None:
            super().__init__(shape_in=shape_in, shape=shape_out, params=params, attrs=attrs, batch=batch,
                             start=start, timesteps=timesteps, record=record, name=name, log_config=quiet)
            self.a_in = InPort(shape=shape_in)
            self.s_out = OutPort(shape=shape_out)

    class PositionalDense(Dense):
        """Lava's Dense with a ``[in, N]`` input (N = batch x positions): the same weights
        applied to every position. Graded spikes (num_message_bits = 8)."""

        def __init__(self, *, weights: np.ndarray, positions: int, weight_exp: int = 0,
                     low_groups: list | None = None, name: str | None = None) -> None:
            super().__init__(weights=weights, num_message_bits=8, weight_exp=weight_exp,
                             low_groups=low_groups or [], name=name, log_config=quiet)
            n_out, n_in = weights.shape
            self.s_in = InPort(shape=(n_in, positions))
            self.a_out = OutPort(shape=(n_out, positions))
            self.a_buff = Var(shape=(n_out, positions), init=0)

    class RateReadout(AbstractProcess):
        """Sums the Dense output of the steps ``start+1 .. start+T`` and turns it into the
        real value ``mean + bias`` (float) or ``(acc + T*bias_int) * unit / T`` (fixed)."""

        def __init__(self, *, shape: tuple[int, int], bias: np.ndarray, start: int, timesteps: int,
                     unit: float = 1.0, record: np.ndarray | None = None, stats: np.ndarray | None = None,
                     name: str | None = None) -> None:
            super().__init__(shape=shape, bias=bias, start=start, timesteps=timesteps, unit=unit,
                             record=record, stats=stats, name=name, log_config=quiet)
            self.a_in = InPort(shape=shape)
            self.out = OutPort(shape=shape)
            self.acc = Var(shape=shape, init=0)

    class RealOp(AbstractProcess):
        """A real-valued operator of the graph (norm, attention, activation, residual add,
        real affine). It computes once, at step ``ready`` when its (fan-in summed) input is
        complete, and holds the result on ``out``."""

        def __init__(self, *, shape_in: tuple[int, int], shape_out: tuple[int, int], fn: Any, ready: int,
                     record: np.ndarray | None = None, name: str | None = None) -> None:
            super().__init__(shape_in=shape_in, shape_out=shape_out, fn=fn, ready=ready, record=record,
                             name=name, log_config=quiet)
            self.inp = InPort(shape=shape_in)
            self.out = OutPort(shape=shape_out)

    class HostValue(AbstractProcess):
        """A real value known before the run (token embeddings, a value computed by an
        earlier segment); sent from step ``ready`` on."""

        def __init__(self, *, value: np.ndarray, ready: int = 1, name: str | None = None) -> None:
            super().__init__(value=value, ready=ready, name=name, log_config=quiet)
            self.out = OutPort(shape=value.shape)

    class Embedding(AbstractProcess):
        """Token (+ learned position) embedding of the ids given at build time."""

        def __init__(self, *, ids: np.ndarray, weight: np.ndarray, position_weight: np.ndarray,
                     record: np.ndarray | None = None, name: str | None = None) -> None:
            super().__init__(ids=ids, weight=weight, position_weight=position_weight, record=record,
                             name=name, log_config=quiet)
            self.out = OutPort(shape=(weight.shape[1], ids.size))

    class Attention(RealOp):
        """Causal softmax self-attention between projections (the SpikecAttention node)."""

    class Norm(RealOp):
        """LayerNorm / RMSNorm over the features of each position."""

    class Add(RealOp):
        """Residual junction: its input port sums the incoming edges (NIR fan-in)."""

    # -- models ---------------------------------------------------------------------

    class _WindowSpikes(PyLoihiProcessModel):
        """A spiking layer driven by a real input: ``step(t)`` gives the spikes of window step
        ``t`` (the input is ``self._x``); outside the window it sends zeros."""

        a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float32)
        s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int8, precision=8)

        def __init__(self, proc_params: Any) -> None:
            super().__init__(proc_params)
            self.p = proc_params
            self.zeros = np.zeros(self.p["shape"], np.int8)  # the output's

        def run_spk(self) -> None:
            self._x = self.a_in.recv()
            t = self.time_step - self.p["start"]
            if 0 <= t < self.p["timesteps"]:
                s = self.step(t).astype(np.int8)
                self.p["record"][t] = s
                self.s_out.send(s)
            else:
                self.s_out.send(self.zeros)

    class _SignedIFBase(_WindowSpikes):
        def __init__(self, proc_params: Any) -> None:
            super().__init__(proc_params)
            self.low = -self.p["max_spikes"] if self.p["signed"] else 0

    @implements(proc=SignedIF, protocol=LoihiProtocol)
    @requires(CPU)
    @tag("floating_pt")
    class PySignedIFModelFloat(_SignedIFBase):
        """float32 arithmetic, operation for operation as ``spikec.core.neurons``."""

        v: np.ndarray = LavaPyType(np.ndarray, np.float32)

        def step(self, t: int) -> np.ndarray:
            if t == 0:
                self.u = self._x.astype(_F32) / self.p["threshold"].astype(_F32)[:, None]
                self.v[:] = _F32(self.p["v_init"])
            v = self.v + self.u
            s = np.clip(np.floor(v), self.low, self.p["max_spikes"])
            self.v[:] = v - s
            return s

    @implements(proc=SignedIF, protocol=LoihiProtocol)
    @requires(CPU)
    @tag("fixed_pt", "bit_accurate_loihi")
    class PySignedIFModelFixed(_SignedIFBase):
        """Integer neurons with Loihi's encodings: threshold ``vth << 6``, the current as a
        bias ``mant << exp`` (``fixed_point_current``), a 24-bit saturating membrane."""

        v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

        def step(self, t: int) -> np.ndarray:
            enc = self.p["encoding"]
            theta, B = enc["theta"], self.p["max_spikes"]
            if t == 0:
                u = self._x.astype(_F32) / self.p["threshold"].astype(_F32)[:, None]
                # u is used within [low, B]: that changes no spike and bounds the membrane by (B+1) theta
                mant, v0 = fixed_point_current(u, self.p["v_init"], theta, enc["bias_exp"], enc["mant_max"],
                                               self.p["timesteps"], self.low, B)
                self.bias = mant << enc["bias_exp"]
                self.v[:] = v0
            v = np.clip(self.v.astype(np.int64) + self.bias, -STATE_MAX, STATE_MAX)
            s = np.clip(np.floor_divide(v, theta), self.low, B)
            self.v[:] = v - s * theta
            return s

    @implements(proc=SpikingSelfAttention, protocol=LoihiProtocol)
    @requires(CPU)
    @tag("floating_pt", "fixed_pt")
    class PySpikingSelfAttentionModel(_WindowSpikes):
        """float32 arithmetic in both precisions (Loihi has no spike-matrix product)."""

        def step(self, t: int) -> np.ndarray:
            if t == 0:
                a = self.p["attrs"]
                train = ssa_spikes(from_lava(self._x, self.p["batch"]), self.p["params"], int(a["num_heads"]),
                                   int(a["num_kv_heads"]), int(a["head_dim"]), float(a["rope_theta"]),
                                   self.p["timesteps"], bool(a["signed"]), float(a["tau"]), bool(a["normalize"]))
                self.train = [to_lava(s) for s in train]
            return self.train[t]

    class _DenseSkip:
        """Event-driven like Loihi: a step without spikes costs no synaptic operation."""

        def run_spk(self) -> None:
            self.a_out.send(self.a_buff)
            s_in = self.s_in.recv()
            if not s_in.any():
                self.a_buff = np.zeros_like(self.a_buff)
                return
            self.a_buff = self.accumulate(s_in)

    @implements(proc=PositionalDense, protocol=LoihiProtocol)
    @requires(CPU)
    @tag("floating_pt")
    class PyPositionalDenseModelFloat(_DenseSkip, AbstractPyDenseModelFloat):
        s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)

        def accumulate(self, s_in: np.ndarray) -> np.ndarray:
            return self.weights.dot(s_in)

    @implements(proc=PositionalDense, protocol=LoihiProtocol)
    @requires(CPU)
    @tag("fixed_pt", "bit_accurate_loihi")
    class PyPositionalDenseModelBitAcc(_DenseSkip, AbstractPyDenseModelBitAcc):
        s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)

        def accumulate(self, s_in: np.ndarray) -> np.ndarray:
            # Lava's bit-accurate Dense: 8-bit weights (clip/truncate once), W.s << weight_exp;
            # a second synapse group (low bits, shift 0) adds onto the same accumulator.
            if not self.weights_set:
                from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

                def eight_bit(w: np.ndarray) -> np.ndarray:
                    mode = determine_sign_mode(w)
                    return truncate_weights(clip_weights(w, mode, num_bits=8), mode, 8)

                self.weights = eight_bit(self.weights)
                self.low = [(eight_bit(w), shift) for w, shift in self.proc_params.get("low_groups", [])]
                self.weights_set = True
            s = s_in.astype(np.int64)
            acc = np.left_shift(self.weights.dot(s), self.proc_params.get("weight_exp", 0))
            for w, shift in self.low:
                acc += np.left_shift(w.dot(s), shift)
            return acc

    class _ReadoutBase(PyLoihiProcessModel):
        out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)

        def __init__(self, proc_params: Any) -> None:
            super().__init__(proc_params)
            self.p = proc_params
            self.value = np.zeros(self.p["shape"], np.float32)

        def run_spk(self) -> None:
            a = self.a_in.recv()
            k = self.time_step - self.p["start"]
            T = self.p["timesteps"]
            if 1 <= k <= T:
                self.add(a)
                if k == T:
                    self.value = self.finish()
                    if self.p["record"] is not None:
                        self.p["record"][:] = self.value
            self.out.send(self.value)

    @implements(proc=RateReadout, protocol=LoihiProtocol)
    @requires(CPU)
    @tag("floating_pt")
    class PyRateReadoutModelFloat(_ReadoutBase):
        a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
        acc: np.ndarray = LavaPyType(np.ndarray, np.float64)

        def add(self, a: np.ndarray) -> None:
            self.acc += a

        def finish(self) -> np.ndarray:
            return (self.acc / self.p["timesteps"] + self.p["bias"][:, None]).astype(_F32)

    @implements(proc=RateReadout, protocol=LoihiProtocol)
    @requires(CPU)
    @tag("fixed_pt", "bit_accurate_loihi")
    class PyRateReadoutModelFixed(_ReadoutBase):
        """A 24-bit saturating accumulator with the bias as a Loihi bias per step; the
        window's sum times the layer's weight unit / T is the real value."""

        a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64)
        acc: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)

        def add(self, a: np.ndarray) -> None:
            total = self.acc + a + self.p["bias"][:, None]
            self.acc[:] = np.clip(total, -STATE_MAX, STATE_MAX)
            stats = self.p["stats"]
            stats[0] = max(stats[0], float(np.abs(total).max(initial=0)))
            stats[1] += float(np.count_nonzero(np.abs(total) > STATE_MAX))

        def finish(self) -> np.ndarray:
            return (self.acc * (self.p["unit"] / self.p["timesteps"])).astype(_F32)

    @implements(proc=RealOp, protocol=LoihiProtocol)
    @requires(CPU)
    class PyRealOpModel(PyLoihiProcessModel):
        """Real-valued ops compute in float32/float64 in both precisions (they have no
        Loihi neuro-core counterpart; on a chip they run on the embedded CPUs)."""

        inp: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float32)
        out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)

        def __init__(self, proc_params: Any) -> None:
            super().__init__(proc_params)
            self.p = proc_params
            self.value = np.zeros(self.p["shape_out"], np.float32)

        def run_spk(self) -> None:
            x = self.inp.recv()
            if self.time_step == self.p["ready"]:
                self.value = self.p["fn"](x).astype(np.float32)
                if self.p["record"] is not None:
                    self.p["record"][:] = self.value
            self.out.send(self.value)

    @implements(proc=HostValue, protocol=LoihiProtocol)
    @requires(CPU)
    class PyHostValueModel(PyLoihiProcessModel):
        out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)

        def __init__(self, proc_params: Any) -> None:
            super().__init__(proc_params)
            self.p = proc_params
            self.zeros = np.zeros_like(self.p["value"])

        def run_spk(self) -> None:
            self.out.send(self.p["value"] if self.time_step >= self.p["ready"] else self.zeros)

    @implements(proc=Embedding, protocol=LoihiProtocol)
    @requires(CPU)
    class PyEmbeddingModel(PyLoihiProcessModel):
        out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)

        def __init__(self, proc_params: Any) -> None:
            super().__init__(proc_params)
            p = proc_params
            self.value = to_lava(embedding(p["ids"], p["weight"], p["position_weight"]))
            if p["record"] is not None:
                p["record"][:] = self.value

        def run_spk(self) -> None:
            self.out.send(self.value)

    models = {
        SignedIF: {"floating_pt": PySignedIFModelFloat, "fixed_pt": PySignedIFModelFixed},
        PositionalDense: {"floating_pt": PyPositionalDenseModelFloat, "fixed_pt": PyPositionalDenseModelBitAcc},
        RateReadout: {"floating_pt": PyRateReadoutModelFloat, "fixed_pt": PyRateReadoutModelFixed},
        SpikingSelfAttention: {"floating_pt": PySpikingSelfAttentionModel, "fixed_pt": PySpikingSelfAttentionModel},
    }
    for cls in (RealOp, Attention, Norm, Add):
        models[cls] = {"floating_pt": PyRealOpModel, "fixed_pt": PyRealOpModel}
    models[HostValue] = {"floating_pt": PyHostValueModel, "fixed_pt": PyHostValueModel}
    models[Embedding] = {"floating_pt": PyEmbeddingModel, "fixed_pt": PyEmbeddingModel}
    _LAVA = SimpleNamespace(
        SignedIF=SignedIF, SpikingSelfAttention=SpikingSelfAttention, PositionalDense=PositionalDense,
        RateReadout=RateReadout, RealOp=RealOp,
        Attention=Attention, Norm=Norm, Add=Add, HostValue=HostValue, Embedding=Embedding, models=models,
        RunSteps=RunSteps, Loihi2SimCfg=Loihi2SimCfg,
    )
    return _LAVA


# ---------------------------------------------------------------------------
# building and running segments
# ---------------------------------------------------------------------------


@dataclass
class RunState:
    """What the segments produce: host values ``[F, N]`` by node, spike records by layer."""

    batch: int
    positions: int
    precision: str
    timesteps: int
    current: str = "graded24"
    quantized: bool = False  # floating_pt with the fixed-point weights (teacher of fixed_pt)
    vec_width: int = TORCH_VEC_WIDTH
    values: dict[str, np.ndarray] = field(default_factory=dict)
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # [T, F, N] int8
    readout_stats: dict[str, np.ndarray] = field(default_factory=dict)
    segment_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.batch * self.positions


def _ports(proc: Any) -> tuple[Any, Any]:
    """(input port, output port) of a process built by ``build_process``."""

    def first(names: tuple[str, ...]) -> Any:
        for n in names:
            port = getattr(proc, n, None)
            if port is not None:
                return port
        return None

    return first(("a_in", "s_in", "inp")), first(("s_out", "a_out", "out"))


def make_real_op(net: Network, name: str, batch: int, width: int = TORCH_VEC_WIDTH):
    """The function a RealOp process applies to its input ``[F, b*P]``. Parameters are
    loaded now, in the parent, before Lava forks (the npz file handle must not be shared)."""
    node = net.nodes[name]
    params = {k[len(name) + 1:]: np.array(net.arrays[k]) for k in getattr(net.arrays, "files", net.arrays)
              if k.startswith(name + "/")}
    local = Network(OrderedDict([(name, node)]), [], net.meta, {f"{name}/{k}": v for k, v in params.items()})

    def fn(x: np.ndarray) -> np.ndarray:
        return to_lava(real_op(local, name, from_lava(x, batch), width))
    return fn


def build_process(net: Network, sched: Schedule, seg: Segment, name: str, state: RunState,
                  ids: np.ndarray | None, keep: bool) -> Any:
    """The Lava process of node ``name`` in segment ``seg``."""
    L = lava_backend()
    node, T, n = net.nodes[name], state.timesteps, state.n
    fixed = state.precision == "fixed_pt"
    if node.type == SPIKING:
        f = features(net, name)
        record = shared_array((T, f, n), np.int8)
        state.spikes[name] = record
        return L.SignedIF(shape=(f, n), threshold=net.array(name, "threshold").astype(_F32),
                          max_spikes=int(node.attrs["max_spikes"]), signed=bool(node.attrs["signed"]),
                          v_init=float(node.attrs["v_init"]), start=sched.window[name] - seg.offset, timesteps=T,
                          record=record,
                          encoding=signed_if_encoding(int(node.attrs["max_spikes"]), T, state.current) if fixed
                          else None,
                          name=name)
    if node.type == SSA:
        f, a = features(net, name), node.attrs
        record = shared_array((T, f, n), np.int8)
        state.spikes[name] = record
        params = {k: np.array(net.array(name, k), _F32) for k in SSA_PARAMS}  # loaded before Lava forks
        return L.SpikingSelfAttention(shape_in=(int(a["in_features"]), n), shape_out=(f, n), params=params,
                                      attrs=dict(a), batch=state.batch, start=sched.window[name] - seg.offset,
                                      timesteps=T, record=record, name=name)
    if node.type == DENSE:
        if fixed:  # Lava's Dense holds mixed-sign 8-bit weights as 2 * mantissa
            (high, shift), *low = dense_fixed(net, name)["groups"]
            return L.PositionalDense(weights=2 * high.astype(np.int32), positions=n, weight_exp=shift,
                                     low_groups=[(2 * w.astype(np.int32), sh) for w, sh in low], name=name)
        if state.quantized:  # the float model of the fixed-point network (teacher forcing)
            q = dense_fixed(net, name)
            return L.PositionalDense(weights=q["w_int"] * q["unit"], positions=n, name=name)
        return L.PositionalDense(weights=net.array(name, "weight").astype(np.float64), positions=n, name=name)
    record = shared_array((features(net, name), n), np.float32) if keep else None
    if record is not None:
        state.values[name] = record
    if node.type == READOUT:
        dense = node.preds[0]
        f = features(net, name)
        if fixed:
            q = dense_fixed(net, dense)
            unit, bias = q["unit"] / 2.0, q["bias_int"] * 2  # the Dense sums 2 * w_int * s
            stats = shared_array((2,), np.float64)
            state.readout_stats[name] = stats
            return L.RateReadout(shape=(f, n), bias=bias.astype(np.int64), start=sched.window[dense] - seg.offset,
                                 timesteps=T, unit=unit, record=record, stats=stats, name=name)
        if state.quantized:
            q = dense_fixed(net, dense)
            bias = (q["bias_int"] * q["unit"]).astype(np.float32).astype(np.float64)
        else:
            bias = net.array(dense, "bias").astype(np.float64)
        return L.RateReadout(shape=(f, n), bias=bias,
                             start=sched.window[dense] - seg.offset, timesteps=T, record=record, name=name)
    if node.type == "Embedding":
        if ids is None:
            raise NetworkError("the network starts with an Embedding: give token ids")
        return L.Embedding(ids=ids, weight=net.array(name, "weight"),
                           position_weight=net.array(name, "position_weight"), record=record, name=name)
    f_in = int(node.attrs.get("in_features", node.attrs["features"]))
    cls = {"Attention": L.Attention, "LayerNorm": L.Norm, "RMSNorm": L.Norm, "Add": L.Add}.get(node.type, L.RealOp)
    return cls(shape_in=(f_in, n), shape_out=(features(net, name), n), fn=make_real_op(net, name, state.batch, state.vec_width),
               ready=sched.ready[name] - seg.offset, record=record, name=name)


def _components(procs: dict[str, Any], edges: list[tuple[str, str]]) -> list[list[str]]:
    parent = {n: n for n in procs}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in edges:
        parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for n in procs:
        groups.setdefault(find(n), []).append(n)
    return list(groups.values())


def run_segment(net: Network, sched: Schedule, seg: Segment, state: RunState, ids: np.ndarray | None,
                final: set[str], verbose: bool = False) -> None:
    """Build segment ``seg`` as a Lava network, run it for its steps on Loihi2SimCfg and
    keep the values later segments (or Output nodes) need."""
    L = lava_backend()
    t0 = time.perf_counter()
    procs: "OrderedDict[str, Any]" = OrderedDict()
    keep = set(seg.outputs) | final
    for name in seg.nodes:
        procs[name] = build_process(net, sched, seg, name, state, ids, name in keep)
    edges = []
    for name in seg.nodes:
        if net.nodes[name].type == "Embedding":
            continue  # reads the token ids given at build time
        for p in net.nodes[name].preds:
            if p not in procs:
                if p not in state.values:
                    raise NetworkError(f"value of {p!r} is needed by {name!r} but was not computed")
                procs[p] = L.HostValue(value=np.ascontiguousarray(state.values[p], np.float32),
                                       ready=1, name=f"{p}@host")
            _ports(procs[p])[1].connect(_ports(procs[name])[0])
            edges.append((p, name))
    build_s = time.perf_counter() - t0
    model_map = {proc: L.models[type(proc)][state.precision] for proc in procs.values()}
    cfg = L.Loihi2SimCfg(select_tag=state.precision, exception_proc_model_map=model_map)
    run_s = stop_s = 0.0
    for group in _components(procs, edges):
        first = procs[group[0]]
        t1 = time.perf_counter()
        # processes move in lock step, so a channel never holds more than one message; Lava's
        # default of 64 slots would reserve 64x every message in shared memory
        first.run(condition=L.RunSteps(num_steps=seg.steps), run_cfg=cfg,
                  compile_config={"pypy_channel_size": CHANNEL_SLOTS})
        t2 = time.perf_counter()
        first.stop()
        run_s += t2 - t1
        stop_s += time.perf_counter() - t2
    entry = {"segment": seg.index, "stages": list(seg.stages), "processes": len(procs), "steps": seg.steps,
             "build_s": round(build_s, 3), "compile_run_s": round(run_s, 3), "stop_s": round(stop_s, 3)}
    state.segment_log.append(entry)
    if verbose:
        print(f"segment {seg.index}: stages {seg.stages[0]}..{seg.stages[1]}, {len(procs)} processes, "
              f"{seg.steps} steps, {run_s:.2f} s run + {stop_s:.2f} s stop", file=sys.stderr)


def run_network(net: Network, inputs: np.ndarray, timesteps: int | None = None, precision: str = "floating_pt",
                stages_per_run: int = 4, verbose: bool = False, current: str = "graded24",
                teacher: bool = False, vec_width: int = TORCH_VEC_WIDTH) -> dict[str, Any]:
    """Run the network on Lava. ``inputs``: token ids ``[b, P]`` (int) or, for a network
    whose first node is real-valued, a float array ``[b, P, F]`` (embeddings).

    teacher (fixed_pt only): run every stage on its own twice, in fixed_pt (recorded) and in
    floating_pt with the fixed-point weights; the float run's values feed the next stage.
    Each layer's agreement then measures that layer alone, without the chaotic growth of
    an early flip through later layers.

    Returns ``{"outputs": {name: [b, P, F] float32}, "spikes": {layer: [T, b, P, F] int8},
    "window_start": {layer: global step}, "meta": {...}}``."""
    if precision not in PRECISIONS:
        raise NetworkError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    T = int(timesteps or net.timesteps)
    if T < 1:
        raise NetworkError(f"timesteps must be at least 1, got {T}")
    x = np.asarray(inputs)
    if x.ndim == 1:
        x = x[None]
    is_ids = np.issubdtype(x.dtype, np.integer)
    batch, positions = int(x.shape[0]), int(x.shape[1])
    max_positions = int(net.meta.get("positions") or positions)
    if positions > max_positions:
        raise NetworkError(f"the input has {positions} positions; this export was built for at most "
                           f"{max_positions} positions (compile with a larger --seq-len)")
    sched = schedule(net, T)
    if teacher and precision != "fixed_pt":
        raise NetworkError("teacher forcing applies to fixed_pt runs")
    segments = plan_segments(net, sched, 1 if teacher else stages_per_run)
    state = RunState(batch, positions, precision, T, current, vec_width=vec_width)
    teacher_state = RunState(batch, positions, "floating_pt", T, current, quantized=True,
                             vec_width=vec_width) if teacher else None
    inputs_ = [n for n, node in net.nodes.items() if node.type == "Input"]
    ids = None
    for name in inputs_:
        first_users = {net.nodes[s].type for s in net.nodes[name].succs}
        if is_ids:
            if first_users != {"Embedding"}:
                raise NetworkError("token ids need a network whose input feeds an Embedding")
            ids = x.astype(np.int64)
        else:
            state.values[name] = to_lava(x.astype(_F32))
    if not is_ids:  # embeddings given: the Embedding nodes pass them through
        for name, node in net.nodes.items():
            if node.type == "Embedding":
                state.values[name] = to_lava(x.astype(_F32))
                for seg in segments:
                    if name in seg.nodes:
                        seg.nodes.remove(name)
    outputs = [n for n, node in net.nodes.items() if node.type == "Output"]
    final = {net.nodes[o].preds[0] for o in outputs}
    t0 = time.perf_counter()
    fixed_final: dict[str, np.ndarray] = {}
    if teacher_state is not None:
        teacher_state.values = dict(state.values)
    for seg in segments:
        if teacher_state is not None:
            state.values = dict(teacher_state.values)
        run_segment(net, sched, seg, state, ids, final, verbose)
        fixed_final.update({k: state.values[k] for k in final if k in seg.nodes and k in state.values})
        if teacher_state is not None:
            run_segment(net, sched, seg, teacher_state, ids, final, verbose)
    state.values.update(fixed_final)
    wall = time.perf_counter() - t0
    result_outputs = {}
    for o in outputs:
        (src,) = net.nodes[o].preds
        result_outputs[o] = from_lava(np.array(state.values[src]), batch)
    spikes = {k: np.ascontiguousarray(np.array(v).reshape(T, v.shape[1], batch, positions).transpose(0, 2, 3, 1))
              for k, v in state.spikes.items()}
    meta = {
        "precision": precision, "timesteps": T, "batch": batch, "positions": positions,
        "run_config": "Loihi2SimCfg", "stages": len(sched.windows), "steps_total": sum(s.steps for s in segments),
        "steps_single_network": sched.steps, "segments": state.segment_log, "wall_seconds": wall,
        "processes_max": max((s["processes"] for s in state.segment_log), default=0),
        "teacher_forced": bool(teacher),
    }
    if precision == "fixed_pt":
        meta["current_encoding"] = current
        meta["signed_if_encoding"] = {k: signed_if_encoding(int(net.nodes[k].attrs["max_spikes"]), T, current)
                                      for k in state.spikes if net.nodes[k].type == SPIKING}
        meta["readout_accumulator"] = {k: {"max_abs": float(v[0]), "saturated": int(v[1])}
                                       for k, v in state.readout_stats.items()}
    return {"outputs": result_outputs, "spikes": spikes, "window_start": dict(sched.window),
            "meta": meta}


def save_result(result: dict[str, Any], path: str | Path) -> None:
    """``out.npz``: ``output/<name>``, ``spikes/<layer>`` arrays and a ``meta`` JSON string."""
    arrays = {f"output/{k}": v for k, v in result["outputs"].items()}
    arrays.update({f"spikes/{k}": v for k, v in result["spikes"].items()})
    meta = dict(result["meta"], window_start={k: v for k, v in result["window_start"].items()
                                              if k in result["spikes"]})
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = Path(str(path) + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description="Run a spikec Lava export on Lava's Loihi 2 simulator (Loihi2SimCfg).")
    ap.add_argument("--input", required=True, help=".npy of token ids [batch, positions] (int) or embeddings (float)")
    ap.add_argument("--out", required=True, help="output .npz (outputs, per-layer spikes, meta)")
    ap.add_argument("--timesteps", "-T", type=int, help="timesteps per window (default: the export's)")
    ap.add_argument("--precision", choices=PRECISIONS, default="floating_pt")
    ap.add_argument("--stages-per-run", type=int, default=4,
                    help="neuron-layer stages per Lava network (0: the whole graph as one network)")
    ap.add_argument("--current", choices=CURRENT_ENCODINGS, default="graded24",
                    help="fixed_pt neuron current: 24-bit graded value (default) or a 13-bit-mantissa LIF bias")
    ap.add_argument("--teacher", action="store_true",
                    help="fixed_pt: feed every stage the float run of the fixed-point network (per-layer agreement)")
    ap.add_argument("--torch-vec-width", type=int, default=TORCH_VEC_WIDTH, choices=(8, 16),
                    help="SIMD width of the torch build to reproduce bit for bit in the norms: 8 (AVX2, "
                         "default) or 16 (AVX-512); only matters when comparing with spikec's simulator")
    ap.add_argument("--export", default=str(here), help="export folder (default: this script's folder)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        net = load_network(a.export)
        result = run_network(net, np.load(a.input), a.timesteps, a.precision, a.stages_per_run, not a.quiet,
                             a.current, a.teacher, a.torch_vec_width)
    except (NetworkError, FileNotFoundError) as e:
        print(f"run_lava: error: {e}", file=sys.stderr)
        return 3
    save_result(result, a.out)
    if not a.quiet:
        m = result["meta"]
        print(f"run_lava: {m['precision']}, T={m['timesteps']}, {m['stages']} stages, {m['steps_total']} steps in "
              f"{len(m['segments'])} Lava run(s), {m['wall_seconds']:.1f} s -> {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
