"""``spikec eval`` of a sentence encoder (a compiled BERT such as ``minilm-l6``): its embeddings as
their users judge them.

Sentences are drawn in order from the held-out text (``heldout_sentences``) and each is encoded
alone, as the tokenizer frames it (``[CLS] ... [SEP]``), so no padding is involved. An embedding is
the mean over positions of the last hidden state (all-MiniLM-L6-v2's pooling; the cosine figures
do not depend on its final normalisation). Two figures per T: the mean cosine between the ANN's and
the SNN's embedding of each sentence, and the Spearman rank correlation between the ANN's and the
SNN's cosine similarities over every pair of sentences (whether the SNN ranks sentence pairs as
the ANN does).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import nir
import numpy as np
import torch
import torch.nn.functional as F

from spikec.backends.simulator import evaluation_simulator, resolve_device, run_sequences
from spikec.core.errors import InputError, UsageError
from spikec.core.ir import SpikecAttention
from spikec.text import HELDOUT_TEXT, read_text

MIN_WORDS = 5  # shorter fragments (headings, "Return x.") say little about an encoder
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def is_encoder(graph: nir.NIRGraph) -> bool:
    """Whether a compiled graph is an encoder's: it has bidirectional (non-causal) attention."""
    return any(isinstance(n, SpikecAttention) and not n.causal for n in graph.nodes.values())


def heldout_sentences(text: str) -> list[str]:
    """The prose sentences of ``text`` in order, each once: paragraphs (split at blank lines)
    without doctest lines (``>>>``, ``...``) and indented code, split after ``.``, ``!`` or ``?``
    before a capital; sentences of fewer than ``MIN_WORDS`` words are left out."""
    sentences: list[str] = []
    seen: set[str] = set()
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in paragraph.splitlines()
                 if ln.strip() and not ln.lstrip().startswith((">>>", "...")) and not ln.startswith("    ")]
        for sentence in _SENTENCE_END.split(" ".join(lines)):
            sentence = " ".join(sentence.split())
            if len(sentence.split()) >= MIN_WORDS and sentence[0].isalpha() and sentence not in seen:
                seen.add(sentence)
                sentences.append(sentence)
    return sentences


def sentence_ids(tokenizer: Any, text_path: str | None, tokens: int, max_positions: int) -> list[torch.Tensor]:
    """``[1, positions]`` ids of the first held-out sentences (``[CLS]`` and ``[SEP]`` included),
    as many as fit in ``tokens`` tokens; ``InputError`` when fewer than 2 do."""
    out: list[torch.Tensor] = []
    total = 0
    for sentence in heldout_sentences(read_text(text_path, HELDOUT_TEXT)):
        ids = tokenizer(sentence)["input_ids"][:max_positions]
        if total + len(ids) > tokens:
            break
        total += len(ids)
        out.append(torch.tensor([ids], dtype=torch.int64))
    if len(out) < 2:
        raise InputError(f"the evaluation text yields {len(out)} sentence(s) within {tokens} tokens; "
                         "an encoder is evaluated on pairs of sentences",
                         hint="raise --tokens or give a text of prose sentences (--text)")
    return out


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0 .. n-1 of ``x`` ``[n]``, ties given the mean of their ranks (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end - 1) / 2.0
            start = end
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` ``[n]`` (Pearson's of their average ranks)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom else 0.0


def embedding_metrics(ann: torch.Tensor, snn: torch.Tensor) -> dict[str, float]:
    """Figures of ANN and SNN sentence embeddings ``[sentences, d]``: mean and least cosine between
    the two embeddings of each sentence, and the Spearman correlation of the pairwise cosines."""
    per_sentence = F.cosine_similarity(ann, snn, dim=-1)
    pairs = list(itertools.combinations(range(ann.shape[0]), 2))
    i, j = (torch.tensor(p) for p in zip(*pairs))
    ann_pairs = F.cosine_similarity(ann[i], ann[j], dim=-1).double().numpy()
    snn_pairs = F.cosine_similarity(snn[i], snn[j], dim=-1).double().numpy()
    return {
        "embedding_cosine": float(per_sentence.mean()),
        "embedding_cosine_min": float(per_sentence.min()),
        "pair_spearman": spearman(ann_pairs, snn_pairs),
        "sentences": int(ann.shape[0]),
        "pairs": len(pairs),
    }


@torch.no_grad()
def evaluate_encoder(compiled: Any, text_path: str | None = None, tokens: int = 1024,
                     timesteps: list[int] | None = None, progress: bool = True,
                     device: str = "cpu", simulator: Any = None) -> list[dict[str, Any]]:
    """ANN vs SNN embeddings of the held-out sentences within ``tokens`` tokens, one dict per T
    (``compiled``: a ``spikec.evaluate.Compiled`` of an encoder). Keys: embedding_cosine,
    embedding_cosine_min, pair_spearman, sentences, pairs, timesteps, tokens,
    spikes_per_neuron_step (as the decoder eval's), seconds (simulator). ``simulator``: as
    ``spikec.evaluate.evaluate``'s."""
    if tokens < 2:
        raise UsageError(f"--tokens must be at least 2, got {tokens}")
    timesteps = timesteps or [int(compiled.report["timesteps"])]
    if any(t < 1 for t in timesteps):
        raise UsageError(f"-T values must be >= 1, got {timesteps}")
    config = compiled.loaded.config
    sentences = sentence_ids(compiled.tokenizer, text_path, tokens, int(config.max_position_embeddings))
    dev = resolve_device(device)
    model = compiled.loaded.model.to(dev)
    ann = torch.cat([model(input_ids=ids.to(dev)).last_hidden_state.float().mean(1).cpu() for ids in sentences])
    sim = simulator if simulator is not None else evaluation_simulator(compiled.graph, dev)
    results = []
    for t in timesteps:
        runs = run_sequences(sim, [ids.to(dev) for ids in sentences], t, progress=progress,
                             reduce=lambda out: out.float().mean(1))  # mean pooling, as the ANN
        results.append({
            **embedding_metrics(ann, torch.cat(runs.outputs)), "timesteps": t,
            "tokens": sum(int(ids.numel()) for ids in sentences),
            "spikes_per_neuron_step": runs.spikes_per_neuron_step, "seconds": runs.seconds,
        })
    return results
