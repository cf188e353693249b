"""Turn a captured (aten-level) graph into spikec's canonical graph.

The captured graph is read region by region: torch.export's ``nn_module_stack`` names the
module instance every aten node ran in, and the module's class says what the region computes
(a LayerNorm, an attention core, a GELU, ...). Each region becomes one ``spikec.core.ops``
call whose parameters and hyper-parameters are read from the Hugging Face module itself and
from the captured nodes (attention scale, head shapes). Data flow between regions is followed
exactly: the canonical graph has an edge wherever the captured graph has one, so an op outside
every known region on the path from ``input_ids`` to the logits (a scaled residual, a custom
norm) is refused with ``UnsupportedError`` rather than dropped. What only feeds regions from the
side (causal masks, position ids, rotary tables, size queries) is dead once the regions are
outlined and disappears. The result is checked against the model's own logits.

The pieces: :mod:`.regions` groups the captured nodes into regions, :mod:`.builder` maps them to
canonical ops, :mod:`.architectures` says what each supported architecture's modules mean.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
from torch import nn

from spikec.core import ops
from spikec.core.errors import UnsupportedError

from .architectures import REFUSED_FEATURES, Architecture, architecture_of, supported_text
from .builder import CUSTOM_PASS_HINT, CanonicalBuilder
from .capture import capture, model_output
from .models import LoadedModel
from .placement import BlockOnloader, is_dispatched, meta_skeleton

CANONICAL_OPS = frozenset(
    {ops.embedding, ops.layer_norm, ops.rms_norm, ops.attention, ops.activation,
     ops.gated_activation, ops.add, ops.affine}
)
META_KEYS = ("spikec_name", "role", "module_path")
AFFINE_ROLES = ("qkv", "attn_out", "mlp_in", "mlp_out", "lm_head")
# Largest accepted |canonical - model| logits difference, relative to max(1, max |logits|).
CHECK_TOLERANCE = 1e-3
# The same for a model whose parameters are bfloat16 (8 significant bits: both sides round each
# op's result to 2^-8 relative, in a different order, and the error grows with depth: a tiny
# random GPT-2 differs by 0.006, SmolLM2-135M's 30 layers by 0.036 of its logits' scale 33). A
# wrong graph differs by about the scale itself.
BF16_CHECK_TOLERANCE = 0.1


def canonicalize(gm: fx.GraphModule, loaded: LoadedModel, share_weights: bool = False) -> fx.GraphModule:
    """Build the canonical graph of ``gm`` (a graph from :func:`capture` of ``loaded.model``).

    Guarantees: one placeholder ``input_ids``; output the logits tensor; every call_function
    targets an op of ``CANONICAL_OPS`` with all arguments positional, in signature order;
    parameters are ``get_attr`` nodes on cloned ``nn.Parameter``s (``requires_grad=False``) owned
    by the returned module, affine weights ``[out, in]``; every call_function carries
    ``meta["spikec_name"]`` (unique), ``meta["role"]`` and ``meta["module_path"]``; fused affines
    also carry ``meta["source_modules"]``. Raises ``UnsupportedError`` for architectures not in
    ``spikec.frontend.architectures.ARCHITECTURES`` and for captured ops outside known regions;
    ``RuntimeError`` (an internal error) if the result does not reproduce the model's logits
    (within ``CHECK_TOLERANCE``, ``BF16_CHECK_TOLERANCE`` for a bfloat16 model; the canonical
    module then has the model's bfloat16 parameters too).
    ``share_weights``: parameters that need no reshaping share the model's tensors instead of
    cloning them (for a caller that drops the model afterwards and modifies neither in place,
    as ``spikec compile`` does: one copy of the weights fewer at once).
    """
    arch = _architecture(loaded)
    if is_dispatched(loaded.model):  # placed with a device map: offloaded weights read a block at a time
        onloader = BlockOnloader(loaded.model, arch.block_index)
        try:
            canonical = CanonicalBuilder(loaded, arch, share_weights, onloader.onload).build(gm)
        finally:
            onloader.close()
    else:
        canonical = CanonicalBuilder(loaded, arch, share_weights).build(gm)
    ids = _example_ids(loaded.model.config, batch=2, positions=9)
    diff, scale = _compare(canonical, loaded.model, ids)
    bf16 = any(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    if not diff <= (BF16_CHECK_TOLERANCE if bf16 else CHECK_TOLERANCE) * max(1.0, scale):
        raise RuntimeError(
            f"internal error: the canonical graph of {loaded.name} differs from the model by "
            f"{diff:.3g} in logits (scale {scale:.3g}); please report this"
        )
    return canonical


def capture_canonical(loaded: LoadedModel, seq_len: int = 16, share_weights: bool = False) -> fx.GraphModule:
    """Capture ``loaded.model`` on seeded random ids of ``seq_len`` positions, canonicalize it
    (``share_weights`` as for :func:`canonicalize`) and check it against the model. A model
    placed with a device map (``spikec.frontend.placement``) is captured from its meta skeleton
    and its offloaded weights are read a decoder block at a time; the result is the same module."""
    _architecture(loaded)
    ids = _example_ids(loaded.model.config, batch=1, positions=max(2, seq_len))
    if is_dispatched(loaded.model):  # torch.export cannot trace accelerate's hooks: capture the shapes
        return canonicalize(capture(meta_skeleton(loaded.model), ids.to("meta")), loaded, share_weights)
    return canonicalize(capture(loaded.model, ids), loaded, share_weights)


def check_against_model(gm: fx.GraphModule, model: nn.Module, ids: torch.Tensor) -> float:
    """Max abs difference between ``gm(ids)`` and the model's logits (an encoder's last hidden
    state) for ``ids``."""
    return _compare(gm, model, ids)[0]


def _compare(gm: fx.GraphModule, model: nn.Module, ids: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        ref = model_output(model, ids).cpu()  # a placed model's output may be on a GPU
        out = gm(ids)
    if out.shape != ref.shape:
        return math.inf, float(ref.abs().max())
    return float((out - ref).abs().max()), float(ref.abs().max())


def _example_ids(config, batch: int, positions: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, config.vocab_size, (batch, positions), generator=generator)


def _architecture(loaded: LoadedModel) -> Architecture:
    """The architecture of ``loaded.model``; ``UnsupportedError`` (one line) for any other."""
    arch = architecture_of(loaded.model)
    if arch is None:
        model_type = getattr(loaded.model.config, "model_type", "?")
        name = type(loaded.model).__name__
        features = f" ({name} has {REFUSED_FEATURES[name]})" if name in REFUSED_FEATURES else ""
        raise UnsupportedError(
            f"architecture {name} (model type {model_type!r}, model {loaded.name!r}) "
            f"is not supported{features}; spikec converts {supported_text()} models",
            hint=CUSTOM_PASS_HINT,
        )
    refused = arch.unsupported(loaded.model.config)
    if refused:
        raise UnsupportedError(
            f"model {loaded.name!r} ({type(loaded.model).__name__}) uses features spikec does not convert: "
            + "; ".join(refused),
            hint=CUSTOM_PASS_HINT,
        )
    return arch
