"""Folders and files spikec may trust because no one else could have written them.

spikec keeps compiled kernels, de-quantised weights and resumable training state in places
another user may reach (a shared HOME, ``$SPIKEC_CACHE``, a build folder). Whatever is read
back from there is trusted only when it is of the expected kind, owned by the current user and
writable by neither group nor others (``unsafe_reason``); folders spikec creates for it are
made 0700 (``make_private_dir``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def cache_root() -> Path:
    """spikec's cache folder: ``$SPIKEC_CACHE``, by default ``~/.cache/spikec``."""
    return Path(os.environ.get("SPIKEC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spikec"))


def unsafe_reason(st: os.stat_result, uid: int, *, directory: bool) -> str | None:
    """Why a file (or directory) with status ``st`` must not be trusted by user ``uid``, or None
    when it is of the right kind, owned by ``uid`` and writable by neither group nor others."""
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        return "is not a directory" if directory else "is not a regular file"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by the current user (uid {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def make_private_dir(path: Path) -> None:
    """Create the directory ``path`` with mode 0700 (its parents as usual) unless it exists;
    whether an existing one may be trusted is the caller's check (``unsafe_reason``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
