"""Operations per token: the records that counting produces (:mod:`spikec.analysis.counts`) and
energy models consume (:mod:`spikec.analysis.energy_models`).

:class:`OpCounts` is what one network (ANN or SNN) spends on one layer operation per token;
:class:`LayerCount` pairs the two networks' counts of a layer; :class:`OperationCounts` holds
every layer of a network for a :class:`Workload`. ``OPS_PER_ELEMENT`` is the estimated real
arithmetic per element of the non-MAC operations (docs/energy.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from spikec.core.errors import InputError

OPS_PER_ELEMENT: dict[str, int] = {
    "layer_norm": 5,  # mean accumulate, subtract, square-accumulate, normalise, scale-and-shift
    "rms_norm": 3,  # square-accumulate, normalise, scale
    "relu": 1,
    "silu": 4,  # exp, add, divide, multiply
    "gelu": 8,
    "gelu_tanh": 8,
    "gate": 1,  # the multiply of a gated activation
    "softmax": 5,  # per score: scale, subtract max, exp, accumulate, normalise
    "rotary": 3,  # per rotated q/k element: two multiplies, one add (tables precomputed)
    "readout": 1,  # per output and window: the 1/T scale (the bias add is counted apart)
}
"""Real-valued operations per element of the non-MAC arithmetic (estimates, docs/energy.md)."""


@dataclass(frozen=True)
class OpCounts:
    """Operations per token of one layer in one network (ANN or SNN).

    macs: real multiply-accumulates (affines, attention products).
    ops: other real arithmetic (norms, activations, softmax, rotary, readout scale),
    each charged as a MAC.
    adds: real additions (residual junctions, biases, learned positions).
    synops: synaptic operations (an input spike times its fan-out), accumulate-only.
    neuron_updates: neuron state updates (neurons x T).
    spikes: spikes emitted, graded spikes counted by value.
    weight_reads, state_accesses, activation_accesses: memory accesses (words) of
    parameters, membranes/accumulators, and activations.
    """

    macs: float = 0.0
    ops: float = 0.0
    adds: float = 0.0
    synops: float = 0.0
    neuron_updates: float = 0.0
    spikes: float = 0.0
    weight_reads: float = 0.0
    state_accesses: float = 0.0
    activation_accesses: float = 0.0

    def __add__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def scaled(self, factor: float) -> "OpCounts":
        """Every count times ``factor`` (e.g. ``T`` for a real-valued op run at every step)."""
        return OpCounts(*(a * factor for a in dataclasses.astuple(self)))

    def as_dict(self) -> dict[str, float]:
        """The counts by field name."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LayerCount:
    """The operations of one layer operation, per token, in the ANN and in the SNN.

    name: the NIR node that names the layer (an affine's name for an affine with its input
    neurons and readout). kind: ``affine`` (spike-driven), ``affine-real``, ``attention``,
    ``norm``, ``activation``, ``residual``, ``embedding``, ``neurons``, ``readout`` or
    ``uncounted`` (a node type with no counting rule; its cost is not included).
    block: ``h.N`` for nodes of transformer block N, else the name. attention: part of an
    attention block (qkv projection, attention core, output projection, their neurons).
    nodes: the NIR nodes counted here. neurons: spiking neurons per token position.
    firing_rate: mean ``|spikes|`` per neuron per step (None without neurons).
    """

    name: str
    kind: str
    block: str
    attention: bool
    nodes: tuple[str, ...]
    neurons: int
    ann: OpCounts
    snn: OpCounts
    firing_rate: float | None = None


@dataclass(frozen=True)
class Workload:
    """What was simulated: ``sequences`` sequences of ``positions`` tokens at ``timesteps``."""

    sequences: int
    positions: int
    timesteps: int

    @property
    def tokens(self) -> int:
        """Tokens simulated: ``sequences * positions``."""
        return self.sequences * self.positions


@dataclass(frozen=True)
class OperationCounts:
    """Per-layer counts of a network on a workload (what :func:`count_operations` returns)."""

    layers: list[LayerCount]
    workload: Workload

    def total(self, network: str, attention_only: bool = False) -> OpCounts:
        """Sum of ``ann`` or ``snn`` counts over the layers (or the attention layers only)."""
        out = OpCounts()
        for layer in self.layers:
            if not attention_only or layer.attention:
                out = out + getattr(layer, network)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (read back with :meth:`from_dict`)."""
        return {"workload": dataclasses.asdict(self.workload),
                "layers": [{**dataclasses.asdict(l), "nodes": list(l.nodes)} for l in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OperationCounts":
        """Read back :meth:`to_dict`'s form; malformed data raises ``InputError``."""
        try:
            layers = [LayerCount(**{**l, "nodes": tuple(l["nodes"]), "ann": OpCounts(**l["ann"]),
                                    "snn": OpCounts(**l["snn"])}) for l in data["layers"]]
            return cls(layers=layers, workload=Workload(**data["workload"]))
        except (KeyError, TypeError) as e:
            raise InputError(f"operation counts are malformed ({type(e).__name__}: {e})",
                             hint="run 'spikec energy DIR' again to rewrite them") from None
