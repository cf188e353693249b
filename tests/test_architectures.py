"""The architectures beyond GPT-2 and Llama (OPT, Qwen2, GPT-NeoX, Phi, Mistral, Gemma), each on a
tiny random-weight config of its built-in name: captured with the model's logits, converted by
the default passes with the simulator agreeing spike for spike, and unsupported features refused
by name."""

from __future__ import annotations

import copy
import functools
import os

import numpy as np
import pytest
import torch

import spikec.passes
from spikec.backends import nirio
from spikec.backends.lava import compare, env, export
from spikec.backends.lava.runtime import numpy_ops
from spikec.core import ir, ops
from spikec.core.errors import ResourceError, UnsupportedError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.frontend.architectures import ARCHITECTURES, architecture_of
from spikec.frontend.canonicalize import CANONICAL_OPS, capture_canonical, check_against_model
from spikec.frontend.family_models import FAMILY_MODELS
from spikec.frontend.models import LoadedModel, builtin_config, is_builtin_model, load_from_spec, load_model
from spikec.lower import lower_to_nir
from spikec.passes import spike_softmax
from spikec.verify import compare_fx_and_simulator

T = 8
POSITIONS = 12
SMALL = {"num_hidden_layers": "2", "hidden_size": "64", "num_attention_heads": "4"}
# Built-in name, config overrides: a tiny model of each architecture (and its variants).
SPECS: dict[str, tuple[str, dict[str, str]]] = {
    "opt": ("opt", {**SMALL, "ffn_dim": "128", "word_embed_proj_dim": "64"}),
    "opt-post-norm": ("opt", {**SMALL, "ffn_dim": "128", "word_embed_proj_dim": "64", "do_layer_norm_before": "false"}),
    "qwen2": ("qwen2", {**SMALL, "intermediate_size": "128", "num_key_value_heads": "2"}),
    "qwen2-sliding": ("qwen2", {**SMALL, "intermediate_size": "128", "num_key_value_heads": "2",
                                "use_sliding_window": "true", "sliding_window": "4", "max_window_layers": "1"}),
    "gpt-neox": ("gpt-neox", {**SMALL, "intermediate_size": "128"}),
    "gpt-neox-sequential": ("gpt-neox", {**SMALL, "intermediate_size": "128", "use_parallel_residual": "false"}),
    "phi": ("phi", {**SMALL, "intermediate_size": "128"}),
    "mistral": ("mistral", {**SMALL, "intermediate_size": "128", "num_key_value_heads": "2"}),
    "mistral-sliding": ("mistral", {**SMALL, "intermediate_size": "128", "num_key_value_heads": "2",
                                    "sliding_window": "3"}),
    "gemma": ("gemma", {**SMALL, "intermediate_size": "128", "num_key_value_heads": "1", "head_dim": "32"}),
}


def random_ids(vocab: int, batch: int, positions: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, positions), generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def captured(spec: str):
    name, overrides = SPECS[spec]
    loaded = load_model(name, config_overrides=overrides)
    return loaded, capture_canonical(loaded, seq_len=8)


@functools.lru_cache(maxsize=None)
def converted(spec: str):
    """(fx module after the default pipeline at T, its NIR graph, token ids ``[1, POSITIONS]``)."""
    loaded, gm = captured(spec)
    torch.manual_seed(0)
    vocab = loaded.config.vocab_size
    ctx = PassContext(options={"timesteps": T}, calibration=random_ids(vocab, 4, POSITIONS, seed=2))
    gm, _ = run_passes(copy.deepcopy(gm), spikec.passes.DEFAULT_PIPELINE, ctx)  # passes rewrite in place
    ids = random_ids(vocab, 1, POSITIONS, seed=5)
    graph = lower_to_nir(gm, ids[:, :2], {"timesteps": T, "positions": POSITIONS, "model": f"tiny-{spec}"})
    return gm, graph, ids


def attention_calls(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is ops.attention]


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", list(FAMILY_MODELS))
def test_every_family_name_is_a_builtin_of_a_supported_architecture_at_its_stated_shapes(name):
    assert is_builtin_model(name) and is_builtin_model(name.upper())
    config = builtin_config(name)
    assert config.model_type in ARCHITECTURES
    assert ARCHITECTURES[config.model_type].unsupported(config) == []
    assert config.vocab_size >= {"gpt2": 50257, "smollm2": 49152}[FAMILY_MODELS[name].tokenizer]


def test_family_names_imply_random_weights_and_reload_from_their_spec():
    loaded, _ = captured("opt")
    assert loaded.spec["random_weights"] is True and loaded.family == "opt"
    again = load_from_spec(loaded.spec)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), again.model.state_dict().values()))


# ---------------------------------------------------------------------------- capture


@pytest.mark.parametrize("spec", list(SPECS))
def test_capture_equals_the_models_logits(spec):
    loaded, gm = captured(spec)
    assert architecture_of(loaded.model) is ARCHITECTURES[loaded.family]
    assert {n.target for n in gm.graph.nodes if n.op == "call_function"} <= CANONICAL_OPS
    for positions in (5, 13):
        ids = random_ids(loaded.config.vocab_size, batch=2, positions=positions, seed=positions)
        assert check_against_model(gm, loaded.model, ids) < 1e-4


def test_opt_keeps_relu_learned_positions_past_the_offset_and_the_query_scaling():
    loaded, gm = captured("opt")
    calls = {n.meta["spikec_name"]: n for n in gm.graph.nodes if n.op == "call_function"}
    assert calls["h.0.mlp.act"].args[1] == "relu"
    positions = getattr(gm, calls["embed"].args[2].target)
    assert torch.equal(positions, loaded.model.model.decoder.embed_positions.weight[2:])
    head_dim = 64 // 4
    assert calls["h.0.attn.core"].args[5] == pytest.approx(head_dim ** -0.5)


def test_post_norm_opt_normalizes_after_each_residual():
    _, gm = captured("opt-post-norm")
    order = [n.meta["spikec_name"] for n in gm.graph.nodes if n.op == "call_function"]
    assert order.index("h.0.add_attn") < order.index("h.0.ln_1") < order.index("h.0.mlp.in")
    assert "ln_f" not in order


def test_qwen2_fuses_the_qkv_biases():
    loaded, gm = captured("qwen2")
    attn = loaded.model.model.layers[0].self_attn
    (qkv,) = [n for n in gm.graph.nodes if n.meta.get("spikec_name") == "h.0.attn.qkv"]
    bias = getattr(gm, qkv.args[2].target)
    assert torch.equal(bias, torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))


@pytest.mark.parametrize("spec,rotary_dim", [("gpt-neox", 4), ("phi", 8), ("qwen2", None)])
def test_partial_rotary_is_an_argument_only_where_it_is_partial(spec, rotary_dim):
    _, gm = captured(spec)
    for node in attention_calls(gm):
        assert (node.args[7] if len(node.args) > 7 else None) == rotary_dim


def test_parallel_residual_adds_both_branches_to_the_block_input():
    _, gm = captured("gpt-neox")
    calls = {n.meta["spikec_name"]: n for n in gm.graph.nodes if n.op == "call_function"}
    branches = {a.meta["spikec_name"] for a in calls["h.0.add_attn"].args}
    assert branches == {"h.0.attn.out", "h.0.mlp.out"}
    assert calls["h.0.ln_1"].args[0] is calls["h.0.ln_2"].args[0] is calls["embed"]


def test_gemma_scales_the_embedding_and_offsets_its_norm_weights():
    loaded, gm = captured("gemma")
    calls = {n.meta["spikec_name"]: n for n in gm.graph.nodes if n.op == "call_function"}
    embed = loaded.model.model.embed_tokens
    assert torch.equal(getattr(gm, calls["embed"].args[1].target), embed.weight * embed.embed_scale)
    norm = loaded.model.model.layers[0].input_layernorm
    assert torch.equal(getattr(gm, calls["h.0.ln_1"].args[1].target), 1.0 + norm.weight)


# ---------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("spec", list(SPECS))
def test_conversion_and_simulator_agree_spike_for_spike(spec):
    gm, graph, ids = converted(spec)
    agreement = compare_fx_and_simulator(gm, graph, ids, T)
    assert agreement.layers == 9 and agreement.identical and agreement.logits_max_abs_diff == 0.0


@pytest.mark.parametrize("spec,field,values", [
    ("gpt-neox", "rotary_dim", [4, 4]), ("mistral-sliding", "window", [3, 3]), ("qwen2-sliding", "window", [0, 4]),
    ("qwen2", "window", [0, 0]),
])
def test_rotary_dim_and_window_survive_a_nir_file_which_names_them_only_where_set(tmp_path, spec, field, values):
    _, graph, _ = converted(spec)
    nirio.write(tmp_path / "model.nir", graph)
    attention = [n for n in nirio.read(tmp_path / "model.nir").nodes.values() if isinstance(n, ir.SpikecAttention)]
    assert [getattr(n, field) for n in attention] == values
    assert [field in n.to_dict() for n in attention] == [bool(v) for v in values]


def test_numpy_twin_of_partial_rotary_and_windowed_attention_matches_the_core_op():
    qkv = torch.randn(2, 5, (4 + 2 * 2) * 8, generator=torch.Generator().manual_seed(0))
    for rotary, window in ((0, 0), (2, 0), (4, 2), (8, 3), (0, 1)):
        np.testing.assert_allclose(numpy_ops.attention(qkv.numpy(), 4, 2, 8, 10000.0, 0.3, rotary, window),
                                   ops.attention(qkv, 4, 2, 8, 10000.0, 0.3, True, rotary, window).numpy(),
                                   rtol=1e-5, atol=2e-6)
    assert torch.equal(ops.attention(qkv, 4, 2, 8, 10000.0, 0.3, True, 8), ops.attention(qkv, 4, 2, 8, 10000.0, 0.3))


@pytest.mark.parametrize("spec", ["gpt-neox", "mistral-sliding"])
def test_floating_pt_lava_runs_partial_rotary_and_windowed_attention_spike_for_spike(tmp_path, spec):
    try:
        python = env.lava_python()
    except ResourceError as e:
        if os.environ.get("CI"):
            pytest.fail(f"the Lava environment is missing on CI: {e}")
        pytest.skip(f"no Lava environment: {e}")
    _, graph, ids = converted(spec)
    folder = export.export_lava(graph, tmp_path / "lava")["folder"]
    result = compare.compare(graph, ids, compare.run_export(folder, ids, precision="floating_pt", python=python))
    assert result["spike_agreement"] == 1.0 and result["logits_max_abs_diff"] < 1e-4


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name,overrides,feature", [
    ("opt", {"word_embed_proj_dim": "32"}, "project_in/project_out"),
    ("phi", {"qk_layernorm": "true"}, "qk_layernorm"),
    ("qwen2", {"rope_parameters": '{"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}'},
     "rotary embeddings of type 'linear'"),
])
def test_unsupported_features_are_refused_by_name(name, overrides, feature):
    base = dict(SPECS[name][1])
    loaded = load_model(name, config_overrides={**base, **overrides})
    with pytest.raises(UnsupportedError, match=feature.replace("(", r"\(").replace("'", ".")):
        capture_canonical(loaded, seq_len=8)


@pytest.mark.parametrize("spec,windows", [
    ("mistral-sliding", [3, 3]), ("qwen2-sliding", [None, 4]), ("qwen2", [None, None]),
])
def test_sliding_windows_are_an_argument_of_the_layers_that_have_one(spec, windows):
    _, gm = captured(spec)
    assert [n.args[8] if len(n.args) > 8 else None for n in attention_calls(gm)] == windows


def test_the_window_changes_what_a_query_sees_once_the_sequence_is_longer():
    qkv = torch.randn(1, 9, 3 * 2 * 4, generator=torch.Generator().manual_seed(0))
    full, windowed = ops.attention(qkv, 2, 2, 4), ops.attention(qkv, 2, 2, 4, 0.0, None, True, 0, 3)
    assert torch.equal(full[:, :3], windowed[:, :3]) and not torch.allclose(full[:, 3:], windowed[:, 3:])
    assert torch.allclose(ops.attention(qkv[:, :3], 2, 2, 4, 0.0, None, True, 0, 3), full[:, :3], atol=1e-6)


@pytest.mark.parametrize("spec,feature", [("phi", "partial rotary"), ("mistral-sliding", "sliding-window attention")])
@pytest.mark.parametrize("pipeline", [spike_softmax.PIPELINE, ["fold-norm-affine", "calibrate", "ssa"]])
def test_spiking_attention_refuses_partial_rotary_and_windows_by_name(pipeline, spec, feature):
    loaded, gm = captured(spec)
    ctx = PassContext(options={"timesteps": T}, calibration=random_ids(loaded.config.vocab_size, 2, POSITIONS, seed=2))
    with pytest.raises(UnsupportedError, match=feature):
        run_passes(copy.deepcopy(gm), pipeline, ctx)


@pytest.mark.parametrize("spec", ["opt", "qwen2", "gpt-neox", "phi", "mistral", "gemma"])
def test_architecture_entries_name_classes_the_models_use(spec):
    loaded, _ = captured(spec)
    arch = architecture_of(loaded.model)
    assert arch.family == loaded.family
    classes = {type(m) for m in loaded.model.modules()}
    assert set(arch.module_kinds()) <= classes
    assert arch.block_index(f"model.{arch.block_container}.1.mlp") == 1


def test_near_relatives_are_refused_naming_what_they_add():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, vocab_size=128)
    model = Qwen3ForCausalLM(config).eval()
    loaded = LoadedModel(model=model, name="tiny-qwen3", family="qwen3", config=config, spec={})
    with pytest.raises(UnsupportedError, match=r"Qwen3ForCausalLM has query and key norms \(q_norm, k_norm\)"):
        capture_canonical(loaded)


def test_a_saved_directory_of_a_family_class_is_captured_with_its_logits(tmp_path):
    loaded, _ = captured("qwen2")
    loaded.model.save_pretrained(tmp_path / "tiny-qwen2")
    again = load_model(str(tmp_path / "tiny-qwen2"))
    gm = capture_canonical(again, seq_len=8)
    ids = random_ids(again.config.vocab_size, batch=1, positions=7, seed=3)
    assert again.family == "qwen2" and check_against_model(gm, loaded.model, ids) < 1e-4
