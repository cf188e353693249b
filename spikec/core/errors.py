"""User-facing errors. The CLI prints ``str(error)`` as one line and exits with ``exit_code``.

Exit codes (documented in docs/errors.md):
  2 usage error, 3 bad input (files, text, NIR), 4 unsupported model or operator,
  5 resource (memory, disk, missing environment), 70 internal error.
"""

from __future__ import annotations

import errno
import re


class SpikecError(Exception):
    """Base of every error a user can cause and fix. ``hint`` says what to do."""

    exit_code = 70

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.hint})" if self.hint else msg


class UsageError(SpikecError):
    """Bad command-line arguments or option values."""

    exit_code = 2


class InputError(SpikecError):
    """A file or text given to spikec is missing, empty, malformed or inconsistent."""

    exit_code = 3


class NIRFormatError(InputError):
    """A NIR file that cannot be read or fails validation."""


class UnsupportedError(SpikecError):
    """A model, architecture or operator spikec cannot convert."""

    exit_code = 4


class ModelNotFoundError(UnsupportedError):
    """A model name that is neither cached, local nor built in."""

    exit_code = 3


class ResourceError(SpikecError):
    """Not enough memory or disk, or a required environment is missing."""

    exit_code = 5


MESSAGE_LIMIT = 300
"""Characters of an untrusted string (a plugin's message, a file's content) shown in an error."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


def one_line(text: object, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` as one line of at most ``limit`` characters: line breaks and other control
    characters become spaces (so no newline can forge a ``spikec: error:`` line) and a
    longer text is cut with ``...``."""
    flat = " ".join(_CONTROL.sub(" ", str(text)).split())
    return flat if len(flat) <= limit else flat[: max(0, limit - 3)] + "..."


RESOURCE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "ENOMEM", "EMFILE", "ENFILE", "EROFS", "EIO")
    if hasattr(errno, name)
)
"""OSError numbers that are a shortage of the machine (disk full, quota, memory, file handles,
read-only or failing disk): exit 5. Every other OSError (permission denied, name too long,
not a directory, no such file ...) is about a path the user gave: exit 3."""


def from_os_error(e: OSError, action: str = "") -> SpikecError:
    """The ``SpikecError`` for an ``OSError`` met while doing ``action`` (e.g. "writing
    'out/eval.json'"): ``ResourceError`` for ``RESOURCE_ERRNOS``, else ``InputError``."""
    reason = e.strerror or type(e).__name__
    where = e.filename if e.filename is not None else ""
    what = action or (f"cannot use {str(where)!r}" if where != "" else "operating-system error")
    message = f"{what}: {reason}" + (f" ({str(where)!r})" if action and where != "" else "")
    cls = ResourceError if e.errno in RESOURCE_ERRNOS else InputError
    return cls(one_line(message, 2 * MESSAGE_LIMIT))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP: handled like ``KeyboardInterrupt`` (temporary outputs are
    removed on the way out); the command line exits with 128 + ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
