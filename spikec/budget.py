"""``--budget R``: per-layer code lengths of the few-spike (binary) network, chosen for energy.

Every few-spike layer starts at the window's T steps. A greedy search then repeatedly shortens
by one step the group of layers whose shortening saves the most estimated operations per unit
of perplexity-ratio increase (lazily: a candidate's score from its last measurement stands until
it is the best one, then it is measured again), as long as the ratio (SNN against the ANN, next-token perplexity)
stays within ``R``. Everything is measured with the converted fx module on ``SEARCH_SAMPLES``
sequences of the CALIBRATION text (never the evaluation text) that follow the ones the thresholds
were fitted to (``search_sequences``): on the fitted tokens themselves the network looks better
than anywhere else (SmolLM2-135M, ternary T=7: ppl ratio 0.996 there, 1.009 on the calibration
text's later tokens, 1.012 on another text), which made the search stop far past ``R``.

Groups: the layers of one role (``attn_qkv``, ``mlp_in`` ... ``lm_head``: every block's layer of
that role moves together), so that the search costs a few dozen forward passes on a 30-block
model; the choice is recorded per layer all the same.

Operations estimate per token (spikec.analysis's counting, all priced alike): per few-spike layer
``spikes x fan-out`` synaptic operations, ``features x S`` neuron updates and ``2 x fan-out x S``
readout shift-and-adds (``3 x`` for ternary digits; S the layer's steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx

from spikec.core import ops

SEARCH_SAMPLES = 4
"""Calibration sequences the search measures on (the first ones)."""


@dataclass
class Layer:
    """One few-spike layer of the fx module: its node, NIR-style name, role and per-step costs."""

    node: fx.Node
    name: str
    role: str
    features: int
    fan_out: int
    readout_adds: int = 2  # per output and step: 2 (binary Horner: shift, add), 3 (ternary: shift, two adds)


@dataclass
class BudgetChoice:
    """What the search chose and measured (calibration text only)."""

    budget: float
    timesteps: int
    steps: dict[str, int]  # per layer (NIR node name)
    groups: dict[str, int]  # per role
    ppl_ratio_full: float  # every layer at T
    ppl_ratio: float  # the chosen steps
    operations_full: float  # per token, every layer at T
    operations: float  # per token, the chosen steps
    samples: int
    evaluations: int
    trail: list[dict[str, Any]] = field(default_factory=list)  # accepted moves, in order
    text: str = "calibration"  # which sequences were measured (``search_sequences``)

    def to_json(self) -> dict[str, Any]:
        """report.json's ``budget`` entry."""
        return {"budget": self.budget, "timesteps": self.timesteps, "text": self.text,
                "samples": self.samples, "evaluations": self.evaluations,
                "ppl_ratio_all_T": self.ppl_ratio_full, "ppl_ratio": self.ppl_ratio,
                "operations_per_token_all_T": self.operations_full, "operations_per_token": self.operations,
                "steps_per_role": self.groups, "steps": self.steps, "trail": self.trail}


def few_spike_layers(gm: fx.GraphModule) -> list[Layer]:
    """The ``ops.few_spike`` nodes of ``gm`` in graph order, with the role of the affine they feed
    and their fan-out (the readout affines' output features)."""
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target is not ops.few_spike:
            continue
        users = [u for u in n.users if u.op == "call_function" and u.target is ops.binary_readout_affine]
        fan_out = sum(int(_attr(gm, u.args[1]).shape[0]) for u in users)
        role = str(users[0].meta.get("role", "")) if users else ""
        name = str(n.meta.get("spikec_name", n.name)).replace(".", "_")
        adds = 3 if int(n.kwargs.get("radix", 2)) == 3 else 2
        out.append(Layer(n, name, role or "other", int(_attr(gm, n.args[1]).shape[0]), fan_out, adds))
    return out


def _attr(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


class _SpikeCounter(fx.Interpreter):
    """Runs the module and sums ``|spikes|`` of every few-spike node."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.spikes: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.op == "call_function" and n.target is ops.few_spike:
            self.spikes[n] = int(result.abs().sum(dtype=torch.int64))
        return result


def set_steps(layers: list[Layer], steps: dict[str, int], timesteps: int) -> None:
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


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean next-token negative log-likelihood (nats) of ``logits [B, P, V]`` on ``ids [B, P]``."""
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                   ids[:, 1:].reshape(-1)))


@torch.no_grad()
def choose_steps(gm: fx.GraphModule, ann: Callable[[torch.Tensor], torch.Tensor], calibration: torch.Tensor,
                 timesteps: int, budget: float, on_step: Callable[[str], None] | None = None,
                 text: str = "calibration") -> BudgetChoice:
    """Greedy per-role choice of few-spike code lengths (module docstring); leaves the chosen
    steps in ``gm``'s nodes (recompiled). ann: the original model, token ids ``[B, P]`` ->
    logits ``[B, P, V]``; calibration: token ids ``[samples, positions]`` (the first
    ``SEARCH_SAMPLES`` are measured; ``search_sequences`` picks them), ``text`` their label in the
    record; budget: the largest perplexity ratio (SNN / ANN) allowed on those sequences."""
    layers = few_spike_layers(gm)
    ids = calibration[:SEARCH_SAMPLES].cpu()
    ann_nll = _nll(ann(ids), ids)
    tokens = ids.numel()
    evaluations = 0

    def measure(steps: dict[str, int]) -> tuple[float, float]:
        nonlocal evaluations
        set_steps(layers, steps, timesteps)
        gm.recompile()
        counter = _SpikeCounter(gm)
        ratio = math.exp(_nll(counter.run(ids), ids) - ann_nll)
        operations = sum(counter.spikes.get(l.node, 0) * l.fan_out / tokens
                         + steps[l.name] * (l.features + l.readout_adds * l.fan_out) for l in layers)
        evaluations += 1
        return ratio, operations

    roles = list(dict.fromkeys(l.role for l in layers))
    group = {r: timesteps for r in roles}

    def per_layer(g: dict[str, int]) -> dict[str, int]:
        return {l.name: g[l.role] for l in layers}

    full_ratio, full_ops = measure(per_layer(group))
    ratio, operations = full_ratio, full_ops
    trail: list[dict[str, Any]] = []
    # Lazy greedy: each candidate (a role one step shorter) keeps the score it had when last
    # measured; only the best is measured again, and taken if it still beats the others' scores.
    scores: dict[str, float] = {r: math.inf for r in roles if group[r] > 1} if full_ratio <= budget else {}
    latest: dict[str, tuple[float, float]] = {}  # measured since the last accepted move
    while scores:
        role = max(scores, key=scores.get)
        if role not in latest:
            if on_step:
                on_step(f"budget: {role} at {group[role] - 1} steps")
            r, o = measure(per_layer({**group, role: group[role] - 1}))
            if r > budget or o >= operations:
                del scores[role]  # shortening it further is taken to cost at least as much
                continue
            latest[role] = (r, o)
            scores[role] = (operations - o) / max(r - ratio, 1e-6)
            if scores[role] < max(scores.values()):
                continue  # a better stale candidate is measured first
        group[role] -= 1
        ratio, operations = latest[role]
        latest.clear()
        trail.append({"role": role, "steps": group[role], "ppl_ratio": ratio, "operations_per_token": operations})
        if group[role] == 1:
            del scores[role]
    chosen = per_layer(group)
    set_steps(layers, chosen, timesteps)
    gm.recompile()
    return BudgetChoice(budget=float(budget), timesteps=int(timesteps), steps=chosen, groups=group,
                        ppl_ratio_full=full_ratio, ppl_ratio=ratio, operations_full=full_ops, operations=operations,
                        samples=int(ids.shape[0]), evaluations=evaluations, trail=trail, text=text)
