"""What flows along the reference simulator's edges, and the state its kernels share.

* ``Value``: a tensor on an edge, a real value or a time series ``[T, ...]`` (plus the fast
  mode's compact forms: int8 spikes, spike counts);
* ``Context``: per-simulator state (device, mode, parameters converted once, per-run timesteps);
* ``Kernel``: the signature of every node kernel, ``kernel(ctx, name, node, x) -> Value``;
* ``floating``: the dtype rule of neurons and real ops (spike trains are integers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import nir
import numpy as np
import torch

from . import native_loops


@dataclass
class Value:
    """The value on an edge: ``data`` is a real tensor without a time axis (e.g. ``[batch,
    positions, features]``) when ``series`` is False, else a time series ``[T, ...]``."""

    data: torch.Tensor
    series: bool  # True: [T, ...] time series; False: real value, constant over the window
    # fast mode only:
    count: bool = False  # data is sum_t of an integer time series (consumed by readout affines only)
    logical: torch.dtype | None = None  # data holds int8 spikes standing for this dtype's 0/1 values
    total: int | None = None  # sum of |spikes| over all neurons and steps, when a kernel knew it
    train: torch.Tensor | None = None  # with count: the spike train itself, kept only when recording
    operations: dict[str, float] | None = None  # counted inside the kernel (SimResult.operations)

    def dense(self) -> torch.Tensor:
        """The value in its logical dtype (compact int8 spikes widened)."""
        return self.data if self.logical is None else self.data.to(self.logical)


class Context:
    """Per-simulator state: device, mode, the parameters converted to tensors by node name
    (kept across runs until ``forget``) and, per run, the timesteps."""

    def __init__(self, device: torch.device, mode: str, sparse: str):
        self.device = device
        self.fast = mode == "fast"
        self.sparse = sparse
        self.timesteps = 0
        self.count_only: set[str] = set()  # SignedIF nodes whose spikes only feed readout affines
        self.recording = False
        self.input_reusable = False  # set per node: no one else holds the input's storage
        self._params: dict[tuple[str, str], torch.Tensor] = {}
        self._exact_limits: dict[str, int] = {}

    def param(self, name: str, node: nir.NIRNode, field_name: str) -> torch.Tensor:
        """Node ``name``'s array field ``field_name`` as a tensor on the device (converted once)."""
        key = (name, field_name)
        if key not in self._params:
            array = np.asarray(getattr(node, field_name))
            if not array.flags.writeable:
                array = array.copy()
            self._params[key] = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        return self._params[key]

    def forget(self, name: str) -> None:
        """Drop node ``name``'s converted parameters (``param``, ``packed``): the next use converts
        them again. The exactness limits (integers) are kept."""
        for key in [k for k in self._params if k[0] == name]:
            del self._params[key]

    def packed(self, name: str, node: nir.NIRNode) -> torch.Tensor:
        """The Affine/Linear weight in ``native_loops.event_matmul``'s layout (packed once)."""
        key = (name, "weight:packed")
        if key not in self._params:
            self._params[key] = native_loops.pack_weight(self.param(name, node, "weight"))
        return self._params[key]

    def exact_limit(self, name: str, node: nir.NIRNode) -> int:
        """The largest spike magnitude whose event product equals the dense one bit for bit
        for this Affine/Linear (``native_loops.exact_event_limit``; computed once)."""
        if name not in self._exact_limits:
            bias = self.param(name, node, "bias") if isinstance(node, nir.Affine) else None
            self._exact_limits[name] = native_loops.exact_event_limit(self.param(name, node, "weight"), bias)
        return self._exact_limits[name]

    def events(self, x: Value, name: str, node: nir.NIRNode) -> Value | None:
        """``x`` as an int8 spike train for Affine/Linear ``node`` to multiply as events, or
        None for a dense product (see ``sparse``): except with ``sparse="inexact"``, only
        where the event sum provably equals the dense product bit for bit. A float time series
        whose values are all small integers (spikes handed over as floats) counts as a spike train."""
        if not self.fast or self.sparse == "never" or x.data.device.type != "cpu":
            return None
        if self.sparse == "inexact":  # any float32 weights (the kernel's own dtype)
            limit = 127 if self.param(name, node, "weight").dtype == torch.float32 else 0
        else:
            limit = self.exact_limit(name, node)
        if limit == 0:
            return None
        if x.data.dtype != torch.int8:
            if not x.data.is_floating_point():
                return None
            converted = native_loops.as_spikes(x.data)
            if converted is None:
                return None
            x = Value(converted[0], True, total=converted[1])  # total: the non-zeros, for the density
        if self.sparse != "always":
            active = x.total if x.total is not None else native_loops.count_nonzero(x.data)
            if active / max(x.data.numel(), 1) >= native_loops.SPARSE_CROSSOVER:
                return None
        return x if limit == 127 or _magnitude(x) <= limit else None


def _magnitude(spikes: Value) -> int:
    """The largest ``|spike|`` of an int8 spike train (1 for NIR IF's compact 0/1 spikes)."""
    if spikes.logical is not None or spikes.data.numel() == 0:
        return 1
    low, high = torch.aminmax(spikes.data)
    return max(-int(low), int(high))


Kernel = Callable[[Context, str, nir.NIRNode, Value], Value]
"""A node kernel: ``kernel(ctx, node_name, node, input_value) -> output_value``."""


def floating(x: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` in floating point (spike trains are integers; neurons and real ops compute in
    floating point): ``like``'s dtype when that is floating, else float32; ``x`` itself when
    it already is floating."""
    if x.is_floating_point():
        return x
    return x.to(like.dtype if like is not None and like.is_floating_point() else torch.float32)
