"""The portable export profile: a spikec ``model.nir`` as standard NIR graphs plus a manifest.

Standard NIR cannot express a transformer (no norm, embedding, softmax attention
between activations), so a whole model is never one standard file. What it can express
is every spiking affine of a model converted with ``portable-encode``
(``Linear -> IF -> Affine``). ``write_portable`` splits the graph at the real-valued
extension nodes (norms, attention, activations, residual adds, embedding, rate readouts:
"glue" that the manifest lists in order) into the largest connected sets of standard
nodes, and writes each as a stand-alone NIR file (``Input -> ... -> Output``, dt = 1 in
its metadata) that Norse, SpikingJelly and any importer following NIR can run.

Spiking extension nodes (``SpikecSignedIF``, ``SpikecSSA``: ``kind == "spiking"``) have
no standard equivalent: a graph holding any of them is refused with an
``UnsupportedError`` naming them. Conventions of the files and of ``manifest.json``:
docs/interop.md.
"""

from __future__ import annotations

import graphlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np

from spikec.core.errors import UnsupportedError, UsageError
from spikec.core.graph import find_cycle
from spikec.core.ir import SpikecNode

from . import interop, nirio

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "spikec-portable-manifest"
MANIFEST_VERSION = 1
PORTABLE_PASSES = "fold-norm-affine,calibrate,portable-encode"
IMPORTERS = ("nir", "norse", "spikingjelly")
NEURON_TYPES = (nir.IF, nir.LIF, nir.CubaLIF, nir.LI, nir.CubaLI, nir.I, nir.Threshold)


def is_standard(node: nir.NIRNode) -> bool:
    """Whether ``node`` is a standard NIR node (a class of the ``nir`` package)."""
    return not isinstance(node, SpikecNode) and type(node).__module__.split(".")[0] == "nir"


def is_glue(node: nir.NIRNode) -> bool:
    """An extension node a portable export may cut at: it computes real values (norms,
    attention, activations, adds, embedding) or reads a time series out as one."""
    return isinstance(node, SpikecNode) and node.kind in ("real", "readout")


@dataclass
class Portability:
    """How a graph stands with the portable profile.

    standard / extension: node name -> type name (top-level nodes, in graph order).
    non_portable: extension nodes with no standard equivalent (spiking ones), name -> type.
    portable: the file itself is standard NIR (no extension node at all).
    splittable: ``write_portable`` can split it (no non-portable node).
    subgraphs: the standard subgraphs it would write (0 when not splittable).
    cycle: for a recurrent graph, one cycle of node names (the portable profile refuses it).
    """

    standard: dict[str, str] = field(default_factory=dict)
    extension: dict[str, str] = field(default_factory=dict)
    non_portable: dict[str, str] = field(default_factory=dict)
    subgraphs: int = 0
    cycle: list[str] | None = None  # a cycle of a recurrent graph (find_cycle), None when feed-forward

    @property
    def portable(self) -> bool:
        return not self.extension

    @property
    def splittable(self) -> bool:
        return not self.non_portable


def portability(graph: nir.NIRGraph) -> Portability:
    """Classify every top-level node of ``graph`` (see :class:`Portability`)."""
    result = Portability()
    for name, node in graph.nodes.items():
        kind = type(node).__name__
        if isinstance(node, SpikecNode):
            result.extension[name] = kind
            if not is_glue(node):
                result.non_portable[name] = kind
        else:
            result.standard[name] = kind
    if result.splittable:
        result.subgraphs = len(split(graph))
    result.cycle = find_cycle(graph)
    return result


def _counts(names: dict[str, str]) -> str:
    return ", ".join(f"{t} x{c}" for t, c in sorted(Counter(names.values()).items()))


def format_portability(p: Portability, max_names: int = 6) -> str:
    """The lines ``spikec inspect`` prints about standard/extension nodes and portability."""
    lines = [f"standard NIR nodes: {len(p.standard)}" + (f" ({_counts(p.standard)})" if p.standard else ""),
             f"spikec extension nodes: {len(p.extension)}" + (f" ({_counts(p.extension)})" if p.extension else "")]
    if p.portable:
        lines.append("portable: yes (standard NIR only; any NIR importer can read it)")
    elif p.splittable:
        lines.append(f"portable: no, but `spikec export-nir --profile portable` splits it into {p.subgraphs} "
                     "standard NIR subgraphs joined by the extension nodes above (docs/interop.md)")
    else:
        names = list(p.non_portable)
        shown = ", ".join(names[:max_names]) + (f", ... ({len(names)} in all)" if len(names) > max_names else "")
        lines.append(f"portable: no; nodes with no standard NIR equivalent: {_counts(p.non_portable)}: {shown} "
                     f"(compile with --passes {PORTABLE_PASSES} for a portable model)")
    if p.cycle:
        lines.append(f"recurrent: yes (cycle {' -> '.join(p.cycle)}); the reference simulator and "
                     "`export-nir --profile portable` take feed-forward graphs only")
    return "\n".join(lines)


def check_portable(graph: nir.NIRGraph, where: str = "the graph") -> Portability:
    """``portability(graph)``, raising ``UnsupportedError`` naming the non-portable nodes."""
    p = portability(graph)
    if p.cycle:
        raise UnsupportedError(
            f"{where} cannot be exported with the portable profile: the graph is recurrent "
            f"(cycle {' -> '.join(p.cycle)}) and the portable profile supports feed-forward graphs only",
            hint="export it with --profile full: a standard NIR file is portable as it is")
    few_spike = [n for n, kind in p.non_portable.items() if kind == "SpikecFewSpike"]
    if few_spike:
        raise UnsupportedError(
            f"{where} uses the few-spike (binary) code, which has no standard NIR form: its {len(few_spike)} "
            "SpikecFewSpike layers weigh step k by 2^-k, and NIR's IF has one threshold, one reset and "
            "unweighted spikes",
            hint="compile with --coding rate for a portable model, or export it with --profile full")
    if not p.splittable:
        names = list(p.non_portable)
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise UnsupportedError(
            f"{where} cannot be exported with the portable profile: its neurons are spikec extension nodes "
            f"with no standard NIR equivalent ({_counts(p.non_portable)}: {shown})",
            hint=f"compile the model with --passes {PORTABLE_PASSES} (standard NIR IF neurons), "
                 "or export it with --profile full",
        )
    return p


# ---------------------------------------------------------------------------
# splitting
# ---------------------------------------------------------------------------


@dataclass
class Subgraph:
    """One standard piece: its nodes (in graph order), the outside node feeding each entry
    node, and the outside nodes each exit node feeds."""

    name: str
    nodes: list[str]
    inputs: dict[str, list[str]]  # entry node -> outside sources (fan-in summed)
    outputs: dict[str, list[str]]  # exit node -> outside consumers


def split(graph: nir.NIRGraph) -> list[Subgraph]:
    """The largest standard pieces of ``graph``: connected sets of standard, non-I/O nodes
    (an edge between two such nodes joins them), in graph order; each is named after its
    last node (for a portable spiking affine: the ``Affine``)."""
    inner = [n for n, node in graph.nodes.items()
             if is_standard(node) and not isinstance(node, (nir.Input, nir.Output))]
    parent = {n: n for n in inner}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for src, dst in graph.edges:
        if src in parent and dst in parent:
            parent[root(src)] = root(dst)
    groups: dict[str, list[str]] = {}
    for n in inner:
        groups.setdefault(root(n), []).append(n)
    # a recurrent graph (inspect counts its pieces) keeps its own node order
    order = {n: i for i, n in enumerate(list(graph.nodes) if find_cycle(graph) else _topological(graph))}
    pieces = []
    for members in groups.values():
        members.sort(key=order.__getitem__)
        inside = set(members)
        inputs: dict[str, list[str]] = {}
        outputs: dict[str, list[str]] = {}
        for src, dst in graph.edges:
            if dst in inside and src not in inside:
                inputs.setdefault(dst, []).append(src)
            if src in inside and dst not in inside:
                outputs.setdefault(src, []).append(dst)
        pieces.append(Subgraph(members[-1], members, inputs, outputs))
    pieces.sort(key=lambda p: order[p.nodes[0]])
    return pieces


def _topological(graph: nir.NIRGraph) -> list[str]:
    sorter = graphlib.TopologicalSorter({n: set() for n in graph.nodes})
    for src, dst in graph.edges:
        sorter.add(dst, src)
    return list(sorter.static_order())


def _features(node: nir.NIRNode, side: str) -> list[int]:
    """A standard node's input (``in``) or output (``out``) shape, without batch and time."""
    if isinstance(node, (nir.Affine, nir.Linear)):
        return [int(np.shape(node.weight)[1 if side == "in" else 0])]
    types = node.input_type if side == "in" else node.output_type
    (shape,) = types.values()
    return [int(s) for s in np.asarray(shape).reshape(-1)]


def standalone(graph: nir.NIRGraph, piece: Subgraph, metadata: dict[str, Any]) -> nir.NIRGraph:
    """``piece`` as a NIR graph of its own: one ``Input`` per entry node (``input``,
    ``input_1``, ...) and one ``Output`` per exit node (``output``, ...); node names kept."""
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    for i, entry in enumerate(piece.inputs):
        name = "input" if i == 0 else f"input_{i}"
        nodes[name] = nir.Input(input_type={"input": np.array(_features(graph.nodes[entry], "in"))})
        edges.append((name, entry))
    inside = set(piece.nodes)
    for n in piece.nodes:
        nodes[n] = graph.nodes[n]
    edges += [(s, d) for s, d in graph.edges if s in inside and d in inside]
    for i, exit_node in enumerate(piece.outputs):
        name = "output" if i == 0 else f"output_{i}"
        nodes[name] = nir.Output(output_type={"output": np.array(_features(graph.nodes[exit_node], "out"))})
        edges.append((exit_node, name))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(metadata))


def _meta(graph: nir.NIRGraph) -> dict[str, Any]:
    return dict(graph.metadata or {})


def write_portable(
    graph: nir.NIRGraph, out_dir: str | Path, source: str = "model.nir", importer: str = "nir"
) -> dict[str, Any]:
    """Write ``graph``'s standard subgraphs as ``out_dir/<name>.nir`` and ``out_dir/manifest.json``.

    ``out_dir`` must exist (the CLI passes a temporary directory it renames into place).
    importer: ``nir`` (default) writes the NIR definitions literally; ``spikingjelly`` or
    ``norse`` adjusts the files so that that importer runs them as NIR defines them
    (``interop.for_library``: SpikingJelly fires at ``v >= v_threshold``, so its thresholds
    become the next float32 up). Raises ``UnsupportedError`` (nothing written) when
    ``graph`` holds spiking extension nodes. Returns the manifest (format in docs/interop.md).
    """
    if importer not in IMPORTERS:
        raise UsageError(f"unknown importer {importer!r}", hint=f"use one of {', '.join(IMPORTERS)}")
    check_portable(graph)
    out = Path(out_dir)
    meta = _meta(graph)
    timesteps = meta.get("timesteps")
    pieces = split(graph)
    owner = {n: p.name for p in pieces for n in p.nodes}
    entries = []
    for piece in pieces:
        file_meta = {"dt": 1.0, "profile": "portable", "subgraph": piece.name, "source": source,
                     "input_value": "real value held constant for every step of the window"}
        for key in ("spikec_version", "model", "timesteps"):
            if key in meta:
                file_meta[key] = meta[key]
        if importer != "nir":
            file_meta["adjusted_for"] = importer
        sub = standalone(graph, piece, file_meta)
        if importer != "nir":
            sub = interop.for_library(sub, importer)
        nirio.write(out / f"{piece.name}.nir", sub)
        entries.append({
            "name": piece.name,
            "file": f"{piece.name}.nir",
            "nodes": {n: type(graph.nodes[n]).__name__ for n in piece.nodes},
            "neurons": [n for n in piece.nodes if isinstance(graph.nodes[n], NEURON_TYPES)],
            "inputs": [{"node": "input" if i == 0 else f"input_{i}", "feeds": entry,
                        "features": _features(graph.nodes[entry], "in"), "from": [owner.get(s, s) for s in srcs]}
                       for i, (entry, srcs) in enumerate(piece.inputs.items())],
            "outputs": [{"node": "output" if i == 0 else f"output_{i}", "of": exit_node,
                         "features": _features(graph.nodes[exit_node], "out"), "to": [owner.get(d, d) for d in dsts]}
                        for i, (exit_node, dsts) in enumerate(piece.outputs.items())],
        })
    steps = []
    done: set[str] = set()
    preds: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    for name in _topological(graph):
        unit = owner.get(name, name)
        if unit in done:
            continue
        done.add(unit)
        if unit in owner.values():
            piece = next(p for p in pieces if p.name == unit)
            steps.append({"subgraph": unit,
                          "inputs": [owner.get(s, s) for srcs in piece.inputs.values() for s in srcs]})
        else:
            node = graph.nodes[name]
            steps.append({"node": name, "type": type(node).__name__,
                          "standard": is_standard(node),
                          "inputs": [owner.get(s, s) for s in preds.get(name, [])]})
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "profile": "portable",
        "importer": importer,
        "source": source,
        "dt": 1.0,
        "timesteps": timesteps,
        "model": meta.get("model"),
        "conventions": {
            "time": "discrete, dt = 1 (also in each file's metadata); T steps per window",
            "subgraph_input": "a real value [batch, ..., features], fed unchanged at every one of the T steps",
            "subgraph_output": "one value per step; a SpikecRateReadout consumer takes its mean over the T steps",
            "neurons": "NIR IF as defined: v += r*I; spike where v > v_threshold; then v = v_reset; membrane from 0",
            "fan_in": "values arriving at one node are summed, in the order listed",
            "extension_nodes": f"steps that name a node are spikec extension nodes of {source} "
                               "(fields and equations in docs/nir-extensions.md)",
        },
        "subgraphs": entries,
        "steps": steps,
        "outputs": [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
    return manifest


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of a portable export directory."""
    return json.loads((Path(out_dir) / MANIFEST).read_text())


def recompose(out_dir: str | Path, full: nir.NIRGraph) -> nir.NIRGraph:
    """Rebuild one graph from a portable export: the standard subgraphs read from
    ``out_dir`` (as written, Input/Output nodes dropped) joined, as the manifest says, by
    the extension nodes of ``full`` (the ``model.nir`` they came from). The reference
    reading of the manifest: simulating the result gives what simulating ``full`` gives."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    exits: dict[str, dict[str, str]] = {}  # subgraph -> {its output node: the inner node feeding it}
    for entry in manifest["subgraphs"]:
        sub = nirio.read(out / entry["file"])
        io = {n for n, node in sub.nodes.items() if isinstance(node, (nir.Input, nir.Output))}
        nodes.update({n: node for n, node in sub.nodes.items() if n not in io})
        edges += [(s, d) for s, d in sub.edges if s not in io and d not in io]
        for port in entry["inputs"]:
            edges += [(src, port["feeds"]) for src in port["from"]]
        exits[entry["name"]] = {port["node"]: port["of"] for port in entry["outputs"]}
    for step in manifest["steps"]:
        if "node" in step:
            name = step["node"]
            nodes[name] = full.nodes[name]
            for src in step["inputs"]:
                # an input from a subgraph arrives through the (only) exit that feeds this node
                if src in exits:
                    entry = next(e for e in manifest["subgraphs"] if e["name"] == src)
                    (port,) = [p for p in entry["outputs"] if name in p["to"]]
                    edges.append((port["of"], name))
                else:
                    edges.append((src, name))
    # keep the full graph's edge order (fan-in is summed in that order)
    rank = {e: i for i, e in enumerate(full.edges)}
    edges.sort(key=lambda e: rank.get(e, len(rank)))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(full.metadata or {}), type_check=False)
