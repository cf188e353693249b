"""The compile report (``spikec report``).

``write_report`` renders ``DIR/report.html``: one self-contained page (CSS inline, plots
as base64 PNG data URIs, no script, nothing fetched) that opens offline, with the PNGs
also written beside it. It shows the passes and their time, the simulator check, the
accuracy figures of ``spikec eval`` (DIR/eval.json), the energy estimates (from
DIR/energy.json when ``spikec energy`` was run, else measured here on ``spikec energy``'s
default workload, so that both give the same figure), the Loihi 2 fit of the Lava target
(:mod:`spikec.analysis.loihi_fit`), the accuracy / energy / latency trade-off curve
(:mod:`spikec.pareto`) with this network's point, and plots of firing rate per layer, energy per block, accuracy against T and a spike raster.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import nir
import torch

from spikec.analysis.energy_models import MODEL_NAMES, builtin_model
from spikec.analysis.estimate import estimate
from spikec.analysis.formatting import format_energy, reduction_text
from spikec.analysis.operations import OperationCounts
from spikec.core.errors import ResourceError
from spikec.analysis.loihi_fit import fit_graph
from spikec.energy import ENERGY_FILE, ENERGY_TOKENS, measure_operations, token_chunks
from spikec.outputs import load_tokenizer, read_compiled, read_json, write_atomic
from spikec.pareto import PUBLISHED, load_pareto, pareto_figure
from spikec.text import HELDOUT_TEXT, leading_tokens

REPORT_FILE = "report.html"
SAMPLE_TOKENS = ENERGY_TOKENS  # held-out tokens simulated without energy.json: `spikec energy`'s default
RASTER_LAYERS = 5
RASTER_NEURONS = 8  # per layer
RASTER_POSITIONS = 6


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ResourceError("matplotlib is not installed; the report needs it", hint="pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def _role(name: str) -> str:
    """A layer name without its block prefix (``h_3_attn_qkv`` -> ``attn_qkv``)."""
    parts = name.split("_")
    return "_".join(parts[2:]) if len(parts) > 2 and parts[0] == "h" and parts[1].isdigit() else name


def plot_firing_rates(counts: OperationCounts) -> bytes:
    """Bar chart: mean |spikes| per neuron per step of every neuron layer, in graph order."""
    plt = _pyplot()
    layers = [l for l in counts.layers if l.neurons and l.firing_rate is not None]
    roles = list(dict.fromkeys(_role(l.name) for l in layers))
    colors = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(roles)}
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 0.06 * len(layers) + 5)), 3.6))
    ax.bar(range(len(layers)), [l.firing_rate for l in layers], color=[colors[_role(l.name)] for l in layers])
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=colors[r], label=r) for r in roles], fontsize=7, ncol=min(len(roles), 6),
              loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_xlabel("neuron layer (graph order)")
    ax.set_ylabel("|spikes| per neuron per step")
    t = counts.workload.timesteps
    ax.set_title(f"Firing rate per layer (T={t}; x{t} = spikes per neuron per window)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_energy(estimates: dict[str, dict[str, Any]]) -> bytes:
    """Grouped bars, one panel per model: ANN and SNN energy per token of each block."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(estimates), 1, figsize=(10, 2.8 * len(estimates)), squeeze=False)
    for ax, (name, est) in zip(axes[:, 0], estimates.items()):
        blocks = est["blocks"]
        x = range(len(blocks))
        ax.bar([i - 0.2 for i in x], [b["ann_pj"] for b in blocks], width=0.4, label="ANN", color="#4c72b0")
        ax.bar([i + 0.2 for i in x], [b["snn_pj"] for b in blocks], width=0.4, label="SNN", color="#dd8452")
        ax.set_yscale("log")
        ax.set_ylabel("pJ per token")
        ax.set_title(f"{name}: ANN {format_energy(est['ann_pj_per_token'])}, "
                     f"SNN {format_energy(est['snn_pj_per_token'])} per token ({reduction_text(est['reduction'])})",
                     fontsize=9)
        step = max(1, len(blocks) // 24)
        ax.set_xticks(list(x)[::step], [b["block"] for b in blocks][::step], rotation=60, fontsize=7)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_embedding_accuracy(results: list[dict[str, Any]]) -> bytes:
    """A sentence encoder's embedding cosine and pair-ranking Spearman against T (from eval.json)."""
    plt = _pyplot()
    rows = sorted(results, key=lambda r: r["timesteps"])
    ts = [r["timesteps"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(ts, [r["embedding_cosine"] for r in rows], "o-", color="#c44e52", label="embedding cosine ANN vs SNN")
    ax.plot(ts, [r["pair_spearman"] for r in rows], "s--", color="#55a868", label="pair-ranking Spearman")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.minorticks_off()
    ax.set_xlabel("timesteps T")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Embedding accuracy against timesteps")
    return _png(fig)


def plot_accuracy(results: list[dict[str, Any]]) -> bytes:
    """Perplexity ratio and top-1 agreement against T (from eval.json); a sentence encoder's
    figures with :func:`plot_embedding_accuracy`."""
    if "embedding_cosine" in results[0]:
        return plot_embedding_accuracy(results)
    plt = _pyplot()
    rows = sorted(results, key=lambda r: r["timesteps"])
    ts = [r["timesteps"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(ts, [r["ppl_ratio"] for r in rows], "o-", color="#c44e52", label="SNN/ANN perplexity")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.minorticks_off()
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("perplexity ratio")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(ts, [r["top1_agreement"] for r in rows], "s--", color="#55a868", label="top-1 agreement")
    ax2.set_ylabel("top-1 agreement")
    ax2.set_ylim(0, 1.02)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="center right")
    ax.set_title("Accuracy against timesteps")
    return _png(fig)


def plot_pareto(curve: dict[str, Any], own: dict[str, Any] | None = None) -> bytes:
    """Perplexity ratio against energy reduction and latency (:func:`spikec.pareto.pareto_figure`),
    the compiled network's point ``own`` marked when given."""
    return _png(pareto_figure(_pyplot(), curve, own))


def raster_selection(spikes: dict[str, torch.Tensor]) -> list[tuple[str, list[int]]]:
    """Up to ``RASTER_LAYERS`` neuron layers, and in each the ``RASTER_NEURONS`` neurons with
    the most |spikes| over the first positions. The layers: one of each kind (``attn_qkv``,
    ``mlp_out`` ...), the one nearest the middle of the network, when there are few kinds;
    else layers spread evenly over the network."""
    names = list(spikes)
    if not names:
        return []
    kinds: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        kinds.setdefault(_role(name), []).append(i)
    if len(kinds) <= RASTER_LAYERS:
        picks = sorted(min(idx, key=lambda i: abs(i - (len(names) - 1) / 2)) for idx in kinds.values())
    else:
        picks = sorted({round(i * (len(names) - 1) / max(RASTER_LAYERS - 1, 1)) for i in range(RASTER_LAYERS)})
    out = []
    for i in picks:
        s = spikes[names[i]]  # [T, batch, positions, features]
        activity = s[:, 0, :RASTER_POSITIONS].abs().sum((0, 1), dtype=torch.int64)
        top = torch.argsort(activity, descending=True, stable=True)[:RASTER_NEURONS]
        out.append((names[i], sorted(int(j) for j in top)))
    return out


def plot_raster(spikes: dict[str, torch.Tensor]) -> bytes:
    """Spike raster of a few neurons of a few layers over the first positions: x is the
    step (positions one after another, T steps each), marker size the graded spike's
    magnitude, colour its sign."""
    plt = _pyplot()
    selection = raster_selection(spikes)
    fig, ax = plt.subplots(figsize=(10, 0.16 * RASTER_NEURONS * max(len(selection), 1) + 1.6))
    row, ticks, labels = 0, [], []
    steps = positions = 0
    for name, neurons in selection:
        s = spikes[name][:, 0, :RASTER_POSITIONS]  # [T, positions, features]
        steps, positions = s.shape[0], s.shape[1]
        for j in neurons:
            train = s[:, :, j].transpose(0, 1).reshape(-1).to(torch.int32)  # position-major steps
            for sign, color in ((1, "#1f4e9c"), (-1, "#c0392b")):
                where = (train * sign > 0).nonzero().flatten()
                if where.numel():
                    ax.scatter(where.tolist(), [row] * where.numel(), s=[8 + 10 * abs(int(train[k])) for k in where],
                               marker="|", color=color, linewidths=1.2)
            row += 1
        ticks.append(row - len(neurons) / 2 - 0.5)
        labels.append(name)
        ax.axhline(row - 0.5, color="#999", lw=0.5)
    for p in range(1, positions):
        ax.axvline(p * steps - 0.5, color="#ccc", lw=0.5, ls=":")
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_ylim(-0.5, max(row, 1) - 0.5)
    ax.invert_yaxis()
    ax.set_xlabel(f"step (first {positions} positions x T={steps}; blue +, red -, size = graded count)")
    ax.set_title("Spike raster")
    return _png(fig)


# ---------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return _raw_table(header, [[_esc(c) for c in r] for r in rows])


def _raw_table(header: list[str], rows: list[list[str]]) -> str:
    """A table of cells that are HTML already."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{', '.join(_value(x) for x in v[:4])}, ... {len(v)} values]"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_value(x)}" for k, x in v.items())
    return str(v)


def stats_table(stats: dict[str, Any]) -> str:
    """A pass's statistics as a two-column HTML table (one row per key; nested dicts one row
    per entry, ``key.sub``), every value in full but long lists abridged to their head."""
    rows: list[list[Any]] = []
    for k, v in stats.items():
        if isinstance(v, dict) and v and len(v) <= 64:
            rows.extend([f"{k}.{sub}", _value(x)] for sub, x in v.items())
        else:
            rows.append([k, _value(v)])
    return _table(["statistic", "value"], rows) if rows else "-"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left}th{background:#f4f4f4}td:not(:first-child){font-variant-numeric:tabular-nums}
figure{margin:1rem 0}figcaption{font-size:.8rem;color:#555}img{max-width:100%;height:auto;border:1px solid #eee}
.note{font-size:.85rem;color:#555}.bad{color:#b00}
"""


def write_report(
    directory: str | Path, report: dict[str, Any], graph: nir.NIRGraph, tokenizer: Any,
    sample_tokens: int = SAMPLE_TOKENS, shown_as: str | Path | None = None, pareto_path: str | Path | None = None,
) -> Path:
    """Render ``DIR/report.html`` and the PNGs beside it (firing_rates.png, energy.png,
    raster.png, and accuracy.png when eval.json holds several T).

    report: the compile report (report.json's content). The energy figures come from
    ``DIR/energy.json`` when present, else from ``sample_tokens`` held-out tokens simulated
    here as ``spikec energy`` does by default (the first sequence's spike trains recorded for
    the raster). shown_as: the directory named in the page's hints (default ``directory``;
    compile writes into a temporary directory that is renamed afterwards). pareto_path: the
    trade-off curve (benchmarks/pareto.py's JSON; default the copy shipped in the package),
    drawn as pareto.png with this network's point marked when it was evaluated."""
    d = Path(directory)
    shown = Path(shown_as) if shown_as is not None else d
    t = int(report["timesteps"])
    stream = leading_tokens(tokenizer, None, HELDOUT_TEXT, sample_tokens)
    sample = token_chunks(stream, min(sample_tokens, stream.numel()), None, graph)
    sample_counts, sample_result = measure_operations(graph, sample, t, record_first=True,
                                                      record_positions=RASTER_POSITIONS)
    counts, energy_source = sample_counts, (f"{sample.numel()} held-out tokens (embedded docstrings; "
                                            f"{sample.shape[0]} x {sample.shape[1]} positions), T={t}, "
                                            f"as 'spikec energy' measures by default")
    if (d / ENERGY_FILE).is_file():
        saved = read_json(d / ENERGY_FILE)
        counts = OperationCounts.from_dict(saved["counts"])
        w = counts.workload
        energy_source = (f"{w.tokens} tokens of {saved.get('text', 'text')} ({w.sequences} x {w.positions} positions), "
                         f"T={w.timesteps}, from 'spikec energy'")
    estimates = {name: estimate(counts, builtin_model(name)) for name in MODEL_NAMES}
    evals = read_json(d / "eval.json") if (d / "eval.json").is_file() else None
    if evals is not None and not isinstance(evals, list):
        evals = [evals]

    images: list[tuple[str, str, bytes]] = [
        ("firing_rates.png", f"Mean |spikes| per neuron per step of each neuron layer on {energy_source}.",
         plot_firing_rates(counts)),
        ("energy.png", f"Energy per token of each block, ANN against SNN, under each model, on {energy_source}.",
         plot_energy(estimates)),
    ]
    if evals and len({r["timesteps"] for r in evals}) > 1:
        caption = ("Embedding cosine (ANN vs SNN) and pair-ranking Spearman against T (spikec eval)."
                   if "embedding_cosine" in evals[0] else
                   "SNN/ANN perplexity ratio and top-1 agreement against T (spikec eval).")
        images.append(("accuracy.png", caption, plot_accuracy(evals)))
    if sample_result.spikes:
        images.append(("raster.png", f"Spike raster: the {RASTER_NEURONS} most active neurons of a few neuron layers "
                                     f"over the first {RASTER_POSITIONS} held-out tokens.",
                       plot_raster(sample_result.spikes)))
    curve = load_pareto(pareto_path)
    own = own_point(report, evals, estimates)
    if curve is not None:
        images.append(("pareto.png", "Perplexity ratio against energy reduction and latency, measured by "
                                     "benchmarks/pareto.py" + (", this network starred" if own else "")
                                     + "; published figures are other models, drawn only on the axes they report.",
                       plot_pareto(curve, own)))
    for filename, _, png in images:
        write_atomic(d / filename, png)

    check = report.get("simulator_check", {})
    parts = [f"<h1>spikec report: {_esc(report.get('model', '?'))}</h1>"]
    if (report.get("source") or {}).get("random_weights"):
        parts.append("<p class='bad'>This network was compiled from <b>seeded random weights</b> (--random-weights): "
                     "its architecture is the model's, its accuracy and firing rates are not a trained model's.</p>")
    parts += [
             _table(["model", "family", "coding", "T", "positions", "compile time", "nodes", "simulator vs fx"], [[
                 report.get("model"), report.get("family"), report.get("coding", "rate"), t, report.get("seq_len"),
                 f"{report.get('compile_seconds', 0):.1f} s", sum(report.get("node_counts", {}).values()),
                 f"{check.get('identical_layers', '?')}/{check.get('neuron_layers', '?')} neuron layers identical, "
                 f"logits max |diff| {check.get('logits_max_abs_diff', float('nan')):.3g}"]])]
    parts.append("<h2>Passes</h2>")
    passes = report.get("passes", [])
    parts.append(_raw_table(["pass", "time", "statistics"],
                            [[_esc(p["name"]), f"{p['seconds']:.2f} s", stats_table(p.get("stats", {}))]
                             for p in passes]))
    steps = report.get("step_seconds") or {"capture": report.get("capture_seconds", 0.0),
                                           "passes": sum(p["seconds"] for p in passes)}
    parts.append("<p class='note'>compile steps: " + ", ".join(f"{_esc(k)} {v:.1f} s" for k, v in steps.items())
                 + "; calibration: " + _esc(_value(report.get("calibration") or {})) + "</p>")
    parts += budget_section(report.get("budget"))
    parts.append("<h2>Accuracy (spikec eval, held-out text)</h2>")
    if evals and "embedding_cosine" in evals[0]:  # a sentence encoder
        parts.append(_table(["T", "embedding cosine", "least cosine", "pair Spearman", "sentences", "tokens"], [
            [r["timesteps"], f"{r['embedding_cosine']:.4f}", f"{r['embedding_cosine_min']:.4f}",
             f"{r['pair_spearman']:.4f}", r["sentences"], r["tokens"]] for r in evals]))
    elif evals:
        parts.append(_table(["T", "ANN ppl", "SNN ppl", "ratio", "cosine", "top-1", "tokens"], [
            [r["timesteps"], f"{r['ann_ppl']:.3f}", f"{r['snn_ppl']:.3f}", f"{r['ppl_ratio']:.3f}",
             f"{r['cosine']:.4f}", f"{r['top1_agreement']:.3f}", r["tokens"]] for r in evals]))
    else:
        parts.append(f"<p class='note'>not evaluated yet: run <code>spikec eval {_esc(shown)}</code>, then "
                     f"<code>spikec report {_esc(shown)}</code>.</p>")
    parts.append("<h2>Energy per token</h2>")
    parts.append(f"<p class='note'>On {_esc(energy_source)}. Estimates, not measurements: see docs/energy.md for "
                 "what is counted and the constants' sources.</p>")
    rows = []
    for name, est in estimates.items():
        rows.append([name, format_energy(est["ann_pj_per_token"]), format_energy(est["snn_pj_per_token"]),
                     reduction_text(est["reduction"]), reduction_text(est["attention_reduction"]),
                     f"{est['firing_rate']:.3f}" if est["firing_rate"] is not None else "-"])
    parts.append(_table(["model", "ANN", "SNN", "SNN energy", "attention energy", "rate/step"], rows))
    parts.append("<p class='note'>" + " ".join(f"<b>{_esc(n)}</b>: {_esc(e['model']['description'])}."
                                               for n, e in estimates.items()) + "</p>")
    parts += pareto_section(curve, own)
    parts.append("<h2>Will it fit on Loihi 2? (the Lava target)</h2>")
    parts.append(fit_graph(graph).to_html())
    parts.append("<h2>Figures</h2>")
    for filename, caption, png in images:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{_esc(caption)}' "
                     f"data-file='{_esc(filename)}'>"
                     f"<figcaption>{_esc(caption)} ({_esc(filename)})</figcaption></figure>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>spikec report: {_esc(report.get('model', ''))}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    target = d / REPORT_FILE
    write_atomic(target, page)
    return target


def budget_section(budget: dict[str, Any] | None) -> list[str]:
    """The report's HTML for ``report.json``'s ``budget`` (``--budget``): the steps chosen per layer
    (and their mean per role), and what the search measured on calibration text; nothing without a budget."""
    if not budget:
        return []
    t = budget["timesteps"]
    out = ["<h2>Per-layer steps (--budget)</h2>",
           f"<p class='note'>Chosen on {budget['samples']} calibration sequences ({budget['evaluations']} "
           f"evaluations of the fx module), never on evaluation text: perplexity ratio "
           f"{budget['ppl_ratio_all_T']:.4f} with every layer at T={t}, {budget['ppl_ratio']:.4f} with the choice "
           f"(budget {budget['budget']:g}); estimated operations per token "
           f"{budget['operations_per_token']:.4g} against {budget['operations_per_token_all_T']:.4g}.</p>",
           _table(["role", "mean steps"], [[role, s] for role, s in budget["steps_per_role"].items()]),
           _table(["layer", "steps", "channels with a coarser threshold"],
                  [[name, s, budget.get("coarser_channels", {}).get(name, 0)] for name, s in budget["steps"].items()])]
    return out


def own_point(report: dict[str, Any], evals: list[dict[str, Any]] | None,
              estimates: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The compiled network on the trade-off plot: its ppl ratio at its own T (eval.json), its
    energy reduction per model and its latency (T, timesteps per token); None without a
    perplexity evaluation at that T."""
    t = int(report["timesteps"])
    rows = [r for r in evals or [] if r.get("timesteps") == t and r.get("ppl_ratio") is not None]
    if not rows:
        return None
    return {"model": report.get("model"), "coding": report.get("coding", "rate"), "timesteps": t,
            "ppl_ratio": rows[0]["ppl_ratio"],
            "energy_reduction": {name: est["reduction"] for name, est in estimates.items()}}


def pareto_section(curve: dict[str, Any] | None, own: dict[str, Any] | None) -> list[str]:
    """The report's HTML for the trade-off curve: the measured points, this network's point and
    the published figures with their sources; nothing without curve data."""
    if curve is None:
        return []
    models = list(MODEL_NAMES)
    rows = [[name, p["coding"], p["timesteps"], f"{p['ppl_ratio']:.4f}"]
            + [reduction_text(p["energy_reduction"].get(m)) if p["energy_reduction"].get(m) is not None else "-"
               for m in models] + [p.get("source", "measured")]
            for name, p in curve.get("points", {}).items()]
    if own is not None:
        rows.append([f"this network ({own['model']})", own["coding"], own["timesteps"], f"{own['ppl_ratio']:.4f}"]
                    + [reduction_text(own["energy_reduction"].get(m)) for m in models] + ["eval.json, energy above"])
    out = ["<h2>Trade-off: accuracy, energy, latency</h2>",
           f"<p class='note'>Measured by benchmarks/pareto.py on {_esc(curve.get('model', '?'))}, "
           f"{_esc(curve.get('tokens', '?'))} held-out tokens; latency is T, timesteps per token. See pareto.png.</p>",
           _table(["setting", "coding", "T", "ppl ratio"] + [f"{m} energy" for m in models] + ["source"], rows),
           "<p class='note'>Published figures, other models and other energy models (not comparable point for "
           "point; none reports a perplexity ratio):</p>",
           _table(["paper", "model", "energy reduction", "T", "quoted", "source"], [
               [p["name"], p["model"], "-".join(f"{100 * x:.2f}%" for x in sorted(set(p["energy_reduction"]))),
                p["timesteps"] if p["timesteps"] is not None else "-", p["quote"], p["source"]] for p in PUBLISHED])]
    return out


def report_from_directory(directory: str | Path) -> Path:
    """``spikec report DIR``: render DIR/report.html again from report.json, eval.json and
    energy.json (the network is simulated on a short held-out sample for the raster)."""
    p, report, graph = read_compiled(directory)
    return write_report(p, report, graph, load_tokenizer(p))
