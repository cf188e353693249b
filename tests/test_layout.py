"""The house rules of the source tree, checked on the source text (nothing is imported).

- No import circle among spikec's modules, counting imports inside functions too.
- Layers: ``spikec.core`` imports nothing else of spikec; ``spikec.passes`` and ``spikec.backends``
  never import each other nor the orchestration above them; the Lava runtime that an export copies
  imports only lava, nir, numpy, the standard library and itself.
- Assembly in plain sight: no import after the first definition of a module (no tail imports), no
  module assigns another module's attributes, no module of the package registers its functions or
  classes with a decorator (a registry is a table built from explicit imports, like
  ``spikec.passes.BUILTIN_PASSES``; ``@register_pass`` is for user passes).
- No private name (``_x``) of one module is used by another, in the package, the tests, the benchmarks
  or the examples.
"""

from __future__ import annotations

import ast
import graphlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"spikec": ROOT / "spikec", "spikec.passes": ROOT / "passes", "spikec.backends": ROOT / "backends"}
LAVA_RUNTIME = "spikec.backends.lava.runtime"
ORCHESTRATION_FREE = ("spikec.core", "spikec.passes", "spikec.backends")


@dataclass(frozen=True)
class Source:
    module: str
    path: Path
    tree: ast.Module
    is_package: bool


def _module_name(prefix: str, base: Path, path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(base).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join([prefix, *parts]), is_package


def package_sources() -> list[Source]:
    sources = []
    for prefix, base in PACKAGE_DIRS.items():
        for path in sorted(base.rglob("*.py")):
            if prefix == "spikec" and any(p in ("passes", "backends") for p in path.relative_to(base).parts[:1]):
                continue
            name, is_package = _module_name(prefix, base, path)
            sources.append(Source(name, path, ast.parse(path.read_text(), str(path)), is_package))
    return sources


def script_sources() -> list[Source]:
    sources = []
    for folder in ("tests", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = f"{folder}.{path.stem}"
            sources.append(Source(name, path, ast.parse(path.read_text(), str(path)), False))
    return sources


def _resolve(source: Source, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = source.module.split(".")
    if not source.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(source: Source, modules: set[str]) -> list[tuple[str, ast.stmt]]:
    """Every module ``source`` imports (``from m import x`` counts ``m.x`` when that is a module)."""
    found = []
    for node in ast.walk(source.tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(source, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node))
    return found


def _runtime_local(source: Source, name: str) -> bool:
    return name == "runtime" or name.startswith("runtime.") or name.startswith(LAVA_RUNTIME)


SOURCES = package_sources()
MODULES = {s.module for s in SOURCES}
STDLIB = set(sys.stdlib_module_names)


def test_the_package_has_no_import_circle():
    graph = {s.module: set() for s in SOURCES}
    for s in SOURCES:
        for name, _ in imports(s, MODULES):
            if name in MODULES and name != s.module and not s.module.startswith(name + "."):
                graph[s.module].add(name)
    # A package's __init__ importing its own submodules is how a package is assembled, not a circle.
    for s in SOURCES:
        if s.is_package:
            graph[s.module] = {m for m in graph[s.module] if not m.startswith(s.module + ".")}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import circle: {' -> '.join(e.args[1])}")


@pytest.mark.parametrize("layer", ORCHESTRATION_FREE)
def test_layers_import_only_what_stands_below_them(layer):
    allowed = {
        "spikec.core": ("spikec.core",),
        "spikec.passes": ("spikec.core", "spikec.lowering", "spikec.passes"),
        "spikec.backends": ("spikec.core", "spikec.lowering", "spikec.backends"),
    }[layer]
    wrong = []
    for s in SOURCES:
        if s.module != layer and not s.module.startswith(layer + "."):
            continue
        for name, node in imports(s, MODULES):
            if name.split(".")[0] == "spikec" and name != "spikec" and not name.startswith(allowed):
                wrong.append(f"{s.path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_lava_runtime_imports_only_lava_nir_numpy_and_itself():
    wrong = []
    for s in SOURCES:
        if not s.module.startswith(LAVA_RUNTIME):
            continue
        for name, node in imports(s, MODULES):
            top = name.split(".")[0]
            if top in STDLIB or top in ("lava", "nir", "numpy", "__future__") or _runtime_local(s, name):
                continue
            wrong.append(f"{s.path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_no_import_follows_a_definition():
    late = []
    for s in SOURCES:
        defined = False
        for node in s.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined = True
            elif defined and isinstance(node, (ast.Import, ast.ImportFrom)):
                late.append(f"{s.path.relative_to(ROOT)}:{node.lineno}")
    assert not late, "imports after definitions (tail imports): " + ", ".join(late)


def _imported_module_aliases(source: Source) -> dict[str, str]:
    aliases = {}
    for node in ast.walk(source.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(source, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def test_no_module_assigns_another_modules_attributes():
    wrong = []
    for s in SOURCES:
        aliases = _imported_module_aliases(s)
        for node in ast.walk(s.tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in aliases:
                    wrong.append(f"{s.path.relative_to(ROOT)}:{node.lineno} assigns {t.value.id}.{t.attr}")
    assert not wrong, "\n".join(wrong)


def _decorator_name(decorator: ast.expr) -> str:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return target.attr if isinstance(target, ast.Attribute) else target.id if isinstance(target, ast.Name) else ""


def test_no_module_registers_by_decorator():
    wrong = []
    for s in SOURCES:
        for node in ast.walk(s.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                wrong += [f"{s.path.relative_to(ROOT)}:{d.lineno} @{_decorator_name(d)}" for d in node.decorator_list
                          if "regist" in _decorator_name(d).lower()]
    assert not wrong, "registration by decorator (build the table in the package's __init__ instead): " + \
        ", ".join(wrong)


def _ours(source: Source, name: str) -> bool:
    """Whether ``name`` is one of spikec's modules or a script's neighbour (``benchmarks/x.py``)."""
    top = name.split(".")[0]
    return top in ("spikec", "tests", "benchmarks", "examples") or (source.path.parent / f"{top}.py").exists()


def _private_module(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


@pytest.mark.parametrize("where", ["package", "tests, benchmarks and examples"])
def test_no_private_name_crosses_a_module_boundary(where):
    sources = SOURCES if where == "package" else script_sources()
    wrong = []
    for s in sources:
        aliases = {k: v for k, v in _imported_module_aliases(s).items() if v.split(".")[0] in ("spikec", "tests")
                   or v in MODULES}
        for node in ast.walk(s.tree):
            if isinstance(node, ast.Import):
                wrong += [f"{s.path.relative_to(ROOT)}:{node.lineno} imports private module {a.name}"
                          for a in node.names if _private_module(a.name) and _ours(s, a.name)]
            if isinstance(node, ast.ImportFrom):
                base = _resolve(s, node)
                if _private_module(base) and _ours(s, base):
                    wrong.append(f"{s.path.relative_to(ROOT)}:{node.lineno} imports private module {base}")
                if base.split(".")[0] not in ("spikec", "tests", "benchmarks") and not node.level:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        wrong.append(f"{s.path.relative_to(ROOT)}:{node.lineno} imports {base}.{alias.name}")
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                  and node.attr.startswith("_") and not node.attr.startswith("__")):
                wrong.append(f"{s.path.relative_to(ROOT)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "\n".join(sorted(set(wrong)))
