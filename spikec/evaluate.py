"""``spikec eval`` and ``spikec run``: the original model against its spiking network
(reference simulator) on the same tokens."""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nir
import torch
import torch.nn.functional as F

from spikec.backends.simulator import Simulator, evaluation_simulator, resolve_device, run_sequences
from spikec.compiled_checks import check_positions, check_vocabulary
from spikec.core.errors import InputError, ModelNotFoundError, ResourceError, UsageError
from spikec.encoder_eval import evaluate_encoder, is_encoder
from spikec.frontend.model_objects import describe_spec, loaded_from_directory
from spikec.frontend.models import LoadedModel, load_from_spec, load_model
from spikec.frontend.weight_cache import REFERENCE_DIR
from spikec.outputs import load_tokenizer, read_compiled, write_result
from spikec.progress import progress_steps
from spikec.text import HELDOUT_TEXT, cut_sequences, leading_tokens


RUN_FLAGS = {"prompt": "--prompt", "max_new_tokens": "--max-new-tokens", "timesteps": "-T", "backend": "--backend"}
"""How ``generate`` and the Lava comparisons name their arguments by default: ``spikec run``'s and
``spikec eval``'s flags."""


@dataclass
class Compiled:
    """A compile output directory, loaded: the report, the NIR graph, its tokenizer and (on first
    use of ``loaded``) the original model, the reference ANN.

    ``reference`` (a model name or directory) replaces the source recorded in report.json,
    e.g. when that directory has moved; ``reference_flag`` is how a message names it.
    ``tokenizer_from_reference=False``: no ``DIR/tokenizer`` is an ``InputError`` instead of the
    reference ANN's tokenizer (which loads that model)."""

    path: Path
    report: dict[str, Any]
    graph: nir.NIRGraph
    reference: str | None = None
    reference_flag: str = "--model"
    tokenizer_from_reference: bool = True
    _loaded: LoadedModel | None = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def loaded(self) -> LoadedModel:
        """The reference ANN with its tokenizer, loaded on first use (``load_reference``)."""
        if self._loaded is None:
            self._loaded = load_reference(self)
        return self._loaded

    def release_model(self) -> None:
        """Forget the reference ANN, freeing its memory (the next use of ``loaded`` loads it again)."""
        self._loaded = None
        gc.collect()  # a transformers model holds reference cycles

    @property
    def tokenizer(self) -> Any:
        """The tokenizer saved in ``DIR/tokenizer`` (the source model's when there is none, unless
        ``tokenizer_from_reference`` is False)."""
        if self._tokenizer is None:
            saved = (self.path / "tokenizer").is_dir() or not self.tokenizer_from_reference
            self._tokenizer = load_tokenizer(self.path) if saved else self.loaded.tokenizer
        return self._tokenizer


def load_compiled(path: str | Path, reference: str | None = None, reference_flag: str = "--model",
                  tokenizer_from_reference: bool = True, lazy: bool = False) -> Compiled:
    """Read ``path`` (a ``spikec compile`` output directory) and check it against its tokenizer.
    The reference ANN (``reference``, or the source model in report.json) loads on first use.
    ``lazy``: the graph's large arrays stay in model.nir until the simulator runs their node
    (``nirio.read(path, lazy=True)``), so that they and the reference ANN are not resident together."""
    p, report, graph = read_compiled(path, lazy)
    compiled = Compiled(p, report, graph, reference, reference_flag, tokenizer_from_reference)
    check_vocabulary(graph, compiled.tokenizer, str(p / "model.nir"))
    return compiled


def load_reference(compiled: Compiled) -> LoadedModel:
    """The reference ANN of ``compiled``: ``compiled.reference`` when given, else the model kept
    in ``DIR/reference``, else the source model recorded in report.json (reloaded; a moved source
    directory is an ``InputError`` that names ``compiled.reference_flag``)."""
    report_file = compiled.path / "report.json"
    if compiled.reference is not None:
        return load_model(compiled.reference)
    kept = compiled.path / REFERENCE_DIR
    if kept.is_dir():
        return loaded_from_directory(kept, compiled.report["source"], lambda: compiled.tokenizer)
    spec = compiled.report["source"]
    name = str(spec.get("name", ""))
    if Path(name).is_absolute() and not Path(name).exists():
        raise InputError(f"the source model directory {name!r} of {str(compiled.path)!r} no longer exists",
                         hint=f"point {compiled.reference_flag} at the model's new place")
    try:
        return load_from_spec(spec)
    except UsageError as e:  # the report's config overrides: a damaged file, not the command line
        raise InputError(f"{str(report_file)!r}: its source model cannot be built: {e}") from None


def describe_reference(compiled: Compiled) -> str:
    """Where the reference ANN of ``compiled`` comes from, in words (for a status line)."""
    if compiled.reference is not None:
        return f"{compiled.reference} (from {compiled.reference_flag})"
    if (compiled.path / REFERENCE_DIR).is_dir():
        return f"{compiled.path / REFERENCE_DIR} (saved with the compiled model)"
    return describe_spec(compiled.report["source"])


def heldout_ids(compiled: Compiled, text_path: str | None, tokens: int, seq_len: int | None = None) -> torch.Tensor:
    """``[sequences, positions]`` ids of the first ``tokens`` tokens of the evaluation text (the
    embedded held-out text by default), in sequences of ``seq_len`` (default: one sequence),
    at most the model's maximum positions long."""
    config = compiled.loaded.config
    max_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 1024)
    stream = leading_tokens(compiled.tokenizer, text_path, HELDOUT_TEXT, tokens)
    ids = cut_sequences(stream, tokens, min(seq_len or tokens, max_pos))
    check_positions(compiled.graph, int(ids.shape[1]), str(compiled.path / "model.nir"), "a sequence (--seq-len)")
    return ids


def metrics(ids: torch.Tensor, ann: torch.Tensor, snn: torch.Tensor) -> dict[str, float]:
    """Next-token perplexity of the ANN and the SNN on ``ids`` ``[sequences, positions]``
    from their logits ``[sequences, positions, vocab]``, their ratio (SNN/ANN), the mean
    cosine similarity of the logits and the share of positions whose top-1 token agrees."""
    targets = ids[:, 1:].reshape(-1)
    ann_nll = F.cross_entropy(ann[:, :-1].reshape(-1, ann.shape[-1]), targets)
    snn_nll = F.cross_entropy(snn[:, :-1].reshape(-1, snn.shape[-1]), targets)
    ann_ppl, snn_ppl = math.exp(float(ann_nll)), math.exp(float(snn_nll))
    return {
        "ann_ppl": ann_ppl,
        "snn_ppl": snn_ppl,
        "ppl_ratio": snn_ppl / ann_ppl,
        "cosine": float(F.cosine_similarity(ann, snn, dim=-1).mean()),
        "top1_agreement": float((ann.argmax(-1) == snn.argmax(-1)).float().mean()),
    }


@torch.no_grad()
def evaluate(
    compiled: Compiled,
    text_path: str | None = None,
    tokens: int = 1024,
    timesteps: list[int] | None = None,
    seq_len: int | None = None,
    progress: bool = True,
    device: str = "cpu",
    keep_model: bool = True,
    simulator: Any = None,
) -> list[dict[str, Any]]:
    """ANN vs SNN metrics on ``tokens`` tokens of held-out text, one dict per T; the model
    and the simulator run on ``device`` (``cpu``, ``cuda[:N]``), metrics on CPU.
    ``keep_model=False`` releases the reference ANN once its logits are computed
    (``Compiled.release_model``), so that it and the network are not resident together.

    Keys: ann_ppl, snn_ppl, ppl_ratio, cosine (mean cosine similarity of final logits),
    top1_agreement (next-token argmax agreement), timesteps, tokens, spikes_per_neuron_step
    (mean |spikes| per neuron per step over all neuron layers; graded spikes count by value),
    seconds (simulator). A sentence encoder (``is_encoder``) is evaluated on sentence embeddings
    instead (``spikec.encoder_eval.evaluate_encoder``; ``seq_len`` does not apply).
    simulator: what runs the graph, an object with ``Simulator.run_many`` (e.g.
    rank 0 of a pipeline, ``spikec.distributed``); default a ``Simulator`` on ``device``, which
    for a lazily read graph (``load_compiled(..., lazy=True)``) reads each node's arrays from the
    file when it runs and frees them after (``keep_parameters=False``): one node's weights resident."""
    if is_encoder(compiled.graph):
        return evaluate_encoder(compiled, text_path, tokens, timesteps, progress=progress, device=device,
                                simulator=simulator)
    if tokens < 2:
        raise UsageError(f"--tokens must be at least 2, got {tokens}")
    timesteps = timesteps or [int(compiled.report["timesteps"])]
    if any(t < 1 for t in timesteps):
        raise UsageError(f"-T values must be >= 1, got {timesteps}")
    ids = heldout_ids(compiled, text_path, tokens, seq_len)
    dev = resolve_device(device)
    ann = compiled.loaded.model.to(dev)(input_ids=ids.to(dev), use_cache=False).logits.float().cpu()
    if not keep_model:
        compiled.release_model()
    sim = simulator if simulator is not None else evaluation_simulator(compiled.graph, dev)
    results = []
    for t in timesteps:
        runs = run_sequences(sim, [ids[i : i + 1] for i in range(ids.shape[0])], t, progress=progress)
        results.append({
            **metrics(ids, ann, torch.cat(runs.outputs)), "timesteps": t, "tokens": int(ids.numel()),
            "spikes_per_neuron_step": runs.spikes_per_neuron_step, "seconds": runs.seconds,
        })
    return results


def save_eval(compiled: Compiled, results: list[dict[str, Any]]) -> None:
    """Write the results to ``DIR/eval.json`` (atomically), for reports. A directory that
    cannot take it (read-only, full) raises ``ResourceError`` (exit 5): the caller has shown
    the figures already."""
    write_result(compiled.path / "eval.json", json.dumps(results, indent=2))


@torch.no_grad()
def generate(compiled: Compiled, prompt: str, max_new_tokens: int = 20, timesteps: int | None = None,
             device: str = "cpu", compare: bool = True, progress: bool = False,
             names: dict[str, str] | None = None) -> dict[str, str | None]:
    """Greedy continuations of ``prompt`` by the spiking network (``snn``) and, with ``compare``,
    by the original model (``ann``), on ``device``. When the original model cannot be loaded
    (its source moved away), ``ann`` is None and ``ann_unavailable`` says why; with ``progress``,
    a progress bar (plain lines when stderr is not a terminal) counts the tokens. names: how
    messages name ``prompt`` and ``max_new_tokens`` (default: ``spikec run``'s flags)."""
    n = {**RUN_FLAGS, **(names or {})}
    if is_encoder(compiled.graph):
        raise UsageError(f"{str(compiled.path)!r} holds a sentence encoder, which does not generate text",
                         hint=f"compare its embeddings with 'spikec eval {compiled.path}'")
    if not prompt.strip():
        raise UsageError(f"{n['prompt']} is empty", hint="give some text to continue")
    if max_new_tokens < 1:
        raise UsageError(f"{n['max_new_tokens']} must be at least 1, got {max_new_tokens}")
    tok = compiled.tokenizer
    t = timesteps or int(compiled.report["timesteps"])
    dev = resolve_device(device)
    prompt_ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], dtype=torch.int64, device=dev)
    check_positions(compiled.graph, prompt_ids.shape[1] + max_new_tokens - 1, str(compiled.path / "model.nir"),
                    f"the prompt and {n['max_new_tokens']}")
    sim = Simulator(compiled.graph, device=dev)
    steps: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"snn": lambda ids: sim.run(ids, t).output}
    continuations: dict[str, str | None] = {"snn": None, "ann": None}
    if compare:
        try:
            model = compiled.loaded.model.to(dev)
            steps["ann"] = lambda ids: model(input_ids=ids, use_cache=False).logits
        except (InputError, ModelNotFoundError, ResourceError) as e:  # moved, deleted, not installed
            continuations["ann_unavailable"] = str(e)
    for label, step in steps.items():
        ids = prompt_ids
        for _ in progress_steps(max_new_tokens, f"generating ({label.upper()})", enabled=progress):
            nxt = step(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        continuations[label] = tok.decode(ids[0, prompt_ids.shape[1]:].tolist())
    return continuations


def evaluate_on_lava(compiled: Compiled, text_path: str | None = None, tokens: int = 1024,
                     timesteps: list[int] | None = None, precision: str = "floating_pt", progress: bool = True,
                     device: str = "cpu", names: dict[str, str] | None = None) -> dict[str, Any]:
    """``spikec eval --backend lava``: Lava needs positions fixed at compile time, so the first
    ``tokens`` tokens (at most the compile's ``seq_len``) are one sequence, run by the reference
    simulator (``evaluate``'s figures; a sentence encoder has none) and by the Lava export, and
    compared: ``spike_agreement``, ``spike_agreement_per_layer``, ``logits_max_abs_diff``,
    ``next_token_agreement``, ``precision``, ``lava_seconds`` added. One T only (``timesteps``)."""
    from spikec.backends.lava.compare import evaluate_lava

    n = {**RUN_FLAGS, **(names or {})}
    if timesteps and len(timesteps) > 1:
        raise UsageError(f"{n['backend']} lava takes one {n['timesteps']} value")
    tokens = min(tokens, int(compiled.report["seq_len"]))
    if is_encoder(compiled.graph):  # no perplexity: Lava's spikes and last hidden state against the simulator's
        result = {"timesteps": timesteps[0] if timesteps else int(compiled.report["timesteps"]), "tokens": tokens}
    else:
        result = evaluate(compiled, text_path, tokens, timesteps, tokens, progress=progress, device=device)[0]
    ids = heldout_ids(compiled, text_path, tokens)
    lava = evaluate_lava(compiled.path, ids, timesteps=result["timesteps"], precision=precision)
    result.update({k: lava[k] for k in ("spike_agreement", "spike_agreement_per_layer", "logits_max_abs_diff",
                                        "next_token_agreement", "precision", "lava_seconds") if k in lava})
    return result


def generate_on_lava(compiled: Compiled, prompt: str, max_new_tokens: int = 20, timesteps: int | None = None,
                     precision: str = "floating_pt", names: dict[str, str] | None = None) -> dict[str, Any]:
    """``spikec run --backend lava``: greedy continuations of ``prompt`` by the Lava export (``lava``,
    one Lava run per token) and by the reference simulator (``reference``), decoded, with
    ``tokens_equal``, ``precision``, ``timesteps`` and ``lava_seconds``."""
    from spikec.backends.lava.compare import generate_lava

    n = {**RUN_FLAGS, **(names or {})}
    tok = compiled.tokenizer
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], dtype=torch.int64)
    if ids.numel() == 0:
        raise UsageError(f"{n['prompt']} is empty", hint="give some text to continue")
    out = generate_lava(compiled.path, ids, max_new_tokens, timesteps=timesteps, precision=precision)
    return {"lava": tok.decode(out["tokens"]), "reference": tok.decode(out["reference_tokens"]),
            **{k: out[k] for k in ("tokens_equal", "precision", "timesteps", "lava_seconds")}}
