"""The Python API (docs/api.md): spikec.compile / spikec.load / SpikingModel, on tiny GPT-2s."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import spikec
from spikec.core.errors import InputError, UsageError

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
QUICK = dict(timesteps=4, calib_samples=1, seq_len=16)


@pytest.fixture(scope="module")
def by_name(tmp_path_factory) -> spikec.SpikingModel:
    return spikec.compile("gpt2", random_weights=True, config=TINY, output=tmp_path_factory.mktemp("n") / "m", **QUICK)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    return GPT2LMHeadModel(GPT2Config(**TINY)).eval()


def test_public_names_are_exported() -> None:
    assert {"compile", "load", "SpikingModel", "register_pass"} <= set(spikec.__all__)
    assert callable(spikec.compile) and callable(spikec.load)
    import importlib

    importlib.import_module("spikec.compiler")  # the compile module must not shadow the function
    assert callable(spikec.compile)
    assert "Compile a transformer" in spikec.compile.__doc__


def test_compile_by_name_evaluates_generates_and_estimates_energy(by_name: spikec.SpikingModel) -> None:
    assert by_name.timesteps == 4 and by_name.compile_report["model"] == "gpt2"
    result = by_name.evaluate(tokens=32)
    assert {"ann_ppl", "snn_ppl", "ppl_ratio", "cosine", "top1_agreement"} <= set(result)
    assert (by_name.path / "eval.json").is_file()
    curve = by_name.evaluate(tokens=32, timesteps=[2, 4], save=False)
    assert [r["timesteps"] for r in curve] == [2, 4]
    out = by_name.generate("Hello world", max_new_tokens=2)
    assert out["snn"] and out["ann"]
    est = by_name.energy(tokens=32)
    assert est["snn_pj_per_token"] > 0 and (by_name.path / "energy.json").is_file()
    assert by_name.report().name == "report.html"


def test_to_torch_gives_the_simulators_logits(by_name: spikec.SpikingModel) -> None:
    ids = by_name.encode("The quick brown fox jumps")
    module = by_name.to_torch()
    assert isinstance(module, torch.fx.GraphModule)
    with torch.no_grad():
        fx_logits = module(ids)
    sim = by_name.simulate(ids)
    assert torch.allclose(fx_logits, sim.output, atol=1e-5)
    assert sim.output.shape == (1, ids.shape[1], 50257)


def test_save_and_load_round_trip(by_name: spikec.SpikingModel, tmp_path: Path) -> None:
    saved = by_name.save(tmp_path / "saved")
    loaded = spikec.load(tmp_path / "saved")
    assert loaded.path == saved.path and loaded.compile_report == by_name.compile_report
    ids = loaded.encode("Some text to run")
    module = loaded.to_torch()  # no fx module on disk: the simulator as an nn.Module
    assert isinstance(module, torch.nn.Module) and not isinstance(module, torch.fx.GraphModule)
    assert torch.equal(module(ids), by_name.simulate(ids).output)
    assert loaded.evaluate(tokens=32, save=False)["snn_ppl"] == by_name.evaluate(tokens=32, save=False)["snn_ppl"]


def test_compile_a_transformers_model_object_keeps_its_reference(hf_model, tmp_path: Path) -> None:
    snn = spikec.compile(hf_model, output=tmp_path / "obj", **QUICK)
    assert (snn.path / "reference" / "model.safetensors").is_file()
    first = snn.evaluate(tokens=32, save=False)
    again = spikec.load(tmp_path / "obj").evaluate(tokens=32, save=False)
    assert first["ann_ppl"] == again["ann_ppl"] and first["snn_ppl"] == again["snn_ppl"]
    ids = snn.encode("the reference model")
    with torch.no_grad():
        assert torch.allclose(snn.to_torch()(ids), snn.simulate(ids).output, atol=1e-5)


def test_compile_refuses_modules_it_cannot_capture_naming_the_argument(hf_model, tmp_path: Path) -> None:
    class Wrapper(torch.nn.Module):  # captured by class and module names: a wrapper is not one
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

    with pytest.raises(UsageError, match="^model: expected a model name"):
        spikec.compile(torch.nn.Linear(2, 2), output=tmp_path / "x", **QUICK)
    with pytest.raises(UsageError, match="^model: a Wrapper is not a model class spikec converts"):
        spikec.compile(Wrapper(hf_model), output=tmp_path / "w", **QUICK)
    assert not (tmp_path / "w").exists()


def test_a_moved_source_directory_still_runs_and_eval_names_reference(hf_model, tmp_path: Path) -> None:
    src = tmp_path / "src"
    hf_model.save_pretrained(src)
    from spikec.frontend.models import gpt2_tokenizer

    gpt2_tokenizer().save_pretrained(src)
    snn = spikec.compile(str(src), output=tmp_path / "c", **QUICK)
    shutil.move(src, tmp_path / "moved")
    out = snn.generate("Hello", max_new_tokens=2)
    assert out["snn"] and out["ann"] is None and "reference" in out["ann_unavailable"]
    with pytest.raises(InputError, match="no longer exists.*reference"):
        snn.evaluate(tokens=32)
    moved = spikec.load(snn.path, reference=str(tmp_path / "moved"))
    assert moved.generate("Hello", max_new_tokens=2)["ann"]


@pytest.mark.parametrize("call, message", [
    (lambda: spikec.compile("gpt2", timesteps=0), "timesteps must be between 1 and 4096"),
    (lambda: spikec.compile("gpt2", seq_len=1), "seq_len must be between 2 and 8192"),
    (lambda: spikec.compile("gpt2", calib_samples=0), "calib_samples must be at least 1"),
    (lambda: spikec.compile(3), "model: expected"),
    (lambda: spikec.compile("gpt2", tokenizer=object()), "tokenizer: "),
    (lambda: spikec.compile("gpt2", random_weights=True, config=TINY, options={"burst": 2}, **QUICK),
     "options: burst: not read by any pass"),
])
def test_compile_errors_name_arguments(call, message: str) -> None:
    with pytest.raises(UsageError, match=message) as e:
        call()
    assert "--" not in str(e.value) and "-T" not in str(e.value)


def test_method_errors_name_arguments(by_name: spikec.SpikingModel) -> None:
    for call, message in [
        (lambda: by_name.evaluate(tokens=1), "tokens must be at least 2"),
        (lambda: by_name.evaluate(timesteps=[4, 0]), "timesteps must be between"),
        (lambda: by_name.generate(" "), "prompt is empty"),
        (lambda: by_name.generate("x", max_new_tokens=0), "max_new_tokens must be between"),
        (lambda: by_name.simulate("x", timesteps=0), "timesteps must be between"),
        (lambda: by_name.export_nir(by_name.path / "p", profile="odd"), "unknown profile"),
    ]:
        with pytest.raises(UsageError, match=message):
            call()


def test_a_prompt_longer_than_the_position_table_names_the_arguments(by_name: spikec.SpikingModel) -> None:
    with pytest.raises(InputError, match="fewer than the 2000 of the prompt and max_new_tokens"):
        by_name.generate("x", max_new_tokens=2000)


def test_load_refuses_a_directory_that_is_not_a_compile_output(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a spikec compile output"):
        spikec.load(tmp_path)


def test_load_names_the_arguments_as_a_front_end_asks(by_name: spikec.SpikingModel) -> None:
    flags = spikec.load(by_name.path, names={"prompt": "--prompt", "max_new_tokens": "--max-new-tokens",
                                             "timesteps": "-T", "backend": "--backend"})
    with pytest.raises(UsageError, match="^--prompt is empty"):
        flags.generate("  ")
    with pytest.raises(InputError, match="fewer than the 2000 of the prompt and --max-new-tokens"):
        flags.generate("x", max_new_tokens=2000)
    with pytest.raises(UsageError, match="^--backend lava takes one -T value"):
        flags.evaluate(timesteps=[2, 4], backend="lava")
    with pytest.raises(UsageError, match="^backend lava takes one timesteps value"):
        by_name.evaluate(timesteps=[2, 4], backend="lava")
    with pytest.raises(UsageError, match="^backend must be sim or lava"):
        by_name.generate("x", backend="loihi")


def test_figures_can_be_shown_before_the_directory_takes_them(by_name: spikec.SpikingModel, tmp_path: Path) -> None:
    from spikec.analysis.energy_models import resolve_model

    snn = by_name.save(tmp_path / "s")
    for name in ("eval.json", "energy.json"):  # the saved copy may hold them from earlier tests
        (snn.path / name).unlink(missing_ok=True)
    results = snn.evaluate(tokens=32, timesteps=[4], save=False, keep_reference=False)
    assert not (snn.path / "eval.json").exists()
    snn.save_eval(results)
    assert (snn.path / "eval.json").is_file()
    shown: list[bool] = []
    est = snn.energy(tokens=32, model=resolve_model("loihi"),
                     show=lambda e: shown.append((snn.path / "energy.json").exists()))
    assert shown == [False] and (snn.path / "energy.json").is_file()
    assert est["snn_pj_per_token"] == snn.energy(tokens=32, model="loihi", save=False)["snn_pj_per_token"]


def test_a_directory_without_its_tokenizer_is_refused_when_asked(by_name: spikec.SpikingModel, tmp_path: Path) -> None:
    snn = by_name.save(tmp_path / "t")
    shutil.rmtree(snn.path / "tokenizer")
    with pytest.raises(InputError, match="has no tokenizer/ directory"):
        spikec.load(snn.path, tokenizer_from_reference=False)
    assert spikec.load(snn.path).tokenizer is not None  # the reference model's (random-weight GPT-2: GPT-2's)
