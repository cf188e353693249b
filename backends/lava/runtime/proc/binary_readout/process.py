"""The ``BinaryReadout`` process (one SpikecBinaryReadout node of the graph)."""

from __future__ import annotations

from typing import Any

from runtime.proc.common import WindowReadout


class BinaryReadout(WindowReadout):
    """Horner's rule over the Dense output of the steps ``start+1 .. start+T`` (the spikes of
    window steps 0 .. T-1): ``acc = r acc + a`` (r = ``radix``, 2 or 3); the real value is ``acc
    r^-(T-1) + bias`` (float) or ``acc * unit r^-(T-1)`` with the bias added on the first step
    (fixed, radix 2) or at the end (fixed, radix 3), per group of 8 steps (models.py)."""

    def __init__(self, *, radix: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proc_params["radix"] = int(radix)
