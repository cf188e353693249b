"""Models that do not come by name: a model object handed to ``spikec.compile`` and the reference
model kept beside a compiled network (``DIR/reference``), and how to say where a model came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from spikec.core.errors import UsageError

from . import weight_cache
from .architectures import architecture_of, supported_text
from .encoder_models import MINILM, MINILM_DIST
from .models import SMOLLM2, SMOLLM2_CONFIG, LoadedModel, as_loaded, gpt2_tokenizer
from .smollm2 import smollm2_tokenizer


def describe_spec(spec: dict[str, Any]) -> str:
    """Where the model of a ``LoadedModel.spec`` comes from, in words (and its weights' dtype
    when not float32: its logits are then that dtype's arithmetic)."""
    where = _describe_source(spec)
    dtype = spec.get("dtype", "float32")
    return where if dtype == "float32" else f"{where}, {dtype} weights and arithmetic"


def _describe_source(spec: dict[str, Any]) -> str:
    name = str(spec.get("name", "?"))
    if spec.get("random_weights"):
        overrides = spec.get("config_overrides") or {}
        extra = f", config {overrides}" if overrides else ""
        return f"{name} (the architecture with random weights, seed {spec.get('seed', 0)}{extra})"
    if name == SMOLLM2:
        return (f"{name} (SmolLM2-135M-Instruct, its Q4_1 GGUF file de-quantised to float32; "
                f"the de-quantised weights are cached in {weight_cache.weights_dir()})")
    if name == MINILM:
        return f"{name} (all-MiniLM-L6-v2, read from the zip of the {MINILM_DIST} package)"
    if spec.get("object"):
        return f"{name} (a Python model object)"
    if Path(name).is_absolute():
        return f"{name} (a local directory)"
    return f"{name} (the Hugging Face cache or hub)"


def loaded_from_object(model: torch.nn.Module, tokenizer: Any = None) -> LoadedModel:
    """A ``LoadedModel`` for a model object: an instance of a supported transformers causal LM
    class (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...; spikec.frontend.architectures), with
    any weights (trained, fine-tuned, random). The frontend captures it by its class and module
    names, so a module wrapping one is refused (``UsageError`` naming ``model``). ``tokenizer`` defaults to GPT-2's for ``gpt2`` models and SmolLM2's
    for ``llama`` models of its vocabulary; other families need one. The model is put in eval mode,
    float32; its spec is marked ``object`` (it cannot be reloaded by name)."""
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or getattr(config, "model_type", None) is None:
        raise UsageError(f"model: expected a model name, a directory or a torch.nn.Module with a transformers "
                         f"config (model.config.model_type), got {type(model).__name__}")
    if architecture_of(model) is None:
        raise UsageError(f"model: a {type(model).__name__} is not a model class spikec converts "
                         f"(model type {config.model_type!r}); spikec converts {supported_text()} models",
                         hint="pass the transformers model itself, not a module wrapping it")
    family = str(config.model_type)
    if tokenizer is None:
        if family == "gpt2":
            factory: Callable = gpt2_tokenizer
        elif family == "llama" and getattr(config, "vocab_size", None) == SMOLLM2_CONFIG["vocab_size"]:
            factory = smollm2_tokenizer
        else:
            raise UsageError(f"tokenizer: required for a model object of family {family!r}",
                             hint="pass tokenizer=AutoTokenizer.from_pretrained(...)")
    else:
        factory = lambda: tokenizer  # noqa: E731
    name = type(model).__name__
    spec = {"name": name, "object": True, "random_weights": False, "config_overrides": {}, "seed": 0}
    return as_loaded(model, name, spec, factory)


def loaded_from_directory(directory: Path, spec: dict[str, Any], tokenizer_factory: Callable) -> LoadedModel:
    """The model kept in ``directory`` (``config.json`` and ``model.safetensors``, as
    ``spikec.compile`` of a model object writes it), with ``spec`` and the given tokenizer."""
    with weight_cache.quiet_loading():
        model = weight_cache.load_cached(directory)
    return as_loaded(model, str(spec.get("name", directory)), dict(spec), tokenizer_factory)
