"""A private cache of de-quantised reference weights, so that a model stored quantised (SmolLM2's
Q4_1 GGUF file) is de-quantised once per machine rather than on every ``compile``, ``eval`` and
``run`` (20-30 s each time).

The cache lives in ``$SPIKEC_CACHE/weights`` (default ``~/.cache/spikec/weights``), one
directory per source file, named by the sha256 of that file and the transformers version. Each
holds ``config.json`` and ``model.safetensors`` (float32
tensors; data, never code: no pickle). Like the kernel cache, it is used only when the
directory is a real directory owned by the current user and writable by no one else; an entry
is written to a temporary directory and renamed into place, so readers never see half of one.
When the cache cannot be used, the model is simply de-quantised each time.

``quiet_loading`` keeps transformers' own progress bars off while spikec loads weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import save_model

from spikec.core.private_paths import cache_root, make_private_dir, unsafe_reason


def weights_dir() -> Path:
    """``$SPIKEC_CACHE/weights`` or ``~/.cache/spikec/weights``."""
    return cache_root() / "weights"


def entry_name(source: Path, prefix: str) -> str:
    """The cache entry of ``source`` (a weights file): ``prefix-<sha256 of the file and the
    transformers version, 16 hex digits>``."""
    import transformers

    digest = hashlib.sha256(transformers.__version__.encode())
    with open(source, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return f"{prefix}-{digest.hexdigest()[:16]}"


def _private(path: Path, *, create: bool) -> bool:
    """Whether ``path`` is a directory we may trust (created 0700 when ``create``)."""
    if create:
        make_private_dir(path)
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return unsafe_reason(st, os.getuid(), directory=True) is None


def _entry_ok(entry: Path) -> bool:
    if not _private(entry, create=False):
        return False
    for name in ("config.json", "model.safetensors"):
        try:
            st = os.lstat(entry / name)
        except OSError:
            return False
        if unsafe_reason(st, os.getuid(), directory=False) is not None:
            return False
    return True


def cached_entry(source: Path, prefix: str) -> Path | None:
    """The cache directory holding ``source``'s de-quantised weights, or None (not cached yet,
    or the cache is not private)."""
    root = weights_dir()
    if not _private(root, create=False):
        return None
    entry = root / entry_name(source, prefix)
    return entry if _entry_ok(entry) else None


def load_cached(entry: Path) -> torch.nn.Module:
    """The model saved in ``entry``: float32, eval mode, sdpa attention, safetensors only."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(entry), local_files_only=True, use_safetensors=True, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.eval()


REFERENCE_DIR = "reference"
"""Where a compile output directory keeps its reference ANN when the model was compiled from a
Python object (``spikec.compile(model_object)``), as ``save_weights`` writes it."""


def save_weights(model: torch.nn.Module, directory: Path) -> None:
    """Write ``model`` (a transformers model) to ``directory`` (created): ``config.json`` and
    ``model.safetensors`` (tied tensors once), which ``load_cached`` reads back."""
    directory.mkdir(parents=True, exist_ok=True)
    # not save_pretrained: transformers refuses it for a model loaded from GGUF
    model.config.save_pretrained(str(directory))
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})


def store(model: torch.nn.Module, source: Path, prefix: str) -> Path | None:
    """Save ``model`` (a transformers model) as the cache entry of ``source``; the entry, or
    None when the cache is not usable (not private, disk full): caching is best effort."""
    root = weights_dir()
    try:
        if not _private(root, create=True):
            return None
        if stat.S_IMODE(os.lstat(root).st_mode) != 0o700:
            os.chmod(root, 0o700)
        entry = root / entry_name(source, prefix)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
        try:
            save_weights(model, tmp)
            os.rename(tmp, entry)
        except (OSError, ValueError):
            shutil.rmtree(tmp, ignore_errors=True)
            return entry if _entry_ok(entry) else None  # another process put it there first
        return entry
    except OSError:
        return None


def load_through_cache(source: Path, prefix: str, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The model from the cache entry of ``source`` when there is one, else ``build()`` (which
    de-quantises ``source``), stored in the cache for next time."""
    entry = cached_entry(source, prefix)
    if entry is not None:
        try:
            return load_cached(entry)
        except (OSError, ValueError):
            shutil.rmtree(entry, ignore_errors=True)  # a damaged entry: rebuilt below
    model = build()
    store(model, source, prefix)
    return model


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' progress bars ("Loading weights") off inside the block, as they were after it."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
