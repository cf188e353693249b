"""What each code length and threshold costs each few-spike layer: predicted loss, operations.

For every few-spike layer ``l`` of a converted fx module, every code length ``S = 1 .. T``, every
multiple ``m`` of a channel's threshold in ``CHANNEL_SCALES`` and every channel ``c``, this module
estimates from ONE forward and backward pass over some token ids (``layer_costs``):

* ``loss[S, m, c]``: the expected increase of the next-token loss (nats per predicted token)
  caused by the channel's quantization error, by the diagonal Fisher (second-order)
  approximation

      loss_l(S, m, c) = 1/2 sum_t g_(t,c)^2 e_(t,c)(S, m)^2 / N

  where ``e(S, m) = m u_hat - u`` is the error in threshold units of the S-step code of ``u / m``
  (``u = x / theta``, the layer's input current; ``u_hat`` the value the spikes stand for),
  ``g = dL/du`` the gradient of the summed next-token loss ``L`` at the network's own operating
  point (every code at full length, the gradient passed straight through each code) and ``N``
  the predicted tokens. The errors of different layers and channels are taken to add.
* ``synaptic[S, m, c]``: per token, the channel's ``spikes x fan-out`` synaptic operations (spikes
  counted on the same tokens); per step of the layer, ``features`` neuron updates and ``adds x
  fan-out`` readout shift-and-adds (``adds`` 2 binary, 3 ternary; spikec.analysis's counting, all
  priced alike).

The first-order term ``g e`` is left out on purpose: its sign depends on the tokens, so it averages
out over text, while on the few hundred tokens of a search it is the noise that made a measured
one-step change look like a gain or a loss at random. ``allocation_for_loss`` turns the tables into
a choice per layer (steps) and channel (multiple); spikec.budget measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import fx

from spikec.core import few_spike, ops
from spikec.passes.fx_graph import fetch_attr


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

    @property
    def radix(self) -> int:
        return int(self.node.kwargs.get("radix", 2))

    @property
    def signed_digits(self) -> bool:
        return bool(self.node.kwargs.get("signed_digits", False))

    @property
    def per_step_operations(self) -> int:
        """Operations per token of one step besides the spikes: ``features`` neuron updates and
        the readout's shift-and-adds per output (2 binary: shift, add; 3 ternary: shift, two adds)."""
        return self.features + (3 if self.radix == 3 else 2) * self.fan_out


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


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token negative log-likelihood (nats) of ``logits [B, P, V]`` on ``ids [B, P]``, the mean
    or the sum over the ``B (P - 1)`` predicted tokens."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                           reduction=reduction)


def few_spike_layers(gm: fx.GraphModule) -> list[FewSpikeLayer]:
    """The ``ops.few_spike`` nodes of ``gm`` in graph order, with the role of the affine they feed
    and their fan-out (the readout affines' output features)."""
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target is not ops.few_spike:
            continue
        users = [u for u in n.users if u.op == "call_function" and u.target is ops.binary_readout_affine]
        fan_out = sum(int(fetch_attr(gm, u.args[1].target).shape[0]) for u in users)
        role = str(users[0].meta.get("role", "")) if users else ""
        name = str(n.meta.get("spikec_name", n.name)).replace(".", "_")
        out.append(FewSpikeLayer(n, users, name, role or "other", int(fetch_attr(gm, n.args[1].target).shape[0]),
                                 fan_out))
    return out


CHANNEL_SCALES = (1.0, 3 ** 0.5, 3.0, 3 ** 1.5, 9.0)
"""Multiples of a channel's threshold an allocation may give it: a coarser grid and a wider span
(never a narrower one, so nothing calibration saw is clipped that was not before), in steps of
sqrt(3), half a ternary step and about 0.8 of a binary one."""


@dataclass
class LayerCosts:
    """One layer's cost tables on the measured tokens, for ``S = 1 .. T`` steps (index ``S - 1``)
    and each channel's threshold times ``CHANNEL_SCALES[j]``.

    loss: ``[T, J, F]`` float64, each channel's predicted loss (nats per predicted token);
    synaptic: ``[T, J, F]`` float64, each channel's spikes x fan-out per token;
    per_step: neuron updates and readout shift-and-adds per token of one step of the layer."""

    loss: torch.Tensor
    synaptic: torch.Tensor
    per_step: float

    @property
    def steps(self) -> int:
        return int(self.loss.shape[0])

    def full_loss(self) -> float:
        """The predicted loss at full length and the calibrated thresholds."""
        return float(self.loss[-1, 0].sum())


@dataclass
class LayerChoice:
    """A layer's code length, its channels' threshold multiples and their predicted costs."""

    steps: int
    scales: torch.Tensor  # [F] float32, each channel's multiple of its calibrated threshold
    loss: float  # predicted, nats per predicted token
    operations: float  # per token


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


def codes_by_length(x: torch.Tensor, layer: FewSpikeLayer, threshold: torch.Tensor, timesteps: int
                    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(S, u_hat float64 [..., F], spikes int64 [..., F])`` for ``S = 1 .. timesteps``: the value in
    threshold units that the layer's S-step code of the current ``x`` stands for, and each neuron's
    number of spikes. Balanced ternary: the first S digits of the full-length code, which are the
    S-step code (the digits after S sum to less than half of step S-1's weight, so cutting them
    rounds to nearest, as the S-step neuron does) but where double rounding meets an exact tie; one
    code per layer instead of T. Binary digits round at their last step: each S coded anew."""
    if layer.radix == 3:
        train = few_spike.few_spike_encode(x, few_spike.FewSpikeParams(threshold, signed_digits=True, radix=3),
                                           timesteps)
        value = torch.zeros(train.shape[1:], dtype=torch.float64)
        spikes = torch.zeros(train.shape[1:], dtype=torch.int64)
        for k in range(timesteps):
            value += train[k].double() * 3.0 ** -k
            spikes += train[k].abs()
            yield k + 1, value, spikes
        return
    for s in range(1, timesteps + 1):
        train = few_spike.few_spike_encode(
            x, few_spike.FewSpikeParams(threshold, signed_digits=layer.signed_digits), timesteps, s)
        yield s, few_spike.weighted_count(train), train.abs().sum(0, dtype=torch.int64)


def layer_costs(gm: fx.GraphModule, layers: list[FewSpikeLayer], ids: torch.Tensor, timesteps: int
                ) -> tuple[dict[str, LayerCosts], float]:
    """Every layer's ``LayerCosts`` on token ids ``[B, P]`` (module docstring), and the module's
    mean next-token loss (nats) at full length. Leaves ``gm``'s parameters as they were (gradients
    are taken only for the currents)."""
    set_steps(layers, {layer.name: timesteps for layer in layers}, timesteps)  # costs start from full length
    gm.recompile()
    saved = [(p, p.requires_grad) for p in gm.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            run = StraightThrough(gm, layers)
            logits = run.run(ids)
            loss = next_token_loss(logits, ids, reduction="sum")
            loss.backward()
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    predicted = ids[:, 1:].numel()
    tokens = ids.numel()
    costs: dict[str, LayerCosts] = {}
    with torch.no_grad():
        for layer in layers:
            u = run.currents[layer.name].detach().double()
            grad = run.currents[layer.name].grad
            g2 = (grad.double().square() if grad is not None else torch.zeros_like(u)).flatten(0, -2)
            u = u.flatten(0, -2)
            x = run.inputs[layer.name]
            threshold = fetch_attr(gm, layer.node.args[1].target)
            shape = (timesteps, len(CHANNEL_SCALES), layer.features)
            losses = torch.zeros(shape, dtype=torch.float64)
            synaptic = torch.zeros(shape, dtype=torch.float64)
            for j, scale in enumerate(CHANNEL_SCALES):
                scaled = (threshold.double() * scale).float()
                for s, value, spikes in codes_by_length(x, layer, scaled, timesteps):
                    error = value.flatten(0, -2) * scale - u
                    losses[s - 1, j] = 0.5 * (g2 * error.square()).sum(0) / predicted
                    synaptic[s - 1, j] = spikes.flatten(0, -2).sum(0).double() * layer.fan_out / tokens
            costs[layer.name] = LayerCosts(losses, synaptic, float(layer.per_step_operations))
    return costs, float(loss.detach()) / predicted


def choose_layer(c: LayerCosts, weight: float) -> LayerChoice:
    """The layer's steps and channel multiples minimising ``operations + weight * loss`` (weight in
    operations per nat); on a tie the longer code and the finer grid."""
    score = c.synaptic + weight * c.loss  # [T, J, F]
    best, j = score.min(dim=1)  # min keeps the first (finest) multiple on a tie
    totals = best.sum(-1) + torch.arange(1, c.steps + 1, dtype=torch.float64) * c.per_step
    s = c.steps - int(torch.argmin(totals.flip(0)))
    pick = j[s - 1]
    loss = float(c.loss[s - 1].gather(0, pick[None]).sum())
    operations = float(c.synaptic[s - 1].gather(0, pick[None]).sum()) + s * c.per_step
    return LayerChoice(s, torch.tensor(CHANNEL_SCALES, dtype=torch.float64)[pick].float(), loss, operations)


def allocate(costs: dict[str, LayerCosts], weight: float) -> dict[str, LayerChoice]:
    """Every layer's ``choose_layer`` at one weight: a Lagrangian of "fewest operations for this much
    predicted loss", so the layers and channels trade at the same price."""
    return {name: choose_layer(c, weight) for name, c in costs.items()}


def full_length(costs: dict[str, LayerCosts]) -> dict[str, LayerChoice]:
    """Every layer at full length with its calibrated thresholds."""
    return {name: LayerChoice(c.steps, torch.ones(c.loss.shape[-1]), c.full_loss(),
                              float(c.synaptic[-1, 0].sum()) + c.steps * c.per_step) for name, c in costs.items()}


def predicted_loss(costs: dict[str, LayerCosts], choices: dict[str, LayerChoice]) -> float:
    """Predicted increase of the mean loss (nats) of ``choices`` over every layer at full length."""
    return sum(choices[n].loss - c.full_loss() for n, c in costs.items())


def predicted_operations(choices: dict[str, LayerChoice]) -> float:
    """Estimated operations per token of ``choices``."""
    return sum(c.operations for c in choices.values())


def allocation_for_loss(costs: dict[str, LayerCosts], target: float, iterations: int = 60
                        ) -> dict[str, LayerChoice]:
    """The Lagrangian allocation with the fewest operations whose predicted loss increase is at most
    ``target`` nats (bisection on the weight, in log space); full length if no weight meets it."""
    best = full_length(costs)
    if target <= 0:
        return best
    lo, hi = 1e-3, 1e15  # operations per nat
    if predicted_loss(costs, low := allocate(costs, lo)) <= target:
        return low
    for _ in range(iterations):
        mid = (lo * hi) ** 0.5
        choices = allocate(costs, mid)
        if predicted_loss(costs, choices) <= target:
            hi, best = mid, choices
        else:
            lo = mid
    return best
