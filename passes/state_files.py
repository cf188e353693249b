"""Resumable state on disk, safe to read: safetensors plus JSON, in private folders.

Fine-tuning checkpoints and FAS progress files live in places another user may reach (a
shared cache, a build folder). Such a file is data and never code: tensors are stored with
safetensors, everything else (run id, step counters, RNG state, losses) as JSON in the
safetensors header's metadata. ``load_state`` reads that header first and checks the run id
before it loads a single tensor; a file that is not such a state (an old pickle, a truncated
or foreign file) is ignored, never unpickled.

Folders: ``private_dir`` creates a state folder with mode 0700 and refuses one owned by
another user or writable by group or others; ``load_state`` refuses a file owned by another
user, writable by others, or in a folder others may write to (without the sticky bit). A
refusal prints one warning line to stderr and the caller goes on without that state.
Writes go to a ``tempfile.mkstemp`` file in the target folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spikec.core.private_paths import make_private_dir, unsafe_reason

META_KEY = "spikec_state"  # safetensors metadata entry holding the JSON state
_TENSOR = "__tensor__"  # JSON placeholder {"__tensor__": key} for a tensor stored in the file
_MAX_HEADER = 64 << 20  # bytes; a larger header is not one of ours


def warn(message: str) -> None:
    """Print one warning line to stderr (``spikec: warning: ...``)."""
    print(f"spikec: warning: {message}", file=sys.stderr)


def private_dir(path: Path) -> bool:
    """Create the state folder ``path`` (mode 0700) or check an existing one: True when it is
    a folder of the current user that neither group nor others may write; otherwise warn
    once and return False (the caller then keeps no state there)."""
    try:
        make_private_dir(path)
        info = os.lstat(path)
    except OSError as e:
        warn(f"cannot use the state folder {path}: {e}; continuing without saved state")
        return False
    if unsafe_reason(info, os.getuid(), directory=True) is not None:
        warn(f"not using the state folder {path}: it must be a folder of yours that group and others "
             f"cannot write (chmod 700 {path}); continuing without saved state")
        return False
    return True


def _trusted_file(path: Path) -> bool:
    """Whether ``path`` is a regular file of the current user that others cannot write or swap."""
    info = os.lstat(path)
    folder = os.stat(path.parent)
    folder_shared = bool(folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) and not folder.st_mode & stat.S_ISVTX
    return unsafe_reason(info, os.getuid(), directory=False) is None and not folder_shared


def split_tensors(value: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """``value`` (nested dicts with str keys, lists, tuples, JSON scalars, tensors) as JSON:
    each tensor moves into ``tensors`` (on the CPU, contiguous, named by its path) and is
    replaced by a placeholder; tuples become lists."""
    if isinstance(value, torch.Tensor):
        key = prefix or "tensor"
        tensors[key] = value.detach().to("cpu").contiguous()
        return {_TENSOR: key}
    if isinstance(value, dict):
        return {str(k): split_tensors(v, tensors, f"{prefix}.{k}" if prefix else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [split_tensors(v, tensors, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(value)]
    return value


def join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``split_tensors``: placeholders replaced by their tensors."""
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        return {k: join_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [join_tensors(v, tensors) for v in value]
    return value


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (a dict with a ``run_id``; tensors anywhere inside, see ``split_tensors``)
    to ``path`` atomically: safetensors with the JSON in its metadata, written to a temporary
    file in the same folder (created 0700 when missing), then renamed over ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    meta = split_tensors(state, tensors)
    seen: set[int] = set()
    for key, t in tensors.items():  # safetensors stores each tensor's own memory: copy shared or partial ones
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            tensors[key] = t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.close(fd)
        save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(path: Path) -> dict[str, Any] | None:
    """The JSON state in the header of the safetensors file ``path``, without reading any
    tensor; None when the file is not such a state."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= _MAX_HEADER:
                return None
            header = json.loads(f.read(size))
        meta = json.loads(header["__metadata__"][META_KEY])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def other_run(path: Path, run_id: str) -> bool:
    """Whether ``path`` is a trusted state file (see ``load_state``) saved by a run other than
    ``run_id`` (only its header is read)."""
    if not path.exists() or not _trusted_file(path):
        return False
    meta = read_meta(path)
    return meta is not None and meta.get("run_id") != run_id


def load_state(path: Path, run_id: str, what: str = "state file") -> dict[str, Any] | None:
    """The state saved at ``path`` by run ``run_id``, or None: missing, not a safetensors
    state (e.g. an old pickle: ignored with a warning, never loaded), not trusted (see the
    module docstring; warned), or another run's (``meta["run_id"]`` differs; compared before
    any tensor is read). ``what`` names the file in warnings."""
    if not path.exists():
        return None
    if not _trusted_file(path):
        warn(f"ignoring the {what} {path}: it must be a file of yours that others cannot write or replace")
        return None
    meta = read_meta(path)
    if meta is None:
        warn(f"ignoring the {what} {path}: not a spikec safetensors state (an older format or a damaged file)")
        return None
    if meta.get("run_id") != run_id:
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return join_tensors(meta, tensors)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        warn(f"ignoring the {what} {path}: {e}")
        return None
