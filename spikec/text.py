"""Text inputs: the embedded calibration and held-out texts, reading user text files,
and cutting token streams into fixed-length samples.

``leading_tokens`` reads and tokenises only as much of a text as the tokens asked for need
(a 1 GB file for 32 tokens: a few KB), in growing chunks, so it is fast, small and
interruptible; its tokens are those of tokenising the whole text and taking the first ones."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterator

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
    p = _text_file(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read text file {str(p)!r}: {e.strerror}") from None
    if not text.strip():
        raise _empty(p)
    return text


def _text_file(path: str | Path) -> Path:
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():  # a FIFO or device would block or never end
        raise InputError(f"text file {str(p)!r} is not a regular file", hint="pass an existing UTF-8 text file")
    if not p.is_file():
        raise InputError(f"text file {str(p)!r} does not exist", hint="pass an existing UTF-8 text file")
    return p


def _empty(p: Path) -> InputError:
    return InputError(f"text file {str(p)!r} is empty", hint="give a file with some text in it")


FIRST_CHUNK = 16384  # characters read first; each further chunk doubles what has been read
STABLE_MARGIN = 64  # tokens past those asked for that two prefixes must both have


def text_chunks(path: str | Path | None, default: str, first: int = FIRST_CHUNK) -> Iterator[str]:
    """The text ``read_text(path, default)`` returns, as consecutive pieces of growing size
    (``first`` characters, then as many as read so far): joined, they are that text. A file is
    decoded as it is read (as ``read_text`` does: UTF-8, invalid bytes replaced, universal
    newlines); the errors are ``read_text``'s, an empty file's once its end is reached."""
    if path is None or str(path).startswith(EMBEDDED_PREFIX):
        text = read_text(path, default)
        size, start = first, 0
        while start < len(text):
            yield text[start:start + size]
            start += size
            size = start
        return
    p = _text_file(path)
    seen_text, size, read = False, first, 0
    try:
        # text mode as Path.read_text: invalid UTF-8 replaced, newlines universal (also across chunks)
        with open(p, encoding="utf-8", errors="replace") as f:
            while piece := f.read(size):
                seen_text = seen_text or bool(piece.strip())
                yield piece
                read += len(piece)
                size = max(size, read)
    except OSError as e:
        raise InputError(f"cannot read text file {str(p)!r}: {e.strerror}") from None
    if not seen_text:
        raise _empty(p)


def leading_tokens(tokenizer, path: str | Path | None, default: str, tokens: int,
                   first: int = FIRST_CHUNK) -> torch.Tensor:
    """The first ``tokens`` token ids of the text ``read_text(path, default)`` (1-D int64), or
    all of them when the text has fewer: the ids of ``token_stream(tokenizer, text)[:tokens]``.

    The text is read in growing chunks (``text_chunks``) and the prefix read so far tokenised
    after each. Tokenisation is local, so a prefix's leading tokens are the whole text's once
    the prefix runs well past them: they are taken when two successive prefixes, the shorter
    with ``STABLE_MARGIN`` tokens to spare, agree on them; at the end of the text the whole
    text's tokens are exact."""
    text, previous, ids = "", None, []
    for piece in text_chunks(path, default, first):
        text += piece
        if not text.strip():
            continue  # an empty text is refused once its end is reached, as read_text does
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if previous is not None and len(previous) >= tokens + STABLE_MARGIN and ids[:tokens] == previous[:tokens]:
            break
        previous = ids
    return torch.tensor(ids[:tokens], dtype=torch.int64)


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
