"""The private cache of de-quantised reference weights (spikec/frontend/weight_cache.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from spikec.frontend import weight_cache


@pytest.fixture
def tiny_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).eval()


def test_a_cached_model_comes_back_identical_and_is_built_once(tiny_model, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPIKEC_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "weights.gguf"
    source.write_bytes(b"quantised weights")
    builds = []
    first = weight_cache.load_through_cache(source, "tiny", lambda: builds.append(1) or tiny_model)
    again = weight_cache.load_through_cache(source, "tiny", lambda: builds.append(1) or tiny_model)
    assert builds == [1] and first is tiny_model and again is not tiny_model
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    entry = weight_cache.cached_entry(source, "tiny")
    assert sorted(p.name for p in entry.iterdir()) == ["config.json", "model.safetensors"]
    assert oct(os.stat(tmp_path / "cache" / "weights").st_mode & 0o777) == "0o700"
    source.write_bytes(b"other weights")  # a changed source is another entry
    assert weight_cache.cached_entry(source, "tiny") is None


def test_a_cache_others_can_write_is_not_used(tiny_model, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPIKEC_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "weights.gguf"
    source.write_bytes(b"quantised weights")
    weight_cache.load_through_cache(source, "tiny", lambda: tiny_model)
    os.chmod(tmp_path / "cache" / "weights", 0o777)
    assert weight_cache.cached_entry(source, "tiny") is None
    builds = []
    weight_cache.load_through_cache(source, "tiny", lambda: builds.append(1) or tiny_model)
    assert builds == [1]
