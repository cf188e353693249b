"""NIR graph -> a self-contained Lava export folder (``DIR/lava/``).

The folder holds everything a host with only lava-nc, numpy (and nir) needs:

* ``network.json``  the graph in the runtime's terms (node types ``Input, Embedding,
  LayerNorm, RMSNorm, Attention, Activation, GatedActivation, Add, Affine, SignedIF, SSA,
  FewSpike, Dense, RateReadout, BinaryReadout, Output``), edges in NIR order (fan-in sums in that order), metadata;
* ``weights.npz``   arrays by ``<node>/<field>``: float32 parameters, and for every Dense
  its fixed-point weights ``weight_int`` (int16), ``weight_exp`` and ``synapses``;
* ``quantization.json``  what the fixed-point model applies, per layer;
* ``runtime/``      a copy of ``spikec.backends.lava.runtime`` (lava-nc, nir, numpy only);
* ``run_lava.py``   its entry point (``spikec/backends/lava/run_lava.py``); ``README.md`` how to run it.

Mapping from spikec's NIR (docs/nir-extensions.md): an ``Affine`` fed by a
``SpikecSignedIF`` and read by a ``SpikecRateReadout`` becomes a ``Dense`` (weights with the
thresholds folded in) whose bias moves to the readout; an ``Affine``/``Linear`` on real
values stays a real-valued ``Affine``; the few-spike code maps the same way (``SpikecFewSpike``
-> ``FewSpike``, ``SpikecBinaryReadout`` -> ``BinaryReadout``, with ``radix: 3`` for balanced ternary, written only
then; T <= ``MAX_FEW_SPIKE_STEPS``, a ternary code's steps <= ``fixed_point.MAX_TERNARY_FIXED_STEPS``); a readout
of a real value is the identity (``Add`` with one input). Anything else (standard neurons, convolutions, nested graphs) raises
``UnsupportedError``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import nir
import numpy as np

from spikec.core import ir
from spikec.core.errors import InputError, UnsupportedError
from spikec.core.ir import SpikecSSA

from .runtime import fixed_point, network, numpy_ops
from .runtime.schedule import schedule

RUNNER_NAME = "run_lava.py"
RUNTIME_NAME = "runtime"
RUNTIME_SOURCE = Path(__file__).resolve().parent / RUNTIME_NAME
"""The installed runtime package, copied whole into every export."""
RUNNER_SOURCE = Path(__file__).resolve().parent / RUNNER_NAME
"""The installed entry point, written into every export as ``run_lava.py``."""
QUANTIZATION_FILE = "quantization.json"
MAX_FEW_SPIKE_STEPS = 21  # the fixed-point FewSpike membrane holds 2^21 per threshold in 24 bits
DEFAULT_SYNAPSES = 1


def _spiking(graph: nir.NIRGraph, name: str) -> bool:
    return isinstance(graph.nodes[name], (ir.SpikecSignedIF, SpikecSSA, ir.SpikecFewSpike))


def _convert(graph: nir.NIRGraph, synapses: int) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Node entries and arrays for ``network.json`` / ``weights.npz``."""
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    succs: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        if a not in graph.nodes or b not in graph.nodes:
            raise InputError(f"edge ({a!r}, {b!r}) names an unknown node", hint="the NIR graph is inconsistent")
        succs[a].append(b)
        preds[b].append(a)
    nodes: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}

    def add(name: str, kind: str, attrs: dict[str, Any], **arrs: np.ndarray) -> None:
        nodes.append({"name": name, "type": kind, "attrs": attrs})
        for key, value in arrs.items():
            arrays[f"{name}/{key}"] = value

    f32 = lambda a: np.ascontiguousarray(np.asarray(a, np.float32))  # noqa: E731
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Input):
            add(name, "Input", {"shape": [int(s) for s in np.atleast_1d(node.input_type["input"])]})
        elif isinstance(node, nir.Output):
            add(name, "Output", {})
        elif isinstance(node, ir.SpikecEmbedding):
            add(name, "Embedding", {"features": int(node.weight.shape[1])},
                weight=f32(node.weight), position_weight=f32(node.position_weight))
        elif isinstance(node, ir.SpikecLayerNorm):
            add(name, "LayerNorm", {"features": int(node.weight.shape[0]), "eps": float(node.eps)},
                weight=f32(node.weight), bias=f32(node.bias))
        elif isinstance(node, ir.SpikecRMSNorm):
            add(name, "RMSNorm", {"features": int(node.weight.shape[0]), "eps": float(node.eps)},
                weight=f32(node.weight))
        elif isinstance(node, ir.SpikecAttention):
            h, kv, d = int(node.num_heads), int(node.num_kv_heads), int(node.head_dim)
            partial = {k: int(getattr(node, k)) for k in ("rotary_dim", "window") if getattr(node, k)}
            if not node.causal:  # written only for an encoder, so that decoder exports are unchanged
                partial["causal"] = False
            add(name, "Attention", {"features": h * d, "in_features": (h + 2 * kv) * d, "num_heads": h,
                                    "num_kv_heads": kv, "head_dim": d, "rope_theta": float(node.rope_theta),
                                    "scale": float(node.scale), **partial})
        elif isinstance(node, ir.SpikecActivation):
            add(name, "Activation", {"features": int(node.features), "activation": str(node.activation)})
        elif isinstance(node, ir.SpikecGatedActivation):
            add(name, "GatedActivation", {"features": int(node.features), "in_features": 2 * int(node.features),
                                          "activation": str(node.activation)})
        elif isinstance(node, ir.SpikecAdd):
            add(name, "Add", {"features": int(node.features)})
        elif isinstance(node, SpikecSSA):
            if not (np.asarray(node.decay) == 1).all():
                raise UnsupportedError(
                    f"SSA {name!r} has a decaying causal mask (ssa_decay=fit), whose real-valued products the "
                    "Lava export cannot reproduce spike for spike",
                    hint="fine-tune with --option ssa_decay=none for the Lava target")
            if node.has_map_neurons:
                raise UnsupportedError(
                    f"SSA {name!r} has attention-map neurons (ssa_map=spike), which the Lava SSA process does "
                    "not implement",
                    hint="fine-tune with --option ssa_map=none for the Lava target")
            h, kv, d = int(node.num_heads), int(node.num_kv_heads), int(node.head_dim)
            add(name, "SSA", {"features": h * d, "in_features": (h + 2 * kv) * d, "num_heads": h, "num_kv_heads": kv,
                              "head_dim": d, "rope_theta": float(node.rope_theta), "signed": bool(node.signed),
                              "tau": float(node.tau), "normalize": bool(node.normalize)},
                **{k: f32(getattr(node, k)) for k in numpy_ops.SSA_PARAMS})
        elif isinstance(node, ir.SpikecSignedIF):
            if np.ndim(node.v_init):
                raise UnsupportedError(
                    f"SignedIF {name!r} has a per-neuron initial membrane (v_init [F], from FAS fine calibration), "
                    "which the Lava export does not map",
                    hint="compile with fas-calibrate's calibrate=coarse (one v_init per layer) for the Lava target")
            add(name, "SignedIF", {"features": int(node.threshold.shape[0]), "max_spikes": int(node.max_spikes),
                                   "signed": bool(node.signed), "v_init": float(node.v_init)},
                threshold=f32(node.threshold))
        elif isinstance(node, ir.SpikecFewSpike):
            attrs = {"features": int(node.threshold.shape[0]), "signed_digits": bool(node.signed_digits)}
            if node.steps:  # a shorter code than the window (--budget); absent otherwise, as in the NIR file
                attrs["steps"] = int(node.steps)
            if int(node.radix) != 2:  # balanced ternary; absent for radix 2, as in the NIR file
                attrs["radix"] = int(node.radix)
            add(name, "FewSpike", attrs, threshold=f32(node.threshold))
        elif isinstance(node, (ir.SpikecRateReadout, ir.SpikecBinaryReadout)):
            if preds[name] and all(_spiking(graph, p) for p in preds[name]):
                raise UnsupportedError(f"readout {name!r} reads spikes directly",
                                       hint="the Lava export needs an Affine between neurons and a readout")
            fed_by_dense = len(preds[name]) == 1 and isinstance(graph.nodes[preds[name][0]], (nir.Affine, nir.Linear)) \
                and any(_spiking(graph, p) for p in preds[preds[name][0]])
            kind = "RateReadout" if isinstance(node, ir.SpikecRateReadout) else "BinaryReadout"
            attrs = {"features": int(node.features)}
            if fed_by_dense and kind == "BinaryReadout" and int(node.radix) != 2:
                attrs["radix"] = int(node.radix)
            add(name, kind if fed_by_dense else "Add", attrs)
        elif isinstance(node, (nir.Affine, nir.Linear)):
            weight = f32(node.weight)
            if weight.ndim != 2:
                raise UnsupportedError(f"{type(node).__name__} {name!r} has a weight of shape {list(weight.shape)}")
            bias = f32(node.bias) if isinstance(node, nir.Affine) else np.zeros(weight.shape[0], np.float32)
            attrs = {"features": int(weight.shape[0]), "in_features": int(weight.shape[1])}
            if any(_spiking(graph, p) for p in preds[name]):
                w_int, exp = fixed_point.quantize_weights(weight, synapses)
                add(name, "Dense", attrs, weight=weight, bias=bias, weight_int=w_int.astype(np.int8 if synapses == 1 else np.int16),
                    weight_exp=np.array([exp], np.int32), synapses=np.array([synapses], np.int32))
            else:
                add(name, "Affine", attrs, weight=weight, bias=bias)
        else:
            kind = type(node).__name__
            raise UnsupportedError(
                f"node {name!r} has type {kind!r}, which the Lava export does not map",
                hint="the Lava target supports spikec's converted graphs (SignedIF, Affine, readouts, "
                     "real-valued extension nodes)")
    return nodes, arrays


def network_description(graph: nir.NIRGraph, *, timesteps: int | None = None, positions: int | None = None,
                        synapses: int = DEFAULT_SYNAPSES) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The runtime's description of ``graph`` and its arrays (checked by the runtime's own
    scheduler, so an export that is written also runs)."""
    meta = dict(graph.metadata or {})
    T = int(timesteps or meta.get("timesteps") or 16)
    nodes, arrays = _convert(graph, synapses)
    if T > MAX_FEW_SPIKE_STEPS and any(n["type"] == "FewSpike" for n in nodes):
        raise UnsupportedError(f"the Lava export runs few-spike neurons for at most {MAX_FEW_SPIKE_STEPS} steps, "
                               f"not T={T}", hint=f"compile with -T {MAX_FEW_SPIKE_STEPS} or fewer")
    longest = max((n["attrs"].get("steps") or T for n in nodes if n["type"] == "FewSpike"
                   and n["attrs"].get("radix", 2) == 3), default=0)
    if longest > fixed_point.MAX_TERNARY_FIXED_STEPS:
        raise UnsupportedError(f"the Lava export runs balanced-ternary few-spike neurons for at most "
                               f"{fixed_point.MAX_TERNARY_FIXED_STEPS} steps (an exact 24-bit fixed_pt membrane), "
                               f"not {longest}", hint=f"compile with -T {fixed_point.MAX_TERNARY_FIXED_STEPS} or fewer")
    desc = {
        "format": network.FORMAT,
        "nodes": nodes,
        "edges": [[a, b] for a, b in graph.edges],
        "meta": {
            "timesteps": T,
            "positions": int(positions or meta.get("positions") or 0) or None,
            "model": str(meta.get("model", "")),
            "dt": float(meta.get("dt", 1.0)),
            "spikec_version": str(meta.get("spikec_version", "")),
            "synapses": synapses,
        },
    }
    try:
        schedule(network.network_from_dict(desc, arrays), T)
    except network.NetworkError as e:
        raise UnsupportedError(f"the graph cannot be mapped to Lava: {e}") from None
    return desc, arrays


def quantization_report(desc: dict[str, Any], arrays: dict[str, np.ndarray], timesteps: int) -> dict[str, Any]:
    """What the fixed_pt model applies: per Dense its Loihi weights (synapse groups,
    exponent, errors) and readout bias encoding; per SignedIF layer its threshold and
    current encodings at ``timesteps``."""
    net = network.network_from_dict(desc, arrays)
    dense, neurons = {}, {}
    for name, node in net.nodes.items():
        if node.type == "Dense":
            q = fixed_point.dense_fixed(net, name)
            w = net.array(name, "weight").astype(np.float64)
            err = np.abs(q["w_int"] * q["unit"] - w)
            bias = net.array(name, "bias").astype(np.float64)
            dense[name] = {
                "shape": list(w.shape), "synapse_groups": q["synapses"], "weight_bits_per_group": 8,
                "group_shifts": [sh for _, sh in q["groups"]], "weight_exp": q["weight_exp"],
                "effective_weight_bits": 8 if q["synapses"] == 1 else 15,
                "max_abs_weight": float(np.abs(w).max(initial=0.0)),
                "max_abs_weight_error": float(err.max(initial=0.0)),
                "rel_rms_weight_error": float(np.sqrt((err**2).mean()) / max(np.sqrt((w**2).mean()), 1e-30)),
                "readout_bias_exp": q["bias_exp"],
                "max_abs_bias_error": float(np.abs(q["bias_int"] * q["unit"] - bias).max(initial=0.0)),
            }
        elif node.type == "SignedIF":
            B = int(node.attrs["max_spikes"])
            neurons[name] = {enc: fixed_point.signed_if_encoding(B, timesteps, enc) for enc in fixed_point.CURRENT_ENCODINGS}
            neurons[name]["max_spikes"] = B
        elif node.type == "FewSpike" and node.attrs.get("radix", 2) == 3:
            steps = int(node.attrs.get("steps") or timesteps)
            bits = fixed_point.ternary_fraction_bits(steps)
            neurons[name] = {"radix": 3, "steps": steps, "membrane_units_per_last_step": 2**bits,
                             "membrane_fraction_bits": bits, "membrane_bound": 3**steps * 2 ** (bits - 1),
                             "step_weights": f"3^({steps - 1}-k) * 2^{bits} membrane units, k = 0..{steps - 1}"}
        elif node.type == "FewSpike":
            neurons[name] = {"membrane_units_per_threshold": 2**21, "signed_digits": bool(node.attrs["signed_digits"]),
                             "step_weights": "2^(21-k) membrane units, k = 0..T-1"}
    scheme = {
        "weights": "per layer: weight ~ w_int * 2**weight_exp (one power-of-two exponent per layer); w_int is "
                   "held by 8-bit synapse groups: one group (|w_int| <= 127) or two, a high group shifted "
                   "by 7 bits plus a low group (|w_int| <= 16319); Lava's Dense stores each mixed-sign 8-bit "
                   "mantissa as 2*m",
        "few_spike": "FewSpike layers: a 24-bit membrane of 2^21 units per threshold, the float32 initial "
                     "membrane truncated toward zero; BinaryReadout: the 24-bit accumulator doubles (a shift) "
                     "and adds each step, the bias enters on the first step; value = acc * unit / 2^(T-1)",
        "readout": "24-bit saturating integer accumulator; the Affine bias is a Loihi bias per step "
                   "(13-bit mantissa << readout_bias_exp) in units of 2**weight_exp; value = sum * unit / T",
        "neurons": "threshold = vth << 6 (17-bit vth), 24-bit membrane; the current x/threshold clipped to "
                   "[-B, B] is 'graded24' (a 24-bit value, default) or 'bias13' (LIF bias, 13-bit "
                   "mantissa << bias_exp); current_step is its resolution in threshold units; the "
                   "current is rounded so that the integer neuron emits the float32 neuron's spikes "
                   "(spike-preserving rounding, moving the initial membrane only where float32 sums sit "
                   "on a rounding tie), else to nearest",
        "real_ops": "embedding, norms, attention, activations and adds compute in floating point in both "
                    "precisions",
    }
    if any(n.get("radix") == 3 for n in neurons.values()):  # written only then: binary reports are unchanged
        scheme["few_spike_ternary"] = (
            "balanced-ternary FewSpike layers (radix 3): a 24-bit membrane of 2^f units per last step "
            "(membrane_fraction_bits: the most with 3^S/2 * 2^f in 24 bits, at least 2, so S <= 13), the float32 "
            "m_0 = u 3^(S-1) clamped to +-3^S/2 and rounded to odd (truncated toward zero, the last bit set where "
            "inexact): the float model's spikes; BinaryReadout: 24-bit accumulators that triple and add, one per "
            "group of 8 steps, each scaled by 3^-(last step) in float64, the bias added after the groups")
    return {"timesteps": timesteps, "scheme": scheme, "dense": dense, "neurons": neurons}


def quantized_graph(graph: nir.NIRGraph, synapses: int = DEFAULT_SYNAPSES) -> nir.NIRGraph:
    """``graph`` with every neuron-fed Affine holding the fixed-point model's weights and
    bias (``w_int * 2**weight_exp``, the Loihi-encoded bias), exactly representable in float32:
    the reference simulator runs the quantized network the fixed_pt model implements."""
    desc, arrays = network_description(graph, synapses=synapses)
    net = network.network_from_dict(desc, arrays)
    nodes = dict(graph.nodes)
    for name, node in net.nodes.items():
        if node.type == "Dense":
            q = fixed_point.dense_fixed(net, name)
            nodes[name] = nir.Affine(weight=(q["w_int"] * q["unit"]).astype(np.float32),
                                     bias=(q["bias_int"] * q["unit"]).astype(np.float32),
                                     metadata=dict(graph.nodes[name].metadata or {}))
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=dict(graph.metadata or {}), type_check=False)


def export_lava(graph: nir.NIRGraph, out_dir: str | Path, *, timesteps: int | None = None,
                positions: int | None = None, synapses: int = DEFAULT_SYNAPSES) -> dict[str, Any]:
    """Write the Lava export of ``graph`` into ``out_dir`` (created; usually ``DIR/lava``).

    timesteps: the default T of the runtime (default: the graph's ``timesteps`` metadata).
    positions: the most positions an input may have (``--seq-len``; default: the graph's
    ``positions`` metadata). synapses: 8-bit synapse groups per fixed-point weight (1 or 2).
    Returns a summary: folder, files, node counts, Lava processes, stages, seconds.
    Raises ``UnsupportedError`` for graphs the mapping does not cover."""
    start = time.perf_counter()
    out = Path(out_dir)
    desc, arrays = network_description(graph, timesteps=timesteps, positions=positions, synapses=synapses)
    T = int(desc["meta"]["timesteps"])
    report = quantization_report(desc, arrays, T)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / network.WEIGHTS_FILE, **arrays)
    (out / network.NETWORK_FILE).write_text(json.dumps(desc, indent=1))
    (out / QUANTIZATION_FILE).write_text(json.dumps(report, indent=1))
    copy_runtime(out)
    (out / "README.md").write_text(_readme(desc))
    sched = schedule(network.network_from_dict(desc, arrays), T)
    counts: dict[str, int] = {}
    for entry in desc["nodes"]:
        counts[entry["type"]] = counts.get(entry["type"], 0) + 1
    return {
        "folder": str(out),
        "files": sorted(p.name for p in out.iterdir()),
        "node_types": dict(sorted(counts.items())),
        "lava_processes": sum(v for k, v in counts.items() if k not in ("Input", "Output")),
        "stages": len(sched.windows),
        "steps_single_network": sched.steps,
        "timesteps": T,
        "positions": desc["meta"]["positions"],
        "synapses": synapses,
        "seconds": time.perf_counter() - start,
    }


def runtime_files(folder: str | Path) -> dict[str, str]:
    """SHA-256 of the runtime in ``folder`` (an export's ``lava/`` or this package's folder):
    ``run_lava.py`` and every ``.py`` file under ``runtime/``, by path relative to ``folder``."""
    folder = Path(folder)
    paths = [folder / RUNNER_NAME, *sorted((folder / RUNTIME_NAME).rglob("*.py"))]
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def copy_runtime(out: Path) -> None:
    """Write the runtime into the export folder ``out``: ``runtime/`` (replaced whole, without
    ``__pycache__``) and the entry point ``run_lava.py``."""
    target = out / RUNTIME_NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(RUNTIME_SOURCE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copyfile(RUNNER_SOURCE, out / RUNNER_NAME)


def _readme(desc: dict[str, Any]) -> str:
    m = desc["meta"]
    return f"""# spikec Lava export ({m['model'] or 'model'})

Runs on Intel Lava's Loihi 2 CPU simulator. Needs Python 3.10 with only:

    pip install lava-nc==0.10.0 nir==1.0.8 "numpy<2"

Run (token ids as a .npy of int64 `[batch, positions]`, at most {m['positions']} positions):

    python run_lava.py --input tokens.npy --timesteps {m['timesteps']} --precision floating_pt --out out.npz

`--precision fixed_pt` runs the Loihi fixed-point models (see quantization.json). `out.npz` holds
`output/<name>` (logits `[batch, positions, vocab]`), `spikes/<layer>` (`[T, batch, positions,
features]`, graded int8 spikes of every SignedIF layer, aligned to the reference simulator's steps)
and `meta` (JSON: timing, steps, segments). `--stages-per-run 0` builds the whole graph as one Lava
network instead of one network per group of stages.

Files: network.json (graph), weights.npz (`<node>/<field>` arrays), quantization.json, run_lava.py and
runtime/ (the code it runs).
"""
