"""The reference simulator as a pipeline over ``torch.distributed`` ranks.

The simulator's topological order is cut into contiguous stages, one per rank, at cuts where
the fewest values cross (between transformer blocks and their halves: the residual stream),
balanced by parameter count. Each rank runs its stage with the engine's own kernels
(``Simulator.run_stage``), so spikes and figures are those of one process.

Per run, rank 0 runs the first stage on the inputs and sends the values crossing its cut to
rank 1, which runs its stage and sends on, and so on; every rank ``k > 0`` sends its stage's
figures (spike counts, firing rates, operations; the last rank also the outputs) to rank 0,
which merges them in stage order into one ``SimResult``. A message is a JSON header (shapes,
dtypes, value flags) and tensors sent as bytes with ``dist.send``/``dist.recv`` (no pickle):
gloo on CPU, NCCL on GPUs. The process group is the caller's (``spikec.distributed``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from spikec.core.errors import ResourceError, UsageError
from spikec.core.lazy import array_size

from .engine import SimResult, Simulator
from .streaming import Spikes, Stream
from .values import Value

VALUE_KINDS: dict[str, type[Value]] = {"Value": Value, "Spikes": Spikes, "Stream": Stream}
"""The value classes that may cross a cut, by class name (the header names them)."""

LOCAL_FIELDS = ("train", "operations", "inner")
"""Value fields that only the producing node's figures read: not sent across a cut."""


@dataclass(frozen=True)
class Stage:
    """One rank's part of the graph: ``nodes``, a contiguous run of the simulator's order;
    ``incoming``, the values it receives (produced before it, read by it or by later stages);
    ``outgoing``, the values it sends on (read after it)."""

    nodes: list[str]
    incoming: list[str]
    outgoing: list[str]


def node_cost(node: Any) -> int:
    """A node's share of the work: its parameters (elements of its array fields) plus one."""
    return 1 + sum(array_size(v) or 0 for v in vars(node).values())  # lazy arrays too


def crossing(sim: Simulator, cut: int) -> list[str]:
    """The values produced before position ``cut`` of ``sim.order`` and read at or after it."""
    after = set(sim.order[cut:])
    return [n for n in sim.order[:cut] if any(s in after for s in sim.succs[n])]


def candidate_cuts(sim: Simulator) -> list[int]:
    """Positions of ``sim.order`` where a stage may end: as few values cross as anywhere, and
    none of them is a fast-mode compact form (spike counts into a fused readout)."""
    compact = set(sim.fused) | sim.ctx.count_only
    sizes = {}
    for cut in range(1, len(sim.order)):
        values = crossing(sim, cut)
        if values and not compact.intersection(values):
            sizes[cut] = len(values)
    fewest = min(sizes.values(), default=0)
    return [cut for cut, size in sizes.items() if size == fewest]


def partition(sim: Simulator, ranks: int) -> list[Stage]:
    """Cut ``sim.order`` into ``ranks`` stages at ``candidate_cuts``, the largest stage's
    ``node_cost`` as small as can be. ``UsageError`` when there are fewer places to cut."""
    if ranks < 1:
        raise UsageError(f"--ranks must be at least 1, got {ranks}")
    cuts = candidate_cuts(sim)
    if ranks - 1 > len(cuts):
        raise UsageError(f"--ranks {ranks}: the graph can be cut into at most {len(cuts) + 1} stages "
                         f"(between its blocks)", hint=f"use --ranks {len(cuts) + 1} or fewer")
    prefix = np.cumsum([0] + [node_cost(sim.graph.nodes[n]) for n in sim.order]).tolist()
    ends = [0, *cuts, len(sim.order)]  # stage boundaries to choose from
    # best[k][j]: the least largest cost of k stages covering order[:ends[j]], and the previous end
    best: list[dict[int, tuple[float, int]]] = [{0: (0.0, -1)}]
    for k in range(1, ranks + 1):
        best.append({})
        for j in range(1, len(ends)):
            options = [(max(cost, prefix[ends[j]] - prefix[ends[i]]), i) for i, (cost, _) in best[k - 1].items()
                       if i < j]
            if options:
                best[k][j] = min(options)
    bounds, j = [], len(ends) - 1
    for k in range(ranks, 0, -1):
        bounds.append(ends[j])
        j = best[k][j][1]
    bounds = [0, *reversed(bounds)]
    return [Stage(sim.order[a:b], crossing(sim, a) if a else [], crossing(sim, b) if b < len(sim.order) else [])
            for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------------------
# messages: a JSON header and tensors as bytes, over dist.send / dist.recv
# ---------------------------------------------------------------------------


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ResourceError(f"a pipeline message names an unknown dtype {name!r}")
    return dtype


def send_message(header: dict[str, Any], tensors: list[torch.Tensor], dst: int, device: torch.device,
                 pending: list | None = None) -> None:
    """Send ``header`` (JSON-able) and ``tensors`` to rank ``dst``; tensors travel on ``device``
    (CPU for gloo, the rank's GPU for NCCL) as their bytes. With ``pending``, the sends do not
    wait for the receiver: their handles (with the buffers they read) are appended to it, for
    ``wait_all``."""
    meta = {"header": header, "tensors": [[str(t.dtype), list(t.shape)] for t in tensors]}
    raw = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8, device=device)
    buffers = [torch.tensor([raw.numel()], dtype=torch.int64, device=device), raw]
    buffers += [t.detach().contiguous().reshape(-1).view(torch.uint8).to(device) for t in tensors if t.numel()]
    for buffer in buffers:
        if pending is None:
            dist.send(buffer, dst)
        else:
            pending.append((dist.isend(buffer, dst), buffer))


def wait_all(pending: list) -> None:
    """Wait for the sends ``send_message`` left in ``pending``, and empty it."""
    for work, _ in pending:
        work.wait()
    pending.clear()


def recv_message(src: int, device: torch.device) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Receive what ``send_message`` sent from rank ``src``: the header and the tensors (on ``device``)."""
    size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.recv(size, src)
    raw = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.recv(raw, src)
    meta = json.loads(bytes(raw.cpu().tolist()).decode())
    tensors = []
    for dtype_name, shape in meta["tensors"]:
        dtype = _dtype(dtype_name)
        flat = torch.empty(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, dtype=torch.uint8, device=device)
        if flat.numel():
            dist.recv(flat, src)
        tensors.append(flat.view(dtype).reshape(shape))
    return meta["header"], tensors


def encode_values(values: dict[str, Value]) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """Crossing values as JSON headers (class, flags, which tensor is which) and their tensors."""
    headers, tensors = [], []
    for name, value in values.items():
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            x = getattr(value, f.name)
            if f.name in LOCAL_FIELDS:
                continue
            if isinstance(x, torch.Tensor):
                fields[f.name] = {"tensor": len(tensors)}
                tensors.append(x)
            elif isinstance(x, torch.dtype):
                fields[f.name] = {"dtype": str(x)}
            else:
                fields[f.name] = {"value": x}
        headers.append({"name": name, "kind": type(value).__name__, "fields": fields})
    return headers, tensors


def decode_values(headers: list[dict[str, Any]], tensors: list[torch.Tensor], device: torch.device) -> dict[str, Value]:
    """The values ``encode_values`` described, their tensors on ``device``."""
    values = {}
    for h in headers:
        if h["kind"] not in VALUE_KINDS:
            raise ResourceError(f"a pipeline message holds an unknown value class {h['kind']!r}")
        kwargs = {}
        for key, spec in h["fields"].items():
            if "tensor" in spec:
                kwargs[key] = tensors[spec["tensor"]].to(device)
            elif "dtype" in spec:
                kwargs[key] = _dtype(spec["dtype"])
            else:
                kwargs[key] = spec["value"]
        values[h["name"]] = VALUE_KINDS[h["kind"]](**kwargs)
    return values


# ---------------------------------------------------------------------------
# the ranks' loops
# ---------------------------------------------------------------------------


def _forward(stage: Stage, kept: dict[str, Value], timesteps: int, dst: int, device: torch.device,
             pending: list) -> None:
    headers, tensors = encode_values({n: kept[n] for n in stage.outgoing})
    send_message({"timesteps": timesteps, "values": headers}, tensors, dst, device, pending)


class PipelineHead:
    """Rank 0's end of the pipeline: runs the first stage and hands back every run's merged
    figures; ``run`` and ``run_many`` as ``Simulator``'s (real inputs, no recorded spike
    trains). ``close`` stops the other ranks."""

    def __init__(self, sim: Simulator, stages: list[Stage], device: torch.device):
        self.sim, self.stages, self.device = sim, stages, device

    def run(self, inputs: torch.Tensor | dict[str, torch.Tensor], timesteps: int) -> SimResult:
        """Run the graph over all ranks for ``timesteps`` steps (outputs on rank 0's device)."""
        return next(iter(self.run_many([inputs], timesteps)))

    def run_many(self, inputs: list[torch.Tensor | dict[str, torch.Tensor]], timesteps: int) -> Iterator[SimResult]:
        """The results of ``run`` on each of ``inputs``, in order. The ranks work on several
        inputs at once: rank 0 runs the first stage of input ``i + 1`` while the next rank runs
        input ``i`` (up to ``len(stages)`` inputs in flight)."""
        if int(timesteps) < 1:
            raise UsageError(f"timesteps must be at least 1, got {timesteps}")
        first, depth = self.stages[0], len(self.stages)
        pending: list = []
        started: list[SimResult] = []  # first-stage figures of the inputs in flight, oldest first
        for x in [*inputs, *[None] * depth]:
            if x is not None:
                result, kept = self.sim.run_stage(first.nodes, {}, set(first.outgoing), timesteps, inputs=x)
                _forward(first, kept, int(timesteps), 1, self.device, pending)
                started.append(result)
            if started and (x is None or len(started) == depth):
                yield self._finish(started.pop(0))
        wait_all(pending)  # not before: rank 1 may wait for rank 0 to take its figures first

    def _finish(self, result: SimResult) -> SimResult:
        """``result`` (the first stage's figures) with the later ranks' figures and outputs."""
        for rank in range(1, len(self.stages)):
            header, tensors = recv_message(rank, self.device)
            result.spike_counts.update(header["spike_counts"])
            result.firing_rates.update(header["firing_rates"])
            result.operations.update(header["operations"])
            result.outputs.update({n: t.to(self.sim.ctx.device) for n, t in zip(header["outputs"], tensors)})
        return result

    def close(self) -> None:
        """Tell the other ranks that no more runs come."""
        send_message({"stop": True}, [], 1, self.device)


def serve(sim: Simulator, stages: list[Stage], rank: int, device: torch.device) -> None:
    """Rank ``rank``'s loop (``rank > 0``): receive the crossing values from the rank before,
    run its stage, send on what later stages read and its figures to rank 0, until told to stop."""
    stage, last = stages[rank], rank == len(stages) - 1
    pending: list = []
    while True:
        header, tensors = recv_message(rank - 1, device)
        wait_all(pending)  # the previous run's sends: the next rank and rank 0 have taken them
        if header.get("stop"):
            if not last:
                send_message(header, [], rank + 1, device)
            return
        incoming = decode_values(header["values"], tensors, sim.ctx.device)
        t = int(header["timesteps"])
        result, kept = sim.run_stage(stage.nodes, incoming, set(stage.outgoing), t)
        if not last:
            _forward(stage, kept, t, rank + 1, device, pending)
        figures = {"spike_counts": result.spike_counts, "firing_rates": result.firing_rates,
                   "operations": result.operations, "outputs": list(result.outputs)}
        send_message(figures, list(result.outputs.values()), 0, device, pending)
