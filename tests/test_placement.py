"""``spikec compile --device-map`` (docs/memory.md, "Placing the source model"): the source model is
loaded with accelerate's device map (CPU memory within ``--max-memory``, the rest on disk), its
graph captured from a meta skeleton and its offloaded weights read a block at a time; the network
is the very one of the plain compile. Bad placements are refused in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import spikec
from spikec.cli import main
from spikec.compiler import CompileOptions, compile_network
from spikec.core.errors import UsageError
from spikec.frontend.models import gpt2_tokenizer, load_model
from spikec.frontend.smollm2 import smollm2_tokenizer
from spikec.frontend.placement import OFFLOAD_DIR, Placement, parse_max_memory, rename_safetensors

TINY = {"num_hidden_layers": "4", "hidden_size": "64", "num_attention_heads": "4", "num_key_value_heads": "2",
        "intermediate_size": "128"}
# a decoder block of TINY holds about 147 kB of float32 weights, the tied embedding 12.6 MB:
# this keeps the embedding and a block or two in memory and sends the other blocks to disk
PARTLY_ON_DISK = {"cpu": 13_000_000}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved with save_pretrained (what accelerate offloads from), with a tokenizer."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    load_model("llama", random_weights=True, config_overrides=TINY).model.save_pretrained(directory)
    smollm2_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 (Conv1D projections, learned positions, tied embedding) saved with save_pretrained."""
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    load_model("gpt2", random_weights=True, config_overrides={"n_layer": "3", "n_embd": "32", "n_head": "2"}
               ).model.save_pretrained(directory)
    gpt2_tokenizer().save_pretrained(directory)
    return directory


def compile_dir(checkpoint: Path, out: Path, **kwargs):
    return compile_network(CompileOptions(model=str(checkpoint), output=str(out), timesteps=4, calib_samples=2,
                                          seq_len=16, **kwargs))


@pytest.mark.parametrize("device_map, max_memory", [("cpu", PARTLY_ON_DISK), ("disk", None)])
def test_a_placed_compile_is_the_plain_compile(checkpoint: Path, tmp_path: Path, device_map: str,
                                               max_memory: dict | None) -> None:
    """Same model.nir byte for byte (weights, thresholds from the same calibration statistics),
    same logits from the fx module; the offload folder is gone and report.json says where the
    modules were."""
    plain = compile_dir(checkpoint, tmp_path / "plain")
    placed = compile_dir(checkpoint, tmp_path / "placed", device_map=device_map, max_memory=max_memory)
    assert placed.report["model_nir_sha256"] == plain.report["model_nir_sha256"]
    assert (tmp_path / "placed" / "model.nir").read_bytes() == (tmp_path / "plain" / "model.nir").read_bytes()
    ids = torch.randint(0, 49152, (1, 12))
    with torch.no_grad():
        assert torch.equal(placed.module(ids), plain.module(ids))
    thresholds = [(n.name, n.meta.get("spikec_calibration")) for n in plain.module.graph.nodes]
    for (name, stats), node in zip(thresholds, placed.module.graph.nodes):
        assert node.name == name
        if stats is not None:
            assert all(torch.equal(stats[k], node.meta["spikec_calibration"][k]) for k in ("absmax", "percentile"))
    modules = placed.report["placement"]["modules"]
    assert modules.get("disk", 0) >= 1
    if device_map == "cpu":
        assert modules.get("cpu", 0) >= 1  # partly in memory, partly on disk
    assert not (tmp_path / "placed" / OFFLOAD_DIR).exists()
    assert sorted(p.name for p in (tmp_path / "placed").iterdir()) == sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert json.loads((tmp_path / "placed" / "report.json").read_text())["placement"]["device_map"] == device_map


def test_the_python_api_takes_device_map_and_max_memory(checkpoint: Path, tmp_path: Path) -> None:
    snn = spikec.compile(checkpoint, output=tmp_path / "api", timesteps=4, calib_samples=2, seq_len=16,
                         device_map="cpu", max_memory={"cpu": "13MB"})
    assert snn.compile_report["placement"]["max_memory"] == {"cpu": 13_000_000}
    with pytest.raises(UsageError, match="max_memory 'cpu=lots'"):
        spikec.compile(checkpoint, output=tmp_path / "bad", device_map="cpu", max_memory="cpu=lots")
    with pytest.raises(UsageError, match="device_map: only for a named model"):
        spikec.compile(load_model("llama", random_weights=True, config_overrides=TINY).model, device_map="auto")


@pytest.mark.parametrize("args, named", [
    (["--device-map", "cpu", "--max-memory", "cpu=lots"], "--max-memory 'cpu=lots': 'lots' is not a size"),
    (["--device-map", "cpu", "--max-memory", "tpu=4GB"], "unknown device 'tpu'"),
    (["--device-map", "cpu", "--max-memory", "cpu"], "--max-memory expects DEVICE=SIZE"),
    (["--device-map", "cpu", "--max-memory", "0=4GB"], "--device-map cpu uses no GPU"),
    (["--device-map", "disk", "--max-memory", "cpu=4GB"], "--device-map disk keeps no weights in memory"),
    (["--max-memory", "cpu=4GB"], "--max-memory needs --device-map auto or cpu"),
    (["--device-map", "gpu"], "--device-map 'gpu' is not a placement; choose one of auto, cpu, disk"),
])
def test_a_bad_placement_is_one_line_and_exit_2(checkpoint: Path, tmp_path: Path, capsys, args: list[str],
                                                named: str) -> None:
    assert main(["compile", str(checkpoint), "-o", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "out").exists()


def test_random_weights_have_nothing_to_place(tmp_path: Path, capsys) -> None:
    assert main(["compile", "llama", "--random-weights", "-o", str(tmp_path / "out"), "--device-map", "disk"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a checkpoint to read; random weights have none" in err[0]


def test_max_memory_sizes_are_bytes_per_device() -> None:
    assert parse_max_memory("cpu=4GiB, cuda:1=20GB,0=100") == {"cpu": 4 * 2**30, 1: 20 * 10**9, 0: 100}
    assert parse_max_memory({"cpu": "2MB", 0: 5}) == {"cpu": 2_000_000, 0: 5}


def test_the_cli_places_quietly_and_says_so_in_the_report(checkpoint: Path, tmp_path: Path, capsys, caplog) -> None:
    """stderr stays for errors: accelerate's notice about offloaded parameters is not shown."""
    caplog.set_level(logging.WARNING)
    assert main(["compile", str(checkpoint), "-o", str(tmp_path / "out"), "-T", "4", "--calib-samples", "2",
                 "--seq-len", "16", "--device-map", "cpu", "--max-memory", "cpu=13MB"]) == 0
    assert capsys.readouterr().err == ""
    assert not [r for r in caplog.records if "offloaded" in r.getMessage()]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["placement"]["max_memory"] == {"cpu": 13_000_000}


def test_renaming_safetensors_keeps_every_tensor(tmp_path: Path) -> None:
    """The header alone changes: the renamed file reads back the same tensors under the new names."""
    from safetensors.torch import load_file, save_file

    tensors = {"lm_head.weight": torch.randn(5, 3), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.randn(2).to(torch.bfloat16)}
    save_file(tensors, tmp_path / "a.safetensors")
    rename_safetensors(tmp_path / "a.safetensors", tmp_path / "b.safetensors", {"lm_head.weight": "embed.weight"})
    back = load_file(tmp_path / "b.safetensors")
    assert sorted(back) == ["b", "c", "embed.weight"]
    assert torch.equal(back["embed.weight"], tensors["lm_head.weight"])
    assert torch.equal(back["b"], tensors["b"]) and torch.equal(back["c"], tensors["c"])


def test_only_a_disk_placement_keeps_no_memory(tmp_path: Path) -> None:
    """What transformers is asked for: disk is no CPU memory at all; cpu never a GPU."""
    disk = Placement("disk", None, tmp_path / "a").from_pretrained_kwargs()
    assert disk["max_memory"] == {"cpu": 0} and disk["device_map"] == "auto"
    cpu = Placement("cpu", {"cpu": 5}, tmp_path / "b").from_pretrained_kwargs()
    assert cpu["max_memory"] == {"cpu": 5} and cpu["offload_folder"] == str(tmp_path / "b")
    assert (tmp_path / "b").is_dir()


@pytest.mark.parametrize("case", ["gpt2", "bfloat16", "budget"])
def test_placement_changes_no_other_compile(checkpoint: Path, gpt2_checkpoint: Path, tmp_path: Path, case: str) -> None:
    """Another architecture, a bfloat16 source model and ``--budget`` (which runs the placed model
    to choose steps, and drops it after): the placed compile writes the plain one's model.nir."""
    source, kwargs = {
        "gpt2": (gpt2_checkpoint, {}),
        "bfloat16": (checkpoint, {"dtype": "bfloat16"}),
        "budget": (checkpoint, {"coding": "binary", "budget": 1.5}),
    }[case]
    plain = compile_dir(source, tmp_path / "plain", **kwargs)
    placed = compile_dir(source, tmp_path / "placed", device_map="disk", **kwargs)
    assert placed.report["placement"]["modules"] == {"disk": 1}  # the whole model read from disk
    assert placed.report["model_nir_sha256"] == plain.report["model_nir_sha256"]
    assert placed.report.get("budget") == plain.report.get("budget")
    assert not (tmp_path / "placed" / OFFLOAD_DIR).exists()


def test_a_model_that_fits_is_not_dispatched(checkpoint: Path, tmp_path: Path) -> None:
    """With room for every weight in memory transformers places the model on the CPU without hooks."""
    placed = compile_dir(checkpoint, tmp_path / "placed", device_map="cpu")
    assert placed.report["placement"]["modules"] == {"cpu": 1}


def test_offloaded_weights_are_read_two_blocks_at_most(checkpoint: Path, tmp_path: Path) -> None:
    """The canonical builder's view of a model on disk: a block's weights are in memory from its
    first region until two blocks later, the embedding (outside the blocks) until the end."""
    from spikec.frontend.architectures import architecture_of
    from spikec.frontend.placement import BlockOnloader

    model = load_model(str(checkpoint), placement=Placement("disk", None, tmp_path / "offload")).model
    onloader = BlockOnloader(model, architecture_of(model).block_index)

    def in_memory(path: str) -> bool:
        return not model.get_submodule(path).weight.is_meta

    blocks = [f"model.layers.{i}.self_attn.q_proj" for i in range(4)]
    assert not any(in_memory(p) for p in [*blocks, "model.embed_tokens"])
    onloader.onload("model.embed_tokens")
    for i, path in enumerate(blocks):
        onloader.onload(f"model.layers.{i}.input_layernorm")
        assert [in_memory(p) for p in blocks] == [i - 1 <= j <= i for j in range(4)]
        assert in_memory(f"model.layers.{i}.mlp.down_proj") and in_memory("model.embed_tokens")
    onloader.close()
    assert not any(in_memory(p) for p in [*blocks, "model.embed_tokens"])
