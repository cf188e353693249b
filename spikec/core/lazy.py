"""Arrays left in their file until a kernel needs them (``nirio.read(path, lazy=True)``).

A lazily read node holds a ``LazyArray`` in place of each large array field: its shape and
dtype, and the way to read the node again, whole and checked, from the file (``source``). The
simulator runs ``loaded(node)`` (the node as an eager read gives it, the same values) and may
drop it after the node ran, so that memory holds one node's arrays rather than the model's.

Anything else that reads a ``LazyArray``'s values (``np.asarray``) gets the file's values too,
reading its node again each time: correct, but meant for shapes and dtypes only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

NodeSource = Callable[[], Any]
"""Reads one node again from its file, whole and checked (a ``nir.NIRNode`` with arrays)."""


@dataclasses.dataclass(frozen=True, eq=False)
class LazyArray:
    """An array field of a node still in its file: ``shape``, ``dtype``, the node's ``source``
    and the ``field`` name. ``np.asarray`` of it reads the node and returns the field's array."""

    shape: tuple[int, ...]
    dtype: np.dtype
    source: NodeSource
    field: str

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the array takes once read."""
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        value = np.asarray(getattr(self.source(), self.field))
        return value if dtype is None else value.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype}, field={self.field!r})"


def is_lazy(node: Any) -> bool:
    """Whether ``node`` holds any field still in its file."""
    return any(isinstance(v, LazyArray) for v in vars(node).values())


def graph_is_lazy(graph: Any) -> bool:
    """Whether any top-level node of ``graph`` (a ``nir.NIRGraph``) holds a field still in its file."""
    return any(is_lazy(node) for node in graph.nodes.values())


def loaded(node: Any) -> Any:
    """``node`` with every array read (its source read again), or ``node`` itself when none is lazy."""
    for value in vars(node).values():
        if isinstance(value, LazyArray):
            return value.source()
    return node


def array_size(value: Any) -> int | None:
    """Elements of an array field (``np.ndarray`` or ``LazyArray``), None for anything else."""
    return int(value.size) if isinstance(value, (np.ndarray, LazyArray)) else None
