"""``spike-softmax``: the streaming, spike-equivalent conversion (SpikeZIP-TF style).

Every weight layer and every attention product is driven by spikes of ST-BIF neurons, and
norms, activations, the gated product, softmax and the products ``Q K^T``, ``P V`` are
spike-equivalent operators (``spikec.core.streaming``). The converted fx graph is the
quantized ANN those neurons implement after T steps; the simulator runs the streaming
network from the NIR file and reproduces it exactly (docs/spike-softmax.md).

Pipeline (replaces ``spike-encode``; add ``token-encode`` before ``spike-softmax`` to encode
the embedding as spikes too): ``PIPELINE``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx

from spikec.core import ops, streaming
from spikec.core.errors import InputError, UnsupportedError, UsageError
from spikec.core.options import from_options
from spikec.core.passes import PassContext

from .fx_graph import (
    calls,
    drop_unused_attrs,
    get_arg,
    module_device,
    new_attr,
    spikec_name,
)
from .affine_rewrite import AffineSite, fold_weight, replace_affine
from .calibrate import CalibrateOptions, ChannelStats, observe_nodes
from .calibrate import META_KEY as CALIBRATION_KEY
from .encode import NEURON_KEY, V_INIT, neuron_config, provably_nonnegative, thresholds

PIPELINE: list[str] = ["fold-norm-affine", "calibrate", "burst-all", "spike-softmax"]
"""``spikec compile --attention spike-softmax``: these passes, in this order."""

PIPELINE_WITH_TOKENS: list[str] = ["fold-norm-affine", "calibrate", "burst-all", "token-encode", "spike-softmax"]
"""The same with the embedding encoded as spikes (option ``token_encoding``: ``rate`` or ``binary``)."""

DEFAULT_PROB_MAX_SPIKES = 64
STREAMING_KEY = "spikec_streaming"  # node meta: the streaming settings of a neuron site


def observe(gm: fx.GraphModule, ctx: PassContext, nodes: list[fx.Node], what: str) -> dict[fx.Node, dict[str, Any]]:
    """Per-channel ``absmax`` and ``percentile`` of ``|value|`` of each node over the calibration
    tokens (the ``calibrate`` pass's statistics, for sites it does not watch)."""
    data = ctx.calibration
    if data is None or data.numel() == 0 or data.dim() != 2:
        raise InputError(f"no calibration data: {what} needs token ids [samples, positions]",
                         "give calibration text (--calib-text) with enough tokens")
    opts = from_options(CalibrateOptions, ctx.options)
    percentile, batch = opts.percentile, opts.batch
    tokens = data.shape[0] * data.shape[1]
    sizes = {n: int(n.meta["tensor_meta"].shape[-1]) if "tensor_meta" in n.meta else None for n in nodes}
    watch = {n: ChannelStats(sizes[n], tokens, percentile / 100.0) for n in nodes if sizes[n]}
    lazy = [n for n in nodes if not sizes[n]]
    if lazy:  # feature sizes unknown before a first run: size the statistics on one sample
        from torch.fx.passes.shape_prop import ShapeProp
        ShapeProp(gm).propagate(data[:1, :2].to(module_device(gm)))
        watch.update({n: ChannelStats(int(n.meta["tensor_meta"].shape[-1]), tokens, percentile / 100.0)
                      for n in lazy})
    observe_nodes(gm, data, watch, batch, what)
    return {n: s.result() for n, s in watch.items()}


def site_config(ctx: PassContext, prefix: str) -> dict[str, Any]:
    """Neuron settings of a new site: ``<prefix>_range``, ``<prefix>_range_scale``,
    ``<prefix>_max_spikes`` over the burst settings (``percentile``, ``burst_range_scale``,
    ``burst_spikes``)."""
    return {
        "range": ctx.option(f"{prefix}_range", "percentile"),
        "range_scale": ctx.option(f"{prefix}_range_scale", ctx.option("burst_range_scale", 1.0)),
        "max_spikes": ctx.option(f"{prefix}_max_spikes", ctx.option("burst_spikes", 8)),
    }


def validated(node: fx.Node, cfg: dict[str, Any], ctx: PassContext) -> dict[str, Any]:
    """``cfg`` checked as ``encode.neuron_config`` checks an affine's (UsageError when bad)."""
    saved = node.meta.get(NEURON_KEY)
    node.meta[NEURON_KEY] = cfg
    try:
        return neuron_config(node, ctx)
    finally:
        if saved is None:
            node.meta.pop(NEURON_KEY)
        else:
            node.meta[NEURON_KEY] = saved


def _neuron(gm: fx.GraphModule, before: fx.Node, x: fx.Node, theta: torch.Tensor, cfg: dict[str, Any], signed: bool,
            name: str, of: str, module_path: str, timesteps: int) -> fx.Node:
    graph = gm.graph
    with graph.inserting_before(before):
        theta_node = graph.get_attr(new_attr(gm, f"{name}.threshold", theta))
        count = graph.call_function(streaming.stbif, (x, theta_node), {
            "timesteps": timesteps, "max_spikes": cfg["max_spikes"], "signed": signed, "v_init": V_INIT})
    count.meta.update({"spikec_name": name, "role": "neuron", "spikec_neuron_of": of, "module_path": module_path,
                       NEURON_KEY: {**cfg, "signed": signed, "timesteps": timesteps, "v_init": V_INIT},
                       STREAMING_KEY: "stbif"})
    return count


def spike_softmax(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Convert to a streaming network: ST-BIF neurons and spike-equivalent operators (SpikeZIP-TF).

    Matches every calibrated ``ops.affine``, every ``ops.attention``, every norm, activation and
    gated activation. Each affine's input gets ST-BIF neurons (``streaming.stbif``: threshold
    and burst bound from ``neuron_config``, as ``spike-encode``) and the affine becomes
    ``streaming.count_affine`` (``count_readout_affine`` + ``readout`` for the one feeding the
    graph output); each attention's q|k|v input gets ST-BIF neurons (per-channel thresholds from
    the calibration text: ``qkv_range``/``qkv_range_scale``/``qkv_max_spikes``, default the burst
    settings) and becomes ``streaming.spike_attention`` with probability neurons of threshold
    ``1 / prob_max_spikes`` (option, default 64; range [0, 1]); norms and activations become their
    spike-equivalent ops. A token encoder's readout is dropped (its spikes stream on).
    Guarantees: the module computes the quantized ANN the streaming network equals after T
    steps; no existing tensor is modified. Raises ``UsageError`` when no affine is calibrated,
    ``UnsupportedError`` for non-causal attention or an output not made by an affine.
    """
    timesteps = ctx.timesteps
    affines = list(calls(gm, ops.affine))
    attentions = list(calls(gm, ops.attention))
    if not affines or any(CALIBRATION_KEY not in a.meta for a in affines):
        raise UsageError("spike-softmax needs every affine calibrated",
                         "run the calibrate pass before spike-softmax (spike_softmax.PIPELINE)")
    prob_b = ctx.option("prob_max_spikes", DEFAULT_PROB_MAX_SPIKES)
    if int(prob_b) != prob_b or not 1 <= int(prob_b) <= 127:
        raise UsageError(f"prob_max_spikes must be an integer in 1..127, got {prob_b}")
    prob_b = int(prob_b)
    for att in attentions:
        if not get_arg(att, 6, "causal", True):
            raise UnsupportedError(f"{spikec_name(att)}: spike-softmax supports causal attention only")
        if get_arg(att, 7, "rotary_dim", 0):
            raise UnsupportedError(f"{spikec_name(att)}: spike-softmax does not implement partial rotary embeddings "
                                   "(GPT-NeoX, Phi)", hint="use the default softmax attention")
        if get_arg(att, 8, "window", 0):
            raise UnsupportedError(f"{spikec_name(att)}: spike-softmax does not implement sliding-window attention "
                                   "(Mistral, Qwen2)", hint="use the default softmax attention")
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    result = output.args[0]
    if not (isinstance(result, fx.Node) and result.target is ops.affine):
        raise UnsupportedError("spike-softmax needs the logits to come from an affine (the lm_head)")

    qkv_inputs = list(dict.fromkeys(get_arg(a, 0, "qkv") for a in attentions))
    observed = observe(gm, ctx, qkv_inputs, "spike-softmax q|k|v") if qkv_inputs else {}
    qkv_stats = {att: observed[get_arg(att, 0, "qkv")] for att in attentions}  # inputs are rewritten below
    graph = gm.graph
    neurons: dict[str, int] = {}
    stale: set[str] = set()

    for affine in affines:
        cfg = neuron_config(affine, ctx)
        theta = thresholds(affine.meta[CALIBRATION_KEY], cfg)
        site = AffineSite.of(gm, affine, theta)
        count = _neuron(gm, affine, site.x, theta.to(site.w.device), cfg, not provably_nonnegative(site.x),
                        f"{site.name}.neuron", site.name, affine.meta.get("module_path", ""), timesteps)
        with graph.inserting_before(affine):
            w_folded = fold_weight(gm, site, theta)
            if affine is result:
                new = graph.call_function(streaming.count_readout_affine, (count, w_folded, site.b_node, timesteps))
                out = graph.call_function(streaming.readout, (new,))
                out.meta.update({"spikec_name": f"{site.name}.readout", "role": "readout",
                                 "module_path": affine.meta.get("module_path", "")})
            else:
                new = out = graph.call_function(streaming.count_affine, (count, w_folded, site.b_node, timesteps))
        stale |= replace_affine(gm, site, new, out)
        new.meta[NEURON_KEY] = dict(count.meta[NEURON_KEY])
        neurons[site.role] = neurons.get(site.role, 0) + int(theta.numel())

    qkv_cfg: dict[str, Any] = {}
    for att in attentions:
        qkv = get_arg(att, 0, "qkv")
        name = spikec_name(att)
        qkv_cfg = validated(att, site_config(ctx, "qkv"), ctx)
        theta = thresholds(qkv_stats[att], qkv_cfg).to(module_device(gm))
        count = _neuron(gm, att, qkv, theta, qkv_cfg, True, f"{name}.neuron", name, att.meta.get("module_path", ""),
                        timesteps)
        heads, kv_heads, head_dim = (int(get_arg(att, i, k)) for i, k in
                                     ((1, "num_heads"), (2, "num_kv_heads"), (3, "head_dim")))
        scale = get_arg(att, 5, "scale", None)
        with graph.inserting_before(att):
            scale_node = graph.get_attr(new_attr(gm, f"{name}.input_scale", theta))
            prob_node = graph.get_attr(new_attr(gm, f"{name}.prob_threshold",
                                                streaming.prob_thresholds(heads, prob_b).to(theta.device)))
            new = graph.call_function(streaming.spike_attention, (count, scale_node, timesteps, heads, kv_heads,
                                                                  head_dim, float(get_arg(att, 4, "rope_theta", 0.0)),
                                                                  float(scale) if scale is not None
                                                                  else 1.0 / math.sqrt(head_dim),
                                                                  prob_node, prob_b, V_INIT))
        new.meta.update(att.meta)
        new.meta[STREAMING_KEY] = "spike-attention"
        att.replace_all_uses_with(new)
        graph.erase_node(att)
        neurons["qkv_spikes"] = neurons.get("qkv_spikes", 0) + int(theta.numel())

    operators = 0
    for node in calls(gm, *streaming.STREAM_OPS):
        node.target = streaming.STREAM_OPS[node.target]
        node.meta[STREAMING_KEY] = "spike-equivalent"
        operators += 1
    dropped = 0
    for node in calls(gm, streaming.readout):
        source = node.args[0]
        if isinstance(source, fx.Node) and source.target is streaming.token_decode:
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            dropped += 1
    drop_unused_attrs(gm, stale)
    graph.lint()
    gm.recompile()
    ctx.record("attention", "spike-softmax")
    ctx.record("timesteps", timesteps)
    ctx.record("affines_encoded", len(affines))
    ctx.record("attentions", len(attentions))
    ctx.record("spike_equivalent_operators", operators)
    ctx.record("neurons", neurons)
    ctx.record("qkv_neurons", {k: qkv_cfg[k] for k in ("range", "range_scale", "max_spikes")} if qkv_cfg else {})
    ctx.record("prob_neurons", {"max_spikes": prob_b, "threshold": 1.0 / prob_b, "signed": False})
    ctx.record("token_readouts_dropped", dropped)
