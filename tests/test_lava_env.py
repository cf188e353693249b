"""Where spikec finds the Lava environment, `spikec lava-env`, and the clean environment the
Lava interpreter runs with (backends/lava/env.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spikec.backends.lava import env
from spikec.cli import main


@pytest.fixture
def no_lava_vars(monkeypatch, tmp_path):
    for var in (env.ENV_VAR, env.VENV_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    env.probe.cache_clear()
    yield tmp_path
    env.probe.cache_clear()


def test_candidates_in_order(no_lava_vars, monkeypatch):
    tmp = no_lava_vars
    assert env.env_candidates() == [env.repo_root() / ".venv-lava" / "bin" / "python",
                                    tmp / "data" / "spikec" / "lava-env" / "bin" / "python"]
    monkeypatch.setenv(env.VENV_VAR, str(tmp / "v"))
    assert env.env_candidates() == [tmp / "v" / "bin" / "python"]
    assert env.default_env_dir() == tmp / "v"
    monkeypatch.setenv(env.ENV_VAR, str(tmp / "py"))
    assert env.env_candidates() == [tmp / "py"]  # SPIKEC_LAVA_PYTHON wins


def test_default_location_is_the_checkouts_else_per_user(no_lava_vars, monkeypatch):
    assert env.is_checkout() and env.default_env_dir() == env.repo_root() / ".venv-lava"
    monkeypatch.setattr(env, "is_checkout", lambda: False)  # as from a wheel
    assert env.default_env_dir() == no_lava_vars / "data" / "spikec" / "lava-env"


def test_the_per_user_environment_is_found(no_lava_vars, monkeypatch):
    monkeypatch.setattr(env, "repo_root", lambda: no_lava_vars / "site-packages")  # as from a wheel
    python = no_lava_vars / "data" / "spikec" / "lava-env" / "bin" / "python"
    assert env.find_lava_python() is None
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert env.find_lava_python() == python


def test_the_child_environment_has_none_of_spikecs_python_settings(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/numpy2")
    monkeypatch.setenv("PYTHONHOME", "/x")
    monkeypatch.setenv("VIRTUAL_ENV", "/venv")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    child = env.child_environment()
    assert not {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} & set(child)
    assert child["OMP_NUM_THREADS"] == "1" and "PATH" in child


def test_lava_env_check_without_an_environment_fails_with_one_line(no_lava_vars, monkeypatch, capsys):
    monkeypatch.setenv(env.VENV_VAR, str(no_lava_vars / "missing"))
    assert main(["lava-env", "--check"]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Lava environment" in err[0] and "spikec lava-env" in err[0]


def test_lava_env_without_a_python_310_fails_with_one_line(no_lava_vars, capsys):
    assert main(["lava-env", "--dir", str(no_lava_vars / "new"), "--python", str(no_lava_vars / "nopython")]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "building the Lava environment" in err[0]


def lava_python_or_skip() -> Path:
    python = env.repo_root() / ".venv-lava" / "bin" / "python"
    if not python.exists():
        pytest.skip("no .venv-lava (make lava-env)")
    return python


def test_lava_env_checks_an_existing_environment_even_with_a_hostile_pythonpath(no_lava_vars, monkeypatch, capsys):
    python = lava_python_or_skip()
    hostile = no_lava_vars / "hostile"
    hostile.mkdir()
    (hostile / "numpy.py").write_text("raise ImportError('the parent numpy leaked into Lava')\n")
    monkeypatch.setenv("PYTHONPATH", str(hostile))
    monkeypatch.setenv(env.VENV_VAR, str(python.parent.parent))
    assert main(["lava-env", "--check"]) == 0
    out = capsys.readouterr().out
    assert "lava-nc 0.10.0" in out and "numpy 1." in out
    assert main(["lava-env", "--debug"]) == 0  # the environment exists: checked, not rebuilt
    assert "building" not in capsys.readouterr().out
