"""Will it fit on Loihi 2? Neurons, synapses and synaptic memory per layer of a compiled NIR
graph, and the neurocores and chips they need under Loihi 2's published limits.

Published per-chip figures (Intel Labs, "Taking Neuromorphic Computing to the Next Level with
Loihi 2", technology brief, 2021; docs/loihi-fit.md): 128 neurocores per chip, up to 8,192
neurons per core (1 million per chip), up to 120 million synapses per chip, 192 KB of memory
per core shared by synapses and neuron state, synaptic weights of up to 8 bits.

The model (a lower bound on cores: neuron state, routing tables and microcode, which share
the 192 KB, are not counted):

* every neuron layer (``SpikecSignedIF`` and its subclasses) holds ``features x positions``
  neurons: the Lava export fixes the positions and each position has its own neurons;
* every ``Affine``/``Linear`` is a synaptic layer; its synapses live on the cores of its
  output units. A core holding ``f`` output features of all positions needs ``f x positions``
  units and ``f x fan_in`` weights of ``weight_bits``; the positions share those weights.
  ``cores = ceil(features / f)`` with the largest ``f`` that meets both limits; a layer where
  even one output feature exceeds a core (``positions > 8192`` or ``fan_in x bits > 192 KB``)
  does not fit;
* real-valued operators (softmax attention, norms, embeddings, real activations) have no
  neurocore form: they are listed as not mapping to neurocores (they run on the chip's
  embedded x86 cores or the host, or need a spiking form: ``--attention spike-softmax``).
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import nir
import numpy as np

from spikec.core import ir

NEURONS_PER_CORE = 8192
"""Loihi 2: maximum neurons per neurocore (1 million per chip over 128 cores)."""
MEMORY_PER_CORE = 192 * 1024
"""Loihi 2: bytes of memory per neurocore (synapses and neuron state share it)."""
CORES_PER_CHIP = 128
"""Loihi 2: neurocores per chip."""
SYNAPSES_PER_CHIP = 120_000_000
"""Loihi 2: maximum synapses per chip."""
WEIGHT_BITS = 8
"""Synaptic weight precision assumed (Loihi 2's maximum; the Lava export's fixed_pt weights)."""
SOURCE = "Intel Labs, Loihi 2 technology brief (2021): 128 cores/chip, 8,192 neurons/core, 192 KB/core, 120M synapses/chip"


@dataclass
class LayerFit:
    """One layer: ``kind`` is ``neurons`` or ``synapses``; ``units`` neurons (or output units)
    over all positions; ``synapses`` stored weights; ``memory_bytes`` their memory; ``cores``
    neurocores needed (0 when it does not fit); ``problem`` why it does not fit, else ``""``."""

    name: str
    kind: str
    units: int
    synapses: int = 0
    memory_bytes: int = 0
    cores: int = 0
    problem: str = ""


@dataclass
class LoihiFit:
    """The fit of a graph: its layers, the totals, the chips needed and what does not fit."""

    positions: int
    weight_bits: int
    layers: list[LayerFit] = field(default_factory=list)
    off_core: list[str] = field(default_factory=list)  # real-valued operators (names)

    @property
    def neurons(self) -> int:
        return sum(l.units for l in self.layers if l.kind == "neurons")

    @property
    def synapses(self) -> int:
        return sum(l.synapses for l in self.layers)

    @property
    def memory_bytes(self) -> int:
        return sum(l.memory_bytes for l in self.layers)

    @property
    def cores(self) -> int:
        return sum(l.cores for l in self.layers)

    @property
    def chips(self) -> int:
        """Chips needed: by cores and by the per-chip synapse limit, whichever is more."""
        return max(math.ceil(self.cores / CORES_PER_CHIP), math.ceil(self.synapses / SYNAPSES_PER_CHIP), 1)

    @property
    def too_large(self) -> list[LayerFit]:
        return [l for l in self.layers if l.problem]

    @property
    def fits_one_chip(self) -> bool:
        return not self.too_large and not self.off_core and self.chips == 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: limits, totals, layers, off-core operators."""
        return {"source": SOURCE, "limits": {"neurons_per_core": NEURONS_PER_CORE, "memory_per_core_bytes": MEMORY_PER_CORE,
                                             "cores_per_chip": CORES_PER_CHIP, "synapses_per_chip": SYNAPSES_PER_CHIP},
                "positions": self.positions, "weight_bits": self.weight_bits, "neurons": self.neurons,
                "synapses": self.synapses, "memory_bytes": self.memory_bytes, "cores": self.cores, "chips": self.chips,
                "fits_one_chip": self.fits_one_chip, "does_not_fit": [l.name for l in self.too_large],
                "off_core": self.off_core, "layers": [asdict(l) for l in self.layers]}

    def summary_lines(self) -> list[str]:
        """A few plain lines: totals, chips, and what does not fit (``format_fit``)."""
        return format_fit(self.to_dict())

    def to_html(self) -> str:
        """The summary and the per-layer table as HTML (for report.html)."""
        esc = html.escape
        head = "".join(f"<th>{h}</th>" for h in ("layer", "kind", "neurons/units", "synapses", "memory", "cores", "fits"))
        rows = "".join(
            f"<tr><td>{esc(l.name)}</td><td>{l.kind}</td><td>{l.units:,}</td><td>{l.synapses:,}</td>"
            f"<td>{_bytes(l.memory_bytes)}</td><td>{l.cores:,}</td><td>{esc(l.problem) or 'yes'}</td></tr>"
            for l in self.layers)
        notes = "".join(f"<p class='note'>{esc(line)}</p>" for line in self.summary_lines())
        return f"{notes}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def format_fit(fit: dict[str, Any]) -> list[str]:
    """Plain lines for a ``LoihiFit.to_dict()`` (also as saved in energy.json): totals, chips,
    what does not fit a neurocore, and the real-valued operators."""
    lines = [f"Loihi 2 fit (Lava target, {fit['positions']} positions, {fit['weight_bits']}-bit weights): "
             f"{fit['neurons']:,} neurons, {fit['synapses']:,} synapses, {_bytes(fit['memory_bytes'])} synaptic memory "
             f"-> at least {fit['cores']:,} neurocores = {fit['chips']:,} chip(s) of {CORES_PER_CHIP}"]
    problems = {l["name"]: l["problem"] for l in fit["layers"] if l["problem"]}
    if problems:
        lines.append("does not fit a neurocore: " + "; ".join(f"{n} ({why})" for n, why in problems.items()))
    if fit["off_core"]:
        lines.append(f"real-valued, not on neurocores ({len(fit['off_core'])}): {_abridge(fit['off_core'])}")
    lines.append(f"limits: {SOURCE} (docs/loihi-fit.md)")
    return lines


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _abridge(names: list[str], keep: int = 6) -> str:
    return ", ".join(names[:keep]) + (f" and {len(names) - keep} more" if len(names) > keep else "")


def _positions(graph: nir.NIRGraph) -> int:
    meta = getattr(graph, "metadata", None) or {}
    value = meta.get("positions")
    return int(np.asarray(value).item()) if value is not None else 1


def synaptic_layer(name: str, out_features: int, fan_in: int, positions: int, weight_bits: int) -> LayerFit:
    """Cores for a synaptic layer of ``out_features x fan_in`` weights shared by ``positions``
    (module docstring)."""
    per_feature = math.ceil(fan_in * weight_bits / 8)
    by_neurons = NEURONS_PER_CORE // positions
    by_memory = MEMORY_PER_CORE // per_feature if per_feature else out_features
    per_core = min(by_neurons, by_memory)
    synapses = out_features * fan_in
    fit = LayerFit(name, "synapses", out_features * positions, synapses, out_features * per_feature)
    if per_core < 1:
        fit.problem = (f"{positions} positions exceed {NEURONS_PER_CORE} units per core" if by_neurons < 1 else
                       f"fan-in {fan_in} x {weight_bits} bits exceeds {MEMORY_PER_CORE // 1024} KB per core")
    else:
        fit.cores = math.ceil(out_features / per_core)
    return fit


def neuron_layer(name: str, features: int, positions: int) -> LayerFit:
    """Cores for ``features x positions`` neurons."""
    return LayerFit(name, "neurons", features * positions, cores=math.ceil(features * positions / NEURONS_PER_CORE))


def fit_graph(graph: nir.NIRGraph, positions: int | None = None, weight_bits: int = WEIGHT_BITS) -> LoihiFit:
    """The Loihi 2 fit of ``graph`` (top-level nodes) at ``positions`` (default: the graph's
    ``positions`` metadata, as the Lava export takes it)."""
    p = max(1, positions or _positions(graph))
    fit = LoihiFit(positions=p, weight_bits=weight_bits)
    for name, node in graph.nodes.items():
        if isinstance(node, ir.SpikecSignedIF):
            fit.layers.append(neuron_layer(name, int(node.threshold.shape[0]), p))
        elif isinstance(node, (nir.Affine, nir.Linear)):
            shape = np.shape(node.weight)  # not its values: a lazily read weight stays in its file
            fit.layers.append(synaptic_layer(name, int(shape[0]), int(shape[-1]), p, weight_bits))
        elif isinstance(node, ir.SpikecNode) and node.kind == "real":
            fit.off_core.append(name)
    return fit
