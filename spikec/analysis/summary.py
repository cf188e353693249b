"""A summary of a NIR graph (what ``spikec inspect FILE.nir`` prints)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import nir
import numpy as np

from spikec.core.ir import is_extension
from spikec.core.lazy import LazyArray

_NOT_PARAMETERS = ("input_type", "output_type", "metadata")


def _arrays(node: nir.NIRNode) -> dict[str, np.ndarray | LazyArray]:
    """Array-valued fields of a node (its parameters, also those left in the file), by field name."""
    out = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name, None)
        if f.name not in _NOT_PARAMETERS and isinstance(value, (np.ndarray, LazyArray)):
            out[f.name] = value
    return out


def _walk(graph: nir.NIRGraph, prefix: str = ""):
    """(qualified name, node) for every node, nested graphs flattened as ``outer/inner``."""
    for name, node in graph.nodes.items():
        yield prefix + name, node
        if isinstance(node, nir.NIRGraph):
            yield from _walk(node, f"{prefix}{name}/")


def summarize(graph: nir.NIRGraph) -> dict[str, Any]:
    """Facts about ``graph`` as plain Python data (JSON-friendly apart from metadata arrays).

    Keys: ``nodes`` (count), ``edges`` (count), ``inputs``/``outputs`` (node names),
    ``types`` (count per node type, by type name), ``extension_types`` (the types among
    them that are spikec extensions), ``node_types`` (node name -> type), ``parameters``
    (total elements of all array fields), ``parameter_bytes``, ``shapes`` (node name ->
    field -> shape list) and ``metadata``.
    """
    types: Counter[str] = Counter()
    extensions: set[str] = set()
    shapes: dict[str, dict[str, list[int]]] = {}
    node_types: dict[str, str] = {}
    params = 0
    nbytes = 0
    edges = len(graph.edges)
    for name, node in _walk(graph):
        kind = type(node).__name__
        types[kind] += 1
        node_types[name] = kind
        if is_extension(node):
            extensions.add(kind)
        if isinstance(node, nir.NIRGraph) and node is not graph:
            edges += len(node.edges)
        arrays = _arrays(node)
        shapes[name] = {k: list(v.shape) for k, v in arrays.items()}
        params += sum(int(v.size) for v in arrays.values())
        nbytes += sum(int(v.nbytes) for v in arrays.values())
    return {
        "nodes": sum(types.values()),
        "edges": edges,
        "inputs": [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)],
        "outputs": [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)],
        "types": dict(sorted(types.items())),
        "extension_types": sorted(extensions),
        "parameters": params,
        "parameter_bytes": nbytes,
        "node_types": node_types,
        "shapes": shapes,
        "metadata": dict(graph.metadata or {}),
    }


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [line(header), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]


def format_summary(summary: dict[str, Any], max_nodes: int = 200) -> str:
    """Plain-text report of a ``summarize`` result: totals, node types, metadata and a
    per-node table of parameter shapes (the first ``max_nodes`` nodes)."""
    ext = set(summary["extension_types"])
    lines = [
        f"nodes: {summary['nodes']}   edges: {summary['edges']}   "
        f"parameters: {summary['parameters']:,} ({_human_bytes(summary['parameter_bytes'])})",
        f"inputs: {', '.join(summary['inputs']) or '-'}   outputs: {', '.join(summary['outputs']) or '-'}",
        "",
    ]
    type_rows = [(t, str(c), "spikec extension" if t in ext else "standard NIR") for t, c in summary["types"].items()]
    lines += _table(type_rows, ("type", "count", "kind"))
    if summary["metadata"]:
        lines += ["", "metadata:"]
        lines += [f"  {k}: {v}" for k, v in summary["metadata"].items()]
    shape_rows = [
        (name, summary["node_types"].get(name, "?"), ", ".join(f"{k} {list(v)}" for k, v in fields.items()) or "-")
        for name, fields in list(summary["shapes"].items())[:max_nodes]
    ]
    lines += [""] + _table(shape_rows, ("node", "type", "parameters"))
    hidden = len(summary["shapes"]) - max_nodes
    if hidden > 0:
        lines.append(f"... and {hidden} more nodes")
    return "\n".join(lines)
