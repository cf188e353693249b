"""The ``RateReadout`` process (one RateReadout node of the graph)."""

from __future__ import annotations

from runtime.proc.common import WindowReadout


class RateReadout(WindowReadout):
    """Sums the Dense output of the steps ``start+1 .. start+T`` and turns it into the
    real value ``mean + bias`` (float) or ``(acc + T*bias_int) * unit / T`` (fixed)."""
