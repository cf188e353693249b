"""``token-encode``: the embedding output enters the network as spikes (SpikeDecoder).

The encoder (``streaming.token_code``, NIR ``SpikecTokenEncoder``) is the network's only
non-spiking boundary: the embedding lookup before it is real-valued, everything after it is
driven by its spikes (through ``streaming.token_decode``, NIR ``SpikecSpikeDecode``). In the
rate path a ``readout`` turns the decoded currents into the window value the real-valued
norms and residual adds need; in a streaming (spike-softmax) network the currents stream on.
"""

from __future__ import annotations

from torch import fx

from spikec.core import ops, streaming
from spikec.core.errors import UsageError
from spikec.core.passes import PassContext

from .fx_graph import calls, new_attr, spikec_name
from .encode import thresholds
from .spike_softmax import observe, validated

OPTION = "token_encoding"
"""Pass option naming the scheme: ``rate`` (default), ``binary`` or ``none``."""

RATE_PIPELINE: list[str] = ["fold-norm-affine", "calibrate", "burst-all", "token-encode", "spike-encode"]
"""The default rate path with the embedding encoded as spikes (option ``token_encoding``); with
spike-softmax use ``spike_softmax.PIPELINE_WITH_TOKENS``."""

TOKEN_KEY = "spikec_token_encoding"  # node meta on the encoder: scheme and settings
DEFAULT_BITS = 8


def _is_streaming(gm: fx.GraphModule) -> bool:
    return any(n.op == "call_function" and n.target in (streaming.stbif, streaming.spike_attention)
               for n in gm.graph.nodes)


def token_encode(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Encode each embedding output as spikes: rate (ST-BIF) or binary-expansion coding.

    Matches every ``ops.embedding``. Option ``token_encoding``: ``rate`` (default): ST-BIF
    neurons driven by the embedding as a constant current, threshold from the calibration text
    (``token_range`` default ``percentile``, ``token_range_scale``, ``token_max_spikes`` default
    ``burst_spikes``); ``binary``: the magnitude's ``K = min(token_bits, T)`` bits (default 8),
    most significant first, one step each, with the sign, over ``[-theta, theta]`` (``token_range``
    default ``absmax``); ``none``: nothing. Inserts ``token_code`` (named ``<embed>.encoder``, role
    ``encoder``) and ``token_decode`` (``<embed>.decode``), plus ``readout`` (``<embed>.readout``)
    unless the graph is already streaming; every former user of the embedding reads that.
    Guarantees: the network computes from the encoded (quantized) embedding; the embedding
    lookup is the only real-valued layer before the first spikes (recorded as ``non_spiking``).
    """
    scheme = ctx.option(OPTION, "rate")
    if scheme in (None, "none", "off"):
        ctx.record("scheme", "none")
        return
    if scheme not in streaming.SCHEMES:
        raise UsageError(f"unknown token encoding {scheme!r}", f"choose one of none, {', '.join(streaming.SCHEMES)}")
    bits = ctx.option("token_bits", DEFAULT_BITS)
    if int(bits) != bits or not 1 <= int(bits) <= streaming.MAX_BITS:
        raise UsageError(f"token_bits must be an integer in 1..{streaming.MAX_BITS}, got {bits}")
    bits = int(bits)
    embeds = list(calls(gm, ops.embedding))
    if not embeds:
        ctx.record("scheme", scheme)
        ctx.record("encoders", [])
        return
    stats = observe(gm, ctx, embeds, "token-encode")
    stream = _is_streaming(gm)
    timesteps = ctx.timesteps
    graph = gm.graph
    encoders, non_spiking = [], []
    cfg: dict = {}
    for embed in embeds:
        name = spikec_name(embed)
        default_range = "percentile" if scheme == "rate" else "absmax"
        cfg = validated(embed, {
            "range": ctx.option("token_range", default_range),
            "range_scale": ctx.option("token_range_scale", 1.0),
            "max_spikes": ctx.option("token_max_spikes", ctx.option("burst_spikes", 8)) if scheme == "rate" else 1,
        }, ctx)
        theta = thresholds(stats[embed], cfg)
        users = list(embed.users)
        with graph.inserting_after(embed):
            theta_node = graph.get_attr(new_attr(gm, f"{name}.encoder.threshold", theta))
        with graph.inserting_after(theta_node):
            code = graph.call_function(streaming.token_code, (embed, theta_node, timesteps, scheme),
                                       {"max_spikes": cfg["max_spikes"], "v_init": 0.5, "bits": bits})
        with graph.inserting_after(code):
            out = graph.call_function(streaming.token_decode, (code, theta_node, timesteps, scheme, bits))
        meta = {"module_path": embed.meta.get("module_path", "")}
        code.meta.update({**meta, "spikec_name": f"{name}.encoder", "role": "encoder",
                          TOKEN_KEY: {"scheme": scheme, **cfg, "bits": bits, "timesteps": timesteps}})
        out.meta.update({**meta, "spikec_name": f"{name}.decode", "role": "decode"})
        if not stream:
            with graph.inserting_after(out):
                decoded = out
                out = graph.call_function(streaming.readout, (decoded,))
            out.meta.update({**meta, "spikec_name": f"{name}.readout", "role": "readout"})
        for user in users:
            user.replace_input_with(embed, out)
        encoders.append(f"{name}.encoder")
        non_spiking.append(name)
    graph.lint()
    gm.recompile()
    ctx.record("scheme", scheme)
    ctx.record("encoders", encoders)
    ctx.record("non_spiking", non_spiking)
    ctx.record("range", cfg.get("range"))
    ctx.record("range_scale", cfg.get("range_scale"))
    ctx.record("max_spikes" if scheme == "rate" else "bits", cfg.get("max_spikes") if scheme == "rate" else bits)
    ctx.record("streaming", stream)
