"""The Python 3.10 environment that runs Lava.

lava-nc 0.10 needs Python 3.10 and numpy < 2 while spikec runs on 3.11+, so the Lava side
runs in its own interpreter, the first of: ``SPIKEC_LAVA_PYTHON`` (a python executable or a
venv directory), the venv ``SPIKEC_LAVA_VENV``, a source checkout's ``.venv-lava`` (built by
``make lava-env``), and the per-user ``$XDG_DATA_HOME/spikec/lava-env`` (default
``~/.local/share/spikec/lava-env``, built by ``spikec lava-env`` from a pip install). That venv
holds only lava-nc, nir and numpy (plus their dependencies), the same as a user's Lava host.
The Lava interpreter always runs with ``child_environment()``: none of spikec's own Python
settings (``PYTHONPATH`` and the like) reach it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from spikec.core.errors import ResourceError

ENV_VAR = "SPIKEC_LAVA_PYTHON"
VENV_VAR = "SPIKEC_LAVA_VENV"
ENV_DIR = ".venv-lava"
REQUIREMENTS = ("lava-nc==0.10.0", "nir==1.0.8", "numpy<2")
PYENV_VERSION = "3.10.13"
HOW_TO = (
    "lava-nc 0.10 needs Python 3.10: run `spikec lava-env` (or `make lava-env` in a clone), which uses "
    "pyenv's 3.10.13 or `python3.10` (get one with `pyenv install 3.10.13` or your system's python3.10 "
    f"package; or pass --python PATH), or set {ENV_VAR} to a Python 3.10 holding {', '.join(REQUIREMENTS)}"
)
# set for the parent interpreter, never for the Lava one (a PYTHONPATH holding numpy 2 breaks lava-nc)
_PARENT_ONLY = ("VIRTUAL_ENV", "CONDA_PREFIX", "__PYVENV_LAUNCHER__")


def repo_root() -> Path:
    """The source checkout (backends/lava/env.py -> the repository root)."""
    return Path(__file__).resolve().parents[2]


def _python_in(path: Path) -> Path:
    return path / "bin" / "python" if path.is_dir() else path


def user_env_dir() -> Path:
    """The per-user Lava venv: ``$XDG_DATA_HOME/spikec/lava-env`` (``~/.local/share/...`` when
    ``XDG_DATA_HOME`` is unset)."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "spikec" / "lava-env"


def is_checkout() -> bool:
    """Whether spikec runs from a source checkout (the Makefile beside pyproject.toml), not a wheel."""
    root = repo_root()
    return (root / "Makefile").is_file() and (root / "pyproject.toml").is_file()


def default_env_dir() -> Path:
    """Where ``spikec lava-env`` builds the venv: ``SPIKEC_LAVA_VENV``; else a checkout's
    ``.venv-lava`` (the Makefile's); else ``user_env_dir()``."""
    if os.environ.get(VENV_VAR):
        return Path(os.environ[VENV_VAR])
    return repo_root() / ENV_DIR if is_checkout() else user_env_dir()


def env_candidates() -> list[Path]:
    """The interpreters looked for, in order (module docstring)."""
    if os.environ.get(ENV_VAR):
        return [_python_in(Path(os.environ[ENV_VAR]))]
    dirs = [Path(os.environ[VENV_VAR])] if os.environ.get(VENV_VAR) else [repo_root() / ENV_DIR, user_env_dir()]
    return [d / "bin" / "python" for d in dirs]


def find_lava_python() -> Path | None:
    """The interpreter of the Lava environment, or None when there is none: the first of
    ``env_candidates()`` that exists (``SPIKEC_LAVA_PYTHON`` or ``SPIKEC_LAVA_VENV``, when set,
    is the only candidate: a path that does not exist counts as missing)."""
    return next((c for c in env_candidates() if c.exists()), None)


def child_environment() -> dict[str, str]:
    """The environment the Lava interpreter runs with: this process's, less every ``PYTHON*``
    variable and the markers of the active venv, which belong to spikec's interpreter."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k not in _PARENT_ONLY}


@functools.lru_cache(maxsize=8)
def probe(python: str) -> dict[str, str]:
    """Versions of Python, lava-nc, nir and numpy in ``python`` (raises ``ResourceError`` when
    they cannot be imported)."""
    code = ("import json, sys, importlib.metadata as m, lava, nir, numpy; "
            "print(json.dumps({'python': sys.version.split()[0], 'lava-nc': m.version('lava-nc'), "
            "'nir': m.version('nir'), 'numpy': numpy.__version__}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120,
                             env=child_environment())
    except OSError as e:
        raise ResourceError(f"cannot run the Lava Python {python}: {e}", hint=HOW_TO) from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ResourceError(f"the Lava Python {python} cannot import lava-nc, nir and numpy ({last})", hint=HOW_TO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def lava_python(check: bool = True) -> Path:
    """The Lava interpreter; with ``check`` also verifies it imports lava-nc, nir and numpy.
    Raises ``ResourceError`` (one line, saying how to get Python 3.10) when there is none."""
    python = find_lava_python()
    if python is None:
        where = " or ".join(str(c) for c in env_candidates())
        raise ResourceError(f"no Lava environment at {where}", hint=HOW_TO)
    if check:
        probe(str(python))
    return python


def find_python310() -> Path | None:
    """A Python 3.10 to build the environment from: pyenv's 3.10.13 (or any 3.10.x), else
    ``python3.10`` on PATH."""
    pyenv = shutil.which("pyenv")
    roots = []
    if pyenv:
        try:
            roots.append(Path(subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30).stdout.strip()))
        except OSError:
            pass
    roots.append(Path.home() / ".pyenv")
    for root in roots:
        exact = root / "versions" / PYENV_VERSION / "bin" / "python"
        if exact.exists():
            return exact
        others = sorted(root.glob("versions/3.10.*/bin/python"))
        if others:
            return others[-1]
    found = shutil.which("python3.10")
    return Path(found) if found else None


def create_lava_env(target: str | Path | None = None, python310: str | Path | None = None) -> Path:
    """Create a venv with lava-nc, nir and numpy < 2 (the same as ``make lava-env``) at
    ``target`` (default ``default_env_dir()``); returns its python. Needs the package index
    (~15-30 s). Raises ``ResourceError`` when there is no Python 3.10 or pip fails."""
    target = Path(target) if target else default_env_dir()
    base = Path(python310) if python310 else find_python310()
    if base is None:
        raise ResourceError("no Python 3.10 found to build the Lava environment", hint=HOW_TO)
    clean = child_environment()
    try:
        subprocess.run([str(base), "-m", "venv", str(target)], check=True, env=clean)
        python = target / "bin" / "python"
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
                       check=True, env=clean)
    except (OSError, subprocess.CalledProcessError) as e:
        raise ResourceError(f"building the Lava environment at {target} failed ({e})", hint=HOW_TO) from None
    (target / ".installed").touch()
    probe.cache_clear()
    return python


if __name__ == "__main__":  # python -m spikec.backends.lava.env [TARGET]
    print(create_lava_env(sys.argv[1] if len(sys.argv) > 1 else None))
