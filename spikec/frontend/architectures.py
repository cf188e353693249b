"""What spikec knows about each Hugging Face architecture it converts (causal LMs and BERT encoders), in one place.

The graph builder (:mod:`spikec.frontend.builder`) is architecture-agnostic: it reads the
captured graph module by module and asks the :class:`Architecture` of the model which module
classes make which region, which attributes hold the separate q/k/v and gate/up projections,
which linear classes store their weight transposed, which module makes the rotary tables and
how its base is read from the config. Supporting another architecture (OPT, BERT, ...) is one
more entry in :data:`ARCHITECTURES`, built from explicit imports of its transformers classes.

Region kinds (the values of :attr:`Architecture.module_kinds` and :func:`common_module_kinds`):
``layer_norm``, ``rms_norm``, ``offset_rms_norm`` (RMS norm scaled by ``1 + weight``, Gemma),
``linear``, ``embedding`` (token ids, or positions made from sizes alone, from row ``offset`` on
where the module has one, OPT), ``scaled_embedding`` (token embedding times the module's
``embed_scale``, Gemma), ``dropout``, ``activation``, ``attention`` (a module whose forward holds
one sdpa call on projections of one hidden state, the query possibly scaled by a constant first)
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
    ``qkv_per_head``: a fused qkv projection whose rows are ``[head, q|k|v, head_dim]`` (GPT-NeoX)
    rather than ``[q | k | v]``. ``sliding_window`` reads the window of an attention module
    (``None``: it sees every earlier position). ``unsupported`` names the features of a config
    that spikec refuses (OPT's embedding projections, ...): an empty list when it converts it.
    ``causal``: whether its attention is causal (a decoder) or bidirectional (an encoder, whose
    captured output is the last hidden state rather than logits). ``token_type_embedding`` is the
    attribute of an embedding looked up by token types that are all 0 (BERT's segment embedding,
    folded into the token embedding); ``None`` where there is none.
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
    qkv_per_head: bool = False
    sliding_window: Callable[[Any, nn.Module], int | None] = lambda config, attention: None
    unsupported: Callable[[Any], list[str]] = lambda config: []
    causal: bool = True
    token_type_embedding: str | None = None

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


def rotary_dim(config: Any, head_dim: int) -> int:
    """Features of each head that rotary embeddings rotate: ``head_dim`` times the config's
    ``partial_rotary_factor`` (1 where it has none; below 1 in GPT-NeoX and Phi)."""
    factor = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return int(head_dim * float(factor))


def default_rotary_base(config: Any, rotary: nn.Module, head_dim: int) -> float:
    """Base ``theta`` of unscaled ("default") rotary embeddings, checked against the module's
    ``inv_freq`` (``[rotary_dim / 2]``, see :func:`rotary_dim`); ``ValueError`` for any other
    rotary scheme."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", getattr(rotary, "rope_type", "default"))
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if rope_type != "default" or theta is None:
        raise ValueError(f"rotary embeddings of type {rope_type!r} (only 'default' is supported)")
    if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise ValueError("scaled rotary embeddings")
    dim = rotary_dim(config, head_dim)
    expected = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
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

QKV_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
GATE_UP_PROJECTIONS = ("gate_proj", "up_proj")


def llama_like(family: str, model_class: str, description: str, module_kinds: Callable[[], dict[type, str]],
               rotary_class: str, **fields: Any) -> Architecture:
    """An :class:`Architecture` of Llama's structure: ``q_proj``/``k_proj``/``v_proj``, a gated MLP of
    ``gate_proj`` and ``up_proj``, unscaled rotary embeddings made by ``rotary_class``, blocks in
    ``layers``; ``fields`` sets the others (``sliding_window``, ``unsupported``)."""
    return Architecture(family=family, model_class=model_class, description=description, module_kinds=module_kinds,
                        qkv_projections=QKV_PROJECTIONS, gate_up_projections=GATE_UP_PROJECTIONS,
                        rotary_class=rotary_class, rotary_base=default_rotary_base, **fields)


def layer_sliding_window(config: Any, attention: nn.Module) -> int | None:
    """The sliding window of one attention module (``sliding_window``: set on Qwen2's sliding layers)."""
    return getattr(attention, "sliding_window", None)


def config_sliding_window(config: Any, attention: nn.Module) -> int | None:
    """The sliding window of every attention layer (Mistral's ``config.sliding_window``)."""
    return getattr(config, "sliding_window", None)


def _qwen2_module_kinds() -> dict[type, str]:
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2MLP, Qwen2RMSNorm

    return {Qwen2RMSNorm: "rms_norm", Qwen2Attention: "attention", Qwen2MLP: "gated_mlp"}


def _mistral_module_kinds() -> dict[type, str]:
    from transformers.models.mistral.modeling_mistral import MistralAttention, MistralMLP, MistralRMSNorm

    return {MistralRMSNorm: "rms_norm", MistralAttention: "attention", MistralMLP: "gated_mlp"}


def _gemma_module_kinds() -> dict[type, str]:
    from transformers.models.gemma.modeling_gemma import (
        GemmaAttention, GemmaMLP, GemmaRMSNorm, GemmaTextScaledWordEmbedding,
    )

    return {GemmaRMSNorm: "offset_rms_norm", GemmaAttention: "attention", GemmaMLP: "gated_mlp",
            GemmaTextScaledWordEmbedding: "scaled_embedding"}


def _opt_module_kinds() -> dict[type, str]:
    from transformers.models.opt.modeling_opt import OPTAttention, OPTLearnedPositionalEmbedding

    return {OPTAttention: "attention", OPTLearnedPositionalEmbedding: "embedding"}


def _opt_refusals(config: Any) -> list[str]:
    proj = getattr(config, "word_embed_proj_dim", config.hidden_size)
    if proj != config.hidden_size:
        return [f"OPT's embedding projections project_in/project_out (word_embed_proj_dim {proj} "
                f"!= hidden_size {config.hidden_size}, as in OPT-350m)"]
    return []


OPT = Architecture(
    family="opt",
    model_class="OPTForCausalLM",
    description="OPT (OPTForCausalLM)",
    module_kinds=_opt_module_kinds,
    qkv_projections=("q_proj", "k_proj", "v_proj"),
    unsupported=_opt_refusals,
)


def _gpt_neox_module_kinds() -> dict[type, str]:
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention

    return {GPTNeoXAttention: "attention"}


def _phi_module_kinds() -> dict[type, str]:
    from transformers.models.phi.modeling_phi import PhiAttention

    return {PhiAttention: "attention"}


def _phi_refusals(config: Any) -> list[str]:
    return ["layer norms of queries and keys (qk_layernorm)"] if getattr(config, "qk_layernorm", False) else []


def _bert_module_kinds() -> dict[type, str]:
    from transformers.models.bert.modeling_bert import BertSelfAttention

    return {BertSelfAttention: "attention"}


def _bert_refusals(config: Any) -> list[str]:
    refused = []
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        refused.append("BERT as a decoder (is_decoder, cross-attention)")
    kind = getattr(config, "position_embedding_type", "absolute")
    if kind != "absolute":
        refused.append(f"position embeddings of type {kind!r} (only 'absolute' is supported)")
    return refused


LLAMA = llama_like("llama", "LlamaForCausalLM", "Llama (LlamaForCausalLM, e.g. SmolLM2)", _llama_module_kinds,
                   "LlamaRotaryEmbedding")
QWEN2 = llama_like("qwen2", "Qwen2ForCausalLM", "Qwen2 (Qwen2ForCausalLM, e.g. Qwen2.5)", _qwen2_module_kinds,
                   "Qwen2RotaryEmbedding", sliding_window=layer_sliding_window)
MISTRAL = llama_like("mistral", "MistralForCausalLM", "Mistral (MistralForCausalLM)", _mistral_module_kinds,
                     "MistralRotaryEmbedding", sliding_window=config_sliding_window)
GEMMA = llama_like("gemma", "GemmaForCausalLM", "Gemma (GemmaForCausalLM)", _gemma_module_kinds, "GemmaRotaryEmbedding")
OPT = Architecture(family="opt", model_class="OPTForCausalLM", description="OPT (OPTForCausalLM)",
                   module_kinds=_opt_module_kinds, qkv_projections=QKV_PROJECTIONS, unsupported=_opt_refusals)
GPT_NEOX = Architecture(family="gpt_neox", model_class="GPTNeoXForCausalLM",
                        description="GPT-NeoX (GPTNeoXForCausalLM, e.g. Pythia)", module_kinds=_gpt_neox_module_kinds,
                        qkv_per_head=True, rotary_class="GPTNeoXRotaryEmbedding", rotary_base=default_rotary_base)
PHI = Architecture(family="phi", model_class="PhiForCausalLM", description="Phi (PhiForCausalLM, e.g. Phi-1.5, Phi-2)",
                   module_kinds=_phi_module_kinds, qkv_projections=QKV_PROJECTIONS, rotary_class="PhiRotaryEmbedding",
                   rotary_base=default_rotary_base, unsupported=_phi_refusals)
BERT = Architecture(family="bert", model_class="BertModel", description="BERT (BertModel encoders, e.g. all-MiniLM-L6-v2)",
                    module_kinds=_bert_module_kinds, block_container="layer", qkv_projections=("query", "key", "value"),
                    unsupported=_bert_refusals, causal=False, token_type_embedding="token_type_embeddings")

# The architectures spikec converts, by family (the config's model_type).
ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": GPT2, "llama": LLAMA, "qwen2": QWEN2, "mistral": MISTRAL, "opt": OPT, "gpt_neox": GPT_NEOX,
    "phi": PHI, "gemma": GEMMA, "bert": BERT,
}


# Architectures close to a supported one, by class name: the features that keep spikec from them.
REFUSED_FEATURES: dict[str, str] = {
    "Gemma2ForCausalLM": "attention and final-logit soft-capping (tanh), which sdpa cannot express, "
                         "and sandwich norms",
    "Gemma3ForCausalLM": "query and key norms, local sliding-window layers and soft-capping",
    "Qwen3ForCausalLM": "query and key norms (q_norm, k_norm) inside the attention",
    "Phi3ForCausalLM": "fused qkv_proj and gate_up_proj projections",
}


def architecture_of(model: nn.Module) -> Architecture | None:
    """The :class:`Architecture` of ``model`` (by its class name), ``None`` if unsupported."""
    name = type(model).__name__
    return next((arch for arch in ARCHITECTURES.values() if arch.model_class == name), None)


def supported_text() -> str:
    """``"GPT-2 (GPT2LMHeadModel) and Llama (...)"``: the supported architectures, for messages."""
    names = [arch.description for arch in ARCHITECTURES.values()]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
