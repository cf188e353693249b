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


# ---------------------------------------------------------------------------
# reading a compile output directory (shared by spikec energy and spikec report); imports
# are local so that nirio and transformers load only when a directory is read
# ---------------------------------------------------------------------------


def read_json(path: Path) -> "Any":
    """The JSON value in ``path``; unreadable or malformed files raise ``InputError``."""
    import json

    from spikec.core.errors import InputError

    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {str(path)!r}: {e}", hint="run the command that writes it again") from None


def write_json(path: Path, payload: "Any") -> None:
    """Write ``payload`` to ``path`` as indented JSON (other values by ``str``), atomically: a
    temporary file beside it replaces it."""
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def load_tokenizer(directory: str | Path) -> "Any":
    """The tokenizer saved by ``spikec compile`` in ``DIR/tokenizer`` (a transformers tokenizer)."""
    from spikec.core.errors import InputError

    path = Path(directory) / "tokenizer"
    if not path.is_dir():
        raise InputError(f"{str(directory)!r} has no tokenizer/ directory", hint="compile again with 'spikec compile'")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def read_compiled(directory: str | Path) -> "tuple[Path, dict[str, Any], nir.NIRGraph]":
    """The directory, the report.json and the NIR graph of a compile output directory;
    ``InputError`` when it is not one."""
    from spikec.backends import nirio
    from spikec.compiled_checks import check_compiled
    from spikec.core.errors import InputError

    p = Path(directory)
    if not p.is_dir() or not (p / "report.json").is_file() or not (p / "model.nir").is_file():
        raise InputError(f"{str(p)!r} is not a spikec compile output (needs report.json and model.nir)",
                         hint="run 'spikec compile MODEL -o DIR' first")
    report, graph = read_json(p / "report.json"), nirio.read(p / "model.nir")
    check_compiled(p, report, graph)  # report.json describes this model.nir; widths agree
    return p, report, graph
