"""Building and running a network on Lava's Loihi 2 CPU simulator (``Loihi2SimCfg``).

One Lava process per graph node (``runtime.proc``), vectorised over batch x positions; every
port carries a ``[features, batch*positions]`` array. Lava picks each process's model by its
tag, the precision (``floating_pt`` / ``fixed_pt``). The stages run as segments, each its own
Lava network (``schedule.plan_segments``); the real values crossing a cut are read back on
the host and fed to the next segment by ``HostValue`` processes.

Imports ``runtime`` absolutely, like the process modules (see ``runtime.proc``), so that the
process classes built here are the ones Lava's model discovery matches.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg

from runtime.fixed_point import PRECISIONS, dense_fixed, signed_if_encoding, ternary_fraction_bits
from runtime.network import BINARY_READOUT, DENSE, FEW_SPIKE, READOUT, SPIKING, SSA, Network, NetworkError, features
from runtime.numpy_ops import F32, SSA_PARAMS, TORCH_VEC_WIDTH, from_lava, real_op, to_lava
from runtime.proc.binary_readout.process import BinaryReadout
from runtime.proc.embedding.process import Embedding
from runtime.proc.few_spike.process import FewSpike
from runtime.proc.host_value.process import HostValue
from runtime.proc.positional_dense.process import PositionalDense
from runtime.proc.rate_readout.process import RateReadout
from runtime.proc.real_op.process import RealOp
from runtime.proc.signed_if.process import SignedIF
from runtime.proc.spiking_self_attention.process import SpikingSelfAttention
from runtime.schedule import Schedule, Segment, plan_segments, schedule

CHANNEL_SLOTS = 2


def shared_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array in anonymous shared memory, mapped before Lava forks its processes, so
    that the models write their records where the host reads them (Lava's ``Var.get``
    sends one element per message: far too slow for logits)."""
    nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


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


def ports(proc: Any) -> tuple[Any, Any]:
    """(input port, output port) of a process built by ``build_process``."""

    def first(names: tuple[str, ...]) -> Any:
        for n in names:
            port = getattr(proc, n, None)
            if port is not None:
                return port
        return None

    return first(("a_in", "s_in", "inp")), first(("s_out", "a_out", "out"))


def make_real_op(net: Network, name: str, batch: int, width: int = TORCH_VEC_WIDTH
                 ) -> Callable[[np.ndarray], np.ndarray]:
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
    node, T, n = net.nodes[name], state.timesteps, state.n
    fixed = state.precision == "fixed_pt"
    if node.type == SPIKING:
        f = features(net, name)
        record = shared_array((T, f, n), np.int8)
        state.spikes[name] = record
        return SignedIF(shape=(f, n), threshold=net.array(name, "threshold").astype(F32),
                        max_spikes=int(node.attrs["max_spikes"]), signed=bool(node.attrs["signed"]),
                        v_init=float(node.attrs["v_init"]), start=sched.window[name] - seg.offset, timesteps=T,
                        record=record,
                        encoding=signed_if_encoding(int(node.attrs["max_spikes"]), T, state.current) if fixed
                        else None,
                        name=name)
    if node.type == FEW_SPIKE:
        f = features(net, name)
        record = shared_array((T, f, n), np.int8)
        state.spikes[name] = record
        return FewSpike(shape=(f, n), threshold=net.array(name, "threshold").astype(F32),
                        signed_digits=bool(node.attrs["signed_digits"]), start=sched.window[name] - seg.offset,
                        timesteps=T, steps=int(node.attrs.get("steps", 0) or 0), radix=int(node.attrs.get("radix", 2)),
                        record=record, name=name)
    if node.type == SSA:
        f, a = features(net, name), node.attrs
        record = shared_array((T, f, n), np.int8)
        state.spikes[name] = record
        params = {k: np.array(net.array(name, k), F32) for k in SSA_PARAMS}  # loaded before Lava forks
        return SpikingSelfAttention(shape_in=(int(a["in_features"]), n), shape_out=(f, n), params=params,
                                    attrs=dict(a), batch=state.batch, start=sched.window[name] - seg.offset,
                                    timesteps=T, record=record, name=name)
    if node.type == DENSE:
        if fixed:  # Lava's Dense holds mixed-sign 8-bit weights as 2 * mantissa
            (high, shift), *low = dense_fixed(net, name)["groups"]
            return PositionalDense(weights=2 * high.astype(np.int32), positions=n, weight_exp=shift,
                                   low_groups=[(2 * w.astype(np.int32), sh) for w, sh in low], name=name)
        if state.quantized:  # the float model of the fixed-point network (teacher forcing)
            q = dense_fixed(net, name)
            return PositionalDense(weights=q["w_int"] * q["unit"], positions=n, name=name)
        return PositionalDense(weights=net.array(name, "weight").astype(np.float64), positions=n, name=name)
    record = shared_array((features(net, name), n), np.float32) if keep else None
    if record is not None:
        state.values[name] = record
    if node.type in (READOUT, BINARY_READOUT):
        dense = node.preds[0]
        f = features(net, name)
        process = RateReadout if node.type == READOUT else BinaryReadout
        radix = {"radix": int(node.attrs.get("radix", 2))} if node.type == BINARY_READOUT else {}
        if fixed:
            q = dense_fixed(net, dense)
            unit, bias = q["unit"] / 2.0, q["bias_int"] * 2  # the Dense sums 2 * w_int * s
            stats = shared_array((2,), np.float64)
            state.readout_stats[name] = stats
            return process(shape=(f, n), bias=bias.astype(np.int64), start=sched.window[dense] - seg.offset,
                           timesteps=T, unit=unit, record=record, stats=stats, name=name, **radix)
        if state.quantized:
            q = dense_fixed(net, dense)
            bias = (q["bias_int"] * q["unit"]).astype(np.float32).astype(np.float64)
        else:
            bias = net.array(dense, "bias").astype(np.float64)
        return process(shape=(f, n), bias=bias,
                       start=sched.window[dense] - seg.offset, timesteps=T, record=record, name=name, **radix)
    if node.type == "Embedding":
        if ids is None:
            raise NetworkError("the network starts with an Embedding: give token ids")
        return Embedding(ids=ids, weight=net.array(name, "weight"),
                         position_weight=net.array(name, "position_weight"), record=record, name=name)
    f_in = int(node.attrs.get("in_features", node.attrs["features"]))
    return RealOp(shape_in=(f_in, n), shape_out=(features(net, name), n),
                  fn=make_real_op(net, name, state.batch, state.vec_width), ready=sched.ready[name] - seg.offset,
                  record=record, name=name)


def components(procs: dict[str, Any], edges: list[tuple[str, str]]) -> list[list[str]]:
    """The connected components of the processes (names) under ``edges``: each runs as its
    own Lava network."""
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
                procs[p] = HostValue(value=np.ascontiguousarray(state.values[p], np.float32),
                                     ready=1, name=f"{p}@host")
            ports(procs[p])[1].connect(ports(procs[name])[0])
            edges.append((p, name))
    build_s = time.perf_counter() - t0
    cfg = Loihi2SimCfg(select_tag=state.precision)  # each process's model by its tag
    run_s = stop_s = 0.0
    for group in components(procs, edges):
        first = procs[group[0]]
        t1 = time.perf_counter()
        # processes move in lock step, so a channel never holds more than one message; Lava's
        # default of 64 slots would reserve 64x every message in shared memory
        first.run(condition=RunSteps(num_steps=seg.steps), run_cfg=cfg,
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
    if precision == "fixed_pt":  # before Lava forks: a ternary code needs an exact 24-bit membrane
        for node in net.nodes.values():
            if node.type == FEW_SPIKE and int(node.attrs.get("radix", 2)) == 3:
                ternary_fraction_bits(int(node.attrs.get("steps") or T))
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
            state.values[name] = to_lava(x.astype(F32))
    if not is_ids:  # embeddings given: the Embedding nodes pass them through
        for name, node in net.nodes.items():
            if node.type == "Embedding":
                state.values[name] = to_lava(x.astype(F32))
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
    """``out.npz``: ``output/<name>``, ``spikes/<layer>`` arrays and a ``meta`` JSON string.
    Written to a fresh temporary file in the target folder, then renamed over ``path``."""
    arrays = {f"output/{k}": v for k, v in result["outputs"].items()}
    arrays.update({f"spikes/{k}": v for k, v in result["spikes"].items()})
    meta = dict(result["meta"], window_start={k: v for k, v in result["window_start"].items()
                                              if k in result["spikes"]})
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
