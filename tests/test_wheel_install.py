"""pip alone gives a working spikec: a wheel built from this tree, installed in a new venv with
pip and constraints.txt (no Makefile, no editable install), compiles, evaluates, generates and
estimates energy from an unrelated directory. Slow: the new venv gets its own torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEFT_OUT = shutil.ignore_patterns(".git", ".venv*", "build", "__pycache__", "*.egg-info", ".pytest_cache",
                                  ".hypothesis", "*.nir")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the test venv's Python settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run(cmd: list[str], cwd: Path, timeout: float, **extra: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=clean_env(**extra), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_a_wheel_installed_with_pip_alone_compiles_evaluates_runs_and_estimates(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=LEFT_OUT)  # an in-tree build must not leave build/ in the checkout
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
         str(src)], tmp_path, 600)
    wheel, = (tmp_path / "dist").glob("spikec-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, 300)
    python, spikec = venv / "bin" / "python", venv / "bin" / "spikec"
    # the README's pip commands (the offline SmolLM2 is not needed for a random-weights model)
    run([str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(wheel)], tmp_path, 1800)

    work = tmp_path / "work"
    work.mkdir()
    where = run([str(python), "-c", "import spikec, spikec.backends.lava.env as e; print(spikec.__file__); "
                 "print(e.is_checkout())"], work, 300).split()
    assert where[0].startswith(str(venv)) and where[1] == "False"
    run([str(python), "-c", "import accelerate, gguf"], work, 300)  # what transformers needs to read SmolLM2's GGUF
    assert run([str(spikec), "--version"], work, 300).startswith("spikec 0.1.0")
    tiny = ["gpt2", "--random-weights", "--config", "n_layer=1,n_embd=32,n_head=2", "-T", "4", "--calib-samples", "2",
            "--seq-len", "16"]
    out = run([str(spikec), "compile", *tiny, "-o", "tiny"], work, 900)
    assert "wrote tiny/model.nir" in out and (work / "tiny" / "report.html").is_file()
    assert "ppl" in run([str(spikec), "eval", "tiny", "--tokens", "32"], work, 900)
    assert "SNN:" in run([str(spikec), "run", "tiny", "--prompt", "Hello", "--max-new-tokens", "2"], work, 900)
    assert "Loihi 2 fit" in run([str(spikec), "energy", "tiny", "--tokens", "32"], work, 900)
    # the per-user Lava environment is where a pip install looks (none here: one line, exit 5)
    proc = subprocess.run([str(spikec), "lava-env", "--check"], cwd=work, capture_output=True, text=True, timeout=300,
                          env=clean_env(XDG_DATA_HOME=str(tmp_path / "data")))
    assert proc.returncode == 5 and str(tmp_path / "data" / "spikec" / "lava-env") in proc.stderr, proc.stderr
