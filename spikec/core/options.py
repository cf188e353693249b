"""Typed pass options: one place where option text becomes typed values.

A pass family declares its options as one frozen dataclass (an *options record*). Each field
names its option key and help in the field's metadata (``option_field``); ``from_options``
reads a record from the compile options, typing and checking every value from the field's
annotation::

    @dataclass(frozen=True)
    class SSAOptions:
        tau: float = option_field("ssa_tau", 0.0, "0 for IF neurons, else the LIF time constant", low=0.0)

    cfg = from_options(SSAOptions, ctx.options)

Command lines give option values as text (``--option ssa_tau=2``); ``parse_value`` turns such
text into an int, a float or a string, and ``from_options`` accepts either form.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import UsageError

R = TypeVar("R")

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parse_value(text: str) -> Any:
    """Command-line option text -> int, float or the text itself (``"8"`` -> 8, ``"0.5"`` -> 0.5)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def option_field(key: str, default: Any, help: str, *, choices: tuple[Any, ...] | None = None,
                 low: float | None = None, high: float | None = None) -> Any:
    """A record field read from option ``key`` (``default`` when absent), with its help text, and
    optional allowed ``choices`` or an inclusive range ``[low, high]``."""
    meta = {"option": key, "help": help, "choices": choices, "low": low, "high": high}
    return dataclasses.field(default=default, metadata=meta)


def option_specs(record: type) -> dict[str, dataclasses.Field]:
    """Option key -> dataclass field, for every option of ``record``."""
    return {f.metadata["option"]: f for f in dataclasses.fields(record) if "option" in f.metadata}


def option_help(record: type) -> dict[str, str]:
    """Option key -> ``help (default: value)``, for every option of ``record``."""
    return {key: f"{f.metadata['help']} (default: {f.default})" for key, f in option_specs(record).items()}


def _typed(key: str, value: Any, annotation: str) -> Any:
    kind = annotation.split("|")[0].strip()
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    words = {"bool": "a boolean (true/false or 1/0)", "int": "an integer", "float": "a number"}
    raise UsageError(f"option {key} must be {words.get(kind, kind)}, got {value!r}")


def from_options(record: type[R], options: dict[str, Any]) -> R:
    """The ``record`` whose fields are read from ``options`` (absent keys keep their defaults).

    Raises ``UsageError`` naming the option when a value has the wrong type, is not one of the
    field's choices, or lies outside its range."""
    values: dict[str, Any] = {}
    for key, f in option_specs(record).items():
        if key not in options:
            continue
        value = _typed(key, options[key], f.type.__name__ if isinstance(f.type, type) else str(f.type))
        choices, low, high = f.metadata["choices"], f.metadata["low"], f.metadata["high"]
        if choices is not None and value not in choices:
            raise UsageError(f"option {key} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            raise UsageError(f"option {key} must lie in {bounds}, got {value}")
        values[f.name] = value
    return record(**values)


def unknown_options(options: dict[str, Any], known: set[str]) -> list[str]:
    """The keys of ``options`` that no record declares, sorted."""
    return sorted(set(options) - known)
