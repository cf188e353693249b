"""spikec.layer_costs: what each code length costs each few-spike layer (predicted loss, operations)."""

from __future__ import annotations

import pytest
import torch

from canonical_models import gpt2_like, token_ids
import spikec.passes  # noqa: F401  (the built-in passes)
from spikec.core.passes import PassContext, run_passes
from spikec.layer_costs import (
    StraightThrough, allocate, allocation_for_loss, few_spike_layers, predicted_loss, predicted_operations,
    step_costs,
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
    costs, loss = step_costs(converted, layers, token_ids(samples=4, positions=16, seed=3), T)
    assert set(costs) == {l.name for l in layers} and loss > 0
    for c in costs.values():
        assert len(c.loss) == len(c.operations) == T
        assert c.loss[0] > c.loss[-1] >= 0
        assert all(a < b for a, b in zip(c.operations, c.operations[1:]))
    assert all(not p.requires_grad or p.grad is None for p in converted.parameters())


def test_the_allocation_trades_operations_for_predicted_loss_within_the_allowance(converted):
    layers = few_spike_layers(converted)
    costs, _ = step_costs(converted, layers, token_ids(samples=4, positions=16, seed=3), T)
    full = {n: T for n in costs}
    assert allocate(costs, 1e15) == full and set(allocate(costs, 0.0).values()) == {1}
    assert allocation_for_loss(costs, 0.0) == full
    previous = predicted_operations(costs, full)
    for allowance in (0.001, 0.01, 0.1, 1.0):
        steps = allocation_for_loss(costs, allowance)
        assert predicted_loss(costs, steps) <= allowance
        assert predicted_operations(costs, steps) <= previous
        previous = predicted_operations(costs, steps)
    assert previous < predicted_operations(costs, full)
