"""What spikec knows about each Hugging Face architecture it converts, in one place.

The graph builder (:mod:`spikec.frontend.builder`) is architecture-agnostic: it reads the
captured graph module by module and asks the :class:`Architecture` of the model which module
classes make which region, which attributes hold the separate q/k/v and gate/up projections,
which linear classes store their weight transposed, which module makes the rotary tables and
how its base is read from the config. Supporting another architecture (OPT, BERT, ...) is one
more entry in :data:`ARCHITECTURES`, built from explicit imports of its transformers classes.

Region kinds (the values of :attr:`Architecture.module_kinds` and :func:`common_module_kinds`):
``layer_norm``, ``rms_norm``, ``linear``, ``embedding``, ``dropout``, ``activation``,
``attention`` (a module whose forward holds one sdpa call on projections of one hidden state)
and ``gated_mlp`` (``act(gate(x)) * up(x)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """One Hugging Face causal-LM architecture spikec converts.

    ``model_class`` is the class name of the causal LM (``type(model).__name__``), ``family`` the
    config's ``model_type``; ``description`` names it in the refusal of other architectures.
    ``module_kinds`` returns {module class: region kind} for the classes of this architecture
    (imported on call, so that importing spikec does not import transformers' model code);
    ``transposed_linears`` the linear classes whose weight is ``[in, out]``. ``block_container``
    is the attribute holding the list of transformer blocks (``h`` in ``transformer.h.3``).
    ``qkv_projections`` / ``gate_up_projections`` are the attention's / gated MLP's attribute
    names of their separate projections (``None``: fused or absent). ``rotary_class`` is the class
    name of the rotary embedding module (``None``: no rotary embeddings), ``rotary_base`` reads the
    rotary base from the config and that module (raises ``ValueError`` saying what is unsupported).
    """

    family: str
    model_class: str
    description: str
    module_kinds: Callable[[], dict[type, str]]
    transposed_linears: Callable[[], tuple[type, ...]] = tuple
    block_container: str = "layers"
    qkv_projections: tuple[str, str, str] | None = None
    gate_up_projections: tuple[str, str] | None = None
    rotary_class: str | None = None
    rotary_base: Callable[[Any, nn.Module, int], float] | None = None

    def block_index(self, module_path: str) -> int | None:
        """Index of the transformer block ``module_path`` lies in (``None`` outside every block)."""
        m = re.search(rf"(?:^|\.){re.escape(self.block_container)}\.(\d+)(?:\.|$)", module_path)
        return int(m.group(1)) if m else None

    def linear_params(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight ``[out, in]``, bias ``[out]`` or None) of a linear module, detached."""
        weight = module.weight.t() if isinstance(module, self.transposed_linears()) else module.weight
        return weight.detach(), None if module.bias is None else module.bias.detach()


def common_module_kinds() -> dict[type, str]:
    """Region kinds of the torch and transformers modules every architecture may use."""
    from transformers.activations import (
        GELUActivation, GELUTanh, NewGELUActivation, PytorchGELUTanh, SiLUActivation,
    )

    return {
        nn.LayerNorm: "layer_norm",
        nn.Linear: "linear",
        nn.Embedding: "embedding",
        nn.Dropout: "dropout",
        NewGELUActivation: "activation", GELUTanh: "activation", PytorchGELUTanh: "activation",
        GELUActivation: "activation", SiLUActivation: "activation", nn.SiLU: "activation",
        nn.GELU: "activation", nn.ReLU: "activation",
    }


def activation_kind(module: nn.Module) -> str:
    """The ``spikec.core.ops`` activation kind (``gelu``, ``gelu_tanh``, ``relu``, ``silu``) of an
    activation module of kind ``activation``."""
    from transformers.activations import GELUActivation, GELUTanh, NewGELUActivation, PytorchGELUTanh

    if isinstance(module, (NewGELUActivation, GELUTanh, PytorchGELUTanh)):
        return "gelu_tanh"
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if isinstance(module, GELUActivation):
        return "gelu"
    if isinstance(module, nn.ReLU):
        return "relu"
    return "silu"


def rms_norm_eps(module: nn.Module) -> float:
    """The epsilon of an RMS norm module (``variance_epsilon`` in transformers, else ``eps``)."""
    return float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))


def default_rotary_base(config: Any, rotary: nn.Module, head_dim: int) -> float:
    """Base ``theta`` of unscaled ("default") rotary embeddings, checked against the module's
    ``inv_freq`` (``[head_dim / 2]``); ``ValueError`` for any other rotary scheme."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", getattr(rotary, "rope_type", "default"))
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if rope_type != "default" or theta is None:
        raise ValueError(f"rotary embeddings of type {rope_type!r} (only 'default' is supported)")
    if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise ValueError("scaled rotary embeddings")
    expected = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    inv_freq = getattr(rotary, "inv_freq", None)
    if inv_freq is None or inv_freq.shape != expected.shape or not torch.allclose(inv_freq.float(), expected, rtol=1e-5):
        raise ValueError(f"rotary frequencies that do not match rope_theta={theta}")
    return float(theta)


def _gpt2_module_kinds() -> dict[type, str]:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
    from transformers.pytorch_utils import Conv1D

    return {Conv1D: "linear", GPT2Attention: "attention"}


def _conv1d() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (Conv1D,)


def _llama_module_kinds() -> dict[type, str]:
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

    return {LlamaRMSNorm: "rms_norm", LlamaAttention: "attention", LlamaMLP: "gated_mlp"}


GPT2 = Architecture(
    family="gpt2",
    model_class="GPT2LMHeadModel",
    description="GPT-2 (GPT2LMHeadModel)",
    module_kinds=_gpt2_module_kinds,
    transposed_linears=_conv1d,
    block_container="h",
)

LLAMA = Architecture(
    family="llama",
    model_class="LlamaForCausalLM",
    description="Llama (LlamaForCausalLM, e.g. SmolLM2)",
    module_kinds=_llama_module_kinds,
    block_container="layers",
    qkv_projections=("q_proj", "k_proj", "v_proj"),
    gate_up_projections=("gate_proj", "up_proj"),
    rotary_class="LlamaRotaryEmbedding",
    rotary_base=default_rotary_base,
)

# The architectures spikec converts, by family (the config's model_type).
ARCHITECTURES: dict[str, Architecture] = {"gpt2": GPT2, "llama": LLAMA}


def architecture_of(model: nn.Module) -> Architecture | None:
    """The :class:`Architecture` of ``model`` (by its class name), ``None`` if unsupported."""
    name = type(model).__name__
    return next((arch for arch in ARCHITECTURES.values() if arch.model_class == name), None)


def supported_text() -> str:
    """``"GPT-2 (GPT2LMHeadModel) and Llama (...)"``: the supported architectures, for messages."""
    names = [arch.description for arch in ARCHITECTURES.values()]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
