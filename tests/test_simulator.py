"""The reference simulator: standard NIR neuron semantics by hand, fan-in, and extension
nodes that agree bit for bit with direct calls of spikec.core.ops."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from spikec.backends import nirio
from spikec.backends.simulator import simulate
from spikec.core import ir, ops
from spikec.core.errors import InputError, NIRFormatError, UnsupportedError, UsageError

torch.manual_seed(0)
RNG = np.random.default_rng(0)


def _f32(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def chain(*nodes: tuple[str, nir.NIRNode], features: int) -> nir.NIRGraph:
    """input -> nodes... -> output."""
    named = {"input": nir.Input(np.array([features])), **dict(nodes), "output": nir.Output(np.array([features]))}
    names = list(named)
    return nir.NIRGraph(nodes=named, edges=list(zip(names[:-1], names[1:])), type_check=False)


def if_node(n: int, threshold: float = 1.0) -> nir.IF:
    return nir.IF(r=np.ones(n, np.float32), v_threshold=np.full(n, threshold, np.float32),
                  v_reset=np.zeros(n, np.float32))


# --- standard NIR neurons ---------------------------------------------------------------


def test_if_with_constant_input_spikes_when_membrane_exceeds_threshold():
    # v: 0.4, 0.8, 1.2 > 1 -> spike, reset to 0; 0.4, 0.8, 1.2 -> spike; 0.4, 0.8
    result = simulate(chain(("if", if_node(1)), features=1), torch.tensor([[0.4]]), 8, record=True)
    expected = torch.tensor([0, 0, 1, 0, 0, 1, 0, 0], dtype=torch.float32).reshape(8, 1, 1)
    assert torch.equal(result.output, expected)
    assert torch.equal(result.spikes["if"], expected)
    assert result.spike_counts == {"if": 2}
    assert result.firing_rates == {"if": 2 / 8}
    assert result.timesteps == 8


def test_if_threshold_is_strict_and_reset_is_to_v_reset():
    node = nir.IF(r=np.ones(1, np.float32), v_threshold=np.ones(1, np.float32), v_reset=np.full(1, 0.5, np.float32))
    out = simulate(chain(("if", node), features=1), torch.tensor([[0.5]]), 5).output.flatten()
    # v: 0.5, 1.0 (not > 1), 1.5 -> spike, v = 0.5; 1.0; 1.5 -> spike
    assert out.tolist() == [0, 0, 1, 0, 1]


def test_lif_matches_a_direct_loop():
    tau, r, leak, thr = np.array([2.0, 4.0], np.float32), np.array([1.0, 2.0], np.float32), \
        np.array([0.0, 0.1], np.float32), np.array([0.5, 1.0], np.float32)
    node = nir.LIF(tau=tau, r=r, v_leak=leak, v_threshold=thr, v_reset=np.zeros(2, np.float32))
    x = torch.tensor([[0.7, 0.45], [0.2, 1.0]])
    out = simulate(chain(("lif", node), features=2), x, 12).output
    t_tau, t_r, t_leak, t_thr = map(torch.from_numpy, (tau, r, leak, thr))
    v = torch.zeros(2, 2)
    for t in range(12):
        v = v + (t_leak - v + t_r * x) / t_tau
        spikes = (v > t_thr).float()
        v = torch.where(spikes.bool(), torch.zeros_like(v), v)
        assert torch.equal(out[t], spikes), t
    assert out.sum() > 0


def test_li_and_integrator_output_their_state():
    li = nir.LI(tau=np.full(1, 2.0, np.float32), r=np.ones(1, np.float32), v_leak=np.zeros(1, np.float32))
    out = simulate(chain(("li", li), features=1), torch.tensor([[1.0]]), 3).output.flatten()
    assert out.tolist() == [0.5, 0.75, 0.875]
    integ = nir.I(r=np.full(1, 2.0, np.float32))
    out = simulate(chain(("i", integ), features=1), torch.tensor([[1.0]]), 3).output.flatten()
    assert out.tolist() == [2.0, 4.0, 6.0]


def test_cuba_lif_updates_synaptic_current_before_membrane():
    node = nir.CubaLIF(tau_syn=np.full(1, 2.0, np.float32), tau_mem=np.full(1, 2.0, np.float32),
                       r=np.ones(1, np.float32), v_leak=np.zeros(1, np.float32),
                       v_threshold=np.full(1, 0.6, np.float32), v_reset=np.zeros(1, np.float32),
                       w_in=np.ones(1, np.float32))
    out = simulate(chain(("cuba", node), features=1), torch.tensor([[1.0]]), 4).output.flatten()
    i_syn = v = 0.0
    expected = []
    for _ in range(4):
        i_syn += (-i_syn + 1.0) / 2.0
        v += (0.0 - v + i_syn) / 2.0
        expected.append(float(v > 0.6))
        v = 0.0 if v > 0.6 else v
    assert out.tolist() == expected and sum(expected) >= 1


def test_time_series_inputs_drive_neurons_step_by_step():
    spikes_in = torch.tensor([1.0, 0.0, 1.0, 1.0]).reshape(4, 1, 1)
    graph = chain(("if", if_node(1, threshold=1.5)), features=1)
    out = simulate(graph, spikes_in, 4, inputs_are_series=True).output.flatten()
    assert out.tolist() == [0, 0, 1, 0]  # v: 1, 1, 2 -> spike, 1


# --- stateless nodes and fan-in ------------------------------------------------------------


def test_affine_on_a_time_series_equals_per_step_matmuls():
    w, b = _f32(5, 3), _f32(5)
    graph = chain(("if", if_node(3, 0.3)), ("affine", nir.Affine(weight=w, bias=b)), features=3)
    x = torch.rand(2, 3)
    result = simulate(graph, x, 6, record=True)
    spikes = result.spikes["if"]
    expected = torch.stack([spikes[t] @ torch.from_numpy(w).T + torch.from_numpy(b) for t in range(6)])
    assert result.output.shape == (6, 2, 5)
    torch.testing.assert_close(result.output, expected, rtol=1e-6, atol=1e-6)


def test_fan_in_sums_incoming_edges_and_broadcasts_real_over_time():
    nodes = {
        "input": nir.Input(np.array([2])),
        "a": nir.Scale(scale=np.array([2.0, 3.0], np.float32)),
        "b": nir.Scale(scale=np.array([-1.0, 0.5], np.float32)),
        "if": if_node(2, 0.5),
        "sum": nir.Output(np.array([2])),
        "mixed": nir.Output(np.array([2])),
    }
    edges = [("input", "a"), ("input", "b"), ("a", "sum"), ("b", "sum"), ("input", "if"), ("if", "mixed"),
             ("input", "mixed")]
    x = torch.tensor([[0.3, 0.4]])
    result = simulate(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), {"input": x}, 3)
    assert torch.equal(result.outputs["sum"], x * torch.tensor([2.0, 3.0]) + x * torch.tensor([-1.0, 0.5]))
    spikes = simulate(chain(("if", if_node(2, 0.5)), features=2), x, 3).output
    assert torch.equal(result.outputs["mixed"], spikes + x)


def test_values_feeding_several_consumers_survive_until_the_last_one_ran():
    w1, w2, w3 = _f32(2, 2), _f32(2, 2), _f32(2, 2)
    zero = np.zeros(2, np.float32)
    nodes = {
        "input": nir.Input(np.array([2])),
        "hub": nir.Affine(weight=w1, bias=zero),
        "left": nir.Affine(weight=w2, bias=zero),
        "right": nir.Affine(weight=w3, bias=zero),
        "join": ir.SpikecAdd(features=2),
        "late": nir.Scale(scale=np.full(2, 2.0, np.float32)),
        "output": nir.Output(np.array([2])),
        "hub_out": nir.Output(np.array([2])),
    }
    edges = [("input", "hub"), ("hub", "left"), ("hub", "right"), ("left", "join"), ("right", "join"),
             ("hub", "join"), ("join", "late"), ("hub", "late"), ("late", "output"), ("hub", "hub_out")]
    x = torch.rand(3, 2)
    out = simulate(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), x, 2).outputs
    lin = lambda v, w: v @ torch.from_numpy(w).T  # noqa: E731
    hub = lin(x, w1)
    join = lin(hub, w2) + lin(hub, w3) + hub
    torch.testing.assert_close(out["output"], (join + hub) * 2.0)
    torch.testing.assert_close(out["hub_out"], hub)


# --- extension nodes, bit for bit -----------------------------------------------------------


def test_signed_if_affine_readout_equals_rate_readout_affine_bit_for_bit():
    d, out_f, t = 6, 4, 8
    thr, w, b = np.abs(_f32(d)) + 0.2, _f32(out_f, d), _f32(out_f)
    graph = chain(
        ("h.0.sif", ir.SpikecSignedIF(threshold=thr, max_spikes=1, signed=True, v_init=0.5)),
        ("h.0.mlp.in", nir.Affine(weight=w, bias=b)),
        ("h.0.mlp.in_readout", ir.SpikecRateReadout(features=out_f)),
        features=d,
    )
    x = torch.randn(2, 3, d)
    result = simulate(graph, x, t, record=True)
    spikes = ops.signed_if(x, torch.from_numpy(thr), t, 1, True, 0.5)
    assert torch.equal(result.spikes["h.0.sif"], spikes)
    assert torch.equal(result.output, ops.rate_readout_affine(spikes, torch.from_numpy(w), torch.from_numpy(b)))
    assert result.spike_counts["h.0.sif"] == int(spikes.abs().sum())


@pytest.mark.parametrize("block", [1, 5, 64, 1 << 30])
def test_readout_from_counts_in_blocks_of_rows_equals_one_float64_product(monkeypatch, block):
    """The weight is widened to float64 a block of rows at a time (no whole float64 copy);
    the float32 values are those of one whole float64 product rounded once, for any block size."""
    w, b = torch.from_numpy(_f32(13, 6)), torch.from_numpy(_f32(13))
    counts = torch.randint(-8, 9, (2, 3, 6))
    whole = (torch.nn.functional.linear(counts.double(), w.double()) / 8 + b.double()).float()
    monkeypatch.setattr(ops, "READOUT_BLOCK", block)
    assert torch.equal(ops.readout_from_counts(counts, w, b, 8), whole)
    half = ops.readout_from_counts(counts, w.half(), b.half(), 8, torch.float32)
    assert half.dtype == torch.float32
    assert torch.equal(half, (torch.nn.functional.linear(counts.double(), w.half().double()) / 8
                              + b.half().double()).float())


def test_rate_readout_affine_differentiates_as_one_float64_product():
    w = torch.from_numpy(_f32(5, 4)).requires_grad_()
    spikes = torch.randint(-2, 3, (3, 2, 4)).float().requires_grad_()
    ops.rate_readout_affine(spikes, w, None).square().sum().backward()
    grads = spikes.grad, w.grad
    spikes.grad = w.grad = None
    expected = (torch.nn.functional.linear(spikes.sum(0, dtype=torch.float64), w.double()) / 3).float()
    expected.square().sum().backward()
    assert torch.equal(grads[0], spikes.grad) and torch.equal(grads[1], w.grad)


def test_readout_of_a_shared_spike_train_is_its_mean():
    graph = chain(("sif", ir.SpikecSignedIF(threshold=np.ones(2, np.float32), max_spikes=2, signed=True,
                                            v_init=0.5)),
                  ("readout", ir.SpikecRateReadout(features=2)), features=2)
    x = torch.tensor([[0.3, -1.7]])
    out = simulate(graph, x, 10).output
    spikes = ops.signed_if(x, torch.ones(2), 10, 2, True, 0.5)
    assert torch.equal(out, spikes.sum(0, dtype=torch.float32) / 10)


def tiny_transformer(d: int = 8, vocab: int = 11, heads: int = 2) -> tuple[nir.NIRGraph, dict]:
    """embedding -> LN -> SIF -> qkv -> readout -> attention -> SIF -> out -> readout -> add
    -> RMSNorm -> SIF -> mlp.in -> readout -> gated silu -> gelu -> add -> output."""
    hd = d // heads
    p = {
        "wte": _f32(vocab, d), "wpe": _f32(16, d, scale=0.1), "ln_w": _f32(d), "ln_b": _f32(d),
        "t_qkv": np.abs(_f32(d)) + 0.5, "w_qkv": _f32(3 * d, d, scale=0.3), "b_qkv": _f32(3 * d),
        "t_out": np.abs(_f32(d)) + 0.5, "w_out": _f32(d, d, scale=0.3), "b_out": _f32(d),
        "rms_w": _f32(d), "t_in": np.abs(_f32(d)) + 0.5, "w_in": _f32(2 * d, d, scale=0.3), "b_in": _f32(2 * d),
    }
    nodes = {
        "input": nir.Input(np.array([5])),
        "embed": ir.SpikecEmbedding(weight=p["wte"], position_weight=p["wpe"]),
        "h.0.ln_1": ir.SpikecLayerNorm(weight=p["ln_w"], bias=p["ln_b"], eps=1e-5),
        "h.0.attn.qkv_if": ir.SpikecSignedIF(threshold=p["t_qkv"], max_spikes=1, signed=True, v_init=0.5),
        "h.0.attn.qkv": nir.Affine(weight=p["w_qkv"], bias=p["b_qkv"]),
        "h.0.attn.qkv_readout": ir.SpikecRateReadout(features=3 * d),
        "h.0.attn.core": ir.SpikecAttention(num_heads=heads, num_kv_heads=heads, head_dim=hd, rope_theta=0.0,
                                            scale=float(hd ** -0.5)),
        "h.0.attn.out_if": ir.SpikecSignedIF(threshold=p["t_out"], max_spikes=2, signed=True, v_init=0.5),
        "h.0.attn.out": nir.Affine(weight=p["w_out"], bias=p["b_out"]),
        "h.0.attn.out_readout": ir.SpikecRateReadout(features=d),
        "h.0.add_attn": ir.SpikecAdd(features=d),
        "h.0.ln_2": ir.SpikecRMSNorm(weight=p["rms_w"], eps=1e-6),
        "h.0.mlp.in_if": ir.SpikecSignedIF(threshold=p["t_in"], max_spikes=1, signed=True, v_init=0.5),
        "h.0.mlp.in": nir.Affine(weight=p["w_in"], bias=p["b_in"]),
        "h.0.mlp.in_readout": ir.SpikecRateReadout(features=2 * d),
        "h.0.mlp.gate": ir.SpikecGatedActivation(activation="silu", features=d),
        "h.0.mlp.act": ir.SpikecActivation(activation="gelu", features=d),
        "h.0.add_mlp": ir.SpikecAdd(features=d),
        "output": nir.Output(np.array([5, d])),
    }
    edges = [
        ("input", "embed"), ("embed", "h.0.ln_1"), ("h.0.ln_1", "h.0.attn.qkv_if"),
        ("h.0.attn.qkv_if", "h.0.attn.qkv"), ("h.0.attn.qkv", "h.0.attn.qkv_readout"),
        ("h.0.attn.qkv_readout", "h.0.attn.core"), ("h.0.attn.core", "h.0.attn.out_if"),
        ("h.0.attn.out_if", "h.0.attn.out"), ("h.0.attn.out", "h.0.attn.out_readout"),
        ("embed", "h.0.add_attn"), ("h.0.attn.out_readout", "h.0.add_attn"),
        ("h.0.add_attn", "h.0.ln_2"), ("h.0.ln_2", "h.0.mlp.in_if"), ("h.0.mlp.in_if", "h.0.mlp.in"),
        ("h.0.mlp.in", "h.0.mlp.in_readout"), ("h.0.mlp.in_readout", "h.0.mlp.gate"),
        ("h.0.mlp.gate", "h.0.mlp.act"), ("h.0.add_attn", "h.0.add_mlp"), ("h.0.mlp.act", "h.0.add_mlp"),
        ("h.0.add_mlp", "output"),
    ]
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": 1.0}, type_check=False)
    return graph, {k: torch.from_numpy(v) for k, v in p.items()}


def direct_transformer(ids: torch.Tensor, p: dict, t: int, heads: int = 2) -> tuple[torch.Tensor, dict]:
    d = p["ln_w"].shape[0]
    spikes = {}
    h = ops.embedding(ids, p["wte"], p["wpe"])
    x = ops.layer_norm(h, p["ln_w"], p["ln_b"], 1e-5)
    spikes["h.0.attn.qkv_if"] = s = ops.signed_if(x, p["t_qkv"], t, 1, True, 0.5)
    x = ops.rate_readout_affine(s, p["w_qkv"], p["b_qkv"])
    x = ops.attention(x, heads, heads, d // heads, 0.0, float((d // heads) ** -0.5))
    spikes["h.0.attn.out_if"] = s = ops.signed_if(x, p["t_out"], t, 2, True, 0.5)
    h = ops.add(h, ops.rate_readout_affine(s, p["w_out"], p["b_out"]))
    x = ops.rms_norm(h, p["rms_w"], 1e-6)
    spikes["h.0.mlp.in_if"] = s = ops.signed_if(x, p["t_in"], t, 1, True, 0.5)
    x = ops.rate_readout_affine(s, p["w_in"], p["b_in"])
    x = ops.activation(ops.gated_activation(x, "silu"), "gelu")
    return ops.add(h, x), spikes


def test_transformer_shaped_graph_equals_direct_ops_bit_for_bit():
    graph, params = tiny_transformer()
    ids = torch.randint(0, 11, (2, 5))
    result = simulate(graph, ids, 6, record=True)
    expected, spikes = direct_transformer(ids, params, 6)
    assert result.output.shape == (2, 5, 8)
    assert torch.equal(result.output, expected)
    assert result.spikes.keys() == spikes.keys()
    for name, s in spikes.items():
        assert torch.equal(result.spikes[name], s), name
        assert result.firing_rates[name] == pytest.approx(float(s.abs().float().mean()))


def test_transformer_graph_read_back_from_file_gives_identical_output(tmp_path):
    graph, _ = tiny_transformer()
    ids = torch.randint(0, 11, (1, 5))
    nirio.write(tmp_path / "t.nir", graph)
    before = simulate(graph, ids, 4)
    after = simulate(nirio.read(tmp_path / "t.nir"), ids, 4)
    assert torch.equal(before.output, after.output)
    assert before.spike_counts == after.spike_counts and before.spikes == {}


def test_embedding_without_positions_and_rope_gqa_attention_match_ops():
    d, heads, kv, hd = 8, 4, 2, 2
    wte = _f32(7, d)
    graph = chain(
        ("embed", ir.SpikecEmbedding(weight=wte, position_weight=np.zeros((0, d), np.float32))),
        ("qkv", nir.Affine(weight=_f32((heads + 2 * kv) * hd, d), bias=np.zeros((heads + 2 * kv) * hd, np.float32))),
        ("core", ir.SpikecAttention(num_heads=heads, num_kv_heads=kv, head_dim=hd, rope_theta=10000.0, scale=0.7)),
        features=d,
    )
    ids = torch.randint(0, 7, (2, 4))
    qkv = ops.affine(ops.embedding(ids, torch.from_numpy(wte)), torch.from_numpy(graph.nodes["qkv"].weight),
                     torch.from_numpy(graph.nodes["qkv"].bias))
    expected = ops.attention(qkv, heads, kv, hd, 10000.0, 0.7)
    assert torch.equal(simulate(graph, ids, 3).output, expected)


# --- errors -------------------------------------------------------------------------------


def test_unknown_node_type_names_node_and_type():
    conv = nir.Conv1d(input_shape=4, weight=_f32(1, 1, 2), stride=1, padding=0, dilation=1, groups=1,
                      bias=np.zeros(1, np.float32))
    with pytest.raises(UnsupportedError, match="'enc.conv'.*'Conv1d'"):
        simulate(chain(("enc.conv", conv), features=4), torch.zeros(1, 1, 4), 2)


def test_delay_and_nested_graphs_are_rejected_clearly():
    with pytest.raises(UnsupportedError, match="Delay"):
        simulate(chain(("d", nir.Delay(delay=np.ones(2))), features=2), torch.zeros(1, 2), 2)
    inner = nir.NIRGraph.from_list(nir.Scale(scale=np.ones(2, np.float32)), type_check=False)
    with pytest.raises(UnsupportedError, match="nested NIRGraph"):
        simulate(chain(("sub", inner), features=2), torch.zeros(1, 2), 2)


def test_bad_inputs_timesteps_and_cycles_are_reported():
    graph = chain(("if", if_node(1)), features=1)
    with pytest.raises(InputError, match="missing"):
        simulate(graph, {"x": torch.zeros(1, 1)}, 2)
    with pytest.raises(UsageError, match="timesteps"):
        simulate(graph, torch.zeros(1, 1), 0)
    with pytest.raises(InputError, match="time series"):
        simulate(graph, torch.zeros(3, 1, 1), 2, inputs_are_series=True)
    graph.edges.append(("if", "if"))
    with pytest.raises(NIRFormatError, match="cycle"):
        simulate(graph, torch.zeros(1, 1), 2)


def test_output_property_needs_a_single_output_and_progress_goes_to_stderr(capsys):
    nodes = {"input": nir.Input(np.array([1])), "o1": nir.Output(np.array([1])), "o2": nir.Output(np.array([1]))}
    graph = nir.NIRGraph(nodes=nodes, edges=[("input", "o1"), ("input", "o2")], type_check=False)
    result = simulate(graph, torch.ones(1, 1), 2, progress=True)
    assert set(result.outputs) == {"o1", "o2"}
    with pytest.raises(UsageError, match="2 outputs"):
        _ = result.output
    captured = capsys.readouterr()
    assert "simulate" in captured.err and captured.out == ""
