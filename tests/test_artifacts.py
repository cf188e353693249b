"""A compile output directory is self-contained: ``spikec run`` works after the source model's
directory has moved; ``spikec eval`` says where its reference ANN comes from and takes
``--model`` to point elsewhere."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from spikec.cli import main


def test_run_after_the_source_moved_and_eval_with_model(tmp_path: Path, capsys) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from spikec.frontend.models import gpt2_tokenizer

    torch.manual_seed(0)
    src = tmp_path / "src"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)).save_pretrained(src)
    gpt2_tokenizer().save_pretrained(src)
    out = tmp_path / "c"
    assert main(["compile", str(src), "-T", "4", "--calib-samples", "1", "--seq-len", "16", "-o", str(out)]) == 0
    capsys.readouterr()
    prompt = ["--prompt", "Hello world", "--max-new-tokens", "2"]
    assert main(["run", str(out), *prompt]) == 0
    before = capsys.readouterr().out.splitlines()
    shutil.move(src, tmp_path / "moved")

    assert main(["run", str(out), *prompt]) == 0
    captured = capsys.readouterr()
    after = captured.out.splitlines()
    assert after[:2] == before[:2]  # the prompt and the SNN's continuation, without the source
    assert after[2].startswith("ANN:    (not run: the source model directory") and "--model" in after[2]
    assert "generating (SNN): 2/2" in captured.err  # plain progress lines when stderr is not a terminal

    assert main(["eval", str(out), "--tokens", "32"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no longer exists" in err[0] and "--model" in err[0]

    assert main(["eval", str(out), "--tokens", "32", "--model", str(tmp_path / "moved")]) == 0
    assert f"reference ANN: {tmp_path / 'moved'} (from --model)" in capsys.readouterr().err
    assert main(["run", str(out), *prompt, "--model", str(tmp_path / "moved")]) == 0
    assert capsys.readouterr().out.splitlines() == before
