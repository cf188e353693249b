"""Each coding's default T: without -T (``timesteps``), compile takes 16 steps per token for the
rate code, 8 for binary and 7 for ternary (spikec.core.codings.DEFAULT_TIMESTEPS); an explicit T is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import spikec
from spikec.backends import nirio
from spikec.cli import build_parser, main
from spikec.compiler import CompileOptions
from spikec.core.codings import CODINGS, DEFAULT_TIMESTEPS

TINY = ["gpt2", "--random-weights", "--config", "n_layer=1,n_embd=32,n_head=2", "--calib-samples", "2",
        "--seq-len", "16"]
EXPECTED = {"rate": 16, "binary": 8, "ternary": 7}


def written_timesteps(out: Path) -> tuple[int, int]:
    """T as report.json and model.nir's metadata record it."""
    report = json.loads((out / "report.json").read_text())
    return report["timesteps"], int(nirio.read(out / "model.nir").metadata["timesteps"])


def test_every_coding_has_its_default_and_rate_keeps_16():
    assert DEFAULT_TIMESTEPS == EXPECTED and set(DEFAULT_TIMESTEPS) == set(CODINGS)


@pytest.mark.parametrize("coding", CODINGS)
def test_compile_without_T_writes_the_codings_default(tmp_path, coding):
    out = tmp_path / coding
    assert main(["compile", *TINY, "--coding", coding, "-o", str(out)]) == 0
    assert written_timesteps(out) == (EXPECTED[coding], EXPECTED[coding])


def test_an_explicit_T_is_kept_whatever_the_coding(tmp_path):
    out = tmp_path / "b5"
    assert main(["compile", *TINY, "--coding", "binary", "-T", "5", "-o", str(out)]) == 0
    assert written_timesteps(out) == (5, 5)
    assert build_parser().parse_args(["compile", "gpt2", "--coding", "ternary", "-T", "16"]).timesteps == 16


def test_the_python_api_takes_the_same_defaults(tmp_path):
    snn = spikec.compile("gpt2", output=tmp_path / "t", random_weights=True, config={"n_layer": 1, "n_embd": 32,
                         "n_head": 2}, calib_samples=2, seq_len=16, coding="ternary")
    assert snn.timesteps == 7 and snn.compile_report["timesteps"] == 7
    for coding, t in EXPECTED.items():
        assert CompileOptions(model="gpt2", coding=coding).timesteps == t
    assert CompileOptions(model="gpt2").timesteps == 16
    assert CompileOptions(model="gpt2", coding="binary", timesteps=16).timesteps == 16


def test_the_help_of_T_and_coding_states_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "-T TIMESTEPS, --timesteps TIMESTEPS timesteps per window (default by --coding: rate 16, binary 8, ternary 7)" \
        in help_text
    assert "-T defaults to rate 16, binary 8, ternary 7" in help_text
