"""User-facing errors. The CLI prints ``str(error)`` as one line and exits with ``exit_code``.

Exit codes (documented in the README):
  2 usage error, 3 bad input (files, text, NIR), 4 unsupported model or operator,
  5 resource (memory, disk, missing environment), 70 internal error.
"""

from __future__ import annotations


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
