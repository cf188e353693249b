"""The accuracy / energy / latency trade-off drawn in the report (issue 17 item 4).

The curve is measured by benchmarks/pareto.py on SmolLM2-135M (perplexity ratio SNN/ANN on
held-out text against the whole-model energy reduction per energy model, and against latency in
timesteps per token) and shipped as ``spikec/data/pareto.json`` so an installed spikec draws it.
``PUBLISHED`` holds the figures the papers report, each with the sentence it comes from
(/work/shared/seeds abstracts); they are other models, drawn only on the axes the papers give a
number for: none gives a perplexity ratio, so they appear as energy reductions (and FAS's T as a
latency), never as points on the ppl axis.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

PARETO_DATA = "data/pareto.json"  # inside the spikec package

PUBLISHED: tuple[dict[str, Any], ...] = (
    {"name": "FAS", "model": "OPT-7B", "energy_reduction": (0.9663, 0.9663), "timesteps": 8,
     "quote": "FAS only takes 8 timesteps to achieve an accuracy of 3% higher than that of the OPT-7B model, "
              "while reducing energy consumption by 96.63%.",
     "source": "Chen et al., arXiv 2502.04405 (abstract)"},
    {"name": "SpikeDecoder", "model": "GPT decoder trained from scratch", "energy_reduction": (0.87, 0.93),
     "timesteps": None,
     "quote": "87% to 93% lower theoretical energy consumption — that's what SpikeDecoder claims over a "
              "standard GPT architecture",
     "source": "Beger, Walter & Knoll, arXiv 2606.12287 (summary)"},
    {"name": "NeurTransformer", "model": "GPT-2 small, self-attention block only", "energy_reduction": (0.6471, 0.8528),
     "timesteps": None,
     "quote": "between 64.71% and 85.28% reductions in estimated energy consumption when implementing the "
              "self-attention mechanism on a digital hardware",
     "source": "Balaji & Madireddy, arXiv 2510.00133 (abstract)"},
)

_COLORS = {"45nm": "#4c72b0", "45nm-memory": "#55a868", "loihi": "#c44e52"}
_MARKERS = {"rate": "o", "binary": "s", "ternary": "^", "budget": "D"}  # budget: with --budget, points off the lines


def load_pareto(path: str | Path | None = None) -> dict[str, Any] | None:
    """The curve data (benchmarks/pareto.py's JSON: ``points`` name -> coding, timesteps,
    ppl_ratio, energy_reduction per energy model, latency_timesteps_per_token) from ``path``,
    default the copy shipped in the package; None when there is none."""
    if path is None:
        resource = resources.files("spikec").joinpath(PARETO_DATA)
        if not resource.is_file():
            return None
        return json.loads(resource.read_text(encoding="utf-8"))
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def pareto_figure(plt: Any, curve: dict[str, Any], own: dict[str, Any] | None = None):
    """A matplotlib figure of two panels: ppl ratio against energy reduction (%, one series per
    energy model and coding) and against latency (timesteps per token), with ``own`` (the
    compiled network: ``ppl_ratio``, ``timesteps``, ``energy_reduction`` per model, ``model``)
    marked and ``PUBLISHED`` drawn on the axes they report. ``plt``: matplotlib.pyplot."""
    fig, (ax_e, ax_t) = plt.subplots(1, 2, figsize=(12, 4.6))
    points = list(curve.get("points", {}).values())
    for coding, marker in _MARKERS.items():
        rows = sorted((p for p in points if ("budget" if p.get("budget") else p["coding"]) == coding),
                      key=lambda p: p["timesteps"])
        line, shown = ("none", "few-spike --budget") if coding == "budget" else ("-", coding)
        for energy_model, color in _COLORS.items():
            xy = [(100 * p["energy_reduction"][energy_model], p["ppl_ratio"], p) for p in rows
                  if p.get("energy_reduction", {}).get(energy_model) is not None]
            if not xy:
                continue
            ax_e.plot([x for x, _, _ in xy], [y for _, y, _ in xy], marker=marker, linestyle=line, color=color,
                      alpha=0.8, label=f"{shown}, {energy_model}")
            if energy_model == "45nm":
                for x, y, p in xy:
                    tag = (f"T={p['timesteps']}" + (f" {p['coding'][0]}" if p.get("budget") else "")
                           + (f" b{p['budget']:g}" if p.get("budget") else ""))
                    ax_e.annotate(tag, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if not rows:
            continue
        ax_t.plot([p["timesteps"] for p in rows], [p["ppl_ratio"] for p in rows], marker=marker, linestyle=line,
                  label=f"{shown} ({curve.get('model', '?')})")
    for i, pub in enumerate(PUBLISHED):
        lo, hi = pub["energy_reduction"]
        label = f"{pub['name']} (published, other model: {pub['model']}; energy only)"
        if hi > lo:
            ax_e.axvspan(100 * lo, 100 * hi, color=f"C{i + 3}", alpha=0.15, label=label)
        else:
            ax_e.axvline(100 * lo, color=f"C{i + 3}", linestyle="--", label=label)
        if pub["timesteps"] is not None:
            ax_t.axvline(pub["timesteps"], color=f"C{i + 3}", linestyle="--",
                         label=f"{pub['name']} T={pub['timesteps']} (published, other model: {pub['model']}; no ppl)")
    if own is not None and own.get("ppl_ratio") is not None:
        for energy_model, color in _COLORS.items():
            r = (own.get("energy_reduction") or {}).get(energy_model)
            if r is not None:
                ax_e.scatter([100 * r], [own["ppl_ratio"]], marker="*", s=220, color=color, edgecolor="black",
                             zorder=5, label=f"this network ({own.get('model', '?')}), {energy_model}")
        ax_t.scatter([own["timesteps"]], [own["ppl_ratio"]], marker="*", s=220, color="gold", edgecolor="black",
                     zorder=5, label=f"this network ({own.get('model', '?')})")
    ax_e.set_xlabel("energy reduction against the fp32 ANN (%, symlog below -100)")
    ax_e.set_ylabel("perplexity ratio SNN/ANN")
    ax_e.set_xscale("symlog", linthresh=100, linscale=4)  # linear in [-100, 100] %; the Loihi model can cost several times more
    ax_e.set_xlim(right=100)
    ax_t.set_xlabel("latency (timesteps per token)")
    ax_t.set_ylabel("perplexity ratio SNN/ANN")
    for ax in (ax_e, ax_t):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: the curves fill the axes
    fig.suptitle(f"Trade-off measured on {curve.get('model', '?')}, {curve.get('tokens', '?')} held-out tokens "
                 "(published figures: other models, their own energy models)", fontsize=9)
    fig.tight_layout()
    return fig
