"""Topology of a NIR graph: predecessors and successors of every node, and a topological order.

One definition for every analysis and backend that walks a graph (simulator, energy counts,
Lava export, spiking-parts summary). Pure NIR: no torch.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass

import nir

from .errors import NIRFormatError


@dataclass(frozen=True)
class Topology:
    """``preds[n]`` lists the sources of the edges into ``n`` in edge order (fan-in edges sum in
    NIR); ``succs[n]`` the destinations of the edges out of ``n``; ``order`` is a topological order
    (every node after its predecessors)."""

    preds: dict[str, list[str]]
    succs: dict[str, list[str]]
    order: list[str]


def topology(graph: nir.NIRGraph, *, feed_forward_hint: str = "spikec runs feed-forward graphs only") -> Topology:
    """The topology of ``graph``.

    Raises ``NIRFormatError`` when an edge names a node the graph does not have, or when the
    graph has a cycle (``feed_forward_hint`` says what the caller supports)."""
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    succs: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for src, dst in graph.edges:
        for end in (src, dst):
            if end not in graph.nodes:
                raise NIRFormatError(f"edge ({src!r}, {dst!r}) names unknown node {end!r}",
                                     hint="every edge must connect two nodes of the graph")
        preds[dst].append(src)
        succs[src].append(dst)
    try:
        order = list(graphlib.TopologicalSorter({n: preds[n] for n in graph.nodes}).static_order())
    except graphlib.CycleError as e:
        cycle = " -> ".join(e.args[1])
        raise NIRFormatError(f"the graph has a cycle ({cycle})", hint=feed_forward_hint) from None
    return Topology(preds, succs, order)


def find_cycle(graph: nir.NIRGraph) -> list[str] | None:
    """One cycle of ``graph``'s edges as node names, the first repeated at the end
    (``["a", "b", "a"]``), or None when the graph is feed-forward. Standard NIR graphs may be
    recurrent; spikec's simulator and portable export take feed-forward graphs only."""
    sorter = graphlib.TopologicalSorter({n: set() for n in graph.nodes})
    for src, dst in graph.edges:
        sorter.add(dst, src)
    try:
        sorter.prepare()
    except graphlib.CycleError as e:
        return [str(n) for n in e.args[1]]
    return None
