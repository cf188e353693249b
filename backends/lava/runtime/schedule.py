"""When each node of the network runs: the delay alignment, stages and segments (docs/lava.md).

No Lava import: the export checks with ``schedule`` that what it writes also runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .network import DENSE, NEURON_TYPES, READOUTS, Network, NetworkError


@dataclass
class Schedule:
    """Global Lava steps (the first step is 1).

    ready: step at which a real value (Input, real op, readout, Output) is valid.
    window: first step of a SignedIF layer (and of the Dense it drives).
    stage: index of the neuron layer window (-1: real ops computed before any window).
    windows: the distinct window starts, in order (stage s starts at windows[s]).
    """

    timesteps: int
    ready: dict[str, int]
    window: dict[str, int]
    stage: dict[str, int]
    windows: list[int]

    @property
    def steps(self) -> int:
        ends = list(self.ready.values()) + [w + self.timesteps - 1 for w in self.window.values()]
        return max(ends) if ends else 1


def schedule(net: Network, timesteps: int) -> Schedule:
    """Compute when every node runs. Raises ``NetworkError`` for structures the Lava mapping
    does not cover (a Dense not fed by exactly one SignedIF, a readout not fed by one Dense,
    a SignedIF driving anything but Dense nodes)."""
    T = int(timesteps)
    ready: dict[str, int] = {}
    window: dict[str, int] = {}
    for name, node in net.nodes.items():
        kind, preds = node.type, node.preds
        if kind == "Input":
            ready[name] = 1
        elif kind in NEURON_TYPES:
            if not preds or any(p not in ready for p in preds):
                raise NetworkError(f"{kind} {name!r} must be driven by real values")
            bad = [s for s in node.succs if net.nodes[s].type != DENSE]
            if bad:
                raise NetworkError(f"{kind} {name!r} drives {bad[0]!r}; only Dense (Affine) nodes may read spikes")
            window[name] = max(ready[p] for p in preds)
        elif kind == DENSE:
            if len(preds) != 1 or net.nodes[preds[0]].type not in NEURON_TYPES:
                raise NetworkError(f"Dense {name!r} must be fed by exactly one SignedIF or SSA layer")
            if len(node.succs) != 1 or net.nodes[node.succs[0]].type not in READOUTS:
                raise NetworkError(f"Dense {name!r} must feed exactly one RateReadout or BinaryReadout")
            window[name] = window[preds[0]]
        elif kind in READOUTS:
            if len(preds) != 1 or net.nodes[preds[0]].type != DENSE:
                raise NetworkError(f"{kind} {name!r} must be fed by exactly one Dense")
            ready[name] = window[preds[0]] + T
        else:  # real ops and Output: zero latency, valid once all inputs are
            if not preds:
                raise NetworkError(f"node {name!r} has no input")
            missing = [p for p in preds if p not in ready]
            if missing:
                raise NetworkError(f"node {name!r} ({kind}) reads spikes from {missing[0]!r}; real ops need real inputs")
            ready[name] = max(ready[p] for p in preds)
    windows = sorted(set(window.values()))
    index = {w: i for i, w in enumerate(windows)}
    ends = {w + T: i for i, w in enumerate(windows)}
    stage: dict[str, int] = {}
    for name, node in net.nodes.items():
        if name in window:
            stage[name] = index[window[name]]
        elif node.type in READOUTS:
            stage[name] = index[window[node.preds[0]]]
        else:
            stage[name] = ends.get(ready[name], -1)
    return Schedule(T, ready, window, stage, windows)


@dataclass
class Segment:
    """A run of consecutive stages executed as one Lava network. ``offset`` maps global
    steps to local ones (local = global - offset)."""

    index: int
    stages: tuple[int, int]  # first, last (inclusive)
    nodes: list[str]
    offset: int
    steps: int
    inputs: list[str]  # values produced before this segment and read in it
    outputs: list[str]  # values of this segment read later (or by an Output)


def plan_segments(net: Network, sched: Schedule, stages_per_run: int) -> list[Segment]:
    """Cut the stages into segments of at most ``stages_per_run`` stages (0: one segment).
    Only real values cross a cut: a SignedIF, its Dense and readout share a stage."""
    n_stages = len(sched.windows)
    per = n_stages if stages_per_run <= 0 else stages_per_run
    groups = [(a, min(a + per, n_stages) - 1) for a in range(0, max(n_stages, 1), max(per, 1))]
    if not groups:
        groups = [(0, -1)]
    owner: dict[str, int] = {}
    for name, node in net.nodes.items():
        if node.type in ("Input", "Output"):
            continue
        s = sched.stage[name]
        owner[name] = 0 if s < 0 else next(i for i, (a, b) in enumerate(groups) if a <= s <= b)
    segments = []
    for i, (a, b) in enumerate(groups):
        members = [n for n in net.nodes if owner.get(n) == i]
        offset = sched.windows[a] - 1 if n_stages else 0
        local_ends = []
        for n in members:
            if n in sched.window:
                local_ends.append(sched.window[n] + sched.timesteps - 1 - offset)
            if n in sched.ready:
                local_ends.append(sched.ready[n] - offset)
        inputs = []
        for n in members:
            for p in net.nodes[n].preds:
                if owner.get(p) != i and p not in inputs:
                    inputs.append(p)
        outputs = [n for n in members
                   if any(owner.get(s) != i for s in net.nodes[n].succs)]
        segments.append(Segment(i, (a, b), members, offset, max(local_ends, default=1), inputs, outputs))
    return segments
