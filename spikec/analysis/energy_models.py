"""Energy models: picojoules per operation (docs/energy.md states every constant with its source).

Built in: ``45nm`` (Horowitz 45 nm arithmetic only), ``45nm-memory`` (plus on-chip SRAM
traffic) and ``loihi`` (Loihi's published per-operation energies), each at an arithmetic
precision (``fp32``, ``fp16``, ``int8``); or constants from a TOML/JSON file
(:func:`load_model_file`). An :class:`EnergyModel` turns :class:`OpCounts` into picojoules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from spikec.core.errors import InputError, UsageError, one_line

from .operations import OpCounts

PRECISIONS = ("fp32", "fp16", "int8")
"""Arithmetic precisions of the ANN and of real-valued ops that the built-in models price."""

_HOROWITZ = "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm"
_HOROWITZ_MEM = _HOROWITZ + ": 8 KB SRAM read of 64 bits 10 pJ (32 KB 20 pJ, 1 MB 100 pJ, DRAM 1.3-2.6 nJ)"
_YAN = ("Z. Yan, Z. Bai, W.-F. Wong, 'Reconsidering the energy efficiency of spiking neural networks', "
        "arXiv 2409.08290: counting compute only ignores memory traffic")
_DAVIES = ("M. Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', IEEE Micro 38(1), "
           "2018, table of pre-silicon minimum energies")

# Horowitz 45 nm arithmetic (pJ): MAC = multiply + add.
_ARITH = {"fp32": (4.6, 0.9), "fp16": (1.5, 0.4), "int8": (0.23, 0.03)}
_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
_SRAM_PJ_PER_BIT = 10.0 / 64  # 8 KB SRAM, 64-bit read: 10 pJ


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation, in picojoules. The ANN is charged ``mac_pj`` per MAC; the SNN
    ``synop_pj`` per synaptic operation, ``neuron_update_pj`` per neuron update and
    ``spike_pj`` per spike routed; both ``mac_pj`` per real op, ``add_pj`` per real addition
    and the memory constants per word accessed."""

    name: str
    mac_pj: float
    add_pj: float
    synop_pj: float
    neuron_update_pj: float
    spike_pj: float = 0.0
    weight_read_pj: float = 0.0
    state_access_pj: float = 0.0
    activation_access_pj: float = 0.0
    precision: str = "fp32"
    description: str = ""
    sources: tuple[str, ...] = ()

    CONSTANTS: ClassVar[tuple[str, ...]] = (
        "mac_pj", "add_pj", "synop_pj", "neuron_update_pj", "spike_pj", "weight_read_pj", "state_access_pj",
        "activation_access_pj")

    def terms(self, c: OpCounts) -> dict[str, float]:
        """Energy (pJ) of ``c`` split into compute, neurons, spikes and memory."""
        return {
            "compute": c.macs * self.mac_pj + c.ops * self.mac_pj + c.adds * self.add_pj + c.synops * self.synop_pj,
            "neurons": c.neuron_updates * self.neuron_update_pj,
            "spikes": c.spikes * self.spike_pj,
            "memory": c.weight_reads * self.weight_read_pj + c.state_accesses * self.state_access_pj
            + c.activation_accesses * self.activation_access_pj,
        }

    def energy(self, c: OpCounts) -> float:
        """Energy (pJ) of the operations ``c``."""
        return sum(self.terms(c).values())

    def describe(self) -> dict[str, Any]:
        """The model as JSON-friendly data (constants, precision, description, sources)."""
        return {"name": self.name, "precision": self.precision, "description": self.description,
                "sources": list(self.sources), **{k: getattr(self, k) for k in self.CONSTANTS}}


MODEL_NAMES = ("45nm", "45nm-memory", "loihi")
"""The built-in energy models."""


def builtin_model(name: str, precision: str = "fp32") -> EnergyModel:
    """A built-in model: ``45nm``, ``45nm-memory`` or ``loihi``, with ANN and real-valued
    arithmetic at ``precision`` (``fp32``, ``fp16``, ``int8``)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    mac, add = _ARITH[precision]
    if name == "45nm":
        return EnergyModel(
            name=name, precision=precision, mac_pj=mac, add_pj=add, synop_pj=add, neuron_update_pj=2 * add,
            description=(f"Horowitz 45 nm {precision} arithmetic only: ANN MAC {mac} pJ, SNN synaptic op = one add "
                         f"({add} pJ), neuron update = two adds (integrate; compare and subtract); no memory"),
            sources=(_HOROWITZ,),
        )
    if name == "45nm-memory":
        bits = _BITS[precision]
        state_bits = max(bits, 16)  # membranes and accumulators need more than 8 bits
        return EnergyModel(
            name=name, precision=precision, mac_pj=mac, add_pj=add, synop_pj=add, neuron_update_pj=2 * add,
            weight_read_pj=bits * _SRAM_PJ_PER_BIT, state_access_pj=state_bits * _SRAM_PJ_PER_BIT,
            activation_access_pj=bits * _SRAM_PJ_PER_BIT,
            description=(f"45nm plus on-chip SRAM traffic ({_SRAM_PJ_PER_BIT:.4f} pJ/bit, 8 KB array): weights "
                         f"({bits} bit), membranes and accumulators ({state_bits} bit), activations ({bits} bit)"),
            sources=(_HOROWITZ_MEM, _YAN),
        )
    if name == "loihi":
        return EnergyModel(
            name=name, precision=precision, mac_pj=mac, add_pj=add, synop_pj=23.6, neuron_update_pj=81.0,
            spike_pj=1.7,
            description=("Loihi: 23.6 pJ per synaptic op, 81 pJ per (active) neuron update, 1.7 pJ per spike within "
                         f"a tile; real-valued ops are not native to Loihi and are charged at Horowitz 45 nm "
                         f"{precision} (MAC {mac} pJ, add {add} pJ), as is the ANN"),
            sources=(_DAVIES, _HOROWITZ),
        )
    raise UsageError(f"unknown energy model {name!r}",
                     hint=f"choose one of {', '.join(MODEL_NAMES)} or give a .toml/.json file of constants")


def _as_float(value: Any) -> float | None:
    """``value`` as a float (an integer too large for one is inf); None for a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def load_model_file(path: str | Path, precision: str = "fp32") -> EnergyModel:
    """An energy model from a TOML or JSON file of constants.

    Keys: ``base`` (a built-in model to start from, default ``45nm``), ``name``,
    ``description``, ``sources`` (list of strings) and any of the constants of
    :class:`EnergyModel` (``mac_pj``, ``add_pj``, ``synop_pj``, ``neuron_update_pj``,
    ``spike_pj``, ``weight_read_pj``, ``state_access_pj``, ``activation_access_pj``),
    non-negative numbers in pJ. Bad files raise ``InputError``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"energy model file {str(p)!r} does not exist", hint="give a .toml or .json file of constants")
    text = p.read_bytes()
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text.decode("utf-8"))
    except (ValueError, tomllib.TOMLDecodeError) as e:  # JSON, UTF-8, or an integer of too many digits
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise InputError(f"energy model file {str(p)!r} is not valid {kind}: {one_line(e)}") from None
    if not isinstance(data, dict):
        raise InputError(f"energy model file {str(p)!r} must hold a table of constants, not {type(data).__name__}")
    base_name = data.get("base", "45nm")
    if base_name not in MODEL_NAMES:
        raise InputError(f"{str(p)!r}: unknown base {base_name!r}", hint=f"choose one of {', '.join(MODEL_NAMES)}")
    base = builtin_model(base_name, precision)
    allowed = {"base", "name", "description", "sources", *base.CONSTANTS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(f"{str(p)!r}: unknown keys {unknown}", hint=f"known keys: {', '.join(sorted(allowed))}")
    changes: dict[str, Any] = {"name": str(data.get("name", p.stem))}
    for key in base.CONSTANTS:
        if key in data:
            value = data[key]
            number = _as_float(value)
            if number is None or not math.isfinite(number) or number < 0:
                raise InputError(f"{str(p)!r}: {key} must be a non-negative number of pJ, "
                                 f"got {one_line(repr(value), 60)}")
            changes[key] = number
    if "description" in data:
        changes["description"] = str(data["description"])
    else:
        changes["description"] = f"user constants from {p.name} over {base_name}"
    sources = data.get("sources", [])
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise InputError(f"{str(p)!r}: sources must be a list of strings")
    changes["sources"] = (*sources, *base.sources) if sources else (f"user file {p.name}", *base.sources)
    return dataclasses.replace(base, **changes)


def resolve_model(spec: str, precision: str = "fp32") -> EnergyModel:
    """A built-in model by name, or a model file (a path ending in .toml or .json)."""
    if spec in MODEL_NAMES:
        return builtin_model(spec, precision)
    if spec.lower().endswith((".toml", ".json")) or Path(spec).is_file():
        return load_model_file(spec, precision)
    return builtin_model(spec, precision)  # raises with the known names
