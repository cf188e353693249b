"""The compiled few-spike kernel (``native_loops.few_spike_counts``) gives bit for bit what the
torch closed forms (``few_spike.binary_code``, ``few_spike.ternary_code``) give, and both what the
spike train of the neuron definition (``few_spike_encode``, the reference mode) gives: the readout
groups' counts and the spike total, for binary and balanced-ternary digits, codes shorter than the
window, and currents exactly on the code's levels and on its rounding ties."""

from __future__ import annotations

import pytest
import torch

from spikec.backends.simulator import native_build, native_loops
from spikec.core import few_spike

COMPILED = native_build.compiled_library() is not None
needs_compiler = pytest.mark.skipif(not COMPILED, reason=f"no compiled kernels: {native_build.compiled_error()}")


def edge_currents(rows: int, radix: int, steps: int, theta: torch.Tensor) -> torch.Tensor:
    """``[rows, F]`` float32 currents: random ones, and ones on the code's levels, on the ties
    halfway between levels (and one float32 step either side), zeros, -0, saturation and beyond."""
    features = theta.numel()
    torch.manual_seed(1000 * radix + steps)
    x = torch.randn(rows, features) * theta * 1.2
    step = 3.0 ** (1 - steps) if radix == 3 else 2.0 ** (1 - steps)  # the last step's weight (threshold units)
    levels = torch.randint(-3 ** min(steps, 12), 3 ** min(steps, 12) + 1, (features,)).double() * step
    ties = levels + step / 2
    u = torch.stack([levels, -levels, ties, -ties]).float()
    near = torch.stack([torch.nextafter(u, torch.full_like(u, torch.inf)),
                        torch.nextafter(u, torch.full_like(u, -torch.inf))]).reshape(-1, features)
    x[:4] = u * theta  # x / theta may round: the kernel must round as torch does, wherever it lands
    x[4:12] = near * theta
    x[12] = 0.0
    x[13] = -0.0
    x[14] = 2.0 * theta
    x[15] = -1e6 * theta
    x[16, :4] = torch.tensor([torch.inf, -torch.inf, 1e-30, -1e-30])
    return x


def closed_form(x: torch.Tensor, theta: torch.Tensor, timesteps: int, steps: int, radix: int):
    """The torch closed form padded to the window's readout groups (what the simulator feeds the readout)."""
    if radix == 3:
        return few_spike.ternary_code(x, theta, timesteps, steps)
    counts, spikes = few_spike.binary_code(x, theta, few_spike.code_steps(timesteps, steps))
    groups = len(few_spike.step_groups(timesteps))
    return torch.cat([counts, counts.new_zeros((groups - counts.shape[0], *counts.shape[1:]))]), spikes


CASES = [(2, t, 0) for t in (1, 2, 7, 8, 9, 12, 16, 19, 24)] + [(2, 19, 5), (2, 12, 9), (2, 7, 3), (2, 16, 8)] + \
        [(3, t, 0) for t in (1, 2, 7, 8, 9, 12, 15)] + [(3, 7, 4), (3, 12, 5), (3, 12, 10), (3, 15, 9), (3, 9, 8)]


@needs_compiler
@pytest.mark.parametrize("radix,timesteps,steps", CASES)
def test_the_compiled_kernel_equals_the_closed_form_and_the_spike_train(radix, timesteps, steps):
    theta = torch.rand(37) + 0.05
    x = edge_currents(24, radix, few_spike.code_steps(timesteps, steps), theta)
    counts, total = native_loops.few_spike_counts(x, theta, timesteps, steps, radix)
    expected, spikes = closed_form(x, theta, timesteps, steps, radix)
    assert counts.dtype == torch.float64 and counts.shape == (len(few_spike.step_groups(timesteps)), 24, 37)
    assert torch.equal(counts, expected) and total == int(spikes.sum())
    train = few_spike.few_spike_encode(x, few_spike.FewSpikeParams(theta, radix == 3, radix), timesteps, steps)
    assert torch.equal(counts, few_spike.group_counts(train, radix)) and total == int(train.abs().sum())
    assert torch.equal(torch.signbit(counts), torch.signbit(expected))  # even the zeros' signs


@needs_compiler
def test_the_kernel_splits_rows_over_threads_and_takes_any_leading_shape():
    theta = torch.rand(600) + 0.05  # more features than one of the kernel's blocks of 512
    x = torch.randn(3, 50, 600) * 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for radix in (2, 3):
            counts, total = native_loops.few_spike_counts(x, theta, 19 if radix == 2 else 12, 0, radix)
            expected, spikes = closed_form(x, theta, 19 if radix == 2 else 12, 0, radix)
            assert torch.equal(counts, expected) and total == int(spikes.sum())
    finally:
        torch.set_num_threads(threads)


def test_the_kernel_declines_what_it_cannot_take_and_the_caller_uses_the_closed_form(monkeypatch):
    theta = torch.rand(8) + 0.05
    x = torch.randn(4, 8)
    assert native_loops.few_spike_counts(x.double(), theta, 7, 0, 2) is None
    assert native_loops.few_spike_counts(x, theta.reshape(2, 4), 7, 0, 2) is None
    monkeypatch.setenv("SPIKEC_KERNELS", "torch")
    assert native_loops.few_spike_counts(x, theta, 7, 0, 3) is None
