"""Builder of the ``SpikecSSA`` node of a ``spikec.core.ssa.spiking_self_attention`` call."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spikec.core import ssa
from spikec.core.ir import SpikecSSA

from .fields import Builder, array


def ssa_node(args: dict[str, Any], node: torch.fx.Node | None = None) -> SpikecSSA:
    """The ``SpikecSSA`` node of a ``spiking_self_attention`` call (arguments by name, tensors
    resolved); ``decay`` absent: all ones ``[H]``, map neurons absent: none."""
    return SpikecSSA(
        num_heads=int(args["num_heads"]), num_kv_heads=int(args["num_kv_heads"]), head_dim=int(args["head_dim"]),
        rope_theta=float(args["rope_theta"]), q_threshold=array(args["q_threshold"]),
        k_threshold=array(args["k_threshold"]), v_threshold=array(args["v_threshold"]), scale=array(args["scale"]),
        o_threshold=array(args["o_threshold"]), signed=bool(args["signed"]), tau=float(args["tau"]),
        normalize=bool(args["normalize"]),
        decay=np.ones(int(args["num_heads"]), np.float32) if args.get("decay") is None else array(args["decay"]),
        **{name: array(args[name]) for name in ("map_threshold", "map_bias") if args.get(name) is not None},
    )


BUILDERS: dict[Any, Builder] = {ssa.spiking_self_attention: ssa_node}
"""``spiking_self_attention`` -> builder of its ``SpikecSSA`` node."""
