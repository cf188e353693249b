"""spikec.layer_costs: what each code length costs each few-spike layer (predicted loss, operations)."""

from __future__ import annotations

import pytest
import torch

from canonical_models import gpt2_like, token_ids
import spikec.passes  # noqa: F401  (the built-in passes)
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.layer_costs import (
    CHANNEL_SCALES, StraightThrough, allocate, allocation_for_loss, few_spike_layers, full_length, layer_costs,
    predicted_loss, predicted_operations,
)

T = 6


@pytest.fixture(scope="module", params=["binary", "ternary"])
def converted(request):
    options = {"timesteps": T, **({"binary_digits": "ternary"} if request.param == "ternary" else {})}
    gm, _ = run_passes(gpt2_like(), ["fold-norm-affine", "calibrate", "binary-encode"],
                       PassContext(options=options, calibration=token_ids(samples=8, positions=16)))
    return gm


def test_passing_gradients_straight_through_leaves_the_network_s_values_alone(converted):
    ids = token_ids(samples=2, positions=16, seed=4)
    with torch.no_grad():
        expected = converted(ids)
    with torch.enable_grad():
        got = StraightThrough(converted, few_spike_layers(converted)).run(ids)
    assert torch.equal(got.detach(), expected) and got.requires_grad


def test_every_layer_gets_a_loss_that_falls_and_operations_that_rise_with_its_steps(converted):
    layers = few_spike_layers(converted)
    costs, loss = layer_costs(converted, layers, token_ids(samples=4, positions=16, seed=3), T)
    assert set(costs) == {l.name for l in layers} and loss > 0
    for c in costs.values():
        assert c.loss.shape == c.synaptic.shape == (T, len(CHANNEL_SCALES), c.loss.shape[-1])
        per_layer = c.loss.sum(-1)  # [T, J]
        assert bool((per_layer[0] > per_layer[-1]).all()) and c.full_loss() >= 0
        spikes = c.synaptic.sum(-1)
        assert bool((spikes[-1, 0] >= spikes[-1, 1:]).all())  # a coarser grid spends no more spikes
    assert all(not p.requires_grad or p.grad is None for p in converted.parameters())


def test_the_allocation_trades_operations_for_predicted_loss_within_the_allowance(converted):
    layers = few_spike_layers(converted)
    costs, _ = layer_costs(converted, layers, token_ids(samples=4, positions=16, seed=3), T)
    full = full_length(costs)
    exact = allocate(costs, 1e15)
    assert all(c.steps == T and bool((c.scales == 1).all()) for c in exact.values())
    cheapest = allocate(costs, 0.0)
    assert all(c.steps == 1 for c in cheapest.values())
    assert all(c.operations == float(costs[n].synaptic[0].min(0).values.sum()) + costs[n].per_step
               for n, c in cheapest.items())  # each channel at its fewest spikes
    assert predicted_loss(costs, allocation_for_loss(costs, 0.0)) == 0.0
    previous = predicted_operations(full)
    for allowance in (0.001, 0.01, 0.1, 1.0):
        choices = allocation_for_loss(costs, allowance)
        assert predicted_loss(costs, choices) <= allowance
        assert predicted_operations(choices) <= previous
        previous = predicted_operations(choices)
    assert previous < predicted_operations(full)
