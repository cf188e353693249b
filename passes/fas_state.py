"""What the FAS passes (``qcfs-finetune``, ``fas-calibrate``) keep between runs and hand
each other: the fingerprint that names a run, the state folder, the calibration sequences
both cut from the calibration text, and the weights stage 1 leaves for stage 2.

State files are ``state_files`` safetensors states: ``load`` checks the run id in the file's
header before any tensor is read, and files that are not such states (older pickles) are
ignored, never loaded. The state folder is private (``state_files.private_dir``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from spikec.core.errors import InputError, UsageError
from spikec.core.passes import PassContext

from .state_files import load_state, private_dir

REFERENCE_KEY = "spikec_fas_reference"  # gm.meta: the weights before qcfs-finetune, fas-calibrate's target


def sequences(ctx: PassContext, seq_len: int, what: str) -> torch.Tensor:
    """Calibration ids cut into ``[n, seq_len]`` sequences (int64); ``InputError`` naming pass
    ``what`` when there are none, ``UsageError`` when ``seq_len`` does not fit."""
    data = ctx.calibration
    if data is None or data.numel() == 0:
        raise InputError(f"{what} needs calibration text (token ids [samples, positions])",
                         hint="give calibration text (--calib-text), or drop the pass")
    if data.dim() != 2:
        raise InputError(f"calibration token ids must be [samples, positions], got shape {list(data.shape)}")
    if not 2 <= seq_len <= data.shape[1]:
        raise UsageError(f"{what}: sequence length {seq_len} must be between 2 and the calibration samples' "
                         f"{data.shape[1]} positions", hint="lower the seq_len option or raise --seq-len")
    per = data.shape[1] // seq_len
    return data[:, : per * seq_len].reshape(-1, seq_len)


def fingerprint(tensors: list[torch.Tensor], ids: torch.Tensor, settings: dict[str, Any]) -> str:
    """A content hash of the tensors, the token ids and the settings (16 hex digits)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(sorted(settings.items())).encode())
    for t in [ids, *tensors]:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def state_dir(chosen: str | None) -> Path:
    """The state folder: ``chosen`` (option ``fas_state_dir``), by default
    ``$XDG_CACHE_HOME/spikec/fas`` (``~/.cache/spikec/fas``)."""
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spikec" / "fas"


def private_state_dir(chosen: str | None) -> Path | None:
    """``state_dir(chosen)``, created 0700, or None (with a warning) when it is not private."""
    path = state_dir(chosen)
    return path if private_dir(path) else None


def load(path: Path | None, run_id: str) -> dict | None:
    """The state file of run ``run_id`` at ``path``, or None (no path, missing, unreadable, not
    trusted, or another run's)."""
    return None if path is None else load_state(path, run_id, "FAS state file")


def cpu_value(v: float | torch.Tensor) -> float | torch.Tensor:
    """A float as it is, a tensor detached on the CPU (for state files)."""
    return v.detach().cpu() if isinstance(v, torch.Tensor) else v
