"""``spikec compile --dtype bfloat16`` (docs/memory.md): the source model is loaded and captured
in bfloat16, the network is built in float32 on the rounded weights, and eval's reference ANN
is loaded the same way. The default (float32) is the compile it always was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spikec.cli import main
from spikec.compiler import CompileOptions, compile_model
from spikec.core.errors import UsageError
from spikec.evaluate import describe_reference, evaluate, load_compiled, load_reference
from spikec.frontend.canonicalize import capture_canonical
from spikec.frontend.models import load_model

TINY = {
    "gpt2": {"n_layer": "1", "n_embd": "32", "n_head": "2"},
    "llama": {"num_hidden_layers": "2", "hidden_size": "64", "num_attention_heads": "4",
              "num_key_value_heads": "2", "intermediate_size": "128"},
}


def compile_tiny(name: str, out: Path, **kwargs) -> dict:
    return compile_model(CompileOptions(model=name, random_weights=True, config_overrides=TINY[name], timesteps=4,
                                        calib_samples=2, seq_len=16, output=str(out), **kwargs))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_bfloat16_model_is_captured_with_its_rounded_weights_in_float32(name: str) -> None:
    """The canonical module of the bfloat16 model, made float32, holds exactly the float32
    model's canonical weights rounded to bfloat16 (fused q/k/v, transposes and ties are exact);
    the rotary frequencies stay float32, so llama's rope_theta check holds."""
    exact = capture_canonical(load_model(name, random_weights=True, config_overrides=TINY[name]))
    loaded = load_model(name, random_weights=True, config_overrides=TINY[name], dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert all(b.dtype != torch.bfloat16 for b in loaded.model.buffers())
    rounded = capture_canonical(loaded).float()
    a, b = dict(exact.named_parameters()), dict(rounded.named_parameters())
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].to(torch.bfloat16).float(), b[key]), key


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_bfloat16_compile_end_to_end(name: str, tmp_path: Path) -> None:
    """Compile in bfloat16: the simulator agrees with the fx module spike for spike, report.json
    records the dtype, and eval loads the reference ANN in bfloat16 and says so."""
    report = compile_tiny(name, tmp_path / "m", dtype="bfloat16")
    assert report["source"]["dtype"] == "bfloat16"
    check = report["simulator_check"]
    assert check["identical_layers"] == check["neuron_layers"] > 0 and check["logits_max_abs_diff"] == 0.0
    compiled = load_compiled(tmp_path / "m")
    assert {p.dtype for p in load_reference(compiled).model.parameters()} == {torch.bfloat16}
    assert "bfloat16" in describe_reference(compiled)
    (row,) = evaluate(compiled, tokens=32, timesteps=[4], progress=False)
    assert row["ann_ppl"] > 0 and row["snn_ppl"] > 0


def test_the_default_dtype_is_the_float32_compile(tmp_path: Path) -> None:
    """``dtype="float32"`` (the default) writes the same model.nir, byte for byte, as a compile
    that names no dtype, and report.json's source has no dtype key (as before the option)."""
    default = compile_tiny("gpt2", tmp_path / "a")
    named = compile_tiny("gpt2", tmp_path / "b", dtype="float32")
    assert (tmp_path / "a" / "model.nir").read_bytes() == (tmp_path / "b" / "model.nir").read_bytes()
    assert "dtype" not in default["source"] and default["source"] == named["source"]
    assert "bfloat16" not in describe_reference(load_compiled(tmp_path / "a"))


def test_an_unknown_dtype_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(UsageError, match="dtype 'float16'.*float32, bfloat16"):
        load_model("gpt2", random_weights=True, config_overrides=TINY["gpt2"], dtype="float16")
    assert main(["compile", "gpt2", "--random-weights", "--dtype", "int8", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["spikec: error: --dtype 'int8' is not a weight dtype spikec loads; choose one of float32, bfloat16"]
    assert not (tmp_path / "x").exists()


def test_bfloat16_is_for_named_models_only() -> None:
    import spikec

    model = load_model("gpt2", random_weights=True, config_overrides=TINY["gpt2"]).model
    with pytest.raises(UsageError, match="dtype: only for a named model"):
        spikec.compile(model, dtype="bfloat16")
