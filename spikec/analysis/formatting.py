"""Plain-text forms of energy estimates: picojoules with an SI prefix, and the table that
``spikec energy`` prints."""

from __future__ import annotations

from typing import Any, Mapping


def format_energy(pj: float) -> str:
    """``pj`` picojoules with an SI prefix (``153 uJ``, ``4.2 nJ``)."""
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def reduction_text(x: float | None) -> str:
    """A reduction ``1 - SNN/ANN`` as read: ``"93.6% less"``, or ``"15.6x more"`` when the SNN
    spends more (``x < 0``, so SNN/ANN = ``1 - x``)."""
    if x is None:
        return "-"
    return f"{100 * x:.1f}% less" if x >= 0 else f"{1 - x:.1f}x more"


def format_estimate(est: Mapping[str, Any], per_op: bool = False) -> str:
    """A plain-text table of an :func:`estimate`: one row per block (or per layer operation
    with ``per_op``), then the totals, the attention blocks and the SNN energy breakdown."""
    w, m = est["workload"], est["model"]
    lines = [f"energy model {m['name']} ({m['precision']}): {m['description']}",
             f"workload: {w['tokens']} tokens ({w['sequences']} x {w['positions']} positions), T={w['timesteps']}", ""]
    rows = [(r["name"] if per_op else r["block"], r) for r in (est["layers"] if per_op else est["blocks"])]
    header = ("layer" if per_op else "block", "ANN/token", "SNN/token", "SNN energy", "rate/step", "spikes/window")
    table = []
    for label, r in rows:
        rate = r.get("firing_rate")
        table.append((label, format_energy(r["ann_pj"]), format_energy(r["snn_pj"]), reduction_text(r["reduction"]),
                      "-" if rate is None else f"{rate:.3f}", "-" if rate is None else f"{rate * w['timesteps']:.2f}"))
    rate = est["firing_rate"]
    table.append(("total", format_energy(est["ann_pj_per_token"]), format_energy(est["snn_pj_per_token"]),
                  reduction_text(est["reduction"]), "-" if rate is None else f"{rate:.3f}",
                  "-" if rate is None else f"{est['spikes_per_neuron_per_window']:.2f}"))
    table.append(("attention", format_energy(est["attention_ann_pj_per_token"]),
                  format_energy(est["attention_snn_pj_per_token"]), reduction_text(est["attention_reduction"]), "", ""))
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(wd) if i == 0 else c.rjust(wd) for i, (c, wd) in enumerate(zip(r, widths)))

    lines += [fmt(header), fmt(tuple("-" * wd for wd in widths))]
    lines += [fmt(r) for r in table[:-2]] + [fmt(tuple("-" * wd for wd in widths))] + [fmt(r) for r in table[-2:]]
    snn = est["snn_breakdown_pj"]
    total = sum(snn.values()) or 1.0
    lines += ["", "SNN energy by kind: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in snn.items()),
              f"spike-driven share of the ANN's MACs: {100 * est['spike_driven_mac_share']:.1f}% "
              "(the rest is real-valued in both networks)"]
    if est["uncounted"]:
        lines.append(f"not counted (no rule for their type): {', '.join(est['uncounted'])}")
    if est["reduction"] is not None and est["reduction"] < 0:
        lines.append("the SNN spends MORE energy than the ANN under this model")
    return "\n".join(lines)
