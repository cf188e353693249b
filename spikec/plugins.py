"""Loading user passes: plugin files named on the command line and installed
packages exposing the entry-point group ``spikec.passes``. Nothing else is imported:
a plugin runs only when named explicitly or installed."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from spikec.core.errors import InputError, one_line
from spikec.core.passes import registering_from
from spikec.passes import BUILTIN_PASSES

ENTRY_POINT_GROUP = "spikec.passes"


def load_plugin_file(path: str | Path) -> None:
    """Import the Python file ``path`` so that its ``@register_pass`` decorators run."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"plugin file {str(p)!r} does not exist", hint="check the --plugin path")
    module_name = f"spikec_plugin_{p.stem}_{abs(hash(str(p.resolve()))) % 10**8}"
    spec = importlib.util.spec_from_file_location(module_name, p)
    if spec is None or spec.loader is None:
        raise InputError(f"plugin {str(p)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[module_name] = module
        with registering_from(str(p), reserved=BUILTIN_PASSES):
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # the plugin's own bug: report it as bad input, with its location
        sys.modules.pop(module_name, None)
        raise InputError(f"plugin {str(p)!r} failed to import: {type(e).__name__}: {one_line(e)}") from e


def load_entry_point_plugins() -> list[str]:
    """Load every installed entry point of the group ``spikec.passes``; returns their names."""
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            with registering_from(f"entry point {ep.name} ({ep.value})", reserved=BUILTIN_PASSES):
                ep.load()
        except (Exception, SystemExit) as e:
            raise InputError(f"installed spikec plugin {ep.name!r} failed to load: {type(e).__name__}: {one_line(e)}"
                             ) from e
        loaded.append(ep.name)
    return loaded
