"""What the lowering builders share: tensors to NIR arrays, feature counts of fx nodes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import nir
import numpy as np
import torch

Builder = Callable[[dict[str, Any], torch.fx.Node], nir.NIRNode]
"""(the fx node's arguments by parameter name, tensors resolved; the fx node) -> its NIR node."""


def array(t: torch.Tensor | None) -> np.ndarray | None:
    """``t`` as a float32 numpy array (same shape), or None for None. A float32 CPU tensor's
    array shares its memory (``spikec.lower.lower_to_nir`` copies it unless told to share)."""
    return None if t is None else t.detach().to(torch.float32).cpu().numpy()


def own_arrays(node: nir.NIRNode) -> None:
    """Replace every array field of ``node`` that views another object's memory (a tensor's)
    by a copy, so that the node no longer changes with it."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, np.ndarray) and value.base is not None:
            setattr(node, f.name, value.copy())


def features(node: torch.fx.Node) -> int:
    """The last dimension of ``node``'s output (``ShapeProp`` must have run)."""
    return int(node.meta["tensor_meta"].shape[-1])


def v_init(v: Any) -> float | np.ndarray:
    """A neuron layer's initial membrane: a float for the layer, or a float32 array ``[features]``."""
    return array(v) if isinstance(v, torch.Tensor) else float(v)
