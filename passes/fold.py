"""``fold-norm-affine``: move a norm's elementwise affine into the affines it feeds."""

from __future__ import annotations

import torch
from torch import fx

from spikec.core import ops
from spikec.core.passes import PassContext

from .fx_graph import attr_tensor, calls, drop_unused_attrs, erase_if_unused, get_arg, new_attr, set_arg, spikec_name


def _fold_into(gm: fx.GraphModule, affine: fx.Node, gamma: torch.Tensor | None,
               beta: torch.Tensor | None) -> list[fx.Node]:
    """Point ``affine`` at new attributes ``W * gamma[None, :]`` and ``b + W @ beta``;
    returns the argument nodes it no longer uses."""
    w_node, b_node = get_arg(affine, 1, "weight"), get_arg(affine, 2, "bias")
    w = attr_tensor(gm, w_node)
    b = attr_tensor(gm, b_node)
    new_w = w if gamma is None else (w.float() * gamma.float()[None, :]).to(w.dtype)
    new_b = b
    if beta is not None:
        shift = (w.double() @ beta.double()).to(w.dtype)
        new_b = shift if b is None else (b.double() + shift.double()).to(b.dtype)
    name = spikec_name(affine)
    replaced = []
    with gm.graph.inserting_before(affine):
        if new_w is not w:
            set_arg(affine, 1, "weight", gm.graph.get_attr(new_attr(gm, f"{name}.weight_folded", new_w)))
            replaced.append(w_node)
        if new_b is not b:
            set_arg(affine, 2, "bias", gm.graph.get_attr(new_attr(gm, f"{name}.bias_folded", new_b)))
            replaced.append(b_node)
    return replaced


def _foldable(gm: fx.GraphModule, norm: fx.Node) -> bool:
    """Every user is an affine taking the norm as its input (not as a weight), every
    affine weight/bias is a tensor attribute, and the norm's params are attributes or None."""
    if not norm.users:
        return False
    for user in norm.users:
        if user.op != "call_function" or user.target is not ops.affine:
            return False
        if get_arg(user, 0, "x") is not norm or norm in (get_arg(user, 1, "weight"), get_arg(user, 2, "bias")):
            return False
        if attr_tensor(gm, get_arg(user, 1, "weight")) is None:
            return False
        bias = get_arg(user, 2, "bias")
        if bias is not None and attr_tensor(gm, bias) is None:
            return False
    params = [get_arg(norm, 1, "weight")]
    if norm.target is ops.layer_norm:
        params.append(get_arg(norm, 2, "bias"))
    return all(p is None or attr_tensor(gm, p) is not None for p in params)


def fold_norm_affine(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Fold each LayerNorm/RMSNorm weight and bias into the affines that read the norm.

    Matches every ``ops.layer_norm`` / ``ops.rms_norm`` node whose users are all
    ``ops.affine`` nodes taking it as their input, with tensor-attribute weights.
    Each such affine gets new attributes ``W' = W * gamma[None, :]`` and
    ``b' = b + W @ beta`` (``beta`` only for LayerNorm); the norm's weight and bias
    arguments become None. A norm with any other user is left unchanged.
    Guarantees: the module's output is unchanged up to float rounding; no existing
    tensor is modified (they may be shared, e.g. a tied lm_head); attributes no node
    reads any more are removed from the module.
    """
    folded_norms, folded_affines, skipped = 0, 0, []
    stale: set[str] = set()
    for norm in calls(gm, ops.layer_norm, ops.rms_norm):
        gamma_node = get_arg(norm, 1, "weight")
        beta_node = get_arg(norm, 2, "bias") if norm.target is ops.layer_norm else None
        if gamma_node is None and beta_node is None:
            continue  # nothing to fold
        if not _foldable(gm, norm):
            skipped.append(spikec_name(norm))
            continue
        gamma, beta = attr_tensor(gm, gamma_node), attr_tensor(gm, beta_node)
        replaced: list[fx.Node] = [gamma_node, beta_node]
        for affine in list(norm.users):
            replaced += _fold_into(gm, affine, gamma, beta)
            folded_affines += 1
        set_arg(norm, 1, "weight", None)
        if norm.target is ops.layer_norm:
            set_arg(norm, 2, "bias", None)
        dropped = erase_if_unused(gm, replaced)
        drop_unused_attrs(gm, dropped)  # now: the unfolded weights would otherwise live beside all folded ones
        stale |= dropped
        folded_norms += 1
    drop_unused_attrs(gm, stale)
    gm.graph.lint()
    gm.recompile()
    ctx.record("norms_folded", folded_norms)
    ctx.record("affines_folded", folded_affines)
    ctx.record("norms_skipped", skipped[:20])
