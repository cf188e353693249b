"""NIR extension node of spiking self-attention (SSA, docs/ssa.md).

Its dynamics (torch) are ``spikec.core.ssa.spiking_self_attention``; the node holds the fields
that call needs, checked on construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import SpikecNode


@dataclass(eq=False)
class SpikecSSA(SpikecNode):
    """Causal spiking self-attention (``spiking_self_attention``; docs/ssa.md).

    Input: fused ``[q | k | v]`` real ``[batch, P, (H + 2*KV) * D]``; output: spike train
    ``[T, batch, P, H * D]`` of ``{0, 1}`` (``{-1, 0, 1}`` when ``signed``). ``tau`` 0 means
    IF neurons, else LIF with that time constant; ``normalize`` divides ``A_t V_t`` by the
    number of attended positions. Thresholds are per channel and positive. ``map_threshold``
    and ``map_bias`` ``[H]``: the attention-map neurons of each head (``ssa_forward``); all
    zero thresholds (the default, also when absent from a file) mean none."""

    kind: ClassVar[str] = "spiking"
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    q_threshold: np.ndarray  # [H * D]
    k_threshold: np.ndarray  # [KV * D]
    v_threshold: np.ndarray  # [KV * D]
    scale: np.ndarray  # [H * D]
    o_threshold: np.ndarray  # [H * D]
    signed: bool
    tau: float
    normalize: bool
    decay: np.ndarray  # [H], in (0, 1]; all 1: the plain causal mask
    map_threshold: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))  # [H]; all 0: no map neurons
    map_bias: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))  # [H]

    @property
    def has_map_neurons(self) -> bool:
        return bool((np.asarray(self.map_threshold) > 0).any())

    def __post_init__(self) -> None:
        h, kv, d = int(self.num_heads), int(self.num_kv_heads), int(self.head_dim)
        if min(h, kv, d) < 1 or h % kv:
            raise ValueError(f"num_heads {h}, num_kv_heads {kv}, head_dim {d}: expected positive counts, "
                             "num_heads a multiple of num_kv_heads")
        if self.rope_theta < 0 or self.tau < 0:
            raise ValueError(f"rope_theta {self.rope_theta} and tau {self.tau} must be >= 0")
        for field, n in (("q_threshold", h), ("k_threshold", kv), ("v_threshold", kv), ("scale", h),
                         ("o_threshold", h)):
            value = np.asarray(getattr(self, field))
            if value.shape != (n * d,) or not np.issubdtype(value.dtype, np.floating):
                raise ValueError(f"{field} has shape {list(value.shape)} ({value.dtype}); expected [{n * d}] floats")
            if field != "scale" and not (value > 0).all():
                raise ValueError(f"{field} has values <= 0; thresholds must be positive")
        decay = np.asarray(self.decay)
        if decay.shape != (h,) or not np.issubdtype(decay.dtype, np.floating) or not ((decay > 0) & (decay <= 1)).all():
            raise ValueError(f"decay has shape {list(decay.shape)} ({decay.dtype}); expected [{h}] floats in (0, 1]")
        for name in ("map_threshold", "map_bias"):
            value = np.asarray(getattr(self, name))
            if value.size == 0:
                value = np.zeros(h, np.float32)
            if value.shape != (h,) or not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
                raise ValueError(f"{name} has shape {list(value.shape)} ({value.dtype}); expected [{h}] finite floats")
            setattr(self, name, value)
        mt = self.map_threshold
        if not ((mt > 0).all() or (mt == 0).all()):
            raise ValueError("map_threshold must be all positive (map neurons) or all zero (none)")
        self.set_feature_types((h + 2 * kv) * d, h * d)
