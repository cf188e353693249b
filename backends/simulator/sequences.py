"""Running one network over many sequences, as evaluation does: a simulator that suits repeated
runs, and the figures gathered over the runs (outputs, spikes per neuron per step, seconds)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import nir
import torch
from tqdm import tqdm

from spikec.core.lazy import graph_is_lazy

from .engine import SimResult, Simulator


class RunsMany(Protocol):
    """What runs sequences one after another: a ``Simulator``, or rank 0 of a pipeline."""

    def run_many(self, inputs: list[Any], timesteps: int) -> Iterator[SimResult]: ...


@dataclass
class SequenceRuns:
    """What ``run_sequences`` gathered: each sequence's output after ``reduce`` (on the CPU, in
    input order), the mean |spikes| per neuron per step over every neuron layer and run, and the
    wall time of the runs (seconds)."""

    outputs: list[torch.Tensor]
    spikes_per_neuron_step: float
    seconds: float


def evaluation_simulator(graph: nir.NIRGraph, device: torch.device | str) -> Simulator:
    """A simulator for many runs of ``graph``: each node's parameters kept between runs, unless
    the graph was read lazily (then one node's arrays are resident at a time, docs/memory.md)."""
    return Simulator(graph, device=device, keep_parameters=not graph_is_lazy(graph))


def run_sequences(sim: RunsMany, inputs: list[Any], timesteps: int, *, progress: bool = False,
                  reduce: Callable[[torch.Tensor], torch.Tensor] = lambda out: out) -> SequenceRuns:
    """Run ``inputs`` (one sequence each) through ``sim`` at ``timesteps``, with a progress bar
    on stderr when ``progress``."""
    start = time.perf_counter()
    outputs, spikes, neuron_steps = [], 0.0, 0.0
    runs = sim.run_many(inputs, timesteps)
    for result in tqdm(runs, total=len(inputs), desc=f"simulating T={timesteps}", disable=not progress,
                       leave=False, file=sys.stderr):
        outputs.append(reduce(result.output).cpu())
        for name, count in result.spike_counts.items():
            spikes += count
            neuron_steps += count / result.firing_rates[name] if result.firing_rates[name] else 0.0
    return SequenceRuns(outputs, spikes / neuron_steps if neuron_steps else 0.0, time.perf_counter() - start)
