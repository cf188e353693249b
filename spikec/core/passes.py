"""The pass registry and the context every pass receives.

A pass is a plain function ``(gm, ctx) -> GraphModule | None`` over a canonical
torch.fx GraphModule (returning None means "modified in place"). Register it with
``@register_pass("name")``; its docstring's first line is its one-line summary.
"""

from __future__ import annotations

import inspect
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
    source: str  # "builtin", a plugin file path, or an entry point name


_REGISTRY: dict[str, PassInfo] = {}
_current_source = "builtin"


class UnknownPassError(KeyError):
    """A pass name that is not registered."""

    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, known
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown pass {self.name!r}; known passes: {', '.join(self.known)}"


def register_pass(name: str) -> Callable[[PassFn], PassFn]:
    """Decorator registering ``fn`` as the pass ``name`` (names are unique)."""

    def decorate(fn: PassFn) -> PassFn:
        existing = _REGISTRY.get(name)
        # Re-importing the same plugin file re-registers its passes: allowed. A clash
        # between two different sources is not.
        if existing is not None and existing.fn is not fn and existing.source != _current_source:
            raise ValueError(f"a pass named {name!r} is already registered ({_REGISTRY[name].source})")
        doc = inspect.getdoc(fn) or ""
        summary = doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"
        _REGISTRY[name] = PassInfo(name, fn, summary, _current_source)
        return fn

    return decorate


def set_registration_source(source: str) -> str:
    """Label passes registered from now on (used while importing plugins); returns the old label."""
    global _current_source
    old, _current_source = _current_source, source
    return old


def get_pass(name: str) -> PassInfo:
    """The registered pass ``name``; raises ``UnknownPassError`` listing known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownPassError(name, sorted(_REGISTRY)) from None


def registered_passes() -> list[PassInfo]:
    """Every registered pass, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


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
    on_pass: Callable[[str], None] | None = None,
) -> tuple[torch.fx.GraphModule, list[PassRecord]]:
    """Run the named passes in order. Each pass gets the module returned by the one
    before; the graph is linted and recompiled after each. ``on_pass(name)`` is called
    before each pass (for progress display). Unknown names fail before anything runs."""
    import time

    infos = [get_pass(n) for n in names]
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
    """A pass from a plugin: whatever goes wrong in it (an exception, ``sys.exit``, a result
    that is not a GraphModule, a graph that fails lint) is the plugin's error, exit 3."""
    where = f"plugin pass {info.name!r} ({one_line(info.source, 120)})"
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
