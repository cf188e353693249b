"""The reference simulator's kernels for streaming (spike-softmax) networks and token encoders.

Every kernel computes all prefixes ``t = 1..T`` at once (vectorised over T, never a Python
loop over steps) with the functions of ``spikec.core.streaming``, the very ones the
converted fx graph calls; the last prefix is computed on its own with the fx graph's shapes
and arguments, so the window values and spike counts equal the fx graph's bit for bit.

How values are held (an implementation choice; the per-step semantics are those of
docs/nir-extensions.md):

* a neuron's spike train is the true train ``s_t`` (int8/int16), as a ``Spikes`` value that
  also carries the cumulative counts ``C_t`` (float32) for its consumers;
* every real-valued time series of a streaming network is held as its running means
  ``xbar_t`` (``Stream``), not as its per-step values: an operator's running-mean output is
  ``f(xbar_t)``, and the fan-in sum of running means (at a ``SpikecStreamAdd``, which marks it
  again) is the running mean of the sum, so nothing is ever differenced and summed back
  (which would not be exact in floating point). A real value (no time axis) is its own
  running mean; any other time series holds per-step values (its prefix sums are taken).

The shared kernels of ``nir.Affine``/``nir.Linear``, ``SpikecRateReadout`` and ``nir.Output``
need to know these values: ``spike_driven_affine``, ``stream_readout`` and ``stream_output``
wrap them (the engine applies the wrappers when it builds its kernel table). Given a ``Spikes``
value an affine computes the running means from its counts; given a ``Stream`` value a
readout takes the last running mean (the window value) and an Output the per-step values;
given anything else they run unchanged. Both modes ("fast", "reference") run these same kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nir
import numpy as np
import torch

from spikec.core import ir, streaming
from spikec.core.errors import UnsupportedError

from .values import Context, Kernel, Value, floating

TIME_GROUP_BYTES = 256 << 20  # working set of one attention chunk over several prefixes


@dataclass
class Spikes(Value):
    """A spike train ``[T, ...]`` with its cumulative counts (float32 ``[T, ...]``)."""

    counts: torch.Tensor | None = None


@dataclass
class Stream(Value):
    """A real time series held as its running means ``[T, ...]``. ``inner``: spiking neurons
    inside the node that made it, by name suffix: (|spikes|, neuron steps, train or None)."""

    inner: dict[str, tuple[int, int, torch.Tensor | None]] = field(default_factory=dict)


def _steps(ctx: Context, ndim: int) -> torch.Tensor:
    """Steps covered by the prefixes ``1..T-1``, float32, shaped ``[T-1, 1, ...]`` for ``ndim`` axes."""
    return torch.arange(1, ctx.timesteps, dtype=torch.float32, device=ctx.device).reshape(-1, *([1] * (ndim - 1)))


def _prefixes(ctx: Context, x: Value) -> tuple[torch.Tensor, bool]:
    """The running means of ``x`` (``[T, ...]``) and whether it varies in time; a real value
    is returned as it is (constant). A series not made by a streaming node holds per-step
    values (e.g. a graph's input given as a time series): its prefix sums are taken here."""
    if not x.series:
        return floating(x.data), False
    if isinstance(x, Stream):
        return x.data, True
    if x.data.is_floating_point():
        sums = torch.cumsum(x.dense().double(), 0).float()
    else:
        sums = torch.cumsum(x.data, 0, dtype=torch.int64).to(torch.float32)
    steps = torch.arange(1, sums.shape[0] + 1, dtype=torch.float32, device=sums.device)
    return sums / steps.reshape(-1, *([1] * (sums.ndim - 1))), True


def _per_prefix(ctx: Context, means: torch.Tensor, varying: bool, fn) -> torch.Tensor:
    """``fn(means_t, steps)`` for ``t = 1..T`` stacked ``[T, ...]``: the prefixes before T in
    one call, the last one alone with ``steps = T`` (the fx graph's call)."""
    last = means[-1] if varying else means
    final = fn(last, ctx.timesteps).unsqueeze(0)
    if ctx.timesteps == 1:
        return final
    head = fn(means[:-1] if varying else means.unsqueeze(0), _steps(ctx, last.ndim + 1))
    return torch.cat([head, final])


def _stbif_prefixes(ctx: Context, means: torch.Tensor, varying: bool, theta: torch.Tensor, b: int, signed: bool,
                    v_init) -> torch.Tensor:
    """ST-BIF counts of every prefix written into one ``[T, ...]`` buffer (no concatenation)."""
    last = means[-1] if varying else means
    out = torch.empty((ctx.timesteps, *last.shape), dtype=torch.float32, device=last.device)
    streaming.stbif_counts(last, theta, ctx.timesteps, ctx.timesteps, b, signed, v_init, out=out[-1])
    if ctx.timesteps > 1:
        head = means[:-1] if varying else means.unsqueeze(0).expand(ctx.timesteps - 1, *means.shape)
        streaming.stbif_counts(head, theta, _steps(ctx, last.ndim + 1), ctx.timesteps, b, signed, v_init,
                               out=out[:-1])
    return out


# ---------------------------------------------------------------------------
# neurons
# ---------------------------------------------------------------------------


def _v_init(ctx: Context, name: str, node: nir.NIRNode):
    return ctx.param(name, node, "v_init") if np.ndim(node.v_init) else float(node.v_init)


def _stbif(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    """Real value or time series of currents -> spike train (ST-BIF, closed form per prefix)."""
    theta = ctx.param(name, node, "threshold")
    b, signed, v_init = int(node.max_spikes), bool(node.signed), _v_init(ctx, name, node)
    means, varying = _prefixes(ctx, x)
    counts = _stbif_prefixes(ctx, means, varying, theta, b, signed, v_init)
    spikes = streaming.spikes_from_counts(counts)
    return Spikes(spikes, True, total=int(spikes.abs().sum(dtype=torch.int64)), counts=counts)


def _token_encoder(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    """Real embedding -> the encoder's spike train, partial codes as its counts."""
    if x.series:
        raise UnsupportedError(f"token encoder {name!r} got a time series; it encodes a real embedding")
    theta = ctx.param(name, node, "threshold")
    scheme, b, v_init, bits = str(node.scheme), int(node.max_spikes), float(node.v_init), int(node.bits)
    data = floating(x.data)
    code = streaming.token_code(data, theta, ctx.timesteps, scheme, b, v_init, bits)
    partial = streaming.token_partial_codes(code, data, theta, ctx.timesteps, scheme, b, v_init, bits)
    spikes = streaming.token_spikes(partial, scheme, bits)
    return Spikes(spikes, True, total=int(spikes.abs().sum(dtype=torch.int64)), counts=partial)


def _partial_codes(ctx: Context, x: Value, scheme: str, bits: int) -> torch.Tensor:
    if isinstance(x, Spikes) and x.counts is not None:
        return x.counts
    if not x.series:
        raise UnsupportedError("a spike decoder got a real value; it decodes a spike train")
    weight = streaming.binary_step_weights(bits, ctx.timesteps, x.data.device) if scheme == "binary" else None
    data = x.data.float() if weight is None else x.data.float() * weight.reshape(-1, *([1] * (x.data.ndim - 1)))
    return torch.cumsum(data, 0)


def _spike_decode(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    """A token encoder's spikes -> running means of the currents its synapses deliver."""
    weight = ctx.param(name, node, "weight")
    scheme, bits, t = str(node.scheme), int(node.bits), ctx.timesteps
    partial = _partial_codes(ctx, x, scheme, bits)
    final = streaming.token_decode(partial[-1], weight, t, scheme, bits).unsqueeze(0)
    if t == 1:
        return Stream(final, True)
    head = streaming.token_running(partial[:-1], weight, _steps(ctx, partial.ndim), t, scheme, bits)
    return Stream(torch.cat([head, final]), True)


# ---------------------------------------------------------------------------
# spike-driven affines and readouts (wrappers of the shared kernels)
# ---------------------------------------------------------------------------


def spike_driven_affine(shared: Kernel) -> Kernel:
    """The Affine/Linear kernel ``shared``, extended: a ``Spikes`` input with counts gives the
    ``Stream`` of running means ``W C_t / t + b`` (``[T, ..., out]``)."""
    def kernel(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
        if not isinstance(x, Spikes) or x.counts is None:
            return shared(ctx, name, node, x)
        weight = ctx.param(name, node, "weight")
        bias = ctx.param(name, node, "bias") if isinstance(node, nir.Affine) else None
        out = _per_prefix(ctx, x.counts, True, lambda c, steps: streaming.count_affine(c, weight, bias, steps))
        return Stream(out, True)

    return kernel


def stream_readout(shared: Kernel) -> Kernel:
    """The RateReadout kernel ``shared``, extended: a ``Stream`` input gives its last running
    mean (the window value, real ``[...]``)."""
    def kernel(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
        if isinstance(x, Stream):
            return Value(x.data[-1], False)
        return shared(ctx, name, node, x)

    return kernel


def stream_output(shared: Kernel) -> Kernel:
    """The Output kernel ``shared``, extended: a ``Stream`` input leaves the graph as its
    per-step values ``[T, ...]``."""
    def kernel(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
        if isinstance(x, Stream):  # what leaves the graph is the per-step series
            x = Value(per_step(x.data), True)
        return shared(ctx, name, node, x)

    return kernel


def per_step(means: torch.Tensor) -> torch.Tensor:
    """Per-step values ``t m_t - (t-1) m_{t-1}`` of running means ``[T, ...]`` (float rounding)."""
    steps = torch.arange(1, means.shape[0] + 1, dtype=torch.float64, device=means.device)
    sums = means.double() * steps.reshape(-1, *([1] * (means.ndim - 1)))
    return torch.diff(sums, dim=0, prepend=torch.zeros_like(sums[:1])).to(means.dtype)


# ---------------------------------------------------------------------------
# spike-equivalent operators
# ---------------------------------------------------------------------------


def _stream_op(fn) -> Kernel:
    """Kernel of an elementwise/last-axis operator ``fn(ctx, name, node, data)``: ``f`` of every
    running mean (a real input gives a real output)."""

    def kernel(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
        means, varying = _prefixes(ctx, x)
        if not varying:
            return Value(fn(ctx, name, node, means), False)
        return Stream(_per_prefix(ctx, means, True, lambda m, steps: fn(ctx, name, node, m)), True)

    return kernel


def _stream_add(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    """The fan-in sum of streaming values is the running mean of the sum: keep it marked."""
    return Stream(x.data, True) if x.series and x.data.is_floating_point() else x


def _layer_norm(ctx: Context, name: str, node: nir.NIRNode, d: torch.Tensor) -> torch.Tensor:
    return streaming.stream_layer_norm(d, ctx.param(name, node, "weight"), ctx.param(name, node, "bias"),
                                       float(node.eps))


def _rms_norm(ctx: Context, name: str, node: nir.NIRNode, d: torch.Tensor) -> torch.Tensor:
    return streaming.stream_rms_norm(d, ctx.param(name, node, "weight"), float(node.eps))


def _activation(ctx: Context, name: str, node: nir.NIRNode, d: torch.Tensor) -> torch.Tensor:
    return streaming.stream_activation(d, str(node.activation))


def _gated(ctx: Context, name: str, node: nir.NIRNode, d: torch.Tensor) -> torch.Tensor:
    return streaming.stream_gated_activation(d, str(node.activation))


def _spike_attention(ctx: Context, name: str, node: nir.NIRNode, x: Value) -> Value:
    """q|k|v spike train -> running means of the attention output ``[T, b, P, H D]``; the
    probability neurons' spikes are counted (and recorded) as ``<name>_probs``."""
    if not x.series:
        raise UnsupportedError(f"SpikecSpikeAttention {name!r} got a real value; it takes q|k|v spikes")
    counts = x.counts if isinstance(x, Spikes) and x.counts is not None else torch.cumsum(
        x.dense().double(), 0).float()
    t_max = ctx.timesteps
    scale_in = ctx.param(name, node, "input_scale")
    theta = ctx.param(name, node, "prob_threshold")
    h, kv, d = int(node.num_heads), int(node.num_kv_heads), int(node.head_dim)
    bmax, v_init, scale = int(node.prob_max_spikes), float(node.prob_v_init), float(node.scale)
    means = _per_prefix(ctx, counts, True, lambda c, steps: streaming.decode(c, scale_in, steps))
    q, k, v = streaming.attention_heads(means, h, kv, d, float(node.rope_theta))
    n, batch, _, positions, _ = q.shape
    out = q.new_empty(n, batch, h, positions, d)
    train = torch.zeros(n, batch, h, positions, positions, dtype=torch.int16) if ctx.recording else None
    total = 0
    steps = torch.arange(1, t_max + 1, dtype=torch.float32, device=q.device)
    for start in range(0, positions, streaming.QUERY_CHUNK):
        stop = min(start + streaming.QUERY_CHUNK, positions)
        # prefixes 1..T-1 in groups that fit the working set, then T alone (the fx graph's call)
        per_prefix = batch * h * (stop - start) * stop * 4 * 6
        group = max(1, TIME_GROUP_BYTES // max(per_prefix, 1))
        previous = torch.zeros(batch, h, stop - start, stop, device=q.device)
        bounds = [(a, min(a + group, t_max - 1)) for a in range(0, t_max - 1, group)] + [(t_max - 1, t_max)]
        for a, z in bounds:
            steps_az = t_max if z == t_max and a == t_max - 1 else steps[a:z]
            o, c = streaming.attention_rows(q[a:z], k[a:z], v[a:z], start, stop, steps_az, t_max, scale, theta,
                                            bmax, v_init)
            out[a:z, :, :, start:stop] = o
            del o
            first = c[0] - previous
            if train is not None:
                train[a, :, :, start:stop, :stop] = first.to(torch.int16)
            total += int(first.abs_().sum(dtype=torch.float64))
            if c.shape[0] > 1:
                rest = torch.diff(c, dim=0)
                if train is not None:
                    train[a + 1:z, :, :, start:stop, :stop] = rest.to(torch.int16)
                total += int(rest.abs_().sum(dtype=torch.float64))
            previous = c[-1]
    neuron_steps = t_max * batch * h * streaming.causal_pairs(positions)
    recorded = _compact(streaming.probability_layout(train)) if train is not None else None
    return Stream(streaming.merge_heads(out), True, inner={"_probs": (total, neuron_steps, recorded)},
                   operations=_product_synops(x, counts, h, kv, d, total))


def _product_synops(x: Value, counts: torch.Tensor, h: int, kv: int, d: int, prob_spikes: int) -> dict[str, float]:
    """Synaptic operations of the spike-driven products, computed incrementally as SpikeZIP-TF
    does: ``Q_t K_t^T - Q_{t-1} K_{t-1}^T = q_t K_t^T + Q_{t-1} k_t^T`` (and the same for ``P V``).
    A q spike at query position i meets the accumulated keys ``j <= i`` (``i + 1`` accumulates);
    a k or v spike at key position j reaches the ``P - j`` later queries of each of the
    ``H / KV`` heads of its group; a probability spike meets the ``D`` accumulated values of
    its key. Graded spikes count by value. ``qk_synops``, ``pv_synops``: summed over batch and steps."""
    per_step = x.dense() if not isinstance(x, Spikes) or x.counts is None else torch.diff(
        counts, dim=0, prepend=torch.zeros_like(counts[:1]))
    per_position = per_step.abs().sum(dim=(0, 1), dtype=torch.float64)  # [P, (H + 2KV) D]
    q, k, v = (part.sum(-1) for part in per_position.split([h * d, kv * d, kv * d], dim=-1))
    positions = per_position.shape[0]
    queries_before = torch.arange(1, positions + 1, dtype=torch.float64, device=q.device)  # i + 1
    queries_after = torch.flip(queries_before, (0,)) * (h // kv)  # (P - j) per head of the group
    return {"qk_synops": float(q @ queries_before + k @ queries_after),
            "pv_synops": float(v @ queries_after + prob_spikes * d)}


def _compact(spikes: torch.Tensor) -> torch.Tensor:
    peak = int(spikes.abs().max()) if spikes.numel() else 0
    return spikes.to(torch.int8) if peak <= 127 else spikes


KERNELS: dict[type, Kernel] = {
    ir.SpikecSTBIF: _stbif,
    ir.SpikecTokenEncoder: _token_encoder,
    ir.SpikecSpikeDecode: _spike_decode,
    ir.SpikecStreamAdd: _stream_add,
    ir.SpikecStreamLayerNorm: _stream_op(_layer_norm),
    ir.SpikecStreamRMSNorm: _stream_op(_rms_norm),
    ir.SpikecStreamActivation: _stream_op(_activation),
    ir.SpikecStreamGatedActivation: _stream_op(_gated),
    ir.SpikecSpikeAttention: _spike_attention,
}
"""Streaming (spike-softmax) and token-encoding node class -> kernel."""
