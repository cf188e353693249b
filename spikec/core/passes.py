"""The registry of user passes, the context every pass receives, and running passes.

A pass is a plain function ``(gm, ctx) -> GraphModule | None`` over a canonical
torch.fx GraphModule (returning None means "modified in place"); its docstring's first
line is its one-line summary. The built-in passes are assembled in ``spikec.passes``
(``BUILTIN_PASSES``); user passes (plugins, notebooks) register with ``@register_pass("name")``
into the registry of user passes here, and ``spikec.passes.all_passes`` merges the two.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from spikec.core.errors import InputError, SpikecError, one_line

PassFn = Callable[[torch.fx.GraphModule, "PassContext"], "torch.fx.GraphModule | None"]


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its name, the function, and a one-line summary."""

    name: str
    fn: PassFn
    summary: str
    source: str  # "builtin", a plugin file path, an entry point, or IN_PYTHON


IN_PYTHON = "registered in Python"
"""The source of a user pass registered outside ``registering_from`` (a notebook, a script)."""

_USER_PASSES: dict[str, PassInfo] = {}
"""Passes registered with ``@register_pass`` (plugins, notebooks); the built-in ones are
assembled by ``spikec.passes.BUILTIN_PASSES``."""

_SOURCE: ContextVar[str] = ContextVar("spikec_pass_source", default=IN_PYTHON)
_RESERVED: ContextVar[frozenset[str]] = ContextVar("spikec_reserved_pass_names", default=frozenset())


class UnknownPassError(KeyError):
    """A pass name that is not registered."""

    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, known
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown pass {self.name!r}; known passes: {', '.join(self.known)}"


def pass_info(name: str, fn: PassFn, source: str) -> PassInfo:
    """The ``PassInfo`` of ``fn`` under ``name``: its summary is the first line of its docstring."""
    doc = inspect.getdoc(fn) or ""
    summary = doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"
    return PassInfo(name, fn, summary, source)


@contextmanager
def registering_from(source: str, reserved: Collection[str] = ()) -> Iterator[None]:
    """Label the passes ``@register_pass`` records inside the block with ``source`` (a plugin
    file path or an entry point), and refuse the names in ``reserved`` (the built-in passes)."""
    token = _SOURCE.set(source)
    reserved_token = _RESERVED.set(frozenset(reserved))
    try:
        yield
    finally:
        _RESERVED.reset(reserved_token)
        _SOURCE.reset(token)


def register_pass(name: str) -> Callable[[PassFn], PassFn]:
    """Decorator registering ``fn`` as the user pass ``name`` (names are unique; a user pass
    may not take a built-in pass's name)."""

    def decorate(fn: PassFn) -> PassFn:
        source = _SOURCE.get()
        if name in _RESERVED.get():
            raise ValueError(f"a pass named {name!r} is built in; give the user pass another name")
        existing = _USER_PASSES.get(name)
        # Re-importing the same plugin file re-registers its passes: allowed. A clash
        # between two different sources is not.
        if existing is not None and existing.fn is not fn and existing.source != source:
            raise ValueError(f"a pass named {name!r} is already registered ({existing.source})")
        _USER_PASSES[name] = pass_info(name, fn, source)
        return fn

    return decorate


def user_passes() -> dict[str, PassInfo]:
    """A copy of the passes registered with ``@register_pass``, by name."""
    return dict(_USER_PASSES)


def lookup_pass(registry: Mapping[str, PassInfo], name: str) -> PassInfo:
    """``registry[name]``; raises ``UnknownPassError`` listing the names of ``registry``."""
    try:
        return registry[name]
    except KeyError:
        raise UnknownPassError(name, sorted(registry)) from None


@dataclass
class PassContext:
    """What a pass may read and where it records what it did.

    options: compile options (``timesteps``, ``levels`` ...), read with ``ctx.option``.
    calibration: calibration token ids ``[samples, positions]`` (int64), or None.
    config: the model's configuration (a transformers PretrainedConfig or dict).
    stats: per-pass statistics, filled by ``ctx.record`` and written to report.json.
    """

    options: dict[str, Any] = field(default_factory=dict)
    calibration: torch.Tensor | None = None
    config: Any = None
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    current_pass: str = ""

    @property
    def timesteps(self) -> int:
        return int(self.options.get("timesteps", 16))

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    def record(self, key: str, value: Any) -> None:
        """Record a statistic for the pass that is running (JSON-serialisable values)."""
        self.stats.setdefault(self.current_pass, {})[key] = value


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: its name, wall time in seconds and recorded statistics."""

    name: str
    seconds: float
    stats: dict[str, Any]


def run_passes(
    gm: torch.fx.GraphModule,
    names: list[str],
    ctx: PassContext,
    registry: Mapping[str, PassInfo],
    on_pass: Callable[[str], None] | None = None,
) -> tuple[torch.fx.GraphModule, list[PassRecord]]:
    """Run the passes ``names`` of ``registry`` (name -> ``PassInfo``) in order. Each pass gets
    the module returned by the one before; the graph is linted and recompiled after each.
    ``on_pass(name)`` is called before each pass (for progress display). Unknown names fail
    before anything runs."""
    import time

    infos = [lookup_pass(registry, n) for n in names]
    records: list[PassRecord] = []
    for info in infos:
        if on_pass is not None:
            on_pass(info.name)
        ctx.current_pass = info.name
        start = time.perf_counter()
        if info.source == "builtin":
            gm = _apply(info, gm, ctx)
        else:
            gm = _apply_plugin(info, gm, ctx)
        seconds = time.perf_counter() - start
        records.append(PassRecord(info.name, seconds, dict(ctx.stats.get(info.name, {}))))
    ctx.current_pass = ""
    return gm, records


def _apply(info: PassInfo, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    result = info.fn(gm, ctx)
    if result is not None:
        if not isinstance(result, torch.fx.GraphModule):
            raise TypeError(f"pass {info.name!r} returned {type(result).__name__}, not a GraphModule or None")
        gm = result
    gm.graph.lint()
    gm.recompile()
    return gm


def _apply_plugin(info: PassInfo, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    """A user pass (plugin or registered in Python): whatever goes wrong in it (an exception, ``sys.exit``, a result
    that is not a GraphModule, a graph that fails lint) is the user's error, exit 3."""
    where = f"user pass {info.name!r} ({one_line(info.source, 120)})"
    try:
        return _apply(info, gm, ctx)
    except SpikecError:
        raise
    except SystemExit as e:
        raise InputError(f"{where} called sys.exit({one_line(repr(e.code), 40)}) instead of returning",
                         hint="a pass returns a GraphModule or None") from e
    except Exception as e:
        raise InputError(f"{where} failed: {type(e).__name__}: {one_line(e)}",
                         hint="fix the plugin, or leave it out of --passes") from e
