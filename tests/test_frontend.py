"""Frontend: loading models, capturing them, and the canonical graph contract."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from spikec.core import ops
from spikec.core.errors import ModelNotFoundError, UnsupportedError, UsageError
from spikec.frontend.architectures import ARCHITECTURES, architecture_of
from spikec.frontend.canonicalize import (
    AFFINE_ROLES,
    CANONICAL_OPS,
    canonicalize,
    capture_canonical,
    check_against_model,
)
from spikec.frontend.capture import capture
from spikec.frontend.models import (
    GPT2_SHAPES,
    LoadedModel,
    SMOLLM2_CONFIG,
    builtin_config,
    load_from_spec,
    load_model,
)

TINY = {
    "gpt2": {"n_layer": "2", "n_embd": "64", "n_head": "4", "vocab_size": "512"},
    "llama": {
        "num_hidden_layers": "2", "hidden_size": "64", "num_attention_heads": "4",
        "num_key_value_heads": "2", "intermediate_size": "128", "vocab_size": "512",
    },
}
ROLES = {"embedding", "norm", "qkv", "attention", "attn_out", "mlp_in", "activation", "mlp_out", "residual", "lm_head"}
BLOCK_NAMES = ["ln_1", "attn.qkv", "attn.core", "attn.out", "add_attn", "ln_2", "mlp.in", "mlp.act", "mlp.out", "add_mlp"]


def tiny(family: str, seed: int = 0) -> LoadedModel:
    return load_model(family, random_weights=True, config_overrides=TINY[family], seed=seed)


def random_ids(vocab: int, batch: int, positions: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, positions), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def canonical(request) -> tuple[LoadedModel, torch.fx.GraphModule]:
    loaded = tiny(request.param)
    return loaded, capture_canonical(loaded, seq_len=8)


def call_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function"]


# ---------------------------------------------------------------------------- canonical graph


@pytest.mark.parametrize("positions", [5, 13])
def test_canonical_graph_reproduces_model_logits_at_any_length_and_batch(canonical, positions):
    loaded, gm = canonical
    ids = random_ids(loaded.config.vocab_size, batch=2, positions=positions, seed=positions)
    assert check_against_model(gm, loaded.model, ids) < 1e-4


def test_canonical_graph_calls_only_core_ops(canonical):
    _, gm = canonical
    assert {n.target for n in call_nodes(gm)} <= CANONICAL_OPS
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert [p.name for p in placeholders] == ["input_ids"]
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    assert isinstance(output.args[0], torch.fx.Node) and output.args[0].meta["role"] == "lm_head"
    assert all(n.op in ("placeholder", "get_attr", "call_function", "output") for n in gm.graph.nodes)


def test_every_op_carries_unique_name_role_and_module_path(canonical):
    loaded, gm = canonical
    nodes = call_nodes(gm)
    for n in nodes:
        assert {"spikec_name", "role", "module_path"} <= n.meta.keys(), n.name
        assert n.meta["role"] in ROLES
        loaded.model.get_submodule(n.meta["module_path"])  # a real module path of the HF model
    names = [n.meta["spikec_name"] for n in nodes]
    assert len(names) == len(set(names))
    expected = ["embed"] + [f"h.{i}.{s}" for i in range(2) for s in BLOCK_NAMES] + ["ln_f", "lm_head"]
    assert names == expected


def test_affine_weights_use_out_by_in_layout(canonical):
    loaded, gm = canonical
    d = loaded.config.hidden_size
    vocab = loaded.config.vocab_size
    weights = {n.meta["spikec_name"]: gm.get_parameter(n.args[1].target) for n in call_nodes(gm) if n.target is ops.affine}
    assert weights["h.0.attn.out"].shape == (d, d)
    assert weights["lm_head"].shape == (vocab, d)
    mlp_in, mlp_out = weights["h.0.mlp.in"], weights["h.0.mlp.out"]
    assert mlp_in.shape[1] == d and mlp_out.shape[0] == d and mlp_in.shape[0] > d
    if loaded.family == "gpt2":  # Conv1D stores [in, out]
        torch.testing.assert_close(mlp_in, loaded.model.transformer.h[0].mlp.c_fc.weight.T, rtol=0, atol=0)
    else:  # q|k|v and gate|up fused row-wise
        attn = loaded.model.model.layers[0].self_attn
        qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        torch.testing.assert_close(weights["h.0.attn.qkv"], qkv, rtol=0, atol=0)
        mlp = loaded.model.model.layers[0].mlp
        torch.testing.assert_close(mlp_in, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), rtol=0, atol=0)


def test_affine_roles_and_attention_hyperparameters(canonical):
    loaded, gm = canonical
    roles = [n.meta["role"] for n in call_nodes(gm) if n.target is ops.affine]
    assert set(roles) == set(AFFINE_ROLES)
    (core,) = [n for n in call_nodes(gm) if n.meta["spikec_name"] == "h.0.attn.core"]
    _, heads, kv_heads, head_dim, rope_theta, scale, causal = core.args
    assert (heads, head_dim, causal) == (4, 16, True)
    assert scale == pytest.approx(16 ** -0.5)
    if loaded.family == "gpt2":
        assert (kv_heads, rope_theta) == (4, 0.0)
    else:
        assert (kv_heads, rope_theta) == (2, 100000.0)


def test_canonical_parameters_do_not_share_storage_with_the_model(canonical):
    loaded, gm = canonical
    model_ptrs = {p.untyped_storage().data_ptr() for p in loaded.model.parameters()}
    assert all(p.untyped_storage().data_ptr() not in model_ptrs for p in gm.parameters())
    assert all(not p.requires_grad for p in gm.parameters())
    ids = random_ids(loaded.config.vocab_size, 1, 6, seed=1)
    before = gm(ids)
    weight = loaded.model.get_input_embeddings().weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(3.0)  # tied to lm_head in both families
    try:
        torch.testing.assert_close(gm(ids), before, rtol=0, atol=0)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_decomposed_and_raw_captures_give_the_same_canonical_graph(canonical):
    loaded, gm = canonical
    ids = random_ids(loaded.config.vocab_size, 1, 8, seed=2)
    decomposed = canonicalize(capture(loaded.model, ids, decompose=True), loaded)
    assert [n.meta["spikec_name"] for n in call_nodes(decomposed)] == [n.meta["spikec_name"] for n in call_nodes(gm)]
    torch.testing.assert_close(decomposed(ids), gm(ids), rtol=0, atol=0)


# ---------------------------------------------------------------------------- refusals


def test_unknown_module_on_the_residual_path_is_refused_with_its_path():
    class ScaledLayerNorm(nn.Module):
        def __init__(self, inner: nn.LayerNorm):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * 2.0

    loaded = tiny("gpt2")
    loaded.model.transformer.ln_f = ScaledLayerNorm(loaded.model.transformer.ln_f)
    ids = random_ids(loaded.config.vocab_size, 1, 8, seed=0)
    gm = capture(loaded.model, ids)
    with pytest.raises(UnsupportedError) as err:
        canonicalize(gm, loaded)
    message = str(err.value)
    assert "aten.mul.Tensor in transformer.ln_f (ScaledLayerNorm)" in message
    assert "Custom passes" in message and "\n" not in message


def test_unknown_activation_is_refused_naming_the_op():
    loaded = tiny("gpt2")
    loaded.model.transformer.h[1].mlp.act = nn.Tanh()
    gm = capture(loaded.model, random_ids(loaded.config.vocab_size, 1, 8, seed=0))
    with pytest.raises(UnsupportedError, match=r"aten\.tanh\.default in transformer\.h\.1\.mlp\.act \(Tanh\)"):
        canonicalize(gm, loaded)


def test_other_architectures_are_refused_naming_the_architecture():
    from transformers import BloomConfig, BloomForCausalLM

    config = BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=128)
    model = BloomForCausalLM(config).eval()
    loaded = LoadedModel(model=model, name="tiny-bloom", family="bloom", config=config, spec={})
    with pytest.raises(UnsupportedError, match="BloomForCausalLM") as err:
        capture_canonical(loaded)
    assert err.value.exit_code == 4
    assert str(err.value).startswith(
        "architecture BloomForCausalLM (model type 'bloom', model 'tiny-bloom') is not supported; spikec converts "
        "GPT-2 (GPT2LMHeadModel), Llama (LlamaForCausalLM, e.g. SmolLM2), Qwen2 (Qwen2ForCausalLM, e.g. Qwen2.5), "
    )
    assert str(err.value).split(" (write a pass")[0].endswith(
        ", Gemma (GemmaForCausalLM) and BERT (BertModel encoders, e.g. all-MiniLM-L6-v2) models")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_architecture_entries_match_the_models_they_describe(family):
    loaded = tiny(family)
    arch = architecture_of(loaded.model)
    assert arch is ARCHITECTURES[family] and arch.family == loaded.family == family
    kinds = arch.module_kinds()
    assert set(kinds.values()) <= {"layer_norm", "rms_norm", "offset_rms_norm", "linear", "embedding",
                                   "scaled_embedding", "dropout", "activation", "attention", "gated_mlp"}
    assert any(isinstance(m, tuple(kinds)) for m in loaded.model.modules())
    assert arch.block_index(f"x.{arch.block_container}.3.mlp") == 3 and arch.block_index("x.ln_f") is None


# ---------------------------------------------------------------------------- loading


def test_random_weights_are_deterministic_for_a_seed():
    a, b, c = tiny("llama", seed=3), tiny("llama", seed=3), tiny("llama", seed=4)
    pa, pb, pc = (dict(m.model.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(pa["model.embed_tokens.weight"], pc["model.embed_tokens.weight"])


def test_random_weights_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny("gpt2")
    torch.testing.assert_close(torch.rand(3), expected)


def test_spec_is_json_and_reloads_the_identical_model():
    loaded = tiny("gpt2", seed=7)
    spec = json.loads(json.dumps(loaded.spec))
    assert spec == {"name": "gpt2", "random_weights": True, "config_overrides": TINY["gpt2"], "seed": 7}
    again = load_from_spec(spec)
    for (k, p), (_, q) in zip(loaded.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(p, q), k


def test_config_overrides_are_cast_to_the_field_types_and_applied():
    loaded = load_model("gpt2", random_weights=True, config_overrides={**TINY["gpt2"], "layer_norm_epsilon": "1e-6"})
    assert loaded.config.n_layer == 2 and isinstance(loaded.config.n_layer, int)
    assert loaded.config.layer_norm_epsilon == 1e-6
    assert len(loaded.model.transformer.h) == 2
    assert loaded.model.transformer.h[0].ln_1.eps == 1e-6
    llama = tiny("llama")
    assert llama.family == "llama" and llama.spec["random_weights"] is True  # "llama" implies random weights
    assert llama.config.head_dim == 16  # derived from the overridden width, not SmolLM2's 64
    assert llama.config.num_key_value_heads == 2


def test_unknown_config_override_is_a_usage_error_naming_the_key():
    with pytest.raises(UsageError) as err:
        load_model("gpt2", random_weights=True, config_overrides={"n_layers": "2"})
    assert "'n_layers'" in str(err.value) and "n_layer" in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(random_weights=False, config_overrides={"n_layer": "2"}),  # overrides need random weights
        dict(random_weights=True, config_overrides={"n_layer": "two"}),  # not an int
        dict(random_weights=True, config_overrides={"n_head": "5"}),  # 768 not divisible by 5
    ],
)
def test_invalid_overrides_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        load_model("gpt2", **kwargs)


@pytest.mark.parametrize("name", list(GPT2_SHAPES))
def test_gpt2_sizes_have_their_published_shapes(name):
    config = builtin_config(name)
    expected = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
                "gpt2-xl": (48, 1600, 25), "distilgpt2": (6, 768, 12)}[name]
    assert (config.n_layer, config.n_embd, config.n_head) == expected
    assert config.vocab_size == 50257 and config.n_positions == 1024


def test_gpt2_random_weights_have_124m_parameters_and_the_gpt2_tokenizer():
    loaded = load_model("gpt2", random_weights=True)
    assert sum(p.numel() for p in loaded.model.parameters()) == 124_439_808
    assert loaded.tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert loaded.model.config._attn_implementation == "sdpa"


def test_local_directory_loads_its_weights_tokenizer_and_config(tmp_path):
    saved = tiny("gpt2", seed=5)
    saved.model.save_pretrained(tmp_path)
    saved.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.name == str(tmp_path.resolve()) and loaded.family == "gpt2"
    assert loaded.spec["random_weights"] is False
    for (k, p), (_, q) in zip(saved.model.named_parameters(), loaded.model.named_parameters()):
        assert torch.equal(p, q), k
    assert loaded.tokenizer("Hello world")["input_ids"] == [15496, 995]
    shrunk = load_model(str(tmp_path), random_weights=True, config_overrides={"n_layer": "1"})
    assert len(shrunk.model.transformer.h) == 1 and shrunk.config.n_embd == 64


@pytest.mark.parametrize("offline_env", [True, False])
def test_unknown_model_fails_fast_with_a_one_line_message(monkeypatch, offline_env):
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as err:
        load_model("spikec-tests/no-such-model")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and "'spikec-tests/no-such-model'" in message
    assert err.value.exit_code == 3


def test_real_gpt2_offline_points_to_random_weights(monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(r, "config.json"), str) for r in ("gpt2", "openai-community/gpt2")):
        pytest.skip("GPT-2 is in the local Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as err:
        load_model("gpt2")
    assert time.monotonic() - start < 10
    assert str(err.value).startswith("model 'gpt2' is not in the local Hugging Face cache and the hub is unreachable")
    assert "--random-weights" in str(err.value)


# ---------------------------------------------------------------------------- the real SmolLM2


@pytest.mark.slow
def test_smollm2_135m_loads_canonicalizes_and_matches_its_logits():
    loaded = load_model("smollm2-135m")
    assert loaded.family == "llama"
    real = loaded.config
    for key, value in SMOLLM2_CONFIG.items():  # the shapes used for random weights are the real ones
        if key == "rms_norm_eps":
            assert real.rms_norm_eps == pytest.approx(value, rel=1e-6)
        else:
            assert getattr(real, key) == value, key
    assert builtin_config("llama").head_dim == real.head_dim == 64
    gm = capture_canonical(loaded, seq_len=16)
    ids = loaded.tokenizer("The quick brown fox jumps over the lazy dog. Spiking networks communicate with binary events over time.", return_tensors="pt")["input_ids"][:, :16]
    assert ids.shape == (1, 16)
    with torch.no_grad():
        scale = loaded.model(input_ids=ids).logits.abs().max().item()
    assert check_against_model(gm, loaded.model, ids) < 1e-4 * max(1.0, scale)
    assert len([n for n in call_nodes(gm) if n.target is ops.attention]) == 30
