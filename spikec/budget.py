"""``--budget R``: per-layer code lengths of the few-spike network, chosen for energy.

Every few-spike layer may use ``S <= T`` steps. The choice minimises the estimated operations per
token while the perplexity ratio (SNN against the ANN, next-token perplexity) stays within ``R``:

1. One forward and backward pass gives every layer's predicted loss increase and operations at
   each ``S`` (spikec.layer_costs: diagonal Fisher of the code's error, spikes counted).
2. For a loss allowance ``D`` (nats per token) the layers' lengths that minimise
   ``operations + w x predicted loss`` are found for the weight ``w`` at which the predicted
   increase just fits ``D`` (a Lagrangian of a multiple-choice knapsack; per layer, not per role).
3. The choice is measured with the fx module. The first allowance is ``log R`` minus the measured
   full-length log ratio; each measurement rescales the prediction to what was measured (the
   errors of layers are not exactly additive, and the Fisher is an estimate) and the next
   allowance aims at ``R`` again. The cheapest measured choice within ``R`` is kept (``MEASUREMENTS``
   at most; every layer at T if none is).

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
    FewSpikeLayer, allocation_for_loss, few_spike_layers, predicted_loss, step_costs,
)

SEARCH_SAMPLES = 4
"""Calibration sequences the search measures on (the first ones)."""
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

    def to_json(self) -> dict[str, Any]:
        """report.json's ``budget`` entry."""
        return {"budget": self.budget, "timesteps": self.timesteps, "text": self.text,
                "samples": self.samples, "evaluations": self.evaluations,
                "ppl_ratio_all_T": self.ppl_ratio_full, "ppl_ratio": self.ppl_ratio,
                "operations_per_token_all_T": self.operations_full, "operations_per_token": self.operations,
                "steps_per_role": self.groups, "steps": self.steps, "trail": self.trail}


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


def set_steps(layers: list[FewSpikeLayer], steps: dict[str, int], timesteps: int) -> None:
    """Write each layer's steps into its fx node (``steps`` kwarg; absent where it is T)."""
    for layer in layers:
        s = steps[layer.name]
        kwargs = dict(layer.node.kwargs)
        if s == timesteps:
            kwargs.pop("steps", None)
        else:
            kwargs["steps"] = int(s)
        layer.node.kwargs = kwargs


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


def mean_nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean next-token negative log-likelihood (nats) of ``logits [B, P, V]`` on ``ids [B, P]``."""
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                   ids[:, 1:].reshape(-1)))


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
    ann_nll = mean_nll(ann(ids), ids)
    tokens = ids.numel()
    evaluations = 0

    def measure(steps: dict[str, int]) -> tuple[float, float]:
        nonlocal evaluations
        set_steps(layers, steps, timesteps)
        gm.recompile()
        counter = SpikeCounter(gm)
        ratio = math.exp(mean_nll(counter.run(ids), ids) - ann_nll)
        operations = sum(counter.spikes.get(l.node, 0) * l.fan_out / tokens
                         + steps[l.name] * (l.features + l.readout_adds * l.fan_out) for l in layers)
        evaluations += 1
        return ratio, operations

    full = {l.name: timesteps for l in layers}
    full_ratio, full_ops = measure(full)
    best = (full, full_ratio, full_ops)
    trail: list[dict[str, Any]] = []
    allowance = math.log(budget) - math.log(full_ratio)
    if layers and allowance > 0:
        if on_step:
            on_step("budget: per-layer sensitivities")
        costs, _ = step_costs(gm, layers, ids, timesteps)
        scale = 1.0  # measured / predicted log-ratio increase
        tried: list[dict[str, int]] = []
        for _ in range(MEASUREMENTS):
            steps = allocation_for_loss(costs, allowance / scale)
            if steps in tried or steps == full:
                break
            tried.append(steps)
            if on_step:
                on_step(f"budget: measuring a choice ({len(tried)}/{MEASUREMENTS})")
            ratio, operations = measure(steps)
            predicted = predicted_loss(costs, steps)
            trail.append({"predicted_ppl_ratio": full_ratio * math.exp(predicted), "ppl_ratio": ratio,
                          "operations_per_token": operations, "mean_steps": sum(steps.values()) / len(steps)})
            if ratio <= budget and operations < best[2]:
                best = (steps, ratio, operations)
            measured = math.log(ratio) - math.log(full_ratio)
            if predicted > 0:
                scale = min(max(measured / predicted, 0.1), 10.0)
            if ratio <= budget and math.log(budget) - math.log(ratio) <= CLOSE_ENOUGH * allowance:
                break
    chosen, ratio, operations = best
    set_steps(layers, chosen, timesteps)
    gm.recompile()
    roles: dict[str, list[int]] = {}
    for layer in layers:
        roles.setdefault(layer.role, []).append(chosen[layer.name])
    return BudgetChoice(budget=float(budget), timesteps=int(timesteps), steps=chosen,
                        groups={r: round(sum(v) / len(v), 2) for r, v in roles.items()},
                        ppl_ratio_full=full_ratio, ppl_ratio=ratio, operations_full=full_ops, operations=operations,
                        samples=int(ids.shape[0]), evaluations=evaluations, trail=trail, text=text)
