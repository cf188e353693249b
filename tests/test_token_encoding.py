"""Spike encoding of tokens (SpikeDecoder): the embedding output enters the network as spikes,
rate or binary-expansion coded, in the rate path and in spike-softmax mode."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import spikec.passes  # noqa: F401  (registers the passes)
import torch
from canonical_models import FAMILIES, calls_to, token_ids
from spikec.backends.simulator import simulate
from spikec.analysis.spiking_parts import spiking_parts
from spikec.passes.spike_softmax import PIPELINE_WITH_TOKENS
from spikec.passes.token_encoding import RATE_PIPELINE

from spikec.core import ops, streaming
from spikec.core.errors import UsageError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.core.ir import SpikecSpikeDecode, SpikecTokenEncoder
from spikec.lower import lower_to_nir
from spikec.verify import compare_fx_and_simulator

T = 8
RATE_PATH = RATE_PIPELINE


def _encoder_graph(theta: torch.Tensor, scheme: str, bits: int = 8, b: int = 1) -> nir.NIRGraph:
    d = theta.shape[0]
    nodes = {"input": nir.Input(input_type={"input": np.array([d])}),
             "enc": SpikecTokenEncoder(threshold=theta.numpy(), max_spikes=b, signed=True, v_init=0.5, scheme=scheme,
                                       bits=bits),
             "dec": SpikecSpikeDecode(weight=theta.numpy(), scheme=scheme, bits=bits),
             "out": nir.Output(output_type={"output": np.array([d])})}
    return nir.NIRGraph(nodes=nodes, edges=[("input", "enc"), ("enc", "dec"), ("dec", "out")], type_check=False)


def test_rate_encoding_sends_the_stbif_count_of_the_embedding_and_decodes_its_quantized_value():
    theta = torch.tensor([0.5, 1.0, 2.0, 4.0])
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0)) * 3
    result = simulate(_encoder_graph(theta, "rate", b=2), x, T, record=True)
    code = streaming.token_code(x, theta, T, "rate", max_spikes=2)
    assert torch.equal(result.spikes["enc"].sum(0, dtype=torch.float32), code)
    assert torch.equal(code, streaming.stbif(x, theta, T, 2))
    torch.testing.assert_close(result.output.mean(0), streaming.token_decode(code, theta, T, "rate"))


@pytest.mark.parametrize("timesteps,bits", [(8, 8), (12, 8), (4, 8), (8, 3)])
def test_binary_encoding_sends_one_signed_bit_per_step_most_significant_first(timesteps, bits):
    theta = torch.tensor([1.0, 2.0, 0.5])
    x = (torch.rand(3, 5, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1) * theta
    result = simulate(_encoder_graph(theta, "binary", bits), x, timesteps, record=True)
    spikes = result.spikes["enc"]
    k = min(bits, timesteps)
    code = streaming.token_code(x, theta, timesteps, "binary", bits=bits)
    assert set(spikes.unique().tolist()) <= {-1, 0, 1}
    assert not spikes[k:].any()  # steps after the K bits are silent
    magnitude = code.abs().to(torch.int64)
    for step in range(k):
        bit = (magnitude >> (k - 1 - step)) & 1
        assert torch.equal(spikes[step].to(torch.int64), bit * torch.sign(code).to(torch.int64)), step
    value = streaming.token_decode(code, theta, timesteps, "binary", bits)
    assert (value - x).abs().max() <= theta.max() / (2 * (2**k - 1)) + 1e-6  # rounding to 2^K - 1 levels
    torch.testing.assert_close(result.output.mean(0), value)


def test_binary_coding_spends_fewer_spikes_than_rate_coding_for_a_finer_code():
    theta = torch.ones(16)
    x = torch.rand(4, 8, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    rate = simulate(_encoder_graph(theta, "rate"), x, 32).spike_counts["enc"]
    binary = simulate(_encoder_graph(theta, "binary", bits=8), x, 32).spike_counts["enc"]
    assert binary < rate / 2


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("scheme", ["rate", "binary"])
@pytest.mark.parametrize("pipeline", ["rate-path", "spike-softmax"])
def test_token_encoded_networks_simulate_exactly_as_converted(family, scheme, pipeline):
    passes = RATE_PATH if pipeline == "rate-path" else PIPELINE_WITH_TOKENS
    ctx = PassContext(options={"timesteps": T, "token_encoding": scheme}, calibration=token_ids(samples=8, seed=3))
    gm, _ = run_passes(FAMILIES[family](), passes, ctx)
    ids = token_ids(samples=2)
    graph = lower_to_nir(gm, ids[:, :2])
    agreement = compare_fx_and_simulator(gm, graph, ids, T)
    assert agreement.identical and "embed_encoder" in agreement.firing_rates, agreement
    readouts = [n for n, node in graph.nodes.items() if type(node).__name__ == "SpikecRateReadout"]
    assert ("embed_readout" in readouts) == (pipeline == "rate-path")  # spike-softmax: the spikes stream on
    assert ctx.stats["token-encode"]["non_spiking"] == ["embed"]
    assert ctx.stats["token-encode"]["encoders"] == ["embed.encoder"]
    parts = spiking_parts(graph)
    assert parts["token_encoding"] == {"scheme": scheme, "encoder": "embed_encoder", "non_spiking": ["embed"],
                                       "bits": 8 if scheme == "binary" else None}


def test_token_encode_after_spike_softmax_also_streams_the_spikes_on():
    """In either order the decoded currents feed the streaming network directly (no readout)."""
    ids = token_ids(samples=2)
    passes = ["fold-norm-affine", "calibrate", "burst-all", "spike-softmax", "token-encode"]
    ctx = PassContext(options={"timesteps": T}, calibration=token_ids(samples=8, seed=3))
    gm, _ = run_passes(FAMILIES["llama"](), passes, ctx)
    assert [n.args[0].target for n in calls_to(gm, streaming.readout)] == [streaming.count_readout_affine]
    assert ctx.stats["token-encode"]["streaming"]
    assert compare_fx_and_simulator(gm, lower_to_nir(gm, ids[:, :2]), ids, T).identical


def test_token_encoding_none_leaves_the_graph_alone_and_unknown_schemes_are_usage_errors():
    gm = FAMILIES["gpt2"]()
    before = len(gm.graph.nodes)
    run_passes(gm, ["token-encode"], PassContext(options={"token_encoding": "none"}))
    assert len(gm.graph.nodes) == before and calls_to(gm, ops.embedding)
    with pytest.raises(UsageError, match="token encoding"):
        run_passes(FAMILIES["gpt2"](), ["token-encode"],
                   PassContext(options={"token_encoding": "poisson"}, calibration=token_ids()))
    with pytest.raises(UsageError, match="token_bits"):
        run_passes(FAMILIES["gpt2"](), ["token-encode"],
                   PassContext(options={"token_encoding": "binary", "token_bits": 40}, calibration=token_ids()))
