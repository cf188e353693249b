"""Builder of the few-spike neuron's NIR node (``ops.few_spike`` -> ``SpikecFewSpike``).

``ops.binary_readout_affine`` (two nodes: a standard ``Affine`` and ``SpikecBinaryReadout``) is
lowered by ``spikec.lower`` with the other readout affines.
"""

from __future__ import annotations

from typing import Any

import torch

from spikec.core import ir, ops

from .fields import Builder, array


def _few_spike(a: dict[str, Any], node: torch.fx.Node) -> ir.SpikecFewSpike:
    return ir.SpikecFewSpike(threshold=array(a["threshold"]), signed_digits=bool(a["signed_digits"]),
                              steps=int(a.get("steps", 0) or 0), radix=int(a.get("radix", 2)))


BUILDERS: dict[Any, Builder] = {ops.few_spike: _few_spike}
"""Few-spike operator -> builder of its NIR node."""
