"""The fast simulator computes what the reference computes: compiled and fused kernels give
spike trains identical to spikec.core.neurons, event-driven matmuls equal dense ones, the
fast mode equals the plain-torch reference mode on whole graphs, and nothing of size T is
kept when no recording was asked for. Correctness only: timings live in benchmarks/."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import spikec.passes
from canonical_models import gpt2_like, llama_like, token_ids
from spikec.backends.simulator import native_build, native_loops
from spikec.backends.simulator import Simulator, resolve_device, simulate
from spikec.core import neurons, ops
from spikec.core.errors import UsageError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.lower import lower_to_nir
from spikec.verify import compare_fx_and_simulator

COMPILED = native_build.compiled_library() is not None


def dyadic(*shape: int, scale: float = 0.1, bits: int = 8) -> torch.Tensor:
    """Random float32 values on a 2^-bits grid: sums of a few thousand of them are exact in
    float32 in any order, so event-driven and dense products must agree bit for bit."""
    return torch.round(torch.randn(*shape) * scale * 2**bits) / 2**bits


def awkward_currents(*shape: int) -> torch.Tensor:
    """Currents that hit the quantizer's edges: exact multiples of theta / T, zeros, values far
    beyond the range, tiny negatives, plus random ones."""
    x = torch.randn(*shape) * 2.0
    flat = x.view(-1)
    special = torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 0.25, 1e-8, -1e-8, 100.0, -100.0, 0.125, 0.375])
    flat[: special.numel()] = special
    return x


# --- kernels against the neuron definitions ------------------------------------------------


@pytest.mark.parametrize("timesteps,max_spikes,signed,v_init", [
    (1, 1, True, 0.5), (8, 1, True, 0.5), (32, 1, False, 0.5), (16, 8, True, 0.5), (5, 3, True, 0.0),
    (64, 2, False, 0.25),
])
@pytest.mark.parametrize("implementation", ["compiled", "torch"])
def test_fused_signed_if_equals_the_neuron_definition_spike_for_spike(timesteps, max_spikes, signed, v_init,
                                                                      implementation):
    if implementation == "compiled" and not COMPILED:
        pytest.skip(f"no compiled kernels: {native_build.compiled_error()}")
    x = awkward_currents(3, 7, 40)
    theta = torch.rand(40) + 0.05
    params = neurons.SignedIFParams(theta, max_spikes=max_spikes, signed=signed, v_init=v_init)
    expected = neurons.signed_if_encode(x, params, timesteps)
    if implementation == "compiled":
        count, spikes, total = native_loops.signed_if_constant(x, theta, timesteps, max_spikes, signed, v_init, train=True)
        count_only, none, total_only = native_loops.signed_if_constant(x, theta, timesteps, max_spikes, signed, v_init)
        assert none is None and torch.equal(count_only, count) and total_only == total
    else:
        low = -max_spikes if signed else 0
        current = x.float() / theta.float()
        count, spikes, total = native_loops.signed_if_constant_torch(current, timesteps, low, max_spikes, v_init, True)
    assert spikes.dtype == torch.int8 and torch.equal(spikes, expected)
    assert torch.equal(count, expected.sum(0, dtype=torch.float32))
    assert total == int(expected.abs().sum(dtype=torch.int64))


@pytest.mark.skipif(not COMPILED, reason="no C compiler for the kernels")
@pytest.mark.parametrize("series", [True, False])
def test_fused_nir_if_equals_the_stepwise_definition(series):
    n, timesteps = 300, 12
    r, thr = torch.rand(n) + 0.5, torch.rand(n) + 0.2
    reset = torch.rand(n) * 0.1
    current = torch.randn(timesteps, 4, n) if series else torch.randn(4, n)
    v = torch.zeros(())
    expected = []
    for t in range(timesteps):
        s, v = neurons.nir_if_step(current[t] if series else current, v, r, thr, reset)
        expected.append(s)
    spikes, total = native_loops.nir_if(current, series, timesteps, r, thr, reset)
    assert spikes.dtype == torch.int8
    assert torch.equal(spikes.float(), torch.stack(expected))
    assert total == int(torch.stack(expected).sum()) > 0


@pytest.mark.skipif(not COMPILED, reason="no C compiler for the kernels")
@pytest.mark.parametrize("values", [(0, 1), (-1, 0, 1), (-3, -1, 0, 2, 5)])
@pytest.mark.parametrize("shape", [(33, 70, 45), (5, 200, 32), (1, 1, 1), (9, 2000, 40)])  # 2000: K in chunks
def test_event_matmul_equals_the_dense_product_exactly_on_dyadic_weights(values, shape):
    rows, k, n = shape
    choice = torch.tensor(values, dtype=torch.int8)
    spikes = choice[torch.randint(len(values), (rows, k))]
    spikes[torch.rand(rows, k) < 0.7] = 0  # sparse, with an all-zero row somewhere
    spikes[0] = 0
    weight, bias = dyadic(n, k), dyadic(n)
    dense = F.linear(spikes.float(), weight, bias)
    for b in (bias, None):
        events = native_loops.event_matmul(spikes.view(1, rows, k), native_loops.pack_weight(weight), n, b)
        assert events.shape == (1, rows, n)
        assert torch.equal(events[0], dense if b is not None else F.linear(spikes.float(), weight))


@pytest.mark.skipif(not COMPILED, reason="no C compiler for the kernels")
def test_event_matmul_is_close_to_the_dense_product_on_any_float_weights():
    spikes = (torch.rand(64, 300) < 0.1).to(torch.int8)
    weight, bias = torch.randn(70, 300), torch.randn(70)
    events = native_loops.event_matmul(spikes, native_loops.pack_weight(weight), 70, bias)
    torch.testing.assert_close(events, F.linear(spikes.float(), weight, bias), rtol=1e-5, atol=1e-5)
    assert native_loops.count_nonzero(spikes) == int((spikes != 0).sum())


def test_the_exact_event_limit_holds_where_every_partial_sum_is_a_float32_number():
    assert native_loops.exact_event_limit(dyadic(768, 3072, scale=0.05), dyadic(768)) == 127
    assert native_loops.exact_event_limit(torch.randn(70, 300), torch.randn(70)) == 0  # 24-bit mantissas
    assert native_loops.exact_event_limit(torch.zeros(3, 4), None) == 127
    # a grid of 2^-1 holds exact float32 sums up to 2^23: 4 x (2^21 + 0.5) is past it, 2 x not
    assert native_loops.exact_event_limit(torch.full((2, 4), 2.0**21 + 0.5), None) == 0
    assert native_loops.exact_event_limit(torch.full((2, 2), 2.0**21 + 0.5), None) == 1
    assert native_loops.exact_event_limit(torch.full((2, 3), 0.5), torch.tensor([2.0**22, 0.0])) == 127
    assert native_loops.exact_event_limit(torch.full((1, 3), 0.5), torch.tensor([2.0**23 - 1])) == 0
    for bad in (torch.full((2, 2), 2.0**-140), torch.tensor([[1.0, float("nan")]]), torch.ones(2, 2).double()):
        assert native_loops.exact_event_limit(bad, None) == 0


@pytest.mark.skipif(not COMPILED, reason="no C compiler for the kernels")
def test_float_spike_trains_are_recognised_and_real_values_are_not():
    spikes = torch.tensor([[0.0, 1.0, -1.0, 3.0], [0.0, 0.0, 127.0, -127.0]])
    converted, nonzero = native_loops.as_spikes(spikes)
    assert converted.dtype == torch.int8 and torch.equal(converted.float(), spikes) and nonzero == 5
    for real in ([[0.0, 0.5]], [[128.0, 0.0]], [[float("nan"), 1.0]]):
        assert native_loops.as_spikes(torch.tensor(real)) is None


# --- whole graphs: fast mode against the reference mode -------------------------------------


def converted(family: str, timesteps: int, **options) -> tuple[torch.fx.GraphModule, nir.NIRGraph]:
    """A tiny canonical model through the default conversion pipeline, lowered to NIR."""
    gm = gpt2_like() if family == "gpt2" else llama_like()
    ctx = PassContext(options={"timesteps": timesteps, **options}, calibration=token_ids(seed=2))
    gm, _ = run_passes(gm, list(spikec.passes.DEFAULT_PIPELINE), ctx)
    example = token_ids(samples=1, positions=9, seed=5)
    graph = lower_to_nir(gm, example, {"dt": 1.0, "timesteps": timesteps})
    return gm, graph


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fast_mode_equals_reference_mode_and_the_fx_module_on_converted_models(family):
    timesteps = 6
    gm, graph = converted(family, timesteps)
    ids = token_ids(samples=2, positions=9, seed=7)
    reference = simulate(graph, ids, timesteps, mode="reference", record=True)
    fast = simulate(graph, ids, timesteps, record=True)
    assert torch.equal(fast.output, reference.output)
    assert fast.spike_counts == reference.spike_counts and sum(fast.spike_counts.values()) > 0
    assert fast.firing_rates == reference.firing_rates
    assert fast.spikes.keys() == reference.spikes.keys()
    for name, train in reference.spikes.items():
        assert torch.equal(fast.spikes[name], train), name
    unrecorded = simulate(graph, ids, timesteps)
    assert torch.equal(unrecorded.output, reference.output) and unrecorded.spike_counts == reference.spike_counts
    agreement = compare_fx_and_simulator(gm, graph, ids[:1], timesteps)
    assert agreement.identical and agreement.layers > 0


def standard_graph(n_in: int, n_hidden: int, n_out: int) -> nir.NIRGraph:
    """Affine -> IF -> Affine -> IF, dyadic weights, thresholds off the grid so that no
    membrane ever equals its threshold."""
    def if_node(n: int) -> nir.IF:
        return nir.IF(r=np.ones(n, np.float32), v_threshold=np.full(n, 1 + 2**-10, np.float32),
                      v_reset=np.zeros(n, np.float32))

    nodes = {
        "input": nir.Input(np.array([n_in])),
        "fc1": nir.Affine(weight=dyadic(n_hidden, n_in, scale=0.3).numpy(), bias=dyadic(n_hidden).numpy()),
        "if1": if_node(n_hidden),
        "fc2": nir.Affine(weight=dyadic(n_out, n_hidden, scale=0.3).numpy(), bias=dyadic(n_out).numpy()),
        "if2": if_node(n_out),
        "output": nir.Output(np.array([n_out])),
    }
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False)


@pytest.mark.parametrize("sparse", ["auto", "always", "never", "inexact"])
def test_standard_nir_graph_gives_identical_spikes_in_every_mode(sparse):
    graph = standard_graph(24, 80, 16)
    x = (torch.rand(10, 3, 24) < 0.2).float()  # a spike-train input [T, batch, features]
    reference = simulate(graph, x, 10, inputs_are_series=True, mode="reference", record=True)
    fast = simulate(graph, x, 10, inputs_are_series=True, sparse=sparse, record=True)
    assert fast.output.dtype == reference.output.dtype == torch.float32
    assert torch.equal(fast.output, reference.output) and fast.output.sum() > 0
    assert fast.spike_counts == reference.spike_counts
    for name in ("if1", "if2"):
        assert torch.equal(fast.spikes[name], reference.spikes[name])


def random_standard_graph(batch: int, timesteps: int) -> tuple[nir.NIRGraph, torch.Tensor, torch.Tensor]:
    """Affine(768->3072) -> IF -> Affine(3072->768) -> IF with random float32 weights (not on a
    grid), a constant real input ``[batch, 768]``, and the spikes ``[T, batch, 768]`` NIR defines
    for it, computed in plain torch: one dense float32 matmul per step, IF as NIR has it. The
    second IF's thresholds are the definition's first-step currents of sample 0, so that a
    current rounded differently flips a spike there and then, not one in 500,000 as with
    thresholds of 1."""
    gen = torch.Generator().manual_seed(17)
    w1, b1 = torch.randn(3072, 768, generator=gen) * 0.1, torch.randn(3072, generator=gen) * 0.01
    w2, b2 = torch.randn(768, 3072, generator=gen) * 0.05, torch.randn(768, generator=gen) * 0.01
    x = torch.randn(batch, 768, generator=gen) * 0.3

    def nir_if(v: torch.Tensor, current: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = v + 1.0 * current
        spikes = (v > threshold).float()
        return spikes, torch.where(spikes > 0, torch.zeros(()), v)

    ones = torch.ones(3072)
    threshold2 = F.linear(nir_if(torch.zeros(()), F.linear(x, w1, b1), ones)[0][0], w2, b2)
    v1 = v2 = torch.zeros(())
    expected = []
    for _ in range(timesteps):
        s1, v1 = nir_if(v1, F.linear(x, w1, b1), ones)
        s2, v2 = nir_if(v2, F.linear(s1, w2, b2), threshold2)
        expected.append(s2)

    def if_node(threshold: torch.Tensor) -> nir.IF:
        n = threshold.numel()
        return nir.IF(r=np.ones(n, np.float32), v_threshold=threshold.numpy(), v_reset=np.zeros(n, np.float32))

    nodes = {"input": nir.Input(np.array([768])), "fc1": nir.Affine(weight=w1.numpy(), bias=b1.numpy()),
             "if1": if_node(ones), "fc2": nir.Affine(weight=w2.numpy(), bias=b2.numpy()),
             "if2": if_node(threshold2), "output": nir.Output(np.array([768]))}
    names = list(nodes)
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False)
    return graph, x, torch.stack(expected)


def test_the_default_gives_the_nir_definitions_spikes_on_random_float_weights():
    graph, x, expected = random_standard_graph(batch=16, timesteps=32)
    result = simulate(graph, x, 32)
    assert 0 < result.firing_rates["if1"] < native_loops.SPARSE_CROSSOVER  # events would pay here
    assert torch.equal(result.output.float(), expected)
    for sparse in ("never", "always"):
        assert torch.equal(simulate(graph, x, 32, sparse=sparse).output.float(), expected)
    if COMPILED:  # the opt-in: events in their own order of float sums, which rounds otherwise
        inexact = simulate(graph, x, 32, sparse="inexact").output.float()
        assert 0 < int((inexact != expected).sum()) < expected.numel() // 100


def test_a_constant_current_is_multiplied_once_and_drives_the_neurons_for_all_steps():
    graph = standard_graph(24, 80, 16)
    x = torch.rand(3, 24)
    fast = simulate(graph, x, 9)
    reference = simulate(graph, x, 9, mode="reference")
    series = simulate(graph, x.expand(9, 3, 24).contiguous(), 9, inputs_are_series=True, mode="reference")
    assert torch.equal(fast.output, reference.output) and torch.equal(fast.output, series.output)


def test_fast_mode_never_overwrites_a_callers_input_or_a_value_still_needed():
    from spikec.core import ir

    d = 6
    thr = (torch.rand(d) + 0.2).numpy()
    nodes = {
        "input": nir.Input(np.array([d])),
        "sif": ir.SpikecSignedIF(threshold=thr, max_spikes=2, signed=True, v_init=0.5),
        "fc": nir.Affine(weight=dyadic(d, d).numpy(), bias=dyadic(d).numpy()),
        "readout": ir.SpikecRateReadout(features=d),
        "scale": nir.Scale(scale=np.full(d, 2.0, np.float32)),
        "sif2": ir.SpikecSignedIF(threshold=thr, max_spikes=1, signed=True, v_init=0.5),
        "fc2": nir.Affine(weight=dyadic(d, d).numpy(), bias=dyadic(d).numpy()),
        "readout2": ir.SpikecRateReadout(features=d),
        "join": ir.SpikecAdd(features=d),
        "output": nir.Output(np.array([d])),
    }
    edges = [("input", "sif"), ("sif", "fc"), ("fc", "readout"), ("readout", "scale"), ("scale", "sif2"),
             ("sif2", "fc2"), ("fc2", "readout2"), ("readout2", "join"), ("scale", "join"), ("join", "output")]
    graph = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    x = torch.randn(2, 3, d)
    kept = x.clone()
    fast = simulate(graph, x, 5)
    assert torch.equal(x, kept)  # the input fed a neuron directly
    assert torch.equal(fast.output, simulate(graph, x, 5, mode="reference").output)  # "scale" fed two nodes


# --- memory -----------------------------------------------------------------------------------


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_without_record_no_spike_train_of_a_converted_model_is_ever_allocated():
    timesteps = 7  # no other axis of this model has 7 entries
    _, graph = converted("gpt2", timesteps)
    ids = token_ids(samples=1, positions=9, seed=7)
    sim = Simulator(graph)
    for record, expect_trains in ((False, False), (True, True)):
        with _Shapes() as seen:
            result = sim.run(ids, timesteps, record=record)
        trains = [s for s in seen.shapes if len(s) == 4 and s[0] == timesteps]
        assert bool(trains) == expect_trains, trains[:3]
        assert bool(result.spikes) == record
    with _Shapes() as seen:
        simulate(graph, ids, timesteps, mode="reference")
    assert any(len(s) == 4 and s[0] == timesteps for s in seen.shapes)  # the reference does allocate them


# --- devices ------------------------------------------------------------------------------------


def test_unknown_or_absent_devices_are_usage_errors():
    assert resolve_device(None) == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(UsageError, match="not supported"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(UsageError, match="mode"):
        Simulator(standard_graph(2, 3, 2), mode="turbo")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (never on CI)")
def test_cuda_simulation_equals_the_cpu_reference():
    _, graph = converted("llama", 6)
    ids = token_ids(samples=2, positions=9, seed=7)
    reference = simulate(graph, ids, 6, mode="reference", record=True)
    on_gpu = simulate(graph, ids, 6, device="cuda", record=True)
    assert on_gpu.output.device.type == "cuda"
    assert on_gpu.spike_counts == reference.spike_counts
    for name, train in reference.spikes.items():
        assert torch.equal(on_gpu.spikes[name].cpu(), train), name
    torch.testing.assert_close(on_gpu.output.cpu(), reference.output, rtol=1e-4, atol=1e-4)


def test_kernels_fall_back_to_torch_when_disabled(monkeypatch):
    monkeypatch.setenv("SPIKEC_KERNELS", "torch")
    assert native_build.compiled_library() is None
    x, theta = awkward_currents(4, 30), torch.rand(30) + 0.1
    count, spikes, _ = native_loops.signed_if_constant(x, theta, 9, 2, True, 0.5, train=True)
    assert torch.equal(spikes, ops.signed_if(x, theta, 9, 2, True, 0.5))
    assert native_loops.event_matmul(spikes[0], native_loops.pack_weight(torch.randn(3, 30)), 3, None) is None
