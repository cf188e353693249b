"""Atomic output directories: build in a temporary directory beside the target and
move it into place only when everything succeeded."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from spikec.core.errors import UsageError


@contextlib.contextmanager
def atomic_directory(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on normal exit it replaces ``target``.

    If the body raises (including KeyboardInterrupt) the temporary directory is
    removed and ``target`` is left as it was. An existing ``target`` is replaced only
    with ``force``; otherwise ``UsageError`` is raised before any work is done."""
    target = Path(target)
    if target.exists() and not force:
        raise UsageError(f"output directory {str(target)!r} already exists", hint="pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{tmp.name[-8:]}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
