"""Checking that the NIR graph run by the reference simulator does exactly what the
converted torch.fx module does: same spikes on every neuron layer, same logits."""

from __future__ import annotations

from dataclasses import dataclass

import nir
import torch

from spikec.backends.simulator import simulate
from spikec.core import ops
from spikec.core import ssa
from spikec.core import streaming


SPIKE_OPS = {ops.signed_if, ssa.spiking_self_attention, ops.nir_if, ops.few_spike}
"""Canonical ops whose output is a spike train: ``SpikeRecorder`` keeps their values."""


class SpikeRecorder(torch.fx.Interpreter):
    """Runs a converted GraphModule and keeps the spike train of every ``signed_if`` node,
    keyed by its NIR node name."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self.spikes: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}  # window spike counts of streaming neurons (spike-softmax)

    def run_node(self, n: torch.fx.Node):
        result = super().run_node(n)
        if n.op == "call_function" and n.target in SPIKE_OPS:
            self.spikes[str(n.meta.get("spikec_name", n.name)).replace(".", "_")] = result
        elif n.op == "call_function" and n.target in streaming.COUNTED_OPS:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            name = str(n.meta.get("spikec_name", n.name)).replace(".", "_")
            for suffix, c in streaming.fx_counts(n.target, args, kwargs, result).items():
                self.counts[name + suffix] = c
        return result


@dataclass(frozen=True)
class Agreement:
    """Result of comparing the fx module with the simulator on the same tokens."""

    layers: int  # neuron layers compared
    identical_layers: int  # layers whose spike trains are equal element for element
    logits_max_abs_diff: float
    firing_rates: dict[str, float]  # from the simulator run

    @property
    def identical(self) -> bool:
        return self.identical_layers == self.layers and self.logits_max_abs_diff == 0.0


@torch.no_grad()
def compare_fx_and_simulator(
    gm: torch.fx.GraphModule, graph: nir.NIRGraph, ids: torch.Tensor, timesteps: int
) -> Agreement:
    """Run ``gm`` and ``graph`` (at ``timesteps``, which must be the T the module was
    converted with) on ``ids`` and compare spikes layer by layer and the logits."""
    recorder = SpikeRecorder(gm)
    fx_logits = recorder.run(ids)
    result = simulate(graph, ids, timesteps, record=True)
    sim_logits = result.output
    identical = sum(
        1 for name, s in recorder.spikes.items() if name in result.spikes and torch.equal(s, result.spikes[name])
    )
    identical += sum(  # streaming neurons: the spike train's window count equals the quantized ANN's, exactly
        1 for name, c in recorder.counts.items()
        if name in result.spikes and torch.equal(streaming.sim_counts(graph.nodes.get(name), result.spikes[name]), c)
    )
    diff = float((fx_logits - sim_logits).abs().max())
    return Agreement(len(recorder.spikes) + len(recorder.counts), identical, diff, dict(result.firing_rates))
