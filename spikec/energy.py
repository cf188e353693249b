"""``spikec energy``: energy per token of a compiled network, ANN against SNN, on held-out text.

``measure_operations`` runs the reference simulator on token sequences and counts what the
ANN and the SNN spend per layer (:mod:`spikec.analysis.counts`); ``energy_on_text`` does it
for a compile output directory and writes ``DIR/energy.json`` (which ``spikec report`` shows);
``energy_of`` does it for a network already read (``SpikingModel.energy``, which the command
runs), with the Loihi 2 fit (:mod:`spikec.analysis.loihi_fit`). docs/energy.md states what is
counted and the constants' sources.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nir
import torch
from tqdm import tqdm

from spikec.analysis.counts import combine_results, count_operations
from spikec.analysis.energy_models import EnergyModel, builtin_model
from spikec.analysis.estimate import estimate
from spikec.analysis.loihi_fit import fit_graph
from spikec.analysis.operations import OperationCounts
from spikec.arguments import ENERGY_TOKENS
from spikec.backends.simulator import SimResult, simulate
from spikec.compiled_checks import check_vocabulary
from spikec.core import ir
from spikec.core.errors import UsageError
from spikec.outputs import load_tokenizer, read_compiled, write_result
from spikec.text import HELDOUT_TEXT, cut_sequences, leading_tokens, text_label

ENERGY_FILE = "energy.json"
"""What ``spikec energy`` writes in the compile output directory: the text, the per-layer
counts (:meth:`OperationCounts.to_dict`) and the estimate."""


def max_positions(graph: nir.NIRGraph) -> int | None:
    """The longest sequence the graph can take: its learned position table's length (None
    without one, e.g. rotary models)."""
    for node in graph.nodes.values():
        if isinstance(node, ir.SpikecEmbedding) and node.position_weight.shape[0] > 0:
            return int(node.position_weight.shape[0])
    return None


def token_chunks(stream: torch.Tensor, tokens: int, seq_len: int | None, graph: nir.NIRGraph) -> torch.Tensor:
    """``[sequences, positions]`` ids: the first ``tokens`` tokens cut into sequences of
    ``seq_len`` (default: all of them in one, up to the graph's maximum), as ``spikec eval`` does."""
    if tokens < 2:
        raise UsageError(f"--tokens must be at least 2, got {tokens}")
    if seq_len is not None and seq_len < 1:
        raise UsageError(f"--seq-len must be at least 1, got {seq_len}")
    limit = max_positions(graph)
    return cut_sequences(stream, tokens, min(seq_len or tokens, tokens, limit or tokens))


@torch.no_grad()
def measure_operations(
    graph: nir.NIRGraph, ids: torch.Tensor, timesteps: int, *, progress: bool = False, record_first: bool = False,
    record_positions: int | None = None,
) -> tuple[OperationCounts, SimResult]:
    """Simulate ``graph`` on every sequence of ``ids`` ``[sequences, positions]`` at ``timesteps``
    and count operations. Returns the counts and the combined result; with ``record_first``
    the first sequence's spike trains are kept in its ``spikes`` (for rasters), only their first
    ``record_positions`` positions when given. Each sequence runs in a new simulator that keeps
    no node's parameters after the node ran (``keep_parameters=False``: the same counts; with a
    lazily read graph, one node's arrays are resident at a time)."""
    results, first_spikes = [], {}
    for i in tqdm(range(ids.shape[0]), desc=f"simulating T={timesteps}", disable=not progress, leave=False):
        r = simulate(graph, ids[i : i + 1], timesteps, record=record_first and i == 0,
                     record_positions=record_positions, keep_parameters=False)
        if i == 0:
            first_spikes = r.spikes
        results.append(SimResult(outputs={}, spike_counts=r.spike_counts, firing_rates=r.firing_rates,
                                 timesteps=r.timesteps, operations=r.operations))
    combined = combine_results(results)
    combined.spikes = first_spikes
    return count_operations(graph, combined, positions=int(ids.shape[1]), sequences=int(ids.shape[0])), combined


def measure_energy(
    directory: str | Path, text_path: str | None = None, tokens: int = ENERGY_TOKENS, seq_len: int | None = None,
    timesteps: int | None = None, model: EnergyModel | None = None, progress: bool = True,
) -> tuple[Path, dict[str, Any], OperationCounts]:
    """Operation counts of a compiled network on ``tokens`` tokens of held-out text (default:
    the embedded docstrings) and their energy under ``model`` (default ``45nm``): the directory,
    the estimate (with ``text`` and ``seconds`` added) and the counts. Writes nothing. The
    graph's large arrays stay in model.nir until their node runs (``read_compiled(..., lazy=True)``)."""
    p, report, graph = read_compiled(directory, lazy=True)
    t = int(report["timesteps"] if timesteps is None else timesteps)
    if t < 1:
        raise UsageError(f"-T must be at least 1, got {t}")
    tokenizer = load_tokenizer(p)
    check_vocabulary(graph, tokenizer, str(p / "model.nir"))
    return p, *energy_of(graph, tokenizer, t, text_path, tokens, seq_len, model, progress)


def energy_of(
    graph: nir.NIRGraph, tokenizer: Any, timesteps: int, text_path: str | None = None, tokens: int = ENERGY_TOKENS,
    seq_len: int | None = None, model: EnergyModel | None = None, progress: bool = True,
) -> tuple[dict[str, Any], OperationCounts]:
    """``measure_energy`` of a network already read (``graph`` and its ``tokenizer``, checked
    against each other) at ``timesteps``: the estimate (with ``text``, ``seconds`` and
    ``loihi_fit`` added) and the counts."""
    model = model or builtin_model("45nm")
    stream = leading_tokens(tokenizer, text_path, HELDOUT_TEXT, tokens)
    ids = token_chunks(stream, tokens, seq_len, graph)
    start = time.perf_counter()
    counts, _ = measure_operations(graph, ids, timesteps, progress=progress)
    est = estimate(counts, model)
    est["text"] = text_label(text_path, HELDOUT_TEXT)
    est["seconds"] = time.perf_counter() - start
    est["loihi_fit"] = fit_graph(graph).to_dict()
    return est, counts


def save_energy(directory: Path, est: dict[str, Any], counts: OperationCounts) -> None:
    """Write ``DIR/energy.json`` (text, counts, estimate); ``ResourceError`` (exit 5) when the
    directory cannot take it."""
    payload = {"text": est["text"], "counts": counts.to_dict(), "estimate": est}
    write_result(directory / ENERGY_FILE, json.dumps(payload, indent=2, default=str))


def energy_on_text(
    directory: str | Path, text_path: str | None = None, tokens: int = ENERGY_TOKENS, seq_len: int | None = None,
    timesteps: int | None = None, model: EnergyModel | None = None, progress: bool = True,
) -> dict[str, Any]:
    """``measure_energy`` and ``save_energy``: writes ``DIR/energy.json`` and returns the
    estimate, with ``text`` and ``seconds`` added."""
    p, est, counts = measure_energy(directory, text_path, tokens, seq_len, timesteps, model, progress)
    save_energy(p, est, counts)
    return est
