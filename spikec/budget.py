"""``--budget R``: per-layer code lengths of the few-spike network, chosen for energy.

Every few-spike layer may use ``S <= T`` steps. The choice minimises the estimated operations per
token while the perplexity ratio (SNN against the ANN, next-token perplexity) stays within ``R``:

1. One forward and backward pass gives every layer's predicted loss increase and operations at
   each ``S``, per channel and for each multiple ``m`` of the channel's threshold in
   ``CHANNEL_SCALES`` (spikec.layer_costs: diagonal Fisher of the code's error, spikes counted).
   A channel whose errors cost little may take a coarser grid (and a wider span: ``theta m``,
   ``m >= 1``) and spend fewer spikes; the readout's folded weight column is scaled with it, so
   the network stays a plain few-spike network and every backend agrees spike for spike.
2. For a loss allowance ``D`` (nats per token) the layers' lengths and channels' multiples that
   minimise ``operations + w x predicted loss`` are found for the weight ``w`` at which the
   predicted increase just fits ``D`` (a Lagrangian of a multiple-choice knapsack; every layer
   and channel trades at the same price).
3. The choice is measured with the fx module. The first allowance is ``log R`` minus the measured
   full-length log ratio; as the prediction is only an estimate (the errors of layers do not add
   exactly; the Fisher is a second-order guess), the next allowances close in on ``R`` by a secant
   between the largest one measured within ``R`` and the smallest past it (``next_allowance``).
   The cheapest measured choice within ``R`` is kept (``MEASUREMENTS`` at most; every layer at T
   if none is).

Everything is measured on ``SEARCH_SAMPLES`` sequences of the CALIBRATION text (never the
evaluation text) that follow the ones the thresholds were fitted to (``search_sequences``): on the
fitted tokens themselves the network looks better than anywhere else (SmolLM2-135M, ternary T=7:
ppl ratio 0.996 there, 1.009 on the calibration text's later tokens, 1.012 on another text),
which made an earlier search stop far past ``R``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx

from spikec.core import ops
from spikec.layer_costs import (
    FewSpikeLayer, LayerChoice, allocation_for_loss, few_spike_layers, layer_costs, next_token_loss, predicted_loss,
    set_steps,
)
from spikec.passes.fx_graph import fetch_attr

SEARCH_SAMPLES = 8
"""Calibration sequences the search measures on (1,024 tokens at the default 128 positions: on 512
the measured ratio of two nearly equal choices differed by up to 0.03, SmolLM2-135M ternary T=8)."""
MEASUREMENTS = 6
"""Choices the search measures with the fx module at most (besides every layer at T)."""
CLOSE_ENOUGH = 0.15
"""The search stops once a choice within R uses all but this fraction of the loss allowance."""


@dataclass
class BudgetChoice:
    """What the search chose and measured (calibration text only)."""

    budget: float
    timesteps: int
    steps: dict[str, int]  # per layer (NIR node name)
    groups: dict[str, float]  # mean steps per role
    ppl_ratio_full: float  # every layer at T
    ppl_ratio: float  # the chosen steps
    operations_full: float  # per token, every layer at T
    operations: float  # per token, the chosen steps
    samples: int
    evaluations: int
    trail: list[dict[str, Any]] = field(default_factory=list)  # measured choices, in order
    text: str = "calibration"  # which sequences were measured (``search_sequences``)
    coarser_channels: dict[str, int] = field(default_factory=dict)  # per layer: channels given a wider threshold

    def to_json(self) -> dict[str, Any]:
        """report.json's ``budget`` entry."""
        return {"budget": self.budget, "timesteps": self.timesteps, "text": self.text,
                "samples": self.samples, "evaluations": self.evaluations,
                "ppl_ratio_all_T": self.ppl_ratio_full, "ppl_ratio": self.ppl_ratio,
                "operations_per_token_all_T": self.operations_full, "operations_per_token": self.operations,
                "steps_per_role": self.groups, "steps": self.steps,
                "coarser_channels": self.coarser_channels, "trail": self.trail}


class SpikeCounter(fx.Interpreter):
    """Runs the module and sums ``|spikes|`` of every few-spike node."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.spikes: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.op == "call_function" and n.target is ops.few_spike:
            self.spikes[n] = int(result.abs().sum(dtype=torch.int64))
        return result


class Thresholds:
    """The calibrated thresholds and folded readout weights of the few-spike layers, kept so that a
    choice of channel multiples (``LayerChoice.scales``) can be written over them, and undone."""

    def __init__(self, gm: fx.GraphModule, layers: list[FewSpikeLayer]):
        self.gm, self.layers = gm, layers
        self.original = {layer.name: (fetch_attr(gm, layer.node.args[1].target).detach().clone(),
                                      [fetch_attr(gm, r.args[1].target).detach().clone() for r in layer.readouts])
                         for layer in layers}

    def apply(self, scales: dict[str, torch.Tensor]) -> None:
        """Thresholds ``theta * m`` and readout weights ``W theta * m`` (columns), ``m`` per channel
        (layers not named: their calibrated values)."""
        for layer in self.layers:
            theta, weights = self.original[layer.name]
            m = scales.get(layer.name)
            with torch.no_grad():
                fetch_attr(self.gm, layer.node.args[1].target).copy_(theta if m is None else theta * m.to(theta.dtype))
                for r, w in zip(layer.readouts, weights):
                    fetch_attr(self.gm, r.args[1].target).copy_(w if m is None else w * m.to(w.dtype)[None, :])


def next_allowance(feasible: list[tuple[float, float]], infeasible: list[tuple[float, float]],
                   goal: float) -> float | None:
    """The next predicted-loss allowance to measure, from the measured ``(allowance, log-ratio increase)``
    pairs within R (``feasible``) and past it: a secant between the largest feasible and the smallest
    infeasible allowance towards the increase ``goal`` (kept off the ends of that bracket), or,
    before both exist, a step out (at most 4x) or in (at least 4x less); None once the bracket is
    empty (measurements that contradict each other: the noise of the measured tokens)."""
    lo = max(feasible, default=None)
    hi = min(infeasible, default=None)
    if hi is None:
        allowance, increase = lo
        return allowance * min(max(goal / max(increase, goal / 4), 1.25), 4.0)
    if lo is None:
        allowance, increase = hi
        return allowance * min(max(goal / increase, 0.25), 0.8)
    (a_lo, m_lo), (a_hi, m_hi) = lo, hi
    if a_hi <= a_lo:
        return None
    guess = (a_lo + a_hi) / 2 if m_hi <= m_lo else a_lo + (goal - m_lo) * (a_hi - a_lo) / (m_hi - m_lo)
    margin = 0.1 * (a_hi - a_lo)
    return min(max(guess, a_lo + margin), a_hi - margin)


def search_sequences(stream: torch.Tensor, fitted: int, seq_len: int) -> tuple[torch.Tensor, str]:
    """The search's token ids ``[SEARCH_SAMPLES, seq_len]`` from the calibration token ``stream``
    (1-D), whose first ``fitted`` sequences of ``seq_len`` the thresholds were fitted to: the
    sequences after those, else (a text too short) the fitted ones; and a label saying which."""
    start = fitted * seq_len
    later = stream[start:].numel() // seq_len
    if later >= 1:
        n = min(SEARCH_SAMPLES, later)
        return (stream[start:start + n * seq_len].view(n, seq_len),
                f"calibration, the {n} sequences after the {fitted} fitted ones")
    n = min(SEARCH_SAMPLES, stream.numel() // seq_len)
    return (stream[:n * seq_len].view(n, seq_len),
            f"calibration, {n} of the fitted sequences (the text has no more)")


@torch.no_grad()
def choose_steps(gm: fx.GraphModule, ann: Callable[[torch.Tensor], torch.Tensor], calibration: torch.Tensor,
                 timesteps: int, budget: float, on_step: Callable[[str], None] | None = None,
                 text: str = "calibration") -> BudgetChoice:
    """Per-layer few-spike code lengths for the fewest estimated operations with the perplexity
    ratio within ``budget`` (module docstring); leaves the chosen steps in ``gm``'s nodes
    (recompiled). ann: the original model, token ids ``[B, P]`` -> logits ``[B, P, V]``;
    calibration: token ids ``[samples, positions]`` (the first ``SEARCH_SAMPLES`` are measured;
    ``search_sequences`` picks them), ``text`` their label in the record."""
    layers = few_spike_layers(gm)
    ids = calibration[:SEARCH_SAMPLES].cpu()
    ann_nll = float(next_token_loss(ann(ids), ids))
    tokens = ids.numel()
    evaluations = 0

    def measure(steps: dict[str, int]) -> tuple[float, float]:
        nonlocal evaluations
        set_steps(layers, steps, timesteps)
        gm.recompile()
        counter = SpikeCounter(gm)
        ratio = math.exp(float(next_token_loss(counter.run(ids), ids)) - ann_nll)
        operations = sum(counter.spikes.get(l.node, 0) * l.fan_out / tokens
                         + steps[l.name] * l.per_step_operations for l in layers)
        evaluations += 1
        return ratio, operations

    full = {l.name: timesteps for l in layers}
    full_ratio, full_ops = measure(full)
    best: tuple[dict[str, LayerChoice] | None, float, float] = (None, full_ratio, full_ops)
    trail: list[dict[str, Any]] = []
    allowance = math.log(budget) - math.log(full_ratio)
    thresholds = Thresholds(gm, layers)
    if layers and allowance > 0:
        if on_step:
            on_step("budget: per-layer sensitivities")
        costs, _ = layer_costs(gm, layers, ids, timesteps)
        feasible: list[tuple[float, float]] = []  # (allowance, measured log-ratio increase) within R
        infeasible: list[tuple[float, float]] = []
        tried: list[dict[str, Any]] = []
        target: float | None = allowance
        while target is not None and len(tried) < MEASUREMENTS:
            choices = allocation_for_loss(costs, target)
            key = {n: (c.steps, tuple(c.scales.tolist())) for n, c in choices.items()}
            if key in tried or all(c.steps == timesteps and bool((c.scales == 1).all()) for c in choices.values()):
                break
            tried.append(key)
            if on_step:
                on_step(f"budget: measuring a choice ({len(tried)}/{MEASUREMENTS})")
            thresholds.apply({n: c.scales for n, c in choices.items()})
            ratio, operations = measure({n: c.steps for n, c in choices.items()})
            trail.append({"allowance_nats": target, "predicted_ppl_ratio": full_ratio * math.exp(
                          predicted_loss(costs, choices)), "ppl_ratio": ratio, "operations_per_token": operations,
                          "mean_steps": sum(c.steps for c in choices.values()) / len(choices),
                          "coarser_channels": sum(int((c.scales > 1).sum()) for c in choices.values())})
            (feasible if ratio <= budget else infeasible).append((target, math.log(ratio) - math.log(full_ratio)))
            if ratio <= budget and operations < best[2]:
                best = (choices, ratio, operations)
            if ratio <= budget and math.log(budget) - math.log(ratio) <= CLOSE_ENOUGH * allowance:
                break
            target = next_allowance(feasible, infeasible, allowance)
    picked, ratio, operations = best
    chosen = {n: c.steps for n, c in picked.items()} if picked else full
    thresholds.apply({n: c.scales for n, c in picked.items()} if picked else {})
    set_steps(layers, chosen, timesteps)
    gm.recompile()
    coarser = {n: int((c.scales > 1).sum()) for n, c in picked.items() if bool((c.scales > 1).any())} if picked else {}
    roles: dict[str, list[int]] = {}
    for layer in layers:
        roles.setdefault(layer.role, []).append(chosen[layer.name])
    return BudgetChoice(budget=float(budget), timesteps=int(timesteps), steps=chosen,
                        groups={r: round(sum(v) / len(v), 2) for r, v in roles.items()},
                        ppl_ratio_full=full_ratio, ppl_ratio=ratio, operations_full=full_ops, operations=operations,
                        samples=int(ids.shape[0]), evaluations=evaluations, trail=trail, text=text,
                        coarser_channels=coarser)
