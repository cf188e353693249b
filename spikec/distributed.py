"""``spikec eval DIR --ranks N``: the reference simulator as a pipeline over ``torch.distributed``
ranks (``spikec.backends.simulator.pipeline``), on one machine or under ``torchrun``.

Who is who: under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment) every process
runs ``spikec eval`` and takes its rank from there; otherwise ``--ranks N`` starts ``N - 1``
worker processes (``python -m spikec eval DIR --ranks N`` with ``RANK`` ... set) beside this
one, which is rank 0. Rank 0 loads the reference model, runs the first stage, prints and
writes ``eval.json``; the other ranks read only the graph, run their stage and print nothing.
Backend: NCCL when the simulator runs on CUDA and every rank has a GPU of its own (rank k on
``cuda:LOCAL_RANK``), else gloo with the crossing values on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from spikec.backends.simulator import Simulator, resolve_device
from spikec.backends.simulator.pipeline import PipelineHead, partition, serve
from spikec.core.errors import ResourceError, UsageError
from spikec.outputs import read_compiled

TIMEOUT = timedelta(minutes=30)
"""How long a rank waits for the others (to start, or for its next message) before it gives up."""

WORKER_EXIT_SECONDS = 30
"""How long rank 0 waits for the workers it started to exit before it kills them."""


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size``; ``launched`` when torchrun (or our own
    launcher) set the environment, so no process is to be started here."""

    rank: int
    size: int
    launched: bool


def world(ranks: int) -> World:
    """This process's place, from ``RANK``/``WORLD_SIZE`` when set, else rank 0 of ``ranks``.
    ``UsageError`` for fewer than one rank or a ``--ranks`` that contradicts ``WORLD_SIZE``."""
    if ranks < 1:
        raise UsageError(f"--ranks must be at least 1, got {ranks}")
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return World(0, ranks, False)
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise UsageError("RANK and WORLD_SIZE must be integers", hint="launch with torchrun or --ranks N") from None
    if ranks not in (1, size):
        raise UsageError(f"--ranks {ranks} but WORLD_SIZE is {size}",
                         hint="under torchrun leave --ranks out (or give the same number)")
    if not 0 <= rank < size:
        raise UsageError(f"RANK {rank} is not in 0..{size - 1}")
    return World(rank, size, True)


def device_and_backend(device: str, size: int) -> tuple[torch.device, torch.device, str]:
    """The simulator's device on this rank, where crossing values travel, and the backend."""
    dev = resolve_device(device)
    if dev.type == "cuda" and size > 1 and dev.index is None and torch.cuda.device_count() >= size:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))))
        return dev, dev, "nccl"
    return dev, torch.device("cpu"), "gloo"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for rank 0's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_workers(directory: str, size: int, device: str, port: int) -> list[subprocess.Popen]:
    """Ranks 1..size-1 as ``python -m spikec eval DIR`` processes (stdout discarded, stderr shown)."""
    procs = []
    for rank in range(1, size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "spikec", "eval", directory, "--ranks", str(size),
                                       "--device", device], env=env, stdout=subprocess.DEVNULL))
    return procs


def stop_workers(procs: list[subprocess.Popen], failed: bool) -> None:
    """Wait for the workers (killed at once after a failure, else after ``WORKER_EXIT_SECONDS``)."""
    for p in procs:
        if failed:
            p.kill()
        try:
            p.wait(timeout=WORKER_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _init(rank: int, size: int, backend: str, port: int | None) -> None:
    method = "env://" if port is None else f"tcp://127.0.0.1:{port}"
    try:
        dist.init_process_group(backend, init_method=method, rank=rank, world_size=size, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as e:
        raise ResourceError(f"the {size} ranks could not meet ({backend}, {method}): {e}",
                            hint="check MASTER_ADDR/MASTER_PORT, or run with --ranks 1") from None


@contextlib.contextmanager
def pipeline_head(graph, directory: str, ranks: int, device: str) -> Iterator[PipelineHead]:
    """Rank 0 of a pipeline over ``ranks`` ranks (started here unless torchrun did): yields the
    object whose ``run`` the evaluation calls; stops the other ranks and the group on exit."""
    place = world(ranks)
    dev, wire, backend = device_and_backend(device, place.size)
    sim = Simulator(graph, device=dev)
    stages = partition(sim, place.size)  # before anything starts: a bad --ranks is one line
    port = None if place.launched else free_port()
    procs = [] if place.launched else start_workers(directory, place.size, device, port)
    failed = True
    try:
        _init(0, place.size, backend, port)
        head = PipelineHead(sim, stages, wire)
        yield head
        head.close()
        failed = False
    except RuntimeError as e:  # a rank failed: gloo and NCCL say so with a RuntimeError
        raise ResourceError(f"the pipeline over {place.size} ranks failed: {e}",
                            hint="see the other ranks' messages above") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        stop_workers(procs, failed)


def run_worker(directory: str, ranks: int, device: str) -> int:
    """Rank ``RANK`` > 0: read the graph, join the group, run its stage until rank 0 says stop."""
    place = world(ranks)
    _, _, graph = read_compiled(directory)
    dev, wire, backend = device_and_backend(device, place.size)
    sim = Simulator(graph, device=dev)
    stages = partition(sim, place.size)
    _init(place.rank, place.size, backend, None)
    try:
        serve(sim, stages, place.rank, wire)
    except RuntimeError as e:
        raise ResourceError(f"rank {place.rank}: the pipeline failed: {e}", hint="see rank 0's message") from None
    finally:
        dist.destroy_process_group()
    return 0
