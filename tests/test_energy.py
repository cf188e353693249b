"""Operation counting and energy models on hand-computable graphs: known spikes give
known operation counts, and known counts give known picojoules."""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest
import torch

from spikec.analysis.counts import combine_results, count_operations
from spikec.analysis.energy_models import EnergyModel, builtin_model, load_model_file, resolve_model
from spikec.analysis.estimate import estimate
from spikec.analysis.formatting import format_estimate
from spikec.analysis.operations import OPS_PER_ELEMENT, OpCounts, OperationCounts
from spikec.backends.simulator import simulate
from spikec.core import ir
from spikec.core.errors import InputError, UsageError

RNG = np.random.default_rng(0)


def _f32(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def neuron(n: int, threshold: float = 1.0, max_spikes: int = 1) -> ir.SpikecSignedIF:
    return ir.SpikecSignedIF(threshold=np.full(n, threshold, np.float32), max_spikes=max_spikes, signed=True,
                             v_init=0.5)


def affine(n_in: int, n_out: int) -> nir.Affine:
    return nir.Affine(weight=_f32(n_out, n_in), bias=_f32(n_out))


def spiking_affine_graph(n_in: int = 2, n_out: int = 3, max_spikes: int = 1) -> nir.NIRGraph:
    """input (real current) -> SignedIF -> Affine -> RateReadout -> output."""
    nodes = {"input": nir.Input(np.array([n_in])), "fc_neuron": neuron(n_in, max_spikes=max_spikes),
             "fc": affine(n_in, n_out), "fc_readout": ir.SpikecRateReadout(features=n_out),
             "output": nir.Output(np.array([n_out]))}
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False)


def tiny_transformer(d: int = 8, heads: int = 2, vocab: int = 11, hidden: int = 16, blocks: int = 1) -> nir.NIRGraph:
    """A one-block GPT-2-like spiking network named as spikec's lowering names it."""
    nodes: dict[str, nir.NIRNode] = {
        "input": nir.Input(np.array([1])),
        "embed": ir.SpikecEmbedding(weight=_f32(vocab, d, scale=1.0), position_weight=_f32(32, d)),
    }
    edges: list[tuple[str, str]] = [("input", "embed")]
    x = "embed"

    def spiking(name: str, src: str, n_in: int, n_out: int) -> str:
        nodes[f"{name}_neuron"] = neuron(n_in, threshold=1.5)
        nodes[name] = affine(n_in, n_out)
        nodes[f"{name}_readout"] = ir.SpikecRateReadout(features=n_out)
        edges.extend([(src, f"{name}_neuron"), (f"{name}_neuron", name), (name, f"{name}_readout")])
        return f"{name}_readout"

    for b in range(blocks):
        p = f"h_{b}_"
        nodes[p + "ln_1"] = ir.SpikecLayerNorm(weight=np.ones(d, np.float32), bias=np.zeros(d, np.float32), eps=1e-5)
        edges.append((x, p + "ln_1"))
        qkv = spiking(p + "attn_qkv", p + "ln_1", d, 3 * d)
        nodes[p + "attn_core"] = ir.SpikecAttention(num_heads=heads, num_kv_heads=heads, head_dim=d // heads,
                                                   rope_theta=0.0, scale=(d // heads) ** -0.5)
        edges.append((qkv, p + "attn_core"))
        out = spiking(p + "attn_out", p + "attn_core", d, d)
        nodes[p + "add_attn"] = ir.SpikecAdd(features=d)
        edges.extend([(out, p + "add_attn"), (x, p + "add_attn")])
        nodes[p + "ln_2"] = ir.SpikecLayerNorm(weight=np.ones(d, np.float32), bias=np.zeros(d, np.float32), eps=1e-5)
        edges.append((p + "add_attn", p + "ln_2"))
        up = spiking(p + "mlp_in", p + "ln_2", d, hidden)
        nodes[p + "mlp_act"] = ir.SpikecActivation(activation="gelu", features=hidden)
        edges.append((up, p + "mlp_act"))
        down = spiking(p + "mlp_out", p + "mlp_act", hidden, d)
        nodes[p + "add_mlp"] = ir.SpikecAdd(features=d)
        edges.extend([(p + "add_attn", p + "add_mlp"), (down, p + "add_mlp")])
        x = p + "add_mlp"
    nodes["ln_f"] = ir.SpikecLayerNorm(weight=np.ones(d, np.float32), bias=np.zeros(d, np.float32), eps=1e-5)
    edges.append((x, "ln_f"))
    head = spiking("lm_head", "ln_f", d, vocab)
    nodes["output"] = nir.Output(np.array([vocab]))
    edges.append((head, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"timesteps": 4}, type_check=False)


def by_name(counts: OperationCounts, name: str):
    (layer,) = [l for l in counts.layers if l.name == name]
    return layer


# --- counting ----------------------------------------------------------------------------


def test_spike_driven_affine_counts_input_spikes_times_fan_out():
    # T=4, theta=1, v_init=1/2: count = clip(floor(4x + 1/2), -4, 4) -> 2, -1, 4, 0 (|.| = 7)
    x = torch.tensor([[[0.5, -0.25], [1.0, 0.0]]])
    result = simulate(spiking_affine_graph(), x, 4)
    assert result.spike_counts == {"fc_neuron": 7}
    counts = count_operations(spiking_affine_graph(), result, positions=2)
    layer = by_name(counts, "fc")
    assert layer.kind == "affine" and layer.nodes == ("fc_neuron", "fc", "fc_readout")
    assert layer.ann == OpCounts(macs=6, adds=3, weight_reads=6 + 3, activation_accesses=2 + 3)
    assert layer.snn.synops == 7 * 3 / 2  # per token: 2 tokens
    assert layer.snn.spikes == 7 / 2
    assert layer.snn.neuron_updates == 2 * 4
    assert layer.snn.macs == 0
    assert layer.snn.ops == OPS_PER_ELEMENT["readout"] * 3 and layer.snn.adds == 3  # readout: 1/T and bias
    assert layer.neurons == 2
    assert layer.firing_rate == 7 / (2 * 2 * 4)
    assert [l.name for l in counts.layers] == ["fc"]


def test_graded_spikes_count_by_value():
    # B=2, T=2, x=1.5: v 0.5+1.5=2 -> spike 2; v 0+1.5 -> spike 1: three unit events
    result = simulate(spiking_affine_graph(1, 5, max_spikes=2), torch.tensor([[[1.5]]]), 2, record=True)
    assert result.spikes["fc_neuron"].flatten().tolist() == [2, 1]
    layer = by_name(count_operations(spiking_affine_graph(1, 5, max_spikes=2), result, positions=1), "fc")
    assert layer.snn.synops == 3 * 5
    assert layer.snn.spikes == 3


def test_silent_neurons_cost_only_their_updates():
    graph = spiking_affine_graph(4, 3)
    result = simulate(graph, torch.zeros(1, 5, 4), 8)
    layer = by_name(count_operations(graph, result, positions=5), "fc")
    assert layer.snn.synops == 0 and layer.snn.spikes == 0
    assert layer.snn.neuron_updates == 4 * 8
    assert layer.firing_rate == 0.0


def test_causal_attention_products_are_counted_per_head_as_macs_in_both_networks():
    h, d, p = 2, 4, 3
    nodes = {"input": nir.Input(np.array([3 * h * d])),
             "core": ir.SpikecAttention(num_heads=h, num_kv_heads=h, head_dim=d, rope_theta=0.0, scale=0.5),
             "output": nir.Output(np.array([h * d]))}
    graph = nir.NIRGraph(nodes=nodes, edges=[("input", "core"), ("core", "output")], type_check=False)
    result = simulate(graph, torch.randn(2, p, 3 * h * d), 4)
    layer = by_name(count_operations(graph, result, positions=p, sequences=2), "core")
    pairs = p * (p + 1) / 2  # 6 causal query-key pairs per head and sequence
    assert layer.kind == "attention" and layer.attention
    assert layer.ann.macs == 2 * h * d * pairs / p  # q.k and p.v, per token
    assert layer.ann.ops == OPS_PER_ELEMENT["softmax"] * h * pairs / p
    assert layer.snn == layer.ann  # real-valued: the same work in the SNN


def test_rotary_attention_adds_rotation_ops():
    kw = dict(num_heads=4, num_kv_heads=2, head_dim=8, scale=0.3)
    plain = count_operations(_single(ir.SpikecAttention(rope_theta=0.0, **kw), 64, 32), _no_spikes(), 5)
    rotary = count_operations(_single(ir.SpikecAttention(rope_theta=1e4, **kw), 64, 32), _no_spikes(), 5)
    extra = rotary.layers[0].ann.ops - plain.layers[0].ann.ops
    assert extra == OPS_PER_ELEMENT["rotary"] * (4 + 2) * 8  # per token: q heads and k heads rotated


def _single(node: nir.NIRNode, n_in: int, n_out: int) -> nir.NIRGraph:
    nodes = {"input": nir.Input(np.array([n_in])), "op": node, "output": nir.Output(np.array([n_out]))}
    return nir.NIRGraph(nodes=nodes, edges=[("input", "op"), ("op", "output")], type_check=False)


def _no_spikes(t: int = 4):
    return combine_results([simulate(_single(ir.SpikecAdd(features=1), 1, 1), torch.zeros(1, 1, 1), t)])


def test_real_valued_ops_cost_the_same_in_both_networks_and_t_times_on_a_spike_train():
    d = 6
    ln = lambda: ir.SpikecLayerNorm(weight=np.ones(d, np.float32), bias=np.zeros(d, np.float32), eps=1e-5)  # noqa: E731
    nodes = {"input": nir.Input(np.array([d])), "pre": ln(), "n": neuron(d), "post": ln(),
             "output": nir.Output(np.array([d]))}
    names = list(nodes)
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False)
    result = simulate(graph, torch.randn(1, 2, d), 4)
    counts = count_operations(graph, result, positions=2)
    pre, post, n = by_name(counts, "pre"), by_name(counts, "post"), by_name(counts, "n")
    assert pre.ann.ops == OPS_PER_ELEMENT["layer_norm"] * d and pre.snn == pre.ann
    assert post.snn == post.ann.scaled(4)  # a LayerNorm fed a spike train runs at every step
    assert n.kind == "neurons" and n.ann == OpCounts() and n.snn.neuron_updates == d * 4


def test_embedding_is_a_lookup_without_macs_and_residual_adds_are_additions():
    graph = tiny_transformer()
    ids = torch.tensor([[1, 2, 3, 4]])
    counts = count_operations(graph, simulate(graph, ids, 4), positions=4)
    embed, add = by_name(counts, "embed"), by_name(counts, "h_0_add_attn")
    assert embed.ann.macs == 0 and embed.ann.weight_reads == 2 * 8  # token row and position row
    assert embed.ann.adds == 8  # learned positions added
    assert add.kind == "residual" and add.ann == OpCounts(adds=8, activation_accesses=3 * 8)


def test_attention_blocks_are_qkv_core_and_output_projection_with_their_neurons():
    graph = tiny_transformer(blocks=2)
    counts = count_operations(graph, simulate(graph, torch.tensor([[1, 2, 3]]), 4), positions=3)
    marked = {l.name for l in counts.layers if l.attention}
    assert marked == {f"h_{b}_{n}" for b in range(2) for n in ("attn_qkv", "attn_core", "attn_out")}
    assert by_name(counts, "h_1_attn_qkv").nodes == ("h_1_attn_qkv_neuron", "h_1_attn_qkv", "h_1_attn_qkv_readout")
    assert {l.block for l in counts.layers} == {"embed", "h.0", "h.1", "ln_f", "lm_head"}
    att = counts.total("ann", attention_only=True)
    assert att.macs == sum(by_name(counts, f"h_{b}_{n}").ann.macs for b in range(2)
                           for n in ("attn_qkv", "attn_core", "attn_out"))


def test_every_spiking_layer_matches_the_simulators_spike_counts():
    graph = tiny_transformer()
    ids = torch.tensor([[1, 5, 7, 2, 9]])
    result = simulate(graph, ids, 6)
    counts = count_operations(graph, result, positions=5)
    assert sum(l.snn.spikes for l in counts.layers) * 5 == pytest.approx(sum(result.spike_counts.values()))
    for layer in counts.layers:
        if layer.neurons:
            (neuron_name,) = [m for m in layer.nodes if m.endswith("_neuron")]
            assert layer.firing_rate == pytest.approx(result.firing_rates[neuron_name])


def test_combining_runs_sums_spike_counts_and_counts_per_token():
    graph = tiny_transformer()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    parts = [simulate(graph, ids[i : i + 1], 4) for i in range(2)]
    both = combine_results(parts)
    assert both.spike_counts == {k: parts[0].spike_counts[k] + parts[1].spike_counts[k] for k in parts[0].spike_counts}
    counts = count_operations(graph, both, positions=3, sequences=2)
    assert counts.workload.tokens == 6
    layer = by_name(counts, "lm_head")
    assert layer.snn.synops == both.spike_counts["lm_head_neuron"] * 11 / 6
    with pytest.raises(UsageError):
        combine_results([parts[0], simulate(graph, ids[:1], 8)])


def test_counts_survive_a_json_round_trip():
    graph = tiny_transformer()
    counts = count_operations(graph, simulate(graph, torch.tensor([[1, 2]]), 4), positions=2)
    again = OperationCounts.from_dict(json.loads(json.dumps(counts.to_dict())))
    assert again == counts
    with pytest.raises(InputError):
        OperationCounts.from_dict({"layers": [{"name": "x"}], "workload": {}})


# --- energy models ----------------------------------------------------------------------


def test_builtin_models_hold_the_published_constants():
    m = builtin_model("45nm")
    assert (m.mac_pj, m.add_pj, m.synop_pj) == (4.6, 0.9, 0.9) and m.weight_read_pj == 0
    assert (builtin_model("45nm", "fp16").mac_pj, builtin_model("45nm", "fp16").synop_pj) == (1.5, 0.4)
    assert (builtin_model("45nm", "int8").mac_pj, builtin_model("45nm", "int8").synop_pj) == (0.23, 0.03)
    mem = builtin_model("45nm-memory")
    assert mem.weight_read_pj == pytest.approx(5.0) and mem.state_access_pj == pytest.approx(5.0)
    loihi = builtin_model("loihi")
    assert (loihi.synop_pj, loihi.neuron_update_pj, loihi.spike_pj, loihi.mac_pj) == (23.6, 81.0, 1.7, 4.6)
    assert all(builtin_model(n).sources for n in ("45nm", "45nm-memory", "loihi"))
    with pytest.raises(UsageError):
        builtin_model("28nm")
    with pytest.raises(UsageError):
        builtin_model("45nm", "bf16")


def test_energy_of_known_counts():
    c = OpCounts(macs=10, ops=2, adds=3, synops=100, neuron_updates=7, spikes=5, weight_reads=4, state_accesses=6,
                 activation_accesses=8)
    assert builtin_model("45nm").energy(c) == pytest.approx(12 * 4.6 + 3 * 0.9 + 100 * 0.9 + 7 * 1.8)
    assert builtin_model("loihi").energy(c) == pytest.approx(12 * 4.6 + 3 * 0.9 + 100 * 23.6 + 7 * 81 + 5 * 1.7)
    assert builtin_model("45nm-memory").energy(c) == pytest.approx(
        12 * 4.6 + 3 * 0.9 + 100 * 0.9 + 7 * 1.8 + (4 + 6 + 8) * 32 * 10 / 64)


def test_estimate_of_the_hand_graph_and_its_reduction():
    x = torch.tensor([[[0.5, -0.25], [1.0, 0.0]]])
    graph = spiking_affine_graph()
    counts = count_operations(graph, simulate(graph, x, 4), positions=2)
    est = estimate(counts, builtin_model("45nm"))
    ann = 6 * 4.6 + 3 * 0.9
    snn = 10.5 * 0.9 + 8 * 1.8 + 3 * 4.6 + 3 * 0.9
    assert est["ann_pj_per_token"] == pytest.approx(ann)
    assert est["snn_pj_per_token"] == pytest.approx(snn)
    assert est["reduction"] == pytest.approx(1 - snn / ann)
    assert est["attention_reduction"] is None  # no attention in this graph
    assert est["spikes_per_neuron_per_window"] == pytest.approx(7 / 4)
    assert {"ann_pj_per_token", "snn_pj_per_token", "reduction", "attention_reduction", "layers"} <= set(est)
    json.dumps(est)  # JSON-friendly


def test_attention_reduction_covers_only_the_attention_blocks():
    graph = tiny_transformer()
    counts = count_operations(graph, simulate(graph, torch.tensor([[3, 1, 4, 1, 5]]), 4), positions=5)
    model = builtin_model("45nm")
    est = estimate(counts, model)
    att = [l for l in counts.layers if l.attention]
    ann = sum(model.energy(l.ann) for l in att)
    snn = sum(model.energy(l.snn) for l in att)
    assert est["attention_reduction"] == pytest.approx(1 - snn / ann)
    assert sum(b["ann_pj"] for b in est["blocks"]) == pytest.approx(est["ann_pj_per_token"])
    text = format_estimate(est)
    assert "total" in text and "attention" in text and "h.0" in text
    assert "h_0_mlp_in" in format_estimate(est, per_op=True)


def test_user_constants_from_toml_and_json_override_a_base(tmp_path):
    toml = tmp_path / "chip.toml"
    toml.write_text('base = "loihi"\nname = "chip"\nsynop_pj = 2.5\nsources = ["datasheet p. 3"]\n')
    m = load_model_file(toml)
    assert (m.name, m.synop_pj, m.neuron_update_pj) == ("chip", 2.5, 81.0)
    assert m.sources[0] == "datasheet p. 3"
    js = tmp_path / "mem.json"
    js.write_text(json.dumps({"weight_read_pj": 1, "state_access_pj": 0.5}))
    m = resolve_model(str(js))
    assert isinstance(m, EnergyModel) and (m.mac_pj, m.weight_read_pj, m.state_access_pj) == (4.6, 1.0, 0.5)


@pytest.mark.parametrize("name, text, complaint", [
    ("bad.toml", "mac_pj = ", "not valid TOML"),
    ("bad.json", "{mac_pj: 1}", "not valid JSON"),
    ("list.json", "[1, 2]", "table of constants"),
    ("unknown.toml", "mac_pJ = 1.0", "unknown keys"),
    ("negative.toml", "mac_pj = -1.0", "non-negative"),
    ("text.toml", 'mac_pj = "4.6"', "non-negative"),
    ("base.toml", 'base = "tpu"', "unknown base"),
])
def test_bad_constant_files_raise_input_errors_that_say_what_is_wrong(tmp_path, name, text, complaint):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=complaint):
        load_model_file(path)


def test_missing_constant_file_and_unknown_model_names():
    with pytest.raises(InputError, match="does not exist"):
        resolve_model("/nonexistent/model.toml")
    with pytest.raises(UsageError, match="45nm-memory"):
        resolve_model("tpu")


# --- spiking attention -------------------------------------------------------------------


def _ssa_graph(signed: bool = False, map_neurons: bool = False) -> nir.NIRGraph:
    """input q|k|v currents (one head, D=1) -> SpikecSSA (thresholds 1, no rotary) -> output."""
    from spikec.core.ir import SpikecSSA

    one = np.ones(1, np.float32)
    maps = {"map_threshold": one, "map_bias": np.zeros(1, np.float32)} if map_neurons else {}
    core = SpikecSSA(num_heads=1, num_kv_heads=1, head_dim=1, rope_theta=0.0, q_threshold=one, k_threshold=one,
                     v_threshold=one, scale=one, o_threshold=one, signed=signed, tau=0.0, normalize=True,
                     decay=np.ones(1, np.float32), **maps)
    return _single(core, 3, 1)


def test_ssa_spike_products_are_synaptic_operations_counted_by_the_simulator():
    # T=1, thresholds 1, v_init 1/2: a current of 1 spikes, 0 does not.
    # positions (q, k, v): (1, 1, 1), (1, 0, 1) -> Q = [1, 1], K = [1, 0], V = [1, 1]
    # A = tril(Q K^T) = [[1, 0], [1, 0]]: Q K^T coincidences 1 + 1 = 2; non-zero entries 2;
    # A V: V_0 reaches the 2 queries of column 0, V_1 none (column 1 is zero) -> 2.
    graph = _ssa_graph()
    x = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]])
    result = simulate(graph, x, 1)
    assert result.operations["op"] == {"q_spikes": 2, "k_spikes": 1, "v_spikes": 2, "qk_synops": 2,
                                       "a_nonzero": 2, "av_synops": 2}
    layer = by_name(count_operations(graph, result, positions=2), "op")
    assert layer.kind == "attention" and layer.attention
    assert layer.snn.synops == (2 + 2) / 2  # per token
    assert layer.snn.macs == 0
    assert layer.snn.neuron_updates == (3 + 1) * 1  # q, k, v and output neurons, one step
    assert layer.snn.spikes == (2 + 1 + 2 + result.spike_counts["op"]) / 2
    assert layer.snn.ops == 2 * 1  # normalise and scale each output, no rotary, no decay
    assert layer.ann.macs == 2 * 1 * 1 * 3 / 2  # the ANN's softmax attention: q.k and p.v over 3 pairs
    assert layer.neurons == 4 and layer.firing_rate == layer.snn.spikes / (4 * 1)


def test_attention_map_neurons_are_counted_one_per_head_and_causal_pair():
    # As above, with a map neuron (threshold 1, bias 0) on each of the 3 causal pairs: products
    # 1, 1, 0 -> the neurons of (0, 0) and (1, 0) spike, (1, 1) does not; the map is unchanged.
    plain, mapped = _ssa_graph(), _ssa_graph(map_neurons=True)
    x = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]])
    a, b = simulate(plain, x, 1), simulate(mapped, x, 1)
    assert a.operations["op"] == b.operations["op"]
    before = by_name(count_operations(plain, a, positions=2), "op")
    after = by_name(count_operations(mapped, b, positions=2), "op")
    assert after.snn.neuron_updates == before.snn.neuron_updates + 3 / 2  # 3 map neurons, 2 tokens, 1 step
    assert after.snn.spikes == before.snn.spikes + 2 / 2  # the 2 map spikes
    assert after.snn.synops == before.snn.synops


def test_ssa_operations_add_up_over_runs():
    graph = _ssa_graph(signed=True)
    runs = [simulate(graph, torch.randn(1, 3, 3), 4) for _ in range(2)]
    combined = combine_results(runs)
    for kind in ("qk_synops", "av_synops", "q_spikes"):
        assert combined.operations["op"][kind] == sum(r.operations["op"][kind] for r in runs)


def test_spike_softmax_products_are_incremental_synaptic_operations():
    from spikec.core.ir import SpikecSpikeAttention, SpikecSTBIF

    one = np.ones(3, np.float32)
    nodes = {"input": nir.Input(np.array([3])),
             "qkv": SpikecSTBIF(threshold=one, max_spikes=1, signed=True, v_init=0.5),
             "core": SpikecSpikeAttention(num_heads=1, num_kv_heads=1, head_dim=1, rope_theta=0.0, scale=1.0,
                                          input_scale=one, prob_threshold=np.full(1, 0.25, np.float32),
                                          prob_max_spikes=4, prob_v_init=0.5),
             "output": nir.Output(np.array([1]))}
    names = list(nodes)
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False)
    # T=1: positions (q, k, v) = (1, 1, 0), (1, 0, 1) -> q spikes at 0 and 1, k at 0, v at 1.
    result = simulate(graph, torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]]), 1)
    probs = result.spike_counts["core_probs"]
    assert probs > 0
    # q at query i meets keys 0..i (1 + 2); k at key 0 reaches queries 0, 1 (2): 5.
    # v at key 1 reaches query 1 (1); each probability spike meets D = 1 value.
    assert result.operations["core"] == {"qk_synops": 5, "pv_synops": 1 + probs}
    counts = count_operations(graph, result, positions=2)
    core, neurons = by_name(counts, "core"), by_name(counts, "qkv")
    assert core.kind == "attention" and core.attention and neurons.attention
    assert core.snn.synops == (5 + 1 + probs) / 2 and core.snn.macs == 0
    pairs = 1 * 2 * 3 / 2 / 2  # probability neurons per token: one per head and causal pair
    assert core.snn.neuron_updates == pairs and core.snn.spikes == probs / 2
    assert core.snn.ops == OPS_PER_ELEMENT["softmax"] * pairs + 3  # softmax of the running scores, decode
    assert core.ann.macs == 2 * 1 * 3 / 2 and core.ann.ops == OPS_PER_ELEMENT["softmax"] * 3 / 2  # the ANN's softmax


def test_token_decode_synapses_cost_one_accumulate_per_spike():
    from spikec.core.ir import SpikecSpikeDecode, SpikecTokenEncoder

    nodes = {"input": nir.Input(np.array([2])),
             "enc": SpikecTokenEncoder(threshold=np.ones(2, np.float32), max_spikes=1, signed=True, v_init=0.5,
                                       scheme="rate", bits=8),
             "dec": SpikecSpikeDecode(weight=np.ones(2, np.float32), scheme="rate", bits=8),
             "output": nir.Output(np.array([2]))}
    names = list(nodes)
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False)
    result = simulate(graph, torch.tensor([[[0.5, -0.25]]]), 4)
    counts = count_operations(graph, result, positions=1)
    dec = by_name(counts, "dec")
    assert dec.kind == "decode" and dec.ann == OpCounts()
    assert dec.snn.synops == result.spike_counts["enc"] > 0
