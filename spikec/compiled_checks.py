"""Checks of a compile output directory before it is used: does ``model.nir`` belong to its
``report.json`` and to its tokenizer, and can it take the sequences asked of it?

``nirio.read`` checks a NIR file on its own (docs/errors.md); a file can pass it and still
not fit its directory: another compile's ``model.nir`` copied beside this ``report.json``, an
embedding table with fewer rows than the tokenizer has tokens, a position table shorter than
the sequences to run, attention heads x head_dim that disagree with the widths around the
node. ``spikec eval``, ``run``, ``energy`` and ``report`` call these checks before running
anything, so such a directory is refused with one line naming the node and the field instead
of crashing inside the simulator. Failures are ``InputError`` (exit 3); a file that contradicts
itself (widths) is a ``NIRFormatError``.

``report.json`` records ``model_nir_sha256`` (``file_sha256`` of ``model.nir``, written by
``spikec compile``); directories written before the field existed are checked by model name
and node counts only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import nir

from spikec.backends.nir_checks import feature_count
from spikec.core import ir
from spikec.core.errors import InputError, NIRFormatError

SHA256_KEY = "model_nir_sha256"
"""The report.json key holding the sha256 (hex) of the model.nir it describes."""

_RECOMPILE = "compile the model again with 'spikec compile'"


def file_sha256(path: str | Path) -> str:
    """The sha256 of the file at ``path`` as 64 hex digits, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def node_counts(graph: nir.NIRGraph) -> dict[str, int]:
    """Top-level nodes of ``graph`` per type name, sorted by name (report.json ``node_counts``)."""
    counts: dict[str, int] = {}
    for node in graph.nodes.values():
        counts[type(node).__name__] = counts.get(type(node).__name__, 0) + 1
    return dict(sorted(counts.items()))


def check_report_matches(directory: Path, report: Any, graph: nir.NIRGraph) -> None:
    """``report`` (report.json's content) describes ``graph`` (``directory/model.nir``): same
    sha256 where the report records one, same model name and node counts where both say."""
    file = directory / "model.nir"
    if not isinstance(report, dict):
        raise InputError(f"{str(directory / 'report.json')!r} holds a JSON {type(report).__name__}, not an object",
                         hint=_RECOMPILE)
    recorded = report.get(SHA256_KEY)
    if recorded is not None and recorded != file_sha256(file):
        raise InputError(f"{file}: the file is not the model.nir that report.json describes (sha256 differs)",
                         hint=f"{_RECOMPILE}, or put back the model.nir written with this report.json")
    named = (graph.metadata or {}).get("model")
    if named is not None and "model" in report and named != report["model"]:
        raise InputError(f"{file}: the file holds model {named!r} but report.json describes {report['model']!r}",
                         hint=_RECOMPILE)
    counts = report.get("node_counts")
    if isinstance(counts, dict) and counts != node_counts(graph):
        raise InputError(f"{file}: the file's node counts {node_counts(graph)} differ from report.json's {counts}",
                         hint=_RECOMPILE)


def _width_problem(graph: nir.NIRGraph, src: str, dst: str, n_out: int, n_in: int) -> str:
    """The message for an edge joining ``n_out`` output features to ``n_in`` inputs; for an
    attention end it names the head counts the width comes from."""
    a, b = graph.nodes[src], graph.nodes[dst]
    if hasattr(a, "head_dim"):
        return (f"node {src!r} ({type(a).__name__}) num_heads {a.num_heads} x head_dim {a.head_dim} = {n_out} "
                f"output features, but node {dst!r} ({type(b).__name__}) takes {n_in}")
    if hasattr(b, "head_dim"):
        return (f"node {dst!r} ({type(b).__name__}) (num_heads {b.num_heads} + 2 x num_kv_heads {b.num_kv_heads})"
                f" x head_dim {b.head_dim} = {n_in} input features, "
                f"but node {src!r} ({type(a).__name__}) gives {n_out}")
    return (f"edge ({src!r}, {dst!r}) joins {n_out} output features of {type(a).__name__} "
            f"to {n_in} inputs of {type(b).__name__}")


def check_widths(graph: nir.NIRGraph, file: str) -> None:
    """Every edge whose two ends have a certain feature count (``nir_checks.feature_count``) joins
    equal counts; raises ``NIRFormatError`` naming the node and its fields otherwise."""
    for src, dst in graph.edges:
        n_out, n_in = feature_count(graph.nodes[src], "out"), feature_count(graph.nodes[dst], "in")
        if n_out is not None and n_in is not None and n_out != n_in:
            raise NIRFormatError(f"{file}: {_width_problem(graph, src, dst, n_out, n_in)}",
                                 hint=f"the file is inconsistent; {_RECOMPILE}")


def check_compiled(directory: str | Path, report: Any, graph: nir.NIRGraph) -> None:
    """The checks that need no tokenizer: ``report`` describes ``graph`` and the graph's widths
    agree at every edge. ``graph`` is ``directory/model.nir`` as ``nirio.read`` returned it."""
    directory = Path(directory)
    check_report_matches(directory, report, graph)
    check_widths(graph, str(directory / "model.nir"))


def _embeddings(graph: nir.NIRGraph) -> list[tuple[str, ir.SpikecEmbedding]]:
    return [(name, node) for name, node in graph.nodes.items() if isinstance(node, ir.SpikecEmbedding)]


def check_vocabulary(graph: nir.NIRGraph, tokenizer: Any, file: str) -> None:
    """Every embedding table of ``graph`` has a row for each of the ``len(tokenizer)`` tokens."""
    tokens = len(tokenizer)
    for name, node in _embeddings(graph):
        rows = int(node.weight.shape[0])
        if rows < tokens:
            raise InputError(f"{file}: node {name!r} (SpikecEmbedding) field 'weight' has {rows} rows, "
                             f"fewer than the tokenizer's {tokens} tokens",
                             hint=f"model.nir does not belong to this tokenizer; {_RECOMPILE}")


def check_positions(graph: nir.NIRGraph, length: int, file: str, what: str) -> None:
    """Every learned position table of ``graph`` has at least ``length`` rows (``what`` names
    where the length comes from, e.g. "--seq-len"); rotary models (no rows) take any length."""
    for name, node in _embeddings(graph):
        rows = int(node.position_weight.shape[0])
        if 0 < rows < length:
            raise InputError(f"{file}: node {name!r} (SpikecEmbedding) field 'position_weight' has {rows} "
                             f"positions, fewer than the {length} of {what}",
                             hint=f"use at most {rows} positions, or {_RECOMPILE} if the table was cut")
