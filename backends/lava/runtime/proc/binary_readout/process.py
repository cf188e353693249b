"""The ``BinaryReadout`` process (one SpikecBinaryReadout node of the graph)."""

from __future__ import annotations

from runtime.proc.common import WindowReadout


class BinaryReadout(WindowReadout):
    """Horner's rule over the Dense output of the steps ``start+1 .. start+T`` (the spikes of
    window steps 0 .. T-1): ``acc = 2 acc + a``; the real value is ``acc 2^-(T-1) + bias``
    (float) or ``acc * unit 2^-(T-1)`` with the bias added on the first step (fixed)."""
