"""Text inputs: the embedded calibration and held-out texts, reading user text files,
and cutting token streams into fixed-length samples."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from spikec.core.errors import InputError

CALIBRATION_TEXT = "calibration_gpl3.txt"  # GPL-3 licence text (calibration default)
HELDOUT_TEXT = "heldout_docstrings.txt"  # Python standard-library docstrings (evaluation default)
NUMPY_TEXT = "finetune_numpy_docstrings.txt"  # NumPy docstrings (in-domain fine-tuning text)
EMBEDDED_PREFIX = "embedded:"


def embedded_text(name: str) -> str:
    """One of the texts shipped in ``spikec/data``."""
    return resources.files("spikec").joinpath("data", name).read_text(encoding="utf-8")


def embedded_names() -> list[str]:
    """Names of the embedded texts (``spikec/data/*.txt`` but the licence notice)."""
    data = resources.files("spikec").joinpath("data")
    return sorted(f.name for f in data.iterdir() if f.name.endswith(".txt") and f.name != "NOTICE.txt")


def text_label(path: str | Path | None, default: str) -> str:
    """How a text given to ``read_text`` is recorded in reports: its path, or
    ``embedded:NAME`` for an embedded one (itself a valid ``read_text`` path)."""
    return str(path) if path is not None else EMBEDDED_PREFIX + default


def read_text(path: str | Path | None, default: str) -> str:
    """The text of ``path``, or the embedded text ``default`` when path is None. A path
    ``embedded:NAME`` names an embedded text (``embedded_names()``). Missing, unreadable or
    empty files raise ``InputError``."""
    if path is None:
        return embedded_text(default)
    if str(path).startswith(EMBEDDED_PREFIX):
        name = str(path)[len(EMBEDDED_PREFIX):]
        if name not in embedded_names():
            raise InputError(f"there is no embedded text {name!r}",
                             hint="use one of " + ", ".join(EMBEDDED_PREFIX + n for n in embedded_names()))
        return embedded_text(name)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file {str(p)!r} does not exist", hint="pass an existing UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read text file {str(p)!r}: {e.strerror}") from None
    if not text.strip():
        raise InputError(f"text file {str(p)!r} is empty", hint="give a file with some text in it")
    return text


def token_stream(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D int64 tensor."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


def cut_samples(stream: torch.Tensor, samples: int, seq_len: int, what: str) -> torch.Tensor:
    """``[samples, seq_len]`` consecutive, non-overlapping windows of ``stream``.
    Uses as many windows as the text allows (at least one) and says what to do when
    the text is too short for even one."""
    available = stream.numel() // seq_len
    if available < 1:
        raise InputError(
            f"the {what} text has {stream.numel()} tokens, fewer than one sample of {seq_len}",
            hint="give a longer text or a smaller --seq-len",
        )
    n = min(samples, available)
    return stream[: n * seq_len].view(n, seq_len)


def cut_sequences(stream: torch.Tensor, tokens: int, seq_len: int, what: str = "evaluation") -> torch.Tensor:
    """The first ``tokens`` tokens of ``stream`` as ``[sequences, seq_len]`` (whole sequences
    only, at least one). A stream shorter than ``tokens`` raises ``InputError``."""
    if stream.numel() < tokens:
        raise InputError(
            f"the {what} text has {stream.numel()} tokens, fewer than the {tokens} asked for",
            hint="give a longer --text or a smaller --tokens",
        )
    n = max(1, tokens // seq_len)
    return stream[: n * seq_len].view(n, seq_len)
