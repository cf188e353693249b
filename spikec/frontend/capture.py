"""Capture a Hugging Face causal LM as an aten-level torch.fx graph with torch.export."""

from __future__ import annotations

import warnings

import torch

from .architectures import architecture_of

# Prefix torch.export gives module paths inside the wrapper below (``model.transformer.h.0``).
WRAPPED_PREFIX = "model."


def model_output(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """What spikec converts of ``model`` for ``ids [batch, positions]``: the logits
    ``[batch, positions, vocab]`` of a causal LM (without cache), the last hidden state
    ``[batch, positions, d]`` of an encoder (an architecture whose attention is not causal)."""
    arch = architecture_of(model)
    if arch is not None and not arch.causal:
        return model(input_ids=ids).last_hidden_state
    return model(input_ids=ids, use_cache=False).logits


class LogitsOnly(torch.nn.Module):
    """``input_ids -> logits`` (an encoder's last hidden state, see :func:`model_output`): the HF
    model without cache, outputs dataclass or extra inputs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return model_output(self.model, ids)


def capture(model: torch.nn.Module, example_ids: torch.Tensor, *, decompose: bool = False) -> torch.fx.GraphModule:
    """Export ``model`` (``input_ids [batch, positions] -> logits``) to an aten-level GraphModule.

    The number of positions is dynamic (2 .. the model's maximum); the batch size is that of
    ``example_ids``. Attention is switched to sdpa, so that each layer's attention is one
    ``aten.scaled_dot_product_attention`` node. Nodes keep torch.export's ``nn_module_stack``
    metadata, whose module paths start with ``WRAPPED_PREFIX``. The returned module shares its
    parameters with ``model`` (do not modify them in place).

    ``decompose=True`` also runs ``run_decompositions({})``, which only rewrites export noise
    (eval-mode dropout to clone, reshape to view, ``to`` to ``_to_copy``) and costs more than the
    export itself (~15 s of ~25 s for SmolLM2-135M); :func:`canonicalize` accepts either form.
    """
    if example_ids.dim() != 2 or example_ids.dtype != torch.int64:
        raise ValueError(f"example_ids must be int64 [batch, positions], got {example_ids.dtype} {list(example_ids.shape)}")
    if example_ids.shape[1] < 2:
        raise ValueError("example_ids needs at least 2 positions (length 1 would be specialised)")
    _use_sdpa(model)
    max_positions = _max_positions(model.config)
    positions = torch.export.Dim("positions", min=2, max=max_positions)
    wrapper = LogitsOnly(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # torch.export's own pytree deprecation notice, irrelevant to users.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        ep = torch.export.export(wrapper, (example_ids,), dynamic_shapes=({1: positions},), strict=False)
        if decompose:
            # The empty table only strips export noise; the default one bloats the graph.
            ep = ep.run_decompositions({})
    return ep.module()


def _use_sdpa(model: torch.nn.Module) -> None:
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        return
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")
    else:
        model.config._attn_implementation = "sdpa"


def _max_positions(config) -> int:
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= 2:
            return value
    return 4096
