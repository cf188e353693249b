"""A compile output directory is checked before it is used (spikec/compiled_checks.py).

Each bad directory is a tiny GPT-2 compile with one file edited as a careless or hostile user
would; ``spikec eval``, ``run`` and ``energy`` must refuse it with one line naming the node and
the field, exit 3 (docs/errors.md: bad input file) and no traceback. Where the edit is to
model.nir, report.json's sha256 is rewritten to match, so that the deeper check is the one
that speaks. Recurrent standard NIR graphs are listed by ``inspect`` and refused by name by
``export-nir --profile portable``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import nir
import numpy as np
import pytest

from spikec.backends import nirio
from spikec.cli import main
from spikec.compiled_checks import SHA256_KEY, file_sha256
from spikec.core import ir
from test_cli import FAST, REPO, TINY_GPT2, one_error_line


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c") / "tiny-gpt2"
    assert main(["compile", *TINY_GPT2, *FAST, "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """A compile of another (one-layer) model: the source of a swapped model.nir."""
    out = tmp_path_factory.mktemp("c") / "one-layer"
    config = ["gpt2", "--random-weights", "--config", "n_layer=1,n_embd=64,n_head=4"]
    assert main(["compile", *config, *FAST, "-o", str(out)]) == 0
    return out


def refused(argv: list[str], capsys) -> str:
    """The one error line of ``spikec ARGV``, which must exit 3 (a bad input file)."""
    assert main(argv) == 3
    return one_error_line(capsys)


def read_report(directory: Path) -> dict:
    return json.loads((directory / "report.json").read_text())


def write_report(directory: Path, report: dict) -> None:
    (directory / "report.json").write_text(json.dumps(report, indent=2))


def edited(compiled: Path, target: Path, edit: Callable[[nir.NIRGraph], None]) -> Path:
    """A copy of ``compiled`` whose model.nir is changed by ``edit``, with report.json's
    sha256 made to match the edited file."""
    shutil.copytree(compiled, target)
    graph = nirio.read(target / "model.nir")
    edit(graph)
    nirio.write(target / "model.nir", graph)
    report = read_report(target)
    report[SHA256_KEY] = file_sha256(target / "model.nir")
    write_report(target, report)
    return target


def replace_node(graph: nir.NIRGraph, name: str, node: nir.NIRNode) -> None:
    graph.nodes[name] = node


# ---------------------------------------------------------------------------------------------
# a correct directory: nothing changes but the new report.json field
# ---------------------------------------------------------------------------------------------


def test_compile_records_the_sha256_of_its_model_nir(compiled: Path) -> None:
    assert read_report(compiled)[SHA256_KEY] == file_sha256(compiled / "model.nir")


def test_a_correct_directory_passes_every_check(compiled: Path, capsys) -> None:
    assert main(["eval", str(compiled), "--tokens", "32", "--json"]) == 0
    assert main(["run", str(compiled), "--prompt", "def f(x):", "--max-new-tokens", "2"]) == 0


def test_a_directory_written_before_the_sha256_field_is_still_accepted(compiled: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(compiled, old)
    report = read_report(old)
    del report[SHA256_KEY]
    write_report(old, report)
    assert main(["eval", str(old), "--tokens", "32", "--json"]) == 0


# ---------------------------------------------------------------------------------------------
# report.json must describe this model.nir (issue 19 item 11)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["eval"], ["run", "--prompt", "hi"], ["energy"], ["report"]])
def test_a_model_nir_from_another_compile_is_refused(compiled: Path, other_model: Path, tmp_path: Path,
                                                     capsys, command: list[str]) -> None:
    swapped = tmp_path / "swapped"
    shutil.copytree(compiled, swapped)
    shutil.copyfile(other_model / "model.nir", swapped / "model.nir")
    line = refused([command[0], str(swapped), *command[1:]], capsys)
    assert "not the model.nir that report.json describes (sha256 differs)" in line


def test_without_the_sha256_a_swapped_model_nir_is_refused_by_its_node_counts(
        compiled: Path, other_model: Path, tmp_path: Path, capsys) -> None:
    swapped = tmp_path / "swapped"
    shutil.copytree(compiled, swapped)
    shutil.copyfile(other_model / "model.nir", swapped / "model.nir")
    report = read_report(swapped)
    del report[SHA256_KEY]
    write_report(swapped, report)
    assert "node counts" in refused(["eval", str(swapped)], capsys)


def test_a_model_nir_naming_another_model_is_refused(compiled: Path, tmp_path: Path, capsys) -> None:
    renamed = edited(compiled, tmp_path / "renamed", lambda g: g.metadata.update(model="distilgpt2"))
    assert "holds model 'distilgpt2' but report.json describes 'gpt2'" in refused(["eval", str(renamed)], capsys)


def test_a_report_json_that_is_not_an_object_is_refused(compiled: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(compiled, bad)
    (bad / "report.json").write_text("[1, 2]")
    assert "not an object" in refused(["energy", str(bad)], capsys)


# ---------------------------------------------------------------------------------------------
# model.nir must fit its tokenizer, the sequences asked of it and itself (issue 19 item 12)
# ---------------------------------------------------------------------------------------------


def cut_vocabulary(graph: nir.NIRGraph) -> None:
    embed = graph.nodes["embed"]
    replace_node(graph, "embed", ir.SpikecEmbedding(weight=embed.weight[:1000], position_weight=embed.position_weight))


def wrong_head_dim(graph: nir.NIRGraph) -> None:
    attn = graph.nodes["h_0_attn_core"]
    replace_node(graph, "h_0_attn_core", ir.SpikecAttention(num_heads=4, num_kv_heads=4, head_dim=8,
                                                            rope_theta=attn.rope_theta, scale=attn.scale))


DAMAGED = {  # what is wrong -> (the edit, what the error line says)
    "embedding rows fewer than the vocabulary": (
        cut_vocabulary, "node 'embed' (SpikecEmbedding) field 'weight' has 1000 rows, "
                        "fewer than the tokenizer's 50257 tokens"),
    "heads x head_dim not the width around attention": (
        wrong_head_dim, "node 'h_0_attn_core' (SpikecAttention) (num_heads 4 + 2 x num_kv_heads 4) x head_dim 8 = 96 "
                        "input features, but node 'h_0_attn_qkv_readout' (SpikecRateReadout) gives 192"),
}


@pytest.mark.parametrize("command", ["eval", "energy"])
@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_model_nir_that_does_not_fit_is_refused_before_it_runs(compiled: Path, tmp_path: Path, capsys,
                                                                 damage: str, command: str) -> None:
    edit, expected = DAMAGED[damage]
    bad = edited(compiled, tmp_path / "damaged", edit)
    assert expected in refused([command, str(bad), "--tokens", "32"], capsys)


def cut_positions(graph: nir.NIRGraph) -> None:
    embed = graph.nodes["embed"]
    replace_node(graph, "embed", ir.SpikecEmbedding(weight=embed.weight, position_weight=embed.position_weight[:16]))


def test_a_position_table_shorter_than_the_sequence_is_refused(compiled: Path, tmp_path: Path, capsys) -> None:
    short = edited(compiled, tmp_path / "short", cut_positions)
    line = refused(["eval", str(short), "--tokens", "64"], capsys)
    assert "field 'position_weight' has 16 positions, fewer than the 64 of a sequence (--seq-len)" in line
    assert "use at most 16 positions" in line
    assert main(["eval", str(short), "--tokens", "64", "--seq-len", "16", "--json"]) == 0  # within the table


def test_a_prompt_longer_than_the_position_table_is_refused(compiled: Path, tmp_path: Path, capsys) -> None:
    short = edited(compiled, tmp_path / "short", cut_positions)
    line = refused(["run", str(short), "--prompt", "def f(x): return x", "--max-new-tokens", "20"], capsys)
    assert "fewer than the 26 of the prompt and --max-new-tokens" in line


@pytest.mark.parametrize("command", [["inspect"], ["eval"]])
def test_a_repeated_edge_is_refused_by_the_reader(compiled: Path, tmp_path: Path, capsys, command: list[str]) -> None:
    repeated = edited(compiled, tmp_path / "repeated", lambda g: g.edges.append(g.edges[1]))
    target = repeated / "model.nir" if command == ["inspect"] else repeated
    assert "edge ('embed', 'h_0_ln_1') appears more than once" in refused([*command, str(target)], capsys)


def test_a_refusal_in_a_real_process_is_one_line_without_traceback(compiled: Path, tmp_path: Path) -> None:
    small = edited(compiled, tmp_path / "small-vocab", cut_vocabulary)
    proc = subprocess.run([sys.executable, "-m", "spikec.cli", "eval", str(small)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 3
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# recurrent standard NIR graphs (allowed by NIR and by nirio.read)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def recurrent(tmp_path: Path) -> Path:
    """Input -> Affine -> LIF -> Output, with LIF -> Linear -> Affine closing a loop."""
    nodes = {"input": nir.Input(input_type={"input": np.array([3])}),
             "a": nir.Affine(weight=np.eye(3, dtype=np.float32), bias=np.zeros(3, np.float32)),
             "lif": nir.LIF(tau=np.full(3, 10.0), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3)),
             "rec": nir.Linear(weight=np.eye(3, dtype=np.float32)),
             "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "a"), ("a", "lif"), ("lif", "rec"), ("rec", "a"), ("lif", "output")]
    path = tmp_path / "recurrent.nir"
    nirio.write(path, nir.NIRGraph(nodes=nodes, edges=edges))
    return path


def test_inspect_lists_a_recurrent_graph_and_its_cycle(recurrent: Path, capsys) -> None:
    assert main(["inspect", str(recurrent)]) == 0
    out = capsys.readouterr().out
    assert "nodes: 5   edges: 5" in out
    assert "recurrent: yes (cycle a -> lif -> rec -> a)" in out


def test_export_nir_portable_refuses_a_recurrent_graph_by_name(recurrent: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "portable"
    assert main(["export-nir", str(recurrent), "-o", str(out)]) == 4
    line = one_error_line(capsys)
    assert "the graph is recurrent (cycle a -> lif -> rec -> a)" in line and "--profile full" in line
    assert not out.exists() and not list(tmp_path.glob(".portable.tmp-*"))


def test_export_nir_full_copies_a_recurrent_graph(recurrent: Path, tmp_path: Path) -> None:
    assert main(["export-nir", str(recurrent), "--profile", "full", "-o", str(tmp_path / "full")]) == 0
    assert (tmp_path / "full" / "model.nir").read_bytes() == recurrent.read_bytes()
