"""Spike-softmax mode (SpikeZIP-TF style): ST-BIF neurons, spike-equivalent operators and the
streaming network reproducing the quantized ANN exactly (docs/spike-softmax.md)."""

from __future__ import annotations

import itertools
import math

import nir
import numpy as np
import pytest
import spikec.passes  # noqa: F401  (registers the passes)
import torch
from canonical_models import FAMILIES, calls_to, token_ids
from spikec.backends import nirio
from spikec.backends.simulator import Simulator, engine, simulate
from spikec.backends.simulator import streaming as sim_streaming
from spikec.analysis.spiking_parts import spiking_parts
from spikec.passes.spike_softmax import PIPELINE

from spikec.core import ir, neurons, ops, streaming
from spikec.core.errors import UnsupportedError, UsageError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.core.ir import (
    SpikecSpikeAttention,
    SpikecSTBIF,
    SpikecStreamActivation,
    SpikecStreamGatedActivation,
    SpikecStreamLayerNorm,
    SpikecStreamRMSNorm,
)
from spikec.lower import lower_to_nir
from spikec.verify import compare_fx_and_simulator

T = 8


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _graph(nodes: dict[str, nir.NIRNode], chain: list[str]) -> nir.NIRGraph:
    edges = list(itertools.pairwise(chain))
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _io(n_in: int, n_out: int) -> dict[str, nir.NIRNode]:
    return {"input": nir.Input(input_type={"input": np.array([n_in])}),
            "output": nir.Output(output_type={"output": np.array([n_out])})}


def _stbif_node(theta: torch.Tensor, b: int, signed: bool = True) -> SpikecSTBIF:
    return SpikecSTBIF(threshold=theta.numpy(), max_spikes=b, signed=signed, v_init=0.5)


def _converted(family: str, timesteps: int = T, **options):
    gm = FAMILIES[family]()
    ctx = PassContext(options={"timesteps": timesteps, **options}, calibration=token_ids(samples=8, seed=3))
    gm, _ = run_passes(gm, PIPELINE, ctx)
    return gm, ctx


# ---------------------------------------------------------------------------
# the ST-BIF neuron
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("timesteps,b,signed", [(1, 1, True), (4, 1, True), (7, 8, True), (32, 8, False), (16, 3, True)])
def test_stbif_driven_by_a_constant_current_counts_exactly_like_the_signed_if_quantizer(timesteps, b, signed):
    g = _gen(timesteps)
    theta = torch.tensor([0.5, 1.0, 2.0, 0.25]).repeat(8)
    x = torch.randint(-4 * 64 * b, 4 * 64 * b, (3, 5, 32), generator=g).float() / 64  # dyadic: exact arithmetic
    x[0, 0] = theta * (b + 3)  # far past the range: clipped at B T
    graph = _graph({**_io(32, 32), "n": _stbif_node(theta, b, signed)}, ["input", "n", "output"])
    spikes = simulate(graph, x, timesteps).output
    rate = neurons.signed_if_rate(x, neurons.SignedIFParams(theta, b, signed), timesteps)
    signed_if = neurons.signed_if_encode(x, neurons.SignedIFParams(theta, b, signed), timesteps).sum(0)
    count = spikes.sum(0, dtype=torch.float32)
    assert torch.equal(count, streaming.stbif(x, theta, timesteps, b, signed))
    assert torch.equal(count * theta / timesteps, rate)
    assert torch.equal(count, signed_if.float())
    assert count.abs().max() <= b * timesteps and (signed or count.min() >= 0)


def test_stbif_spikes_follow_the_soft_reset_membrane_with_a_bounded_total():
    """Per-step reference: v += I/theta; s = clamp(floor(v), L - C, BT - C); v -= s; C += s."""
    g = _gen(1)
    theta, b = torch.tensor([1.0, 0.5, 2.0]), 2
    currents = torch.randint(-6 * 32, 6 * 32, (T, 2, 4, 3), generator=g).float() / 32
    currents[:, 0, 0] = torch.tensor([8.0, -9.0, 0.0])  # bursts far above B in one step, then corrections
    graph = _graph({**_io(3, 3), "n": _stbif_node(theta, b)}, ["input", "n", "output"])
    spikes = simulate(graph, currents, T, inputs_are_series=True).output
    v = torch.full_like(currents[0], 0.5)
    total = torch.zeros_like(v)
    for t in range(T):
        v = v + currents[t] / theta
        s = torch.minimum(torch.maximum(torch.floor(v), -b * T - total), b * T - total)
        v, total = v - s, total + s
        assert torch.equal(spikes[t].float(), s), f"step {t}"
    assert spikes.float().abs().max() > b  # a burst beyond B: only the total is bounded
    assert torch.equal(total, torch.clamp(torch.floor(currents.sum(0) / theta + 0.5), -b * T, b * T))


# ---------------------------------------------------------------------------
# spike-equivalent operators
# ---------------------------------------------------------------------------

OPERATORS = {
    "layer_norm": (lambda d: SpikecStreamLayerNorm(weight=np.linspace(0.5, 1.5, d, dtype=np.float32),
                                                   bias=np.linspace(-0.2, 0.2, d, dtype=np.float32), eps=1e-5),
                   lambda x, d: ops.layer_norm(x, torch.linspace(0.5, 1.5, d), torch.linspace(-0.2, 0.2, d), 1e-5), 1),
    "rms_norm": (lambda d: SpikecStreamRMSNorm(weight=np.linspace(0.5, 1.5, d, dtype=np.float32), eps=1e-6),
                 lambda x, d: ops.rms_norm(x, torch.linspace(0.5, 1.5, d), 1e-6), 1),
    "gelu": (lambda d: SpikecStreamActivation(activation="gelu_tanh", features=d),
             lambda x, d: ops.activation(x, "gelu_tanh"), 1),
    "silu": (lambda d: SpikecStreamActivation(activation="silu", features=d), lambda x, d: ops.activation(x, "silu"), 1),
    "gated_silu": (lambda d: SpikecStreamGatedActivation(activation="silu", features=d),
                   lambda x, d: ops.gated_activation(x, "silu"), 2),
}


@pytest.mark.parametrize("op", list(OPERATORS))
def test_every_spike_equivalent_operator_emits_f_of_the_accumulated_input(op):
    """o_t = t f(mean of x_1..x_t) - (t-1) f(mean of x_1..x_{t-1}): the outputs' mean over the
    first t steps is f of the inputs' mean over them, at every t, and at T the window value."""
    make, f, widen = OPERATORS[op]
    d = 12
    x = torch.randn(T, 2, 5, widen * d, generator=_gen(2)) * 2
    graph = _graph({**_io(widen * d, d), "op": make(d)}, ["input", "op", "output"])
    out = simulate(graph, x, T, inputs_are_series=True).output
    acc, previous = torch.zeros_like(x[0], dtype=torch.float64), torch.zeros(2, 5, d, dtype=torch.float64)
    for t in range(1, T + 1):
        acc += x[t - 1].double()
        now = f((acc / t).float(), d).double() * t
        torch.testing.assert_close(out[t - 1].double(), now - previous, rtol=1e-5, atol=1e-5)
        previous = now
    torch.testing.assert_close(out.mean(0), f(x.mean(0), d), rtol=1e-5, atol=1e-5)


def test_an_operator_fed_a_real_value_gives_that_real_value_through():
    x = torch.randn(2, 3, 8, generator=_gen(3))
    graph = _graph({**_io(8, 8), "op": SpikecStreamActivation(activation="silu", features=8)}, ["input", "op", "output"])
    assert torch.equal(simulate(graph, x, T).output, ops.activation(x, "silu"))


def _attention_case(heads: int, kv_heads: int, rope: float, positions: int = 11, d: int = 4):
    g = _gen(heads + kv_heads)
    features = (heads + 2 * kv_heads) * d
    theta = torch.rand(features, generator=g) + 0.5
    spikes = torch.randint(-2, 3, (T, 1, positions, features), generator=g).to(torch.int8)
    node = SpikecSpikeAttention(num_heads=heads, num_kv_heads=kv_heads, head_dim=d, rope_theta=rope,
                                scale=1 / math.sqrt(d), input_scale=theta.numpy(),
                                prob_threshold=np.full(heads, 1 / 16, np.float32), prob_max_spikes=16,
                                prob_v_init=0.5)
    args = (theta, T, heads, kv_heads, d, rope, 1 / math.sqrt(d), torch.full((heads,), 1 / 16), 16, 0.5)
    return spikes, node, args


@pytest.mark.parametrize("heads,kv_heads,rope", [(2, 2, 0.0), (4, 2, 10000.0)])
def test_spike_attention_equals_the_quantized_attention_on_random_spikes(heads, kv_heads, rope, monkeypatch):
    monkeypatch.setattr(streaming, "QUERY_CHUNK", 4)  # several chunks, fx and simulator alike
    spikes, node, args = _attention_case(heads, kv_heads, rope)
    graph = _graph({**_io(spikes.shape[-1], heads * 4), "att": node, "r": ir.SpikecRateReadout(
        features=heads * 4)}, ["input", "att", "r", "output"])
    result = simulate(graph, spikes, T, inputs_are_series=True, record=True)
    counts = spikes.sum(0, dtype=torch.float32)
    assert torch.equal(result.output, streaming.spike_attention(counts, *args))
    assert torch.equal(result.spikes["att_probs"].sum(0, dtype=torch.float32),
                       streaming.attention_probability_counts(counts, *args))
    # against a plain, unchunked reference of the quantized attention
    theta, _, h, kv, d, rope_theta, scale, p_theta, p_b, _ = args
    q, k, v = (counts * theta / T).split([h * d, kv * d, kv * d], -1)
    q, k, v = (t.view(1, -1, n, d).transpose(1, 2) for t, n in ((q, h), (k, kv), (v, kv)))
    if rope_theta:
        cos, sin = ops.rotary_cos_sin(q.shape[2], d, rope_theta)
        q, k = (t * cos + ops.rotate_half(t) * sin for t in (q, k))
    k, v = (t.repeat_interleave(h // kv, 1) for t in (k, v))
    p = torch.softmax((q @ k.transpose(-1, -2) * scale).masked_fill(torch.ones(11, 11).triu(1).bool(), -math.inf), -1)
    p_hat = torch.clamp(torch.floor(T * p / p_theta[0] + 0.5), 0, p_b * T) * p_theta[0] / T
    torch.testing.assert_close(result.output, (p_hat @ v).transpose(1, 2).reshape(1, 11, h * d))


def test_spike_attention_is_causal_later_spikes_never_reach_earlier_positions():
    spikes, node, _ = _attention_case(4, 2, 10000.0)
    graph = _graph({**_io(spikes.shape[-1], 16), "att": node}, ["input", "att", "output"])
    changed = spikes.clone()
    changed[:, :, 7:] = torch.randint(-2, 3, changed[:, :, 7:].shape, generator=_gen(9)).to(torch.int8)
    a = simulate(graph, spikes, T, inputs_are_series=True, record=True)
    b = simulate(graph, changed, T, inputs_are_series=True, record=True)
    assert torch.equal(a.output[:, :, :7], b.output[:, :, :7])
    assert torch.equal(a.spikes["att_probs"][:, :, :7], b.spikes["att_probs"][:, :, :7])
    assert not torch.equal(a.output, b.output)


# ---------------------------------------------------------------------------
# the converted network
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_spike_softmax_drives_every_weight_layer_and_attention_product_by_spikes(family):
    gm, ctx = _converted(family)
    for fn in (ops.affine, ops.attention, ops.layer_norm, ops.rms_norm, ops.activation, ops.gated_activation,
               ops.signed_if):
        assert not calls_to(gm, fn), fn.__name__
    for node in calls_to(gm, streaming.count_affine) + calls_to(gm, streaming.count_readout_affine) + calls_to(
            gm, streaming.spike_attention):
        assert node.args[0].target is streaming.stbif
    graph = lower_to_nir(gm, token_ids()[:, :2])
    parts = spiking_parts(graph)
    assert parts["attention"] == "spike-softmax"
    assert parts["weight_layers"] == parts["spike_driven_weight_layers"] == 9
    assert parts["layers"]["h.0"]["neurons"] == ["h_0_attn_qkv_neuron", "h_0_attn_core_neuron",
                                                "h_0_attn_core_probs", "h_0_attn_out_neuron",
                                                "h_0_mlp_in_neuron", "h_0_mlp_out_neuron"]
    assert "real" not in parts["layers"]["h.0"]
    assert ctx.stats["spike-softmax"]["attention"] == "spike-softmax"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_streaming_simulation_reproduces_the_quantized_network_on_every_layer(family):
    """Spike counts of every neuron layer equal exactly, the logits too (compile's check)."""
    gm, _ = _converted(family)
    ids = token_ids(samples=2)
    agreement = compare_fx_and_simulator(gm, lower_to_nir(gm, ids[:, :2]), ids, T)
    assert agreement.layers == 13 and agreement.identical, agreement


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_every_layers_window_value_in_the_simulation_is_the_quantized_networks(family, monkeypatch):
    """The running mean at T of every node's output (what the steps sum to, over T) equals the
    fx graph's value of that node."""
    gm, _ = _converted(family)
    ids = token_ids(samples=2)
    graph = lower_to_nir(gm, ids[:, :2])
    seen: dict[str, torch.Tensor] = {}

    def recording(kernel):
        def run(ctx, name, node, x):
            value = kernel(ctx, name, node, x)
            if isinstance(value, sim_streaming.Stream) or not value.series:
                seen[name] = value.data[-1] if value.series else value.data
            return value
        return run

    monkeypatch.setattr(engine, "KERNELS", {k: recording(v) for k, v in engine.KERNELS.items()})
    simulate(graph, ids, T)
    fx_values: dict[str, torch.Tensor] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function":
                fx_values[str(n.meta.get("spikec_name", n.name)).replace(".", "_")] = out
            return out

    Recorder(gm).run(ids)
    compared = [n for n in seen if n in fx_values and not n.endswith("_neuron")]
    assert len(compared) >= 15
    for name in compared:
        assert torch.equal(seen[name], fx_values[name]), name


def test_a_network_compiled_at_one_T_simulates_at_others_and_fast_equals_reference():
    gm, _ = _converted("llama", timesteps=4)
    ids = token_ids(samples=1)
    graph = lower_to_nir(gm, ids[:, :2])
    ann = FAMILIES["llama"]()(ids)
    errors = []
    for t in (4, 16, 64):
        fast = Simulator(graph).run(ids, t)
        reference = Simulator(graph, mode="reference").run(ids, t)
        assert torch.equal(fast.output, reference.output) and fast.spike_counts == reference.spike_counts
        errors.append(float((fast.output - ann).abs().mean()))
    assert errors[2] < errors[0]


def test_the_nir_file_keeps_the_streaming_network(tmp_path):
    gm, _ = _converted("gpt2")
    ids = token_ids(samples=1)
    graph = lower_to_nir(gm, ids[:, :2])
    nirio.write(tmp_path / "m.nir", graph)
    back = nirio.read(tmp_path / "m.nir")
    assert {type(n).__name__ for n in back.nodes.values()} >= {"SpikecSTBIF", "SpikecSpikeAttention",
                                                               "SpikecStreamLayerNorm", "SpikecStreamAdd"}
    a, b = simulate(graph, ids, T), simulate(back, ids, T)
    assert torch.equal(a.output, b.output) and a.spike_counts == b.spike_counts


def test_without_calibration_the_pass_says_what_to_run_first():
    with pytest.raises(UsageError, match="calibrate"):
        run_passes(FAMILIES["gpt2"](), ["spike-softmax"], PassContext(options={"timesteps": T}))


def test_non_causal_attention_is_unsupported():
    gm = FAMILIES["gpt2"]()
    for node in calls_to(gm, ops.attention):
        node.kwargs = {**node.kwargs, "causal": False}
    ctx = PassContext(options={"timesteps": T}, calibration=token_ids(samples=4, seed=3))
    with pytest.raises(UnsupportedError, match="causal"):
        run_passes(gm, PIPELINE, ctx)


def test_compile_reports_the_mode_the_spiking_parts_and_an_exact_simulator_check(tmp_path):
    from spikec.passes.spike_softmax import PIPELINE_WITH_TOKENS

    from spikec.compiler import CompileOptions, compile_model
    from spikec.evaluate import evaluate, load_compiled

    tiny = {"num_hidden_layers": "2", "hidden_size": "64", "num_attention_heads": "4", "num_key_value_heads": "2",
            "intermediate_size": "128"}
    report = compile_model(CompileOptions(
        model="llama", output=str(tmp_path / "m"), timesteps=T, calib_samples=2, seq_len=32, config_overrides=tiny,
        passes=PIPELINE_WITH_TOKENS, options={"token_encoding": "binary"}))
    check = report["simulator_check"]
    assert check["identical_layers"] == check["neuron_layers"] == 14 and check["logits_max_abs_diff"] == 0.0
    assert report["attention"] == "spike-softmax"
    assert report["token_encoding"]["scheme"] == "binary" and report["token_encoding"]["non_spiking"] == ["embed"]
    parts = report["spiking_parts"]
    assert parts["weight_layers"] == parts["spike_driven_weight_layers"] == 9
    assert {"neurons", "spike_driven", "spike_equivalent", "junction"} == set(parts["layers"]["h.1"])
    assert (tmp_path / "m" / "report.html").is_file()
    (row,) = evaluate(load_compiled(tmp_path / "m"), tokens=40, timesteps=[T], progress=False)
    assert math.isfinite(row["ppl_ratio"]) and row["spikes_per_neuron_step"] > 0
    # energy: the spike-equivalent attention cores are counted from their spike products, the
    # token encoder's synapses as accumulates, and nothing is left uncounted
    from spikec.energy import energy_on_text

    est = energy_on_text(tmp_path / "m", tokens=32, progress=False)
    kinds = {l["kind"] for l in est["layers"]}
    assert "uncounted" not in kinds and {"attention", "decode", "neurons"} <= kinds
    cores = [l for l in est["layers"] if l["kind"] == "attention"]
    assert len(cores) == 2 and all(l["snn"]["synops"] > 0 and l["snn"]["macs"] == 0 for l in cores)
    assert all(l["attention"] for l in est["layers"] if l["name"].endswith("attn_core_neuron"))
