"""What each code length costs each few-spike layer: predicted loss and estimated operations.

For every few-spike layer ``l`` of a converted fx module and every code length ``S = 1 .. T``
this module estimates, from ONE forward and backward pass over some token ids:

* ``loss[S]``: the expected increase of the next-token loss (nats per predicted token) caused by the
  layer's quantization error at S steps, by the diagonal Fisher (second-order) approximation

      loss_l(S) = 1/2 sum_(t, c) g_(t,c)^2 e_(t,c)(S)^2 / N

  where ``e(S) = u_hat(S) - u`` is the code's error in threshold units (``u = x / theta``, the
  layer's input current; ``u_hat`` the value its S-step spikes stand for), ``g = dL/du`` the
  gradient of the summed next-token loss ``L`` at the network's own operating point (every code
  at full length, the gradient passed straight through each code) and ``N`` the predicted tokens.
  The errors of different layers are taken to add: a choice of ``S_l`` per layer is predicted to
  raise the mean loss by ``sum_l loss_l(S_l) - loss_l(T)``.
* ``operations[S]``: per token, ``spikes x fan-out`` synaptic operations, ``features x S`` neuron
  updates and ``adds x fan-out x S`` readout shift-and-adds (``adds`` 2 binary, 3 ternary), the
  spikes counted on the same tokens (spikec.analysis's counting, all priced alike).

The first-order term ``g e`` is left out on purpose: its sign depends on the tokens, so it averages
out over text, while on the few hundred tokens of a search it is the noise that made a measured
one-step change look like a gain or a loss at random. spikec.budget chooses with these tables and
checks the choice by measuring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from spikec.core import few_spike, ops


@dataclass
class FewSpikeLayer:
    """One few-spike layer of an fx module: its neuron and readout nodes, NIR-style name, role
    (of the affine it feeds) and sizes."""

    node: fx.Node  # ops.few_spike
    readouts: list[fx.Node]  # the ops.binary_readout_affine nodes it drives
    name: str
    role: str
    features: int
    fan_out: int
    readout_adds: int = 2  # per output and step: 2 (binary Horner: shift, add), 3 (ternary: shift, two adds)

    @property
    def radix(self) -> int:
        return int(self.node.kwargs.get("radix", 2))

    @property
    def signed_digits(self) -> bool:
        return bool(self.node.kwargs.get("signed_digits", False))


def attribute(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The tensor a ``get_attr`` node names in ``gm``."""
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def few_spike_layers(gm: fx.GraphModule) -> list[FewSpikeLayer]:
    """The ``ops.few_spike`` nodes of ``gm`` in graph order, with the role of the affine they feed
    and their fan-out (the readout affines' output features)."""
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target is not ops.few_spike:
            continue
        users = [u for u in n.users if u.op == "call_function" and u.target is ops.binary_readout_affine]
        fan_out = sum(int(attribute(gm, u.args[1]).shape[0]) for u in users)
        role = str(users[0].meta.get("role", "")) if users else ""
        name = str(n.meta.get("spikec_name", n.name)).replace(".", "_")
        adds = 3 if int(n.kwargs.get("radix", 2)) == 3 else 2
        out.append(FewSpikeLayer(n, users, name, role or "other", int(attribute(gm, n.args[1]).shape[0]),
                                 fan_out, adds))
    return out


@dataclass
class StepCosts:
    """One layer's costs per code length: index ``S - 1`` for ``S = 1 .. T``."""

    loss: list[float]  # predicted loss increase over no quantization, nats per predicted token
    operations: list[float]  # per token


class StraightThrough(fx.Interpreter):
    """Runs a converted module with its exact values, gradients passing straight through every
    few-spike code: each readout returns ``readout(spikes) + W u - (W u).detach()`` (``W`` the
    readout's folded weight, so ``W u`` is the unquantized affine), and keeps each layer's
    threshold-unit current ``u`` (retaining its gradient) and input ``x``."""

    def __init__(self, gm: fx.GraphModule, layers: list[FewSpikeLayer]):
        super().__init__(gm)
        self.layer_of = {r: layer for layer in layers for r in layer.readouts}
        self.neuron_layer = {layer.node: layer for layer in layers}
        self.currents: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        layer = self.neuron_layer.get(n)
        if layer is not None:
            x = self.env[n.args[0]]  # read now: the interpreter frees it after its last user
            u = x.float() / self.env[n.args[1]].float()
            if u.requires_grad:
                u.retain_grad()
            else:  # nothing before it is differentiated: a leaf
                u.requires_grad_(True)
            self.currents[layer.name] = u
            self.inputs[layer.name] = x.detach()
            with torch.no_grad():
                return super().run_node(n)
        layer = self.layer_of.get(n)
        if layer is None:
            return super().run_node(n)
        with torch.no_grad():
            exact = super().run_node(n)
        unquantized = F.linear(self.currents[layer.name], self.env[n.args[1]])
        return exact + (unquantized - unquantized.detach())


def code_value(x: torch.Tensor, layer: FewSpikeLayer, threshold: torch.Tensor, timesteps: int, steps: int
               ) -> tuple[torch.Tensor, int]:
    """``(u_hat float64 [..., F], spikes)``: the value in threshold units that the layer's ``steps``-step
    code of the current ``x`` stands for, and its number of spikes."""
    train = few_spike.few_spike_encode(
        x, few_spike.FewSpikeParams(threshold, signed_digits=layer.signed_digits, radix=layer.radix),
        timesteps, steps)
    return few_spike.weighted_count(train, layer.radix), int(train.abs().sum(dtype=torch.int64))


def step_costs(gm: fx.GraphModule, layers: list[FewSpikeLayer], ids: torch.Tensor, timesteps: int
               ) -> tuple[dict[str, StepCosts], float]:
    """Every layer's ``StepCosts`` for ``S = 1 .. timesteps`` on token ids ``[B, P]`` (module
    docstring), and the module's mean next-token loss (nats) at full length. Leaves ``gm``'s
    parameters as they were (gradients are taken only for the currents)."""
    for layer in layers:  # the costs are of codes that start from the full-length network
        kwargs = dict(layer.node.kwargs)
        kwargs.pop("steps", None)
        layer.node.kwargs = kwargs
    gm.recompile()
    saved = [(p, p.requires_grad) for p in gm.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            run = StraightThrough(gm, layers)
            logits = run.run(ids)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                                   reduction="sum")
            loss.backward()
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    predicted = ids[:, 1:].numel()
    tokens = ids.numel()
    costs: dict[str, StepCosts] = {}
    with torch.no_grad():
        for layer in layers:
            u = run.currents[layer.name]
            g2 = u.grad.double().square() if u.grad is not None else torch.zeros_like(u, dtype=torch.float64)
            threshold = attribute(gm, layer.node.args[1])
            losses, operations = [], []
            for s in range(1, timesteps + 1):
                value, spikes = code_value(run.inputs[layer.name], layer, threshold, timesteps, s)
                error = value - u.detach().double()
                losses.append(0.5 * float((g2 * error.square()).sum()) / predicted)
                operations.append(spikes * layer.fan_out / tokens
                                  + s * (layer.features + layer.readout_adds * layer.fan_out))
            costs[layer.name] = StepCosts(losses, operations)
    return costs, float(loss.detach()) / predicted


def allocate(costs: dict[str, StepCosts], weight: float) -> dict[str, int]:
    """Each layer's code length minimising ``operations + weight * loss`` (a Lagrangian of "fewest
    operations for this much predicted loss"; weight in operations per nat)."""
    out = {}
    for name, c in costs.items():
        scores = [o + weight * l for o, l in zip(c.operations, c.loss)]
        out[name] = 1 + min(range(len(scores)), key=lambda i: (scores[i], -i))
    return out


def predicted_loss(costs: dict[str, StepCosts], steps: dict[str, int]) -> float:
    """Predicted increase of the mean loss (nats) of ``steps`` over every layer at full length."""
    return sum(c.loss[steps[n] - 1] - c.loss[-1] for n, c in costs.items())


def predicted_operations(costs: dict[str, StepCosts], steps: dict[str, int]) -> float:
    """Estimated operations per token of ``steps``."""
    return sum(c.operations[steps[n] - 1] for n, c in costs.items())


def allocation_for_loss(costs: dict[str, StepCosts], target: float, iterations: int = 60) -> dict[str, int]:
    """The Lagrangian allocation with the fewest operations whose predicted loss increase is at most
    ``target`` nats (bisection on the weight, in log space); every layer at full length if even the
    largest weight cannot meet it."""
    full = {n: len(c.loss) for n, c in costs.items()}
    if target <= 0:
        return full
    lo, hi = 1e-3, 1e15  # operations per nat: hi keeps every layer (nearly) at full length
    best = full
    if predicted_loss(costs, allocate(costs, lo)) <= target:
        return allocate(costs, lo)
    for _ in range(iterations):
        mid = (lo * hi) ** 0.5
        steps = allocate(costs, mid)
        if predicted_loss(costs, steps) <= target:
            hi, best = mid, steps
        else:
            lo = mid
    return best
