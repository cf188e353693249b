"""The reference simulator's kernels of the few-spike code: ``SpikecFewSpike`` neurons and the
``SpikecBinaryReadout`` (Horner) readout, fused with the affine it reads like the rate readout.

The neuron calls ``spikec.core.ops.few_spike``, the very function of the converted fx module.
Fast mode, binary or balanced-ternary digits, every consumer a fused readout affine: no spike
train is made; the closed form ``few_spike.binary_code`` gives each neuron's weighted counts
``sum_k 2^-k s_k`` per readout group of 8 steps (exact in float64) and its spike count (the
popcount of its code), ``few_spike.ternary_code`` the ternary groups' integer counts with the
neuron's own float32 steps, the same numbers the train would give (tests/test_few_spike.py
checks it against the reference mode). On CPU both run as one compiled pass
(``native_loops.few_spike_counts``, bit for bit the same numbers); the torch closed forms are the
specification and the fallback (no compiler, ``SPIKEC_KERNELS=torch``, CUDA, other dtypes).
"""

from __future__ import annotations

from typing import Callable

import nir
import torch

from spikec.core import few_spike, ir, ops
from spikec.core.errors import UnsupportedError

from . import native_loops
from .values import Context, Kernel, Value


def _few_spike(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    if x.series:
        raise UnsupportedError(f"SpikecFewSpike {name!r} got a time series; it encodes a real current "
                               "constant over the window")
    thr = ctx.param(name, node, "threshold")
    signed_digits = bool(node.signed_digits)
    steps = int(getattr(node, "steps", 0) or 0)
    radix = int(getattr(node, "radix", 2))
    counts_only = ctx.fast and name in ctx.count_only
    if counts_only and (radix == 3 or not signed_digits) and not ctx.recording:
        compiled = native_loops.few_spike_counts(x.data, thr, ctx.timesteps, steps, radix)
        if compiled is not None:
            return Value(compiled[0], True, count=True, total=compiled[1])
    if counts_only and radix == 3 and not ctx.recording:
        counts, spikes = few_spike.ternary_code(x.data, thr, ctx.timesteps, steps)
        return Value(counts, True, count=True, total=int(spikes.sum()))
    if counts_only and not signed_digits and not ctx.recording:
        value, spikes = few_spike.binary_code(x.data, thr, few_spike.code_steps(ctx.timesteps, steps))
        groups = len(few_spike.step_groups(ctx.timesteps))
        if value.shape[0] < groups:  # a shorter code's later groups are silent: zero counts
            value = torch.cat([value, value.new_zeros((groups - value.shape[0], *value.shape[1:]))])
        return Value(value, True, count=True, total=int(spikes.sum()))
    train = ops.few_spike(x.data, thr, ctx.timesteps, signed_digits, steps, radix)
    if counts_only:
        total = int(train.abs().sum(dtype=torch.int64))
        return Value(few_spike.group_counts(train, radix), True, count=True, total=total, train=train)
    return Value(train, True)


def _binary_readout(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    if not x.series:
        return x  # a real value is constant over the window: each step carries it, the code is itself
    return Value(few_spike.weighted_count(x.data, int(getattr(node, "radix", 2))).float(), False)


def readout_affine(ctx: Context, name: str, node: nir.NIRNode, x: Value, readout: nir.NIRNode | None = None) -> Value:
    """An Affine/Linear fused with the ``SpikecBinaryReadout`` it feeds alone: ``W sum_k r^-k s_k + b``
    from the spike train or (fast mode) its group counts, in float64 rounded once to float32
    as ``ops.binary_readout_affine`` defines it (r the readout's radix)."""
    weight = ctx.param(name, node, "weight")
    bias = ctx.param(name, node, "bias") if isinstance(node, nir.Affine) else None
    radix = int(getattr(readout, "radix", 2))
    if x.count:
        scales = few_spike.group_scales(ctx.timesteps, radix)
        return Value(ops.readout_from_group_counts(x.data, weight, bias, scales).float(), False)
    return Value(ops.binary_readout_affine(x.data, weight, bias, radix).float(), False)


KERNELS: dict[type, Kernel] = {
    ir.SpikecFewSpike: _few_spike,
    ir.SpikecBinaryReadout: _binary_readout,
}
"""Few-spike node class -> kernel."""

FUSED_READOUTS: dict[type, Callable] = {ir.SpikecBinaryReadout: readout_affine}
"""Readout class -> the kernel of an affine fused with it (the engine adds the rate readout's)."""
