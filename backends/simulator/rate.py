"""The reference simulator's kernels of spikec's rate-coded extension nodes (embedding, norms,
attention, activations, add, SignedIF, rate readout).

Each calls the very function of ``spikec.core.ops`` the converted fx module calls, so results
agree bit for bit. Real-valued ops given a time series apply at every step independently.
"""

from __future__ import annotations

from typing import Callable

import nir
import numpy as np
import torch

from spikec.core import ir, neurons, ops
from spikec.core.errors import UnsupportedError

from . import native_loops, standard
from .values import Context, Kernel, Value, floating


def _real_op(x: Value, fn: Callable[[torch.Tensor], torch.Tensor]) -> Value:
    """Apply a real-valued op over the last axis; on a time series that is every step."""
    return Value(fn(floating(x.data)), x.series)


def _embedding(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    if x.series:
        raise UnsupportedError(f"SpikecEmbedding {name!r} got a time series; it takes token ids [batch, positions]")
    weight = ctx.param(name, node, "weight")
    position = ctx.param(name, node, "position_weight")
    return Value(ops.embedding(x.data, weight, position if position.shape[0] > 0 else None), False)


def _layer_norm(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    w, b = ctx.param(name, node, "weight"), ctx.param(name, node, "bias")
    return _real_op(x, lambda d: ops.layer_norm(d, w, b, float(node.eps)))


def _rms_norm(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    w = ctx.param(name, node, "weight")
    return _real_op(x, lambda d: ops.rms_norm(d, w, float(node.eps)))


def _attention(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    def fn(d: torch.Tensor) -> torch.Tensor:
        return ops.attention(d, int(node.num_heads), int(node.num_kv_heads), int(node.head_dim),
                             float(node.rope_theta), float(node.scale), rotary_dim=int(node.rotary_dim),
                             window=int(node.window), causal=bool(node.causal))

    data = floating(x.data)
    if not x.series:
        return Value(fn(data), False)
    t, b = data.shape[:2]  # every step on its own: fold T into the batch
    return Value(fn(data.reshape(t * b, *data.shape[2:])).reshape(t, b, *data.shape[2:-1], -1), True)


def _activation(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    return _real_op(x, lambda d: ops.activation(d, str(node.activation)))


def _gated_activation(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    return _real_op(x, lambda d: ops.gated_activation(d, str(node.activation)))


def _signed_if(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    thr = ctx.param(name, node, "threshold")
    max_spikes, signed = int(node.max_spikes), bool(node.signed)
    # Per-neuron initial membranes (an array, FAS calibration) take the kernels' torch path.
    v_init = ctx.param(name, node, "v_init") if np.ndim(node.v_init) else float(node.v_init)
    if not x.series and ctx.fast:
        count_only = name in ctx.count_only and not ctx.recording
        count, spikes, total = native_loops.signed_if_constant(x.data, thr, ctx.timesteps, max_spikes, signed, v_init,
                                                          train=not count_only, inplace=ctx.input_reusable)
        if count_only:
            return Value(count, True, count=True, total=total)
        if name in ctx.count_only:  # recording: pass the counts on, keep the train for the record
            return Value(count, True, count=True, total=total, train=spikes)
        return Value(spikes, True, total=total)
    if not x.series:
        return Value(ops.signed_if(x.data, thr, ctx.timesteps, max_spikes, signed, v_init), True)
    # A time-varying current: the same neuron, stepped on each step's current.
    theta = thr.float()
    step = lambda i, v: neurons.signed_if_step(i.float() / theta, v, max_spikes, signed)  # noqa: E731
    v0 = v_init.float() if isinstance(v_init, torch.Tensor) else torch.full((), v_init, dtype=torch.float32)
    return Value(standard.run_neuron(x, ctx.timesteps, step, v0).to(neurons.SPIKE_DTYPE), True)


def _rate_readout(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    if not x.series:
        return x  # a real value is constant over the window: its mean is itself
    if x.data.is_floating_point():
        return Value(x.data.mean(0), False)
    return Value(x.data.sum(0, dtype=torch.float32) / x.data.shape[0], False)


KERNELS: dict[type, Kernel] = {
    ir.SpikecEmbedding: _embedding,
    ir.SpikecLayerNorm: _layer_norm,
    ir.SpikecRMSNorm: _rms_norm,
    ir.SpikecAttention: _attention,
    ir.SpikecActivation: _activation,
    ir.SpikecGatedActivation: _gated_activation,
    ir.SpikecAdd: standard.passthrough,
    ir.SpikecSignedIF: _signed_if,
    ir.SpikecRateReadout: _rate_readout,
}
"""Rate-coded extension node class -> kernel."""
