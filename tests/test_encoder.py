"""The sentence encoder ``minilm-l6`` (all-MiniLM-L6-v2, a BERT): loaded offline from its wheel's zip
as data, captured with the model's last hidden state, converted (bidirectional attention, GELU,
post-norm LayerNorm) with the simulator agreeing spike for spike, exported to Lava, and evaluated
on sentence embeddings (cosine ANN vs SNN, pair-ranking Spearman)."""

from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import spikec.passes
from spikec.backends import nirio
from spikec.backends.lava import compare, export
from spikec.backends.lava.runtime import numpy_ops
from spikec.cli import main
from spikec.core import ir, ops
from spikec.core.errors import UnsupportedError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.encoder_eval import average_ranks, embedding_metrics, heldout_sentences, is_encoder, spearman
from spikec.frontend.architectures import architecture_of
from spikec.frontend.canonicalize import capture_canonical
from spikec.frontend.capture import model_output
from spikec.frontend.encoder_models import MINILM, minilm_config_dict
from spikec.frontend.models import is_builtin_model, load_from_spec, load_model
from spikec.lower import lower_to_nir
from spikec.text import HELDOUT_TEXT, embedded_text
from spikec.verify import compare_fx_and_simulator

from conftest import require_lava

T = 8
POSITIONS = 12
TINY = {"num_hidden_layers": "2", "hidden_size": "64", "num_attention_heads": "4", "intermediate_size": "128"}


def random_ids(vocab: int, batch: int, positions: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, positions), generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def tiny():
    loaded = load_model(MINILM, random_weights=True, config_overrides=TINY, seed=3)
    return loaded, capture_canonical(loaded, seq_len=8)


@functools.lru_cache(maxsize=None)
def converted():
    """(fx module after the default pipeline at T, its NIR graph, token ids ``[1, POSITIONS]``)."""
    loaded, gm = tiny()
    vocab = loaded.config.vocab_size
    ctx = PassContext(options={"timesteps": T}, calibration=random_ids(vocab, 4, POSITIONS, seed=2))
    gm, _ = run_passes(copy.deepcopy(gm), spikec.passes.DEFAULT_PIPELINE, ctx)  # passes rewrite in place
    ids = random_ids(vocab, 1, POSITIONS, seed=5)
    graph = lower_to_nir(gm, ids[:, :2], {"timesteps": T, "positions": POSITIONS, "model": "tiny-minilm"})
    return gm, graph, ids


# ---------------------------------------------------------------------------- loading


def test_minilm_is_a_builtin_bert_without_pooler_read_from_its_zip():
    assert is_builtin_model("minilm-l6") and is_builtin_model("MiniLM-L6")
    config = minilm_config_dict()
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (384, 6, 12)
    loaded = load_model(MINILM, random_weights=True, config_overrides=TINY)
    assert type(loaded.model).__name__ == "BertModel" and loaded.model.pooler is None
    assert loaded.family == "bert" and architecture_of(loaded.model).causal is False
    again = load_from_spec(loaded.spec)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), again.model.state_dict().values()))


def test_the_tokenizer_frames_a_sentence_in_cls_and_sep():
    tok = load_model(MINILM, random_weights=True, config_overrides=TINY).tokenizer
    ids = tok("The cat sat on the mat.")["input_ids"]
    assert ids[0] == tok.cls_token_id == 101 and ids[-1] == tok.sep_token_id == 102
    assert tok.decode(ids[1:-1]) == "the cat sat on the mat."


# ---------------------------------------------------------------------------- capture


def test_capture_equals_the_last_hidden_state_and_its_mean_pooling():
    loaded, gm = tiny()
    ids = random_ids(loaded.config.vocab_size, 2, 10, seed=7)
    with torch.no_grad():
        ref = loaded.model(input_ids=ids).last_hidden_state
        out = gm(ids)
    assert torch.equal(out, ref) and torch.equal(model_output(loaded.model, ids), ref)
    assert torch.equal(out.mean(1), ref.mean(1))


def test_bidirectional_attention_post_norm_blocks_and_the_token_type_row_folded_into_the_embedding():
    loaded, gm = tiny()
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    attention = [n for n in calls if n.target is ops.attention]
    assert len(attention) == 2 and all(n.args[6] is False for n in attention)
    roles = [n.meta["role"] for n in calls if n.meta["module_path"].startswith("encoder.layer.0.")]
    assert roles == ["qkv", "attention", "attn_out", "residual", "norm", "mlp_in", "activation", "mlp_out",
                     "residual", "norm"]
    assert [n.args[1] for n in calls if n.target is ops.activation] == ["gelu", "gelu"]
    emb = loaded.model.embeddings
    assert torch.equal(gm.embed_weight, emb.word_embeddings.weight + emb.token_type_embeddings.weight[0])
    assert calls[-1].meta["spikec_name"] == "h.1.ln_2"  # no final norm, no head


# ---------------------------------------------------------------------------- conversion


def test_conversion_and_simulator_agree_spike_for_spike():
    gm, graph, ids = converted()
    agreement = compare_fx_and_simulator(gm, graph, ids, T)
    assert agreement.layers == 8 and agreement.identical and agreement.logits_max_abs_diff == 0.0
    assert is_encoder(graph)


def test_causal_is_written_to_a_nir_file_only_for_an_encoder(tmp_path):
    _, graph, _ = converted()
    nirio.write(tmp_path / "model.nir", graph)
    attention = [n for n in nirio.read(tmp_path / "model.nir").nodes.values() if isinstance(n, ir.SpikecAttention)]
    assert [n.causal for n in attention] == [False, False]
    assert all("causal" in n.to_dict() for n in attention)
    decoder = ir.SpikecAttention(num_heads=2, num_kv_heads=2, head_dim=4, rope_theta=0.0, scale=0.5)
    assert decoder.causal and "causal" not in decoder.to_dict()


def test_numpy_twin_of_bidirectional_attention_matches_the_core_op():
    qkv = torch.randn(2, 5, (4 + 2 * 2) * 8, generator=torch.Generator().manual_seed(0))
    for causal in (True, False):
        np.testing.assert_allclose(numpy_ops.attention(qkv.numpy(), 4, 2, 8, 0.0, 0.3, causal=causal),
                                   ops.attention(qkv, 4, 2, 8, 0.0, 0.3, causal).numpy(), rtol=1e-5, atol=2e-6)


def test_floating_pt_lava_runs_the_encoder_spike_for_spike(tmp_path):
    python = require_lava()
    _, graph, ids = converted()
    folder = export.export_lava(graph, tmp_path / "lava")["folder"]
    assert '"causal": false' in (Path(folder) / "network.json").read_text()
    result = compare.compare(graph, ids, compare.run_export(folder, ids, precision="floating_pt", python=python))
    assert result["spike_agreement"] == 1.0 and result["logits_max_abs_diff"] < 1e-4


@pytest.mark.parametrize("overrides,feature", [
    ({"position_embedding_type": "relative_key"}, "position embeddings of type 'relative_key'"),
    ({"is_decoder": "true"}, "BERT as a decoder"),
])
def test_unsupported_bert_features_are_refused_by_name(overrides, feature):
    loaded = load_model(MINILM, random_weights=True, config_overrides={**TINY, **overrides})
    with pytest.raises(UnsupportedError, match=feature):
        capture_canonical(loaded, seq_len=8)


# ---------------------------------------------------------------------------- evaluation


def test_spearman_of_ranks_with_ties():
    assert list(average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [2.5, 0.0, 2.5, 1.0]
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert spearman(a, a ** 3) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    emb = torch.randn(5, 16)
    same = embedding_metrics(emb, emb)
    assert same["embedding_cosine"] == pytest.approx(1.0) and same["pair_spearman"] == pytest.approx(1.0)
    assert same["pairs"] == 10 and same["sentences"] == 5


def test_heldout_sentences_are_prose_without_doctests():
    sentences = heldout_sentences(embedded_text(HELDOUT_TEXT))
    assert len(sentences) > 100 and len(set(sentences)) == len(sentences)
    assert sentences[0] == "A ChainMap groups multiple dicts (or other mappings) together to create a single, updateable view."
    assert not any(">>>" in s for s in sentences)


def test_the_real_minilm_loads_offline_compiles_and_eval_prints_cosine_and_spearman(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    loaded = load_model(MINILM)
    tok = loaded.tokenizer
    ids = torch.tensor([tok("A man is playing a guitar on stage.")["input_ids"]])
    gm = capture_canonical(loaded)
    with torch.no_grad():
        assert torch.equal(gm(ids), loaded.model(input_ids=ids).last_hidden_state)
    out = tmp_path / "minilm"
    assert main(["compile", "minilm-l6", "-T", "16", "--calib-samples", "4", "--seq-len", "32", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--tokens", "256", "-T", "16"]) == 0
    printed = capsys.readouterr().out
    assert "cosine" in printed and "Spearman" in printed and "sentences" in printed
    row = json.loads((out / "eval.json").read_text())[0]
    assert row["embedding_cosine"] > 0.95 and row["pair_spearman"] > 0.9
    assert main(["run", str(out), "--prompt", "Hello world"]) == 2
    assert "sentence encoder" in capsys.readouterr().err
    assert time.perf_counter() - start < 120
