"""The reference simulator's kernels of standard NIR nodes (Affine, Linear, Scale, Flatten,
Threshold, IF, LIF, LI, I, CubaLIF, CubaLI, Output), and the fused Affine -> RateReadout.

Semantics: see ``spikec.backends.simulator`` (the package docstring). Neurons run T steps with
dt = 1 as NIR defines them (``spikec.core.neurons``); a real input is a constant current; the
fast mode runs NIR ``IF`` and event-driven affines in ``native_loops``.
"""

from __future__ import annotations

from typing import Callable

import nir
import torch
import torch.nn.functional as F

from spikec.core import neurons, ops
from spikec.core.errors import UnsupportedError

from . import native_loops
from .values import Context, Kernel, Value, floating


def run_neuron(x: Value, timesteps: int, step: Callable, state: torch.Tensor) -> torch.Tensor:
    """Drive ``step(current, state) -> (out, state)`` for T steps; a real input is a
    constant current. Returns the outputs ``[T, ...]``."""
    out: torch.Tensor | None = None
    for t in range(timesteps):
        current = x.data[t] if x.series else x.data
        y, state = step(current, state)
        if out is None:
            out = torch.empty((timesteps, *y.shape), dtype=y.dtype, device=y.device)
        out[t] = y
    assert out is not None
    return out


def _matmul(x: Value, weight: torch.Tensor, bias: torch.Tensor | None) -> Value:
    if weight.ndim != 2:
        raise UnsupportedError(f"affine weight of shape {list(weight.shape)} is not [out, in]")
    data = x.dense()
    data = data if data.dtype == weight.dtype else data.to(weight.dtype)
    if bias is not None and bias.dtype != weight.dtype:
        bias = bias.to(weight.dtype)
    if not x.series:
        return Value(ops.affine(data, weight, bias), False)
    y = F.linear(data.reshape(-1, data.shape[-1]), weight, bias)  # one matmul over all steps
    return Value(y.reshape(*data.shape[:-1], weight.shape[0]), True)


def _affine(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    bias = ctx.param(name, node, "bias") if isinstance(node, nir.Affine) else None
    weight = ctx.param(name, node, "weight")
    spikes = ctx.events(x, name, node) if x.series else None
    if spikes is not None:
        y = native_loops.event_matmul(spikes.data, ctx.packed(name, node), weight.shape[0], bias)
        if y is not None:
            return Value(y, True)
    return _matmul(x, weight, bias)


def readout_affine(ctx: Context, name: str, node: nir.NIRNode, x: Value, readout: nir.NIRNode | None = None) -> Value:
    """An Affine/Linear fused with the RateReadout it feeds alone: ``W mean_t(s_t) + b``,
    from the spike train or (fast mode) from its counts, computed in float64 and rounded
    once to float32 as ``ops.readout_from_counts`` defines it (widening the weight a block
    at a time: no float64 copy of it is kept)."""
    weight = ctx.param(name, node, "weight")
    bias = ctx.param(name, node, "bias") if isinstance(node, nir.Affine) else None
    if x.count:  # ops.rate_readout_affine after its sum over T
        return Value(ops.readout_from_counts(x.data, weight, bias, ctx.timesteps, torch.float32), False)
    return Value(ops.rate_readout_affine(x.data, weight, bias, torch.float32), False)


def _scale(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    s = ctx.param(name, node, "scale")
    return Value(floating(x.data, s) * s, x.series)


def _flatten(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    in_type = (node.input_type or {}).get("input")
    sample_dims = len(in_type) if in_type is not None else x.data.ndim - (2 if x.series else 1)
    lead = x.data.ndim - sample_dims
    start = int(node.start_dim) % sample_dims
    end = int(node.end_dim) % sample_dims
    return Value(torch.flatten(x.data, lead + start, lead + end), x.series)


def _threshold(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    thr = ctx.param(name, node, "threshold")
    data = floating(x.data, thr)
    spikes = (data > thr).to(torch.promote_types(data.dtype, thr.dtype))
    if not x.series:
        spikes = spikes.expand(ctx.timesteps, *spikes.shape)
    return Value(spikes, True)


def _if(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    r, thr, reset = (ctx.param(name, node, f) for f in ("r", "v_threshold", "v_reset"))
    x = Value(floating(x.data, r), x.series)
    if ctx.fast:
        fused = native_loops.nir_if(x.data, x.series, ctx.timesteps, r, thr, reset)
        if fused is not None:
            spikes, total = fused
            return Value(spikes, True, logical=x.data.dtype, total=total)
    step = lambda i, v: neurons.nir_if_step(i, v, r, thr, reset)  # noqa: E731
    return Value(run_neuron(x, ctx.timesteps, step, torch.zeros((), dtype=x.data.dtype)), True)


def _lif(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    tau, r, leak, thr, reset = (ctx.param(name, node, f) for f in ("tau", "r", "v_leak", "v_threshold", "v_reset"))
    x = Value(floating(x.data, r), x.series)
    step = lambda i, v: neurons.nir_lif_step(i, v, tau, r, leak, thr, reset)  # noqa: E731
    return Value(run_neuron(x, ctx.timesteps, step, torch.zeros((), dtype=x.data.dtype)), True)


def _li(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    tau, r, leak = (ctx.param(name, node, f) for f in ("tau", "r", "v_leak"))
    x = Value(floating(x.data, r), x.series)
    step = lambda i, v: neurons.nir_li_step(i, v, tau, r, leak)  # noqa: E731
    return Value(run_neuron(x, ctx.timesteps, step, torch.zeros((), dtype=x.data.dtype)), True)


def _integrator(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    r = ctx.param(name, node, "r")
    x = Value(floating(x.data, r), x.series)
    step = lambda i, v: neurons.nir_i_step(i, v, r)  # noqa: E731
    return Value(run_neuron(x, ctx.timesteps, step, torch.zeros((), dtype=x.data.dtype)), True)


def _cuba(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    """CubaLIF / CubaLI: the synaptic current is an LI with r = w_in and v_leak = 0."""
    tau_syn, tau_mem, r, leak, w_in = (
        ctx.param(name, node, f) for f in ("tau_syn", "tau_mem", "r", "v_leak", "w_in")
    )
    spiking = isinstance(node, nir.CubaLIF)
    if spiking:
        thr, reset = ctx.param(name, node, "v_threshold"), ctx.param(name, node, "v_reset")
    x = Value(floating(x.data, r), x.series)
    zero = torch.zeros((), dtype=x.data.dtype)

    def step(s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        i_syn, v = state
        i_syn, _ = neurons.nir_li_step(s, i_syn, tau_syn, w_in, zero)
        if spiking:
            out, v = neurons.nir_lif_step(i_syn, v, tau_mem, r, leak, thr, reset)
        else:
            out, v = neurons.nir_li_step(i_syn, v, tau_mem, r, leak)
        return out, (i_syn, v)

    return Value(run_neuron(x, ctx.timesteps, step, (zero, zero)), True)


def passthrough(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    """The input unchanged (Output, and fan-in nodes whose sum the engine already formed)."""
    return x


KERNELS: dict[type, Kernel] = {
    nir.Affine: _affine,
    nir.Linear: _affine,
    nir.Scale: _scale,
    nir.Flatten: _flatten,
    nir.Threshold: _threshold,
    nir.IF: _if,
    nir.LIF: _lif,
    nir.LI: _li,
    nir.I: _integrator,
    nir.CubaLIF: _cuba,
    nir.CubaLI: _cuba,
    nir.Output: passthrough,
}
"""Standard NIR node class -> kernel (Input nodes are bound by the engine itself)."""
