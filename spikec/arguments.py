"""Command-line argument types and the one-line parser, shared by ``spikec.cli`` and
``spikec.finetune`` (this module imports neither).

Every number a user types is range-checked here, so a bad value is one line and exit 2
instead of an overflow, a NaN or a traceback later on."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, NoReturn

from spikec.core.errors import UsageError, one_line
from spikec.core.options import parse_value

MAX_TIMESTEPS = 4096  # -T: as CompileOptions.validate allows
MAX_SEQ_LEN = 8192  # --seq-len
MAX_SEED = 2**32 - 1  # numpy's and torch's seed range
MAX_RANKS = 256  # --ranks: processes on one machine, or torchrun's world
MAX_COUNT = 2**31 - 1  # --tokens, --max-new-tokens, --calib-samples ...: index range of the kernels
ENERGY_TOKENS = 1024
"""Held-out tokens ``spikec energy`` simulates by default, and the report when there is no energy.json."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``spikec: error: ...``, exit 2
    (argparse's default prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"spikec: error: {one_line(message)} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def key_values(text: str) -> dict[str, str]:
    """``KEY=VALUE,KEY=VALUE`` -> dict of strings (empty items are skipped)."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {one_line(item, 80)!r}")
        out[key.strip()] = value.strip()
    return out


parse_option_value = parse_value
"""A pass option value as typed: int, else float, else the string (``spikec.core.options.parse_value``)."""


def pass_options(raw: dict[str, str]) -> dict[str, Any]:
    """``--option`` values (``key_values``' result) with numbers parsed."""
    return {k: parse_value(v) for k, v in raw.items()}


def _checked_int(text: str, low: int, high: int, option: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {one_line(text, 40)!r}") from None
    if not low <= value <= high:
        # a UsageError passes through argparse (it catches only ValueError and TypeError): the command
        # line prints it as one line and main() returns 2, as for the checks made after parsing
        raise UsageError(f"{option} must be between {low} and {high}, got {one_line(str(value), 40)}")
    return value


def int_range(low: int, high: int, option: str) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high`` (inclusive). Not an integer: argparse's
    error (exit 2); out of range: ``UsageError`` naming ``option`` (exit 2)."""

    def parse(text: str) -> int:
        return _checked_int(text, low, high, option)

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def int_list(text: str) -> list[int]:
    """An integer or a comma list of integers (no range check; see ``timesteps_list_arg``)."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or a comma list of integers, got {one_line(text, 40)!r}") from None


def timesteps_list_arg(text: str) -> list[int]:
    """``-T`` of ``eval``: one or more timesteps, each in 1..MAX_TIMESTEPS."""
    values = [_checked_int(s, 1, MAX_TIMESTEPS, "-T") for s in text.split(",") if s.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected an integer or a comma list of integers, got {text!r}")
    return values


timesteps_arg = int_range(1, MAX_TIMESTEPS, "-T")
"""``-T``: timesteps per window, 1..4096."""
seq_len_arg = int_range(2, MAX_SEQ_LEN, "--seq-len")
"""``--seq-len``: positions per sequence, 2..8192 (one position has no next token to score)."""
seed_arg = int_range(0, MAX_SEED, "--seed")
"""``--seed``: 0..2**32-1."""
tokens_arg = int_range(2, MAX_COUNT, "--tokens")
"""``--tokens``: at least 2 (a next-token metric needs two)."""
energy_seq_len_arg = int_range(1, MAX_SEQ_LEN, "--seq-len")
"""``--seq-len`` of ``energy``: 1..8192 (operation counts need no next token)."""
samples_arg = int_range(1, MAX_COUNT, "--calib-samples")
"""``--calib-samples``: at least 1."""
new_tokens_arg = int_range(1, MAX_COUNT, "--max-new-tokens")
"""``--max-new-tokens``: at least 1."""
steps_arg = int_range(0, MAX_COUNT, "--steps")
"""``--steps`` of ``finetune``: 0 or more optimizer steps."""
ranks_arg = int_range(1, MAX_RANKS, "--ranks")
"""``--ranks`` of ``eval``: 1..256 processes in the simulator's pipeline."""
batch_arg = int_range(1, MAX_COUNT, "--batch")
"""``--batch`` of ``finetune``: at least 1 sequence per step."""
