"""NIR extension nodes of the rate code: the neuron that turns a real current into a spike
train, and the readout that turns a time series back into a real value.

``SpikecSignedIF`` turns a real current ``[batch, positions, features]`` into a spike train
``[T, batch, positions, features]``; ``SpikecRateReadout`` turns a time series back into a real
value (its mean over the T steps). Semantics in docs/nir-extensions.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import SpikecNode


@dataclass(eq=False)
class SpikecSignedIF(SpikecNode):
    """Signed integrate-and-fire neurons with soft reset (``spikec.core.neurons``).

    Driven by a real current (constant over the T steps of a window) it emits a
    spike train of integers in ``[-max_spikes, max_spikes]`` per step
    (``[0, max_spikes]`` when not signed). Membrane starts at ``v_init * threshold``;
    ``v_init`` is one float for the layer or a float32 array ``[features]`` (per neuron)."""

    kind: ClassVar[str] = "spiking"
    threshold: np.ndarray  # [features]
    max_spikes: int
    signed: bool
    v_init: float | np.ndarray  # a float, or [features]

    def __post_init__(self) -> None:
        # A scalar (also a 0-d array read back from a file) stays a Python float.
        self.v_init = float(self.v_init) if np.ndim(self.v_init) == 0 else np.asarray(self.v_init, np.float32)
        self.set_feature_types(self.threshold.shape[0], self.threshold.shape[0])


@dataclass(eq=False)
class SpikecRateReadout(SpikecNode):
    """Mean over the T steps of its time-series input: a real value per window."""

    kind: ClassVar[str] = "readout"
    features: int

    def __post_init__(self) -> None:
        self.set_feature_types(self.features, self.features)
