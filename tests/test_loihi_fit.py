"""The Loihi 2 fit (spikec/analysis/loihi_fit.py): cores per layer under the published
per-core limits, what does not fit, and the summary in `spikec energy` and the report."""

from __future__ import annotations

import json

import nir
import numpy as np

from spikec.analysis import loihi_fit
from spikec.analysis.loihi_fit import (
    CORES_PER_CHIP, MEMORY_PER_CORE, NEURONS_PER_CORE, fit_graph, format_fit, neuron_layer, synaptic_layer,
)
from spikec.core import ir
from test_energy import tiny_transformer


def test_a_small_layer_takes_one_core():
    fit = synaptic_layer("w", out_features=64, fan_in=64, positions=16, weight_bits=8)
    assert (fit.synapses, fit.memory_bytes, fit.units, fit.cores, fit.problem) == (4096, 4096, 1024, 1, "")


def test_cores_follow_the_tighter_of_the_neuron_and_memory_limits():
    # memory: 192 KB / (1024 x 1 byte) = 192 output features per core -> 1000 / 192 -> 6 cores
    assert synaptic_layer("w", 1000, 1024, 1, 8).cores == 6
    # neurons: 8192 / 128 positions = 64 output features per core -> 1000 / 64 -> 16 cores
    assert synaptic_layer("w", 1000, 16, 128, 8).cores == 16
    assert neuron_layer("n", 3000, 4).cores == 2  # 12,000 neurons over 8,192 per core


def test_what_does_not_fit_a_core_is_named():
    wide = synaptic_layer("wide", 10, MEMORY_PER_CORE + 1, 1, 8)  # one neuron's fan-in exceeds a core
    assert wide.cores == 0 and "fan-in" in wide.problem
    long = synaptic_layer("long", 10, 8, NEURONS_PER_CORE + 1, 8)
    assert long.cores == 0 and "positions" in long.problem


def test_fit_of_a_graph_counts_neurons_synapses_and_real_valued_operators():
    graph = tiny_transformer(blocks=2)
    fit = fit_graph(graph, positions=8)
    neurons = [n for n in graph.nodes.values() if isinstance(n, ir.SpikecSignedIF)]
    affines = [n for n in graph.nodes.values() if isinstance(n, (nir.Affine, nir.Linear))]
    assert fit.neurons == 8 * sum(int(n.threshold.shape[0]) for n in neurons)
    assert fit.synapses == sum(int(np.asarray(a.weight).size) for a in affines)
    assert fit.memory_bytes == fit.synapses  # 8-bit weights
    assert fit.cores == sum(l.cores for l in fit.layers) >= len(fit.layers)
    assert fit.chips == max(1, -(-fit.cores // CORES_PER_CHIP))
    assert fit.off_core  # the tiny transformer's attention and norms are real-valued
    d = json.loads(json.dumps(fit.to_dict()))
    lines = format_fit(d)
    assert lines[0].startswith("Loihi 2 fit") and f"{fit.cores:,} neurocores" in lines[0]
    assert any("not on neurocores" in line for line in lines)
    assert "Loihi 2 technology brief" in loihi_fit.SOURCE and lines[-1].startswith("limits:")
