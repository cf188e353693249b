"""The Python 3.10 environment that runs Lava.

lava-nc 0.10 needs Python 3.10 and numpy < 2 while spikec runs on 3.11+, so the Lava side
runs in its own interpreter: ``SPIKEC_LAVA_PYTHON`` (a python executable or a venv
directory) or the repository's ``.venv-lava`` (built by ``make lava-env``). That venv holds
only lava-nc, nir and numpy (plus their dependencies), the same as a user's Lava host.
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
ENV_DIR = ".venv-lava"
REQUIREMENTS = ("lava-nc==0.10.0", "nir==1.0.8", "numpy<2")
PYENV_VERSION = "3.10.13"
HOW_TO = (
    "lava-nc 0.10 needs Python 3.10: run `make lava-env`, which uses pyenv's 3.10.13 or `python3.10` "
    "(get one with `pyenv install 3.10.13` or your system's python3.10 package), or set "
    f"{ENV_VAR} to a Python 3.10 holding {', '.join(REQUIREMENTS)}"
)


def repo_root() -> Path:
    """The source checkout (backends/lava/env.py -> the repository root)."""
    return Path(__file__).resolve().parents[2]


def _python_in(path: Path) -> Path:
    return path / "bin" / "python" if path.is_dir() else path


def find_lava_python() -> Path | None:
    """The interpreter of the Lava environment, or None when there is none. ``SPIKEC_LAVA_PYTHON``
    wins (a path that does not exist counts as missing); else ``<repo>/.venv-lava``."""
    configured = os.environ.get(ENV_VAR)
    candidate = _python_in(Path(configured)) if configured else repo_root() / ENV_DIR / "bin" / "python"
    return candidate if candidate.exists() else None


@functools.lru_cache(maxsize=8)
def probe(python: str) -> dict[str, str]:
    """Versions of Python, lava-nc, nir and numpy in ``python`` (raises ``ResourceError`` when
    they cannot be imported)."""
    code = ("import json, sys, importlib.metadata as m, lava, nir, numpy; "
            "print(json.dumps({'python': sys.version.split()[0], 'lava-nc': m.version('lava-nc'), "
            "'nir': m.version('nir'), 'numpy': numpy.__version__}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
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
        where = os.environ.get(ENV_VAR) or str(repo_root() / ENV_DIR)
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
    """Create a venv with lava-nc, nir and numpy < 2 (the same as ``make lava-env``); returns
    its python. Needs network access to PyPI (~15-30 s)."""
    target = Path(target) if target else repo_root() / ENV_DIR
    base = Path(python310) if python310 else find_python310()
    if base is None:
        raise ResourceError("no Python 3.10 found to build the Lava environment", hint=HOW_TO)
    subprocess.run([str(base), "-m", "venv", str(target)], check=True)
    python = target / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    (target / ".installed").touch()
    return python


if __name__ == "__main__":  # python -m spikec.backends.lava.env [TARGET]
    print(create_lava_env(sys.argv[1] if len(sys.argv) > 1 else None))
