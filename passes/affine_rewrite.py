"""Replacing a calibrated ``ops.affine`` by neurons and a readout: the steps every encoding
pass (``spike-encode``, ``spike-softmax``, ``portable-encode``) shares.

An encoding pass looks the affine up (``AffineSite``: its input, weight and bias, checked
against the thresholds), inserts its own neurons before it, folds the per-input-column
thresholds into the weight (``fold_weight``), and hands its readout to ``replace_affine``,
which moves the affine's meta and users to the readout and drops the affine and its
now-unused weight; ``finish`` drops the stale attributes and records what was converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from spikec.core.errors import UsageError
from spikec.core.passes import PassContext

from .fx_graph import attr_tensor, drop_unused_attrs, erase_if_unused, get_arg, new_attr, spikec_name


@dataclass(frozen=True)
class AffineSite:
    """One affine to convert: the node, its readable ``name`` and ``role``, its input ``x``,
    its weight and bias nodes and the weight tensor ``w`` ``[out, in]``."""

    affine: fx.Node
    name: str
    role: str
    x: Any
    w_node: Any
    b_node: Any
    w: torch.Tensor

    @classmethod
    def of(cls, gm: fx.GraphModule, affine: fx.Node, theta: torch.Tensor) -> AffineSite:
        """The site of ``affine``; ``UsageError`` when its weight is not a tensor with one column
        per threshold of ``theta`` ``[in]`` (the calibration statistics are stale)."""
        w_node = get_arg(affine, 1, "weight")
        w = attr_tensor(gm, w_node)
        if w is None or w.shape[1] != theta.shape[0]:
            raise UsageError(f"{spikec_name(affine)}: weight does not match its calibration statistics",
                             "re-run calibrate after passes that change affine weights")
        return cls(affine, spikec_name(affine), affine.meta.get("role", ""), get_arg(affine, 0, "x"), w_node,
                   get_arg(affine, 2, "bias"), w)

    def neuron_meta(self, suffix: str = "neuron", role: str = "neuron") -> dict[str, Any]:
        """The meta of a node the conversion inserts for this affine (named ``<affine>.<suffix>``)."""
        return {"spikec_name": f"{self.name}.{suffix}", "role": role, "spikec_neuron_of": self.name,
                "module_path": self.affine.meta.get("module_path", "")}


def fold_weight(gm: fx.GraphModule, site: AffineSite, scale: torch.Tensor) -> fx.Node:
    """A ``get_attr`` node (inserted at the graph's insertion point) of the new buffer
    ``<affine>.weight_spiking`` = ``W * scale[None, :]`` (computed in float32, stored in W's dtype)."""
    folded = (site.w.float() * scale.to(site.w.device)[None, :]).to(site.w.dtype)
    return gm.graph.get_attr(new_attr(gm, f"{site.name}.weight_spiking", folded))


def replace_affine(gm: fx.GraphModule, site: AffineSite, readout: fx.Node, out: fx.Node | None = None) -> set[str]:
    """Give ``readout`` the affine's meta, point the affine's users at ``out`` (default
    ``readout``), erase the affine and its weight's ``get_attr`` when unused and drop that
    attribute (``drop_unused_attrs``) so that its tensor can be freed at once; returns the
    attribute targets dropped."""
    readout.meta.update(site.affine.meta)
    site.affine.replace_all_uses_with(readout if out is None else out)
    gm.graph.erase_node(site.affine)
    stale = erase_if_unused(gm, [site.w_node])
    drop_unused_attrs(gm, stale)  # now: the old weights would otherwise live beside all the new ones
    return stale


def finish(gm: fx.GraphModule, ctx: PassContext, stale: set[str], encoded: int, neurons: dict[str, int]) -> None:
    """Drop the attributes ``stale`` no node reads any more, check and recompile the graph, and
    record ``timesteps``, ``affines_encoded`` (``encoded``) and ``neurons`` (per role)."""
    drop_unused_attrs(gm, stale)
    gm.graph.lint()
    gm.recompile()
    ctx.record("timesteps", ctx.timesteps)
    ctx.record("affines_encoded", encoded)
    ctx.record("neurons", neurons)
