"""Atomic outputs: output directories built in a temporary directory beside the target and
moved into place only when everything succeeded, and files written through a temporary file
made in place (``tempfile.mkstemp``, never a fixed name that could be a planted symlink).

What a user's disk is protected from (docs/errors.md, "Atomic outputs"):

* ``--force`` replaces only a directory spikec wrote (``spikec_wrote``) or an empty one;
  ``.``, ``..``, ``/``, files and symlinks are refused before any work is done;
* the final move never replaces a directory that appeared meanwhile (``rename_noreplace``):
  of two concurrent runs to one output, the second ends with ``UsageError`` (exit 2);
* temporary trees are named ``.<name>.tmp-<pid>-<random>``; those of dead processes are swept
  by the next run into the same parent directory;
* directories and files get the mode the umask gives (as ``mkdir`` and ``open`` would).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from spikec.arguments import MAX_SEED, MAX_SEQ_LEN, MAX_TIMESTEPS
from spikec.core.errors import InputError, ResourceError, UsageError, one_line

SPIKEC_MARKERS = ("report.json", "model.nir")  # a compile output holds both
PORTABLE_MANIFEST = ("manifest.json", "spikec-portable-manifest")  # an export-nir output: file, its "format"
_TEMP_NAME = re.compile(r"^\..+\.(?:tmp|old)-(\d+)-[a-z0-9_]{8}$")
_MAX_MARKER_BYTES = 64 << 20


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _read_json_object(path: Path) -> dict | None:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > _MAX_MARKER_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def spikec_wrote(directory: Path) -> bool:
    """Whether ``directory`` is empty or an output of spikec: a compile output (``report.json``
    with spikec's keys and ``model.nir``), a portable export (``manifest.json`` of spikec's
    format) or a full-profile export (``model.nir`` alone). Only these ``--force`` replaces."""
    try:
        names = {p.name for p in directory.iterdir()}
    except OSError:
        return False
    if not names or names == {"model.nir"}:
        return True
    if set(SPIKEC_MARKERS) <= names:
        report = _read_json_object(directory / "report.json")
        return report is not None and {"model", "timesteps", "passes"} <= set(report)
    manifest = _read_json_object(directory / PORTABLE_MANIFEST[0])
    return manifest is not None and manifest.get("format") == PORTABLE_MANIFEST[1]


def check_output_target(target: Path, force: bool) -> None:
    """Refuse, before any work is done, an output path that spikec must not write to:
    ``.``, ``..``, ``/``, a symlink, an existing file, an existing directory without ``force``
    and, with ``force``, a non-empty directory spikec did not write. Raises ``UsageError``."""
    shown = one_line(repr(str(target)), 200)
    if target.name in ("", ".", "..") or target.resolve() == Path(target.resolve().anchor):
        raise UsageError(f"output directory {shown} is not a directory spikec can replace",
                         hint="name a new directory, e.g. -o build/model")
    if target.is_symlink():
        raise UsageError(f"output directory {shown} is a symbolic link", hint="name a real directory")
    if target.exists() and not target.is_dir():
        raise UsageError(f"output {shown} exists and is not a directory", hint="name a new directory")
    if target.exists() and not force:
        raise UsageError(f"output directory {shown} already exists", hint="pass --force to replace it")
    if target.exists() and not spikec_wrote(target):
        raise UsageError(f"output directory {shown} was not written by spikec; --force replaces only spikec's "
                         "outputs or an empty directory", hint="name a new directory, or remove it yourself")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, OSError):
        return False
    return True


def sweep_stale_temporaries(parent: Path) -> list[Path]:
    """Remove the temporary trees (``.<name>.tmp-<pid>-*``, ``.<name>.old-<pid>-*``) that
    killed runs left in ``parent``: only directories owned by this user whose process is dead.
    Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or _pid_alive(int(match.group(1))):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2() -> object | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` only if ``dst`` does not exist, atomically: Linux
    ``renameat2(RENAME_NOREPLACE)`` where the kernel and file system have it, else by claiming
    ``dst`` with ``mkdir`` (atomic) and renaming onto the claimed empty directory. Raises
    ``FileExistsError`` when ``dst`` exists."""
    fn = _renameat2()
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    os.mkdir(dst)  # FileExistsError if anything is there
    try:
        os.rename(src, dst)  # onto our own empty directory
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(dst)
        raise


def _move_into_place(tmp: Path, target: Path, force: bool) -> None:
    shown = one_line(repr(str(target)), 200)
    try:
        if force and (target.exists() or target.is_symlink()):
            check_output_target(target, force=True)  # still spikec's (it may have changed meanwhile)
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
            os.rename(target, old)  # onto our empty directory
            try:
                rename_noreplace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            rename_noreplace(tmp, target)
    except FileExistsError:
        raise UsageError(f"output directory {shown} appeared while this run was writing it (another run?); "
                         "it was left as it is", hint="pass --force to replace it, or name another directory") from None


@contextlib.contextmanager
def atomic_directory(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on normal exit it becomes ``target``.

    If the body raises (including KeyboardInterrupt and SIGTERM/SIGHUP, which the command
    line turns into ``KeyboardInterrupt``) the temporary directory is removed and ``target``
    is left as it was. ``check_output_target`` runs first (``UsageError`` before any work);
    a directory that appears at ``target`` meanwhile is never replaced (``UsageError``)."""
    target = Path(target)
    check_output_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700; outputs get the usual mode
        yield tmp
        _move_into_place(tmp, target, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically: a temporary file made in
    place with ``mkstemp`` (a planted symlink is never followed), given the umask's mode, then
    ``os.replace`` (which replaces a symlink at ``path`` itself, not what it points to)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_result(path: str | Path, data: str | bytes) -> None:
    """``write_atomic`` for figures the command has printed already (``eval.json``,
    ``energy.json``): a directory that cannot take the file (read-only, full) raises
    ``ResourceError`` (exit 5) saying the figures shown were not saved."""
    try:
        write_atomic(path, data)
    except OSError as e:
        raise ResourceError(f"the figures above were not saved: cannot write {one_line(repr(str(path)), 200)}: "
                            f"{e.strerror}", hint="make the directory writable or free some space, and run again"
                            ) from None


def check_compile_report(report: Any, file: str) -> dict[str, Any]:
    """``report`` (the parsed ``report.json`` of a compile output, read from ``file``) if it has
    what ``eval``, ``run``, ``energy`` and ``report`` use, with sane types and ranges: a
    ``source`` model spec, ``timesteps`` and ``seq_len``. Else ``InputError`` naming the field
    (exit 3): a damaged or edited file is bad input, never an internal error."""

    def bad(what: str) -> InputError:
        return InputError(f"{one_line(repr(file), 200)}: {what}", hint="compile again with 'spikec compile'")

    def is_int(v: Any, low: int, high: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    if not isinstance(report, dict):
        raise bad(f"holds a JSON {type(report).__name__}, not an object")
    source = report.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("name"), str) or not source["name"]:
        raise bad("'source' is not a model spec with a 'name'")
    overrides = source.get("config_overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(v, (str, int, float)) for v in overrides.values()):
        raise bad("'source.config_overrides' is not an object of values")
    if not isinstance(source.get("random_weights", False), bool) or not is_int(source.get("seed", 0), 0, MAX_SEED):
        raise bad("'source.random_weights' or 'source.seed' has the wrong type or range")
    if not is_int(report.get("timesteps"), 1, MAX_TIMESTEPS):
        raise bad(f"'timesteps' is not an integer in 1..{MAX_TIMESTEPS}")
    if "seq_len" in report and not is_int(report["seq_len"], 2, MAX_SEQ_LEN):
        raise bad(f"'seq_len' is not an integer in 2..{MAX_SEQ_LEN}")
    return report


# ---------------------------------------------------------------------------
# reading a compile output directory (shared by spikec energy and spikec report); imports
# are local so that nirio and transformers load only when a directory is read
# ---------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; unreadable or malformed files (bad JSON or UTF-8) raise
    ``InputError``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {str(path)!r}: {one_line(e)}",
                         hint="run the command that writes it again") from None


def load_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved by ``spikec compile`` in ``DIR/tokenizer`` (a transformers tokenizer)."""
    path = Path(directory) / "tokenizer"
    if not path.is_dir():
        raise InputError(f"{str(directory)!r} has no tokenizer/ directory", hint="compile again with 'spikec compile'")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def read_compiled(directory: str | Path, lazy: bool = False) -> "tuple[Path, dict[str, Any], nir.NIRGraph]":
    """The directory, the report.json and the NIR graph of a compile output directory;
    ``InputError`` when it is not one. ``lazy``: large arrays stay in the file
    (``nirio.read(path, lazy=True)``)."""
    from spikec.backends import nirio
    from spikec.compiled_checks import check_compiled

    p = Path(directory)
    if not p.is_dir() or not (p / "report.json").is_file() or not (p / "model.nir").is_file():
        raise InputError(f"{str(p)!r} is not a spikec compile output (needs report.json and model.nir)",
                         hint="run 'spikec compile MODEL -o DIR' first")
    report = check_compile_report(read_json(p / "report.json"), str(p / "report.json"))
    graph = nirio.read(p / "model.nir", lazy=lazy)
    check_compiled(p, report, graph)  # report.json describes this model.nir; widths agree
    return p, report, graph
