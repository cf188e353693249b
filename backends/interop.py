"""Running other libraries' NIR files in spikec, and spikec's files in other libraries.

NIR nodes are continuous-time; the file does not store the time step, and each library
discretises (and sometimes reinterprets) them its own way. spikec's simulator follows the
NIR definitions literally with dt = 1 (``spikec.core.neurons``). ``with_semantics(graph,
library)`` rewrites a graph so that the simulator runs it exactly as ``library`` runs
that file, node for node:

* ``nir`` / ``spikec``: unchanged (dt = 1).
* ``norse``: IF as Norse's ``IAFCell`` (``v += I``: Norse ignores ``r``, ``v_reset`` is 0),
  LIF/LI as Norse's box cells with its time step ``dt`` (default 0.001, ``r`` ignored).
* ``spikingjelly``: its time step ``dt`` (default 1e-4: IF ``r * dt``, LIF ``tau / dt``), and
  IF fires where ``v >= v_threshold`` (``surrogate.heaviside`` is ``x >= 0``) rather than
  NIR's ``v > v_threshold``: the threshold becomes the next float32 below it, the same
  comparison on every float32 membrane.
* ``snntorch``: its exporter's time step ``dt = 1e-4`` (LIF ``tau / dt``).
* ``sinabs``: Sinabs writes its IAF (several spikes a step, reset by subtraction, spike
  where ``v >= threshold``) as ``nir.IF``, which NIR defines as one spike a step reset to
  ``v_reset``: each IF becomes a ``SpikecSignedIF`` (unsigned, ``max_spikes`` 127,
  ``v_init`` 0), which is Sinabs' ``IAF`` with ``MultiSpike`` and ``MembraneSubtract``.

``run_in_library`` imports a graph with a library's own NIR importer and runs it for T
steps (recording chosen nodes' outputs): the tests and benchmarks/interop.py use it to
check that spikec and the other simulators produce the same spikes. The libraries are
optional; each is imported only when asked for. Known disagreements between the
libraries and the NIR definition, with workarounds: docs/interop.md.
"""

from __future__ import annotations

import copy
import keyword
import warnings
from typing import Any

import nir
import numpy as np
import torch

from spikec.core.errors import ResourceError, UnsupportedError, UsageError
from spikec.core.ir import SpikecSignedIF

LIBRARIES = ("nir", "spikec", "norse", "spikingjelly", "snntorch", "sinabs")
DEFAULT_DT = {"norse": 1e-3, "spikingjelly": 1e-4, "snntorch": 1e-4}
"""The time step each library's NIR exporter and importer assume by default."""
SINABS_MAX_SPIKES = 127  # SpikecSignedIF's int8 bound; Sinabs' MultiSpike is unbounded

_TAU_FIELDS = {nir.LIF: ("tau",), nir.LI: ("tau",), nir.CubaLIF: ("tau_syn", "tau_mem"),
               nir.CubaLI: ("tau_syn", "tau_mem")}


def _f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def rescale_time(graph: nir.NIRGraph, dt: float) -> nir.NIRGraph:
    """``graph`` discretised with time step ``dt``, written as the dt = 1 graph spikec runs:
    Euler steps of NIR's equations with step ``dt`` are the dt = 1 steps of a graph whose
    time constants are ``tau / dt`` and whose integrators (IF, I) have resistance
    ``r * dt``. Returns a copy; nested graphs are rescaled too."""
    if not dt > 0:
        raise UsageError(f"dt must be positive, got {dt}")
    out = copy.deepcopy(graph)
    for node in _walk(out):
        if isinstance(node, (nir.IF, nir.I)):
            node.r = _f32(np.asarray(node.r, np.float64) * dt)
        for cls, fields in _TAU_FIELDS.items():
            if isinstance(node, cls):
                for f in fields:
                    setattr(node, f, _f32(np.asarray(getattr(node, f), np.float64) / dt))
    return out


def _walk(graph: nir.NIRGraph):
    for node in graph.nodes.values():
        yield node
        if isinstance(node, nir.NIRGraph):
            yield from _walk(node)


def with_semantics(graph: nir.NIRGraph, library: str, dt: float | None = None) -> nir.NIRGraph:
    """A copy of ``graph`` that spikec's simulator runs as ``library`` runs the file (see
    the module docstring); ``dt``: the time step the library was given (default
    ``DEFAULT_DT[library]``)."""
    if library not in LIBRARIES:
        raise UsageError(f"unknown library {library!r}", hint=f"use one of {', '.join(LIBRARIES)}")
    if library in ("nir", "spikec"):
        return copy.deepcopy(graph)
    dt = DEFAULT_DT.get(library, 1.0) if dt is None else dt
    if library == "norse":
        out = copy.deepcopy(graph)
        for node in _walk(out):
            if isinstance(node, nir.IF):  # Norse's IAFCell: v += I, reset to 0, r and dt ignored
                node.r, node.v_reset = np.ones_like(_f32(node.r)), np.zeros_like(_f32(node.v_reset))
            for cls, fields in _TAU_FIELDS.items():
                if isinstance(node, cls):
                    node.r = np.ones_like(_f32(node.r))
                    for f in fields:
                        setattr(node, f, _f32(np.asarray(getattr(node, f), np.float64) / dt))
        return out
    if library == "spikingjelly":
        out = rescale_time(graph, dt)
        for node in _walk(out):
            if isinstance(node, nir.IF):
                node.v_threshold = np.nextafter(_f32(node.v_threshold), np.float32(-np.inf))
        return out
    if library == "snntorch":
        return rescale_time(graph, dt)
    # sinabs
    out = copy.deepcopy(graph)
    for g in [out, *(n for n in _walk(out) if isinstance(n, nir.NIRGraph))]:
        for name, node in list(g.nodes.items()):
            if isinstance(node, nir.IF):
                threshold = _f32(node.v_threshold).reshape(-1)
                g.nodes[name] = SpikecSignedIF(threshold=threshold, max_spikes=SINABS_MAX_SPIKES, signed=False,
                                               v_init=0.0)
    return out


def for_library(graph: nir.NIRGraph, library: str) -> nir.NIRGraph:
    """The inverse direction: a copy of a graph written to the NIR definition (dt = 1),
    adjusted so that ``library``'s importer runs it as NIR defines it. SpikingJelly: each
    IF threshold becomes the next float32 above it (``v >= next(theta)`` is ``v > theta``).
    Norse, which ignores ``r`` and ``v_reset`` of IF: ``UnsupportedError`` unless they are 1
    and 0. Other libraries: unchanged."""
    out = copy.deepcopy(graph)
    for node in _walk(out):
        if not isinstance(node, nir.IF):
            continue
        if library == "spikingjelly":
            node.v_threshold = np.nextafter(_f32(node.v_threshold), np.float32(np.inf))
        elif library == "norse" and not (np.all(_f32(node.r) == 1) and np.all(_f32(node.v_reset) == 0)):
            raise UnsupportedError("Norse's IF importer ignores r and v_reset: only IF with r = 1 and v_reset = 0 "
                                   "runs there as NIR defines it", hint="scale the weights into the IF instead")
    return out


# ---------------------------------------------------------------------------
# running a graph in another library
# ---------------------------------------------------------------------------


def _import(library: str, graph: nir.NIRGraph, dt: float, batch: int, timesteps: int) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if library == "norse":
                import norse.torch as norse

                return norse.from_nir(graph, dt=dt)
            if library == "spikingjelly":
                from spikingjelly.activation_based.nir_exchange import import_from_nir

                return import_from_nir(graph, dt=dt)
            if library == "snntorch":
                from snntorch.import_nir import import_from_nir as snn_import

                return snn_import(graph)
            if library == "sinabs":
                from sinabs.nir import from_nir

                return from_nir(graph, batch_size=batch, num_timesteps=timesteps)
    except ImportError as e:
        raise ResourceError(f"{library} is not installed ({e})",
                            hint="install the test dependencies: make setup (see the Makefile)") from e
    raise UsageError(f"no importer for {library!r}", hint="use norse, spikingjelly, snntorch or sinabs")


def run_in_library(
    library: str, graph: nir.NIRGraph, x: torch.Tensor, timesteps: int, record: tuple[str, ...] = (),
    dt: float = 1.0, series: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Import ``graph`` with ``library``'s NIR importer and run it for ``timesteps`` steps.

    x: the input ``[batch, ...]``, fed at every step (``[T, batch, ...]`` with ``series``).
    record: names of nodes whose per-step outputs to keep (forward hooks on the imported
    modules; dots in names become underscores as in the importers). dt: passed to
    importers that take one (Norse, SpikingJelly); spikec's portable files need 1.
    Returns ``(outputs [T, batch, ...], {name: [T, batch, ...]})``. Stateful modules start
    from their initial state. Sinabs runs the whole window at once (its layers take
    ``[batch, T, ...]``).
    """
    batch = int(x.shape[1] if series else x.shape[0])
    module = _import(library, graph, dt, batch, timesteps)
    modules = dict(module.named_modules())
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name in record}
    hooks = []
    for name in record:
        key = name.replace(".", "_")
        key = f"nir_node_{key}" if keyword.iskeyword(key) and key not in modules else key  # nirtorch's renaming
        if key not in modules:
            raise UsageError(f"{library} made no module for node {name!r}", hint=f"modules: {', '.join(modules)}")
        hooks.append(modules[key].register_forward_hook(
            lambda m, i, o, name=name: recorded[name].append((o[0] if isinstance(o, tuple) else o).detach())))
    outputs = []
    try:
        with torch.no_grad():
            if library == "sinabs":
                seq = x if series else x.unsqueeze(0).expand(timesteps, *x.shape)
                out = module(seq.transpose(0, 1).contiguous())
                out = out[0] if isinstance(out, tuple) else out
                return out.transpose(0, 1), {k: v[-1].transpose(0, 1) for k, v in recorded.items()}
            state = None
            for t in range(timesteps):
                y = module(x[t] if series else x, state)
                if isinstance(y, tuple):
                    y, state = y
                outputs.append(y.detach())
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(outputs), {k: torch.stack(v) for k, v in recorded.items()}


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of equal elements of two spike trains of one shape (0/1 or counts)."""
    if a.shape != b.shape:
        raise UsageError(f"spike trains of shapes {list(a.shape)} and {list(b.shape)} cannot be compared")
    return float((a.float() == b.float()).float().mean()) if a.numel() else 1.0


PROBE_PREFIX = "probe_"


def probe(graph: nir.NIRGraph, names: list[str] | tuple[str, ...]) -> nir.NIRGraph:
    """``graph`` with one more ``Output`` node, ``probe_<name>``, on each named node: simulating
    it returns those nodes' values too (e.g. the real inputs of a portable subgraph). The
    nodes themselves are shared with ``graph``, not copied."""
    nodes = dict(graph.nodes)
    edges = list(graph.edges)
    for name in names:
        if name not in nodes:
            raise UsageError(f"cannot probe {name!r}: no such node")
        nodes[PROBE_PREFIX + name] = nir.Output(output_type={"output": np.array([0])})
        edges.append((name, PROBE_PREFIX + name))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(graph.metadata or {}), type_check=False)
