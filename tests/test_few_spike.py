"""The few-spike (binary) code, ``--coding binary``: a signed neuron with at most one spike per
step, step k weighted 2^-k thresholds (MSB first), the rounding offset in its initial membrane,
read out with Horner's rule; the same spikes in the fx module, the simulator (both modes), the
NIR file and Lava (floating_pt and fixed_pt); its operation counts; its CLI flag; its refusal
by the portable profile."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

import spikec.passes
from canonical_models import gpt2_like, llama_like, token_ids
from spikec.analysis.counts import count_operations
from spikec.backends import nirio, portable
from spikec.backends.lava import compare, export
from spikec.backends.lava.runtime import fixed_point
from spikec.backends.simulator import native_build, native_loops, simulate
from spikec.cli import build_parser
from spikec.core import few_spike, ir, ops
from spikec.core.errors import NIRFormatError, UnsupportedError, UsageError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.lower import lower_to_nir
from spikec.passes.pipelines import build_pipeline
from spikec.verify import compare_fx_and_simulator

PIPELINE = ["fold-norm-affine", "calibrate", "binary-encode"]
FAMILIES = {"gpt2": gpt2_like, "llama": llama_like}
T = 7
COMPILED = native_build.compiled_library() is not None
POSITIONS = 16


def encode(u: list[float], timesteps: int, signed_digits: bool = False) -> list[list[int]]:
    """Spike trains ``[neuron][step]`` of neurons with threshold 1 driven by ``u``."""
    params = few_spike.FewSpikeParams(torch.ones(len(u)), signed_digits=signed_digits)
    return few_spike.few_spike_encode(torch.tensor(u), params, timesteps).T.tolist()


def converted(family: str, digits: str = "binary", timesteps: int = T):
    ctx = PassContext(options={"timesteps": timesteps, "binary_digits": digits}, calibration=token_ids(seed=2))
    gm, records = run_passes(FAMILIES[family](), PIPELINE, ctx)
    ids = token_ids(samples=1, positions=POSITIONS, seed=5)
    graph = lower_to_nir(gm, ids, {"timesteps": timesteps, "positions": POSITIONS, "model": f"tiny-{family}"})
    return gm, graph, ids, records


# --- the neuron ------------------------------------------------------------------------------


def test_binary_digits_are_the_bits_of_the_rounded_value_msb_first():
    # T=3, theta=1: v0 = u + sgn(u)/8, steps weigh 1, 1/2, 1/4
    # 0.7: v0 0.825 -> 0, fire (0.325), fire (0.075): 0.75 = round(0.7*4)/4
    # -1.3: v0 -1.425 -> -1 (-0.425), 0, -1 (-0.175): -1.25
    # 5.0 saturates: 1, 1, 1 = 1.75; 0.1 rounds to 0: no spike
    assert encode([0.7, -1.3, 5.0, 0.1], 3) == [[0, 1, 1], [-1, 0, -1], [1, 1, 1], [0, 0, 0]]


def test_signed_digits_never_fire_on_consecutive_steps_and_save_spikes():
    # T=4, u=0.875: binary 0.111 (3 spikes); signed digits 1.00-1 (2 spikes): levels 2/3, 1/3, 1/6, 1/16
    assert encode([0.875], 4) == [[0, 1, 1, 1]]
    assert encode([0.875], 4, signed_digits=True) == [[1, 0, 0, -1]]
    u = torch.linspace(-1.3, 1.3, 2001)
    params = few_spike.FewSpikeParams(torch.ones(2001), signed_digits=True)
    s = few_spike.few_spike_encode(u, params, 6)
    head = s[:-1]  # the last step rounds (level 1/2 of its weight) and may follow a spike
    assert not ((head[1:] != 0) & (head[:-1] != 0)).any()  # non-adjacent
    binary = few_spike.few_spike_encode(u, few_spike.FewSpikeParams(torch.ones(2001)), 6)
    assert s.abs().sum() < binary.abs().sum()


@pytest.mark.parametrize("signed_digits", [False, True])
def test_the_code_rounds_to_the_nearest_step_of_the_last_weight_within_its_span(signed_digits):
    t = 6
    lsb = 2.0 ** (1 - t)
    span = 4 / 3 if signed_digits else 2 - lsb
    x = torch.linspace(-span, span, 5001) * 0.999
    params = few_spike.FewSpikeParams(torch.ones(5001), signed_digits=signed_digits)
    value = few_spike.few_spike_value(x, params, t).double()
    assert (value - x.double()).abs().max() <= lsb / 2 + 1e-6
    assert torch.allclose(value / lsb, torch.round(value / lsb))  # on the grid of the last step


def test_the_closed_form_equals_the_spike_train_and_its_popcount():
    x = torch.randn(4, 9, 33) * 2
    theta = torch.rand(33) + 0.2
    train = few_spike.few_spike_encode(x, few_spike.FewSpikeParams(theta), T)
    value, spikes = few_spike.binary_code(x, theta, T)
    assert torch.equal(value, few_spike.group_counts(train)) and value.shape[0] == 1
    assert torch.equal(spikes, train.abs().sum(0, dtype=torch.int64))
    train = few_spike.few_spike_encode(x, few_spike.FewSpikeParams(theta), 19)  # readout groups of 8, 8, 3
    value, spikes = few_spike.binary_code(x, theta, 19)
    assert torch.equal(value, few_spike.group_counts(train)) and value.shape[0] == 3
    assert torch.equal(value.sum(0), few_spike.weighted_count(train))
    assert torch.equal(spikes, train.abs().sum(0, dtype=torch.int64))


def test_the_horner_readout_is_the_affine_of_the_weighted_count():
    spikes = torch.tensor([[[1, 0]], [[0, -1]], [[1, 1]]], dtype=torch.int8)  # [T=3, 1, 2]
    w, b = torch.tensor([[2.0, 4.0]]), torch.tensor([0.5])
    # 2*(1 + 1/4) + 4*(-1/2 + 1/4) + 0.5 = 2.5 - 1 + 0.5
    assert ops.binary_readout_affine(spikes, w, b).item() == 2.0


def ternary(u: list[float], timesteps: int) -> list[list[int]]:
    params = few_spike.FewSpikeParams(torch.ones(len(u)), signed_digits=True, radix=3)
    return few_spike.few_spike_encode(torch.tensor(u), params, timesteps).T.tolist()


def test_ternary_digits_are_the_balanced_ternary_digits_of_the_rounded_value_msb_first():
    # T=3, theta=1: m0 = 9u, step weights 9, 3, 1 (levels 4.5, 1.5, 0.5)
    # u=1/3: m0 3 -> 0, +1 (0), 0; u=-0.6: m0 -5.4 -> -1 (3.6), +1 (0.6), +1 (-0.4): -9+3+1 = -5
    # u=5 saturates at 9+3+1 = 13 (u = 13/9); u=0.05: m0 0.45 < 0.5, no spike
    assert ternary([1 / 3, -0.6, 5.0, 0.05], 3) == [[0, 1, 0], [-1, 1, 1], [1, 1, 1], [0, 0, 0]]


def test_ternary_codes_use_every_pattern_of_a_signed_train_so_t_steps_give_3_to_the_t_levels():
    t = 4
    u = torch.linspace(-1.6, 1.6, 20001)
    params = few_spike.FewSpikeParams(torch.ones(u.numel()), signed_digits=True, radix=3)
    train = few_spike.few_spike_encode(u, params, t)
    assert len({tuple(col) for col in train.T.tolist()}) == 3 ** t
    value = few_spike.weighted_count(train, 3) * 3 ** (t - 1)  # in units of the last step
    m = (u * 3 ** (t - 1)).double()
    inside = m.abs() <= (3 ** t - 1) / 2
    assert (value[inside] - m[inside]).abs().max() <= 0.5 + 1e-9  # rounds to the nearest level
    assert value.abs().max() == (3 ** t - 1) / 2  # saturates at the span


def test_the_ternary_closed_form_equals_the_spike_train_and_its_spike_count():
    x = torch.randn(4, 9, 33) * 2
    theta = torch.rand(33) + 0.2
    params = few_spike.FewSpikeParams(theta, signed_digits=True, radix=3)
    for timesteps, steps, groups in ((T, 0, 1), (T, 5, 1), (12, 0, 2), (12, 10, 2)):
        train = few_spike.few_spike_encode(x, params, timesteps, steps)
        counts, spikes = few_spike.ternary_code(x, theta, timesteps, steps)
        assert counts.shape[0] == groups and torch.equal(counts, few_spike.group_counts(train, 3))
        assert torch.equal(spikes, train.abs().sum(0, dtype=torch.int64))


def test_the_ternary_readout_triples_then_adds_and_scales_each_group_once():
    spikes = torch.tensor([[[1, 0]], [[0, -1]], [[1, 1]]], dtype=torch.int8)  # [T=3, 1, 2]
    w, b = torch.tensor([[2.0, 4.0]]), torch.tensor([0.5])
    # counts 9*1 + 1 = 10 and -3 + 1 = -2 (units of 1/9): (2*10 + 4*(-2)) / 9 + 0.5
    assert ops.binary_readout_affine(spikes, w, b, radix=3).item() == pytest.approx(12 / 9 + 0.5, abs=1e-7)
    assert few_spike.group_counts(spikes, 3)[0, 0].tolist() == [10.0, -2.0]


def test_a_ternary_code_needs_signed_digits_and_at_most_15_steps():
    with pytest.raises(ValueError, match="signed digits"):
        few_spike.FewSpikeParams(torch.ones(2), signed_digits=False, radix=3)
    with pytest.raises(ValueError, match="radix"):
        few_spike.FewSpikeParams(torch.ones(2), signed_digits=True, radix=4)
    params = few_spike.FewSpikeParams(torch.ones(2), signed_digits=True, radix=3)
    with pytest.raises(ValueError, match="1..15"):
        few_spike.few_spike_encode(torch.ones(2), params, 16)
    ctx = PassContext(options={"timesteps": 16, "binary_digits": "ternary"}, calibration=token_ids(seed=2))
    with pytest.raises(UsageError, match="--coding ternary takes -T 1..15"):
        run_passes(gpt2_like(), PIPELINE, ctx)


def test_too_many_steps_are_refused():
    with pytest.raises(ValueError):
        few_spike.few_spike_encode(torch.ones(2), few_spike.FewSpikeParams(torch.ones(2)), few_spike.MAX_STEPS + 1)
    ctx = PassContext(options={"timesteps": few_spike.MAX_STEPS + 1}, calibration=token_ids(seed=2))
    with pytest.raises(UsageError):
        run_passes(gpt2_like(), PIPELINE, ctx)


# --- the pass, the fx module and the simulator ----------------------------------------------------


def test_leading_steps_give_outlier_channels_range_and_keep_the_others_resolution():
    absmax = torch.tensor([0.5, 1.9, 3.0, 100.0])
    lead = spikec.passes.binary_encode.leading_steps(absmax, torch.ones(4), span=2 - 2**-6, headroom=1.0,
                                                      max_lead=4)
    assert lead.tolist() == [0, 0, 1, 4]


@pytest.mark.parametrize("family,digits,timesteps", [("gpt2", "binary", T), ("gpt2", "signed", T),
                                                     ("llama", "binary", T), ("llama", "signed", T),
                                                     ("gpt2", "binary", 16), ("gpt2", "ternary", T),
                                                     ("llama", "ternary", T), ("gpt2", "ternary", 12)])
def test_fx_module_and_simulator_agree_spike_for_spike(family, digits, timesteps):
    gm, graph, ids, records = converted(family, digits, timesteps)
    assert records[-1].stats["digits"] == digits
    assert sum(isinstance(n, ir.SpikecFewSpike) for n in graph.nodes.values()) == 9
    agreement = compare_fx_and_simulator(gm, graph, ids, timesteps)
    assert agreement.identical_layers == agreement.layers == 9
    assert agreement.logits_max_abs_diff == 0.0
    fast = simulate(graph, ids, timesteps, record=True)
    reference = simulate(graph, ids, timesteps, mode="reference", record=True)
    assert fast.spike_counts == reference.spike_counts and fast.firing_rates == reference.firing_rates
    assert all(torch.equal(fast.spikes[k], reference.spikes[k]) for k in reference.spikes)
    assert torch.equal(fast.output, reference.output)
    counted = simulate(graph, ids, timesteps)  # counts only, nothing recorded
    assert torch.equal(counted.output, reference.output) and counted.firing_rates == reference.firing_rates


@pytest.mark.parametrize("digits", ["binary", "ternary"])
def test_counting_simulation_gives_the_same_output_with_the_compiled_kernel_or_the_torch_closed_form(
        monkeypatch, digits):
    _, graph, ids, _ = converted("llama", digits, T)
    calls, kernel = [], native_loops.few_spike_counts
    monkeypatch.setattr(native_loops, "few_spike_counts", lambda *args: calls.append(kernel(*args)) or calls[-1])
    compiled = simulate(graph, ids, T)
    assert len(calls) == 9 and all((c is not None) == COMPILED for c in calls)
    monkeypatch.setenv("SPIKEC_KERNELS", "torch")  # the fallback: few_spike.binary_code / ternary_code
    fallback = simulate(graph, ids, T)
    reference = simulate(graph, ids, T, mode="reference")
    for run in (compiled, fallback):
        assert torch.equal(run.output, reference.output) and run.spike_counts == reference.spike_counts


def test_a_ternary_nir_file_records_its_radix_and_a_binary_one_does_not(tmp_path):
    _, graph, ids, _ = converted("gpt2", "ternary")
    path = tmp_path / "model.nir"
    nirio.write(path, graph)
    back = nirio.read(path)
    neurons = [n for n, node in back.nodes.items() if isinstance(node, ir.SpikecFewSpike)]
    readouts = [n for n, node in back.nodes.items() if isinstance(node, ir.SpikecBinaryReadout)]
    assert neurons and all(back.nodes[n].radix == 3 and back.nodes[n].signed_digits for n in neurons)
    assert readouts and all(back.nodes[n].radix == 3 for n in readouts)
    assert torch.equal(simulate(back, ids, T).output, simulate(graph, ids, T).output)
    assert "radix" not in converted("gpt2", "binary")[1].nodes[neurons[0]].to_dict()
    back.nodes[neurons[0]].signed_digits = False
    nirio.write(path, back)
    with pytest.raises(NIRFormatError, match="radix 3"):
        nirio.read(path)


def test_a_nir_file_round_trips_and_is_validated(tmp_path):
    _, graph, ids, _ = converted("gpt2", "signed")
    path = tmp_path / "model.nir"
    nirio.write(path, graph)
    back = nirio.read(path)
    name = next(n for n, node in graph.nodes.items() if isinstance(node, ir.SpikecFewSpike))
    assert isinstance(back.nodes[name], ir.SpikecFewSpike) and back.nodes[name].signed_digits is True
    np.testing.assert_array_equal(back.nodes[name].threshold, graph.nodes[name].threshold)
    assert isinstance(back.nodes[f"{name.removesuffix('_neuron')}_readout"], ir.SpikecBinaryReadout)
    assert torch.equal(simulate(back, ids, T).output, simulate(graph, ids, T).output)
    graph.nodes[name].threshold[0] = -1.0
    nirio.write(path, graph)
    with pytest.raises(NIRFormatError, match="threshold"):
        nirio.read(path)


# --- energy ------------------------------------------------------------------------------------


def test_operations_are_spikes_times_fan_out_plus_a_shift_and_add_per_output_and_step():
    n_in, n_out, t = 2, 3, 4
    nodes = {"input": nir.Input(np.array([n_in])),
             "fc_neuron": ir.SpikecFewSpike(threshold=np.ones(n_in, np.float32), signed_digits=False),
             "fc": nir.Affine(weight=np.ones((n_out, n_in), np.float32), bias=np.zeros(n_out, np.float32)),
             "fc_readout": ir.SpikecBinaryReadout(features=n_out), "output": nir.Output(np.array([n_out]))}
    edges = [("input", "fc_neuron"), ("fc_neuron", "fc"), ("fc", "fc_readout"), ("fc_readout", "output")]
    graph = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    # T=4: 0.75 -> 0110 (2 spikes), -0.125 -> 000-1 (1 spike); 1.0 -> 1000 (1), 0 -> none
    result = simulate(graph, torch.tensor([[[0.75, -0.125], [1.0, 0.0]]]), t)
    assert result.spike_counts == {"fc_neuron": 4}
    layer = count_operations(graph, result, positions=2).layers[0]
    assert layer.nodes == ("fc_neuron", "fc", "fc_readout")
    assert layer.snn.synops == 4 * n_out / 2  # per token
    assert layer.snn.neuron_updates == n_in * t
    assert layer.snn.adds == 2 * n_out * t + n_out  # shift and add per output and step, the bias once
    assert layer.snn.macs == 0 and layer.snn.ops == 0
    nodes["fc_neuron"] = ir.SpikecFewSpike(threshold=np.ones(n_in, np.float32), signed_digits=True, radix=3)
    nodes["fc_readout"] = ir.SpikecBinaryReadout(features=n_out, radix=3)
    graph = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    result = simulate(graph, torch.tensor([[[0.75, -0.125], [1.0, 0.0]]]), t)
    layer = count_operations(graph, result, positions=2).layers[0]
    assert layer.snn.adds == 3 * n_out * t + n_out  # ternary Horner: a shift and two adds per output and step


# --- CLI, portable profile -------------------------------------------------------------------------


def test_the_cli_flag_selects_the_binary_pipeline_and_rate_stays_the_default():
    args = build_parser().parse_args(["compile", "gpt2", "--coding", "binary", "-T", "7"])
    assert args.coding == "binary" and args.timesteps == 7
    assert build_parser().parse_args(["compile", "gpt2"]).coding == "rate"
    assert build_pipeline(coding="binary")[0] == PIPELINE
    assert build_pipeline(coding="ternary") == (PIPELINE, {"binary_digits": "ternary"})
    assert build_parser().parse_args(["compile", "gpt2", "--coding", "ternary"]).coding == "ternary"
    assert build_pipeline()[0] == spikec.passes.DEFAULT_PIPELINE
    with pytest.raises(UsageError):
        build_pipeline(attention="ssa", coding="binary")


def test_coding_ternary_refuses_another_digit_set_and_budget_takes_both_few_spike_codings():
    from spikec.compiler import CompileOptions
    with pytest.raises(UsageError, match="--coding ternary sets binary_digits=ternary"):
        CompileOptions(model="gpt2", coding="ternary", options={"binary_digits": "binary"}).validate()
    CompileOptions(model="gpt2", coding="ternary", budget=1.04).validate()
    with pytest.raises(UsageError, match="binary or ternary"):
        CompileOptions(model="gpt2", coding="rate", budget=1.04).validate()


def test_the_portable_profile_refuses_the_few_spike_code_in_one_line():
    _, graph, _, _ = converted("gpt2")
    with pytest.raises(UnsupportedError, match="few-spike") as err:
        portable.check_portable(graph)
    assert "\n" not in str(err.value)


# --- Lava --------------------------------------------------------------------------------------


def ternary_layer(timesteps: int, steps: int = 0, features: int = 8) -> nir.NIRGraph:
    """One balanced-ternary layer on a real input: neurons (thresholds 1 and 0.37), an affine of
    random weights and its readout."""
    threshold = np.where(np.arange(features) % 2 == 0, 1.0, 0.37).astype(np.float32)
    rng = np.random.default_rng(3)
    nodes = {"input": nir.Input(np.array([features])),
             "fc_neuron": ir.SpikecFewSpike(threshold=threshold, signed_digits=True, steps=steps, radix=3),
             "fc": nir.Affine(weight=rng.normal(size=(5, features)).astype(np.float32),
                              bias=rng.normal(size=5).astype(np.float32)),
             "fc_readout": ir.SpikecBinaryReadout(features=5, radix=3), "output": nir.Output(np.array([5]))}
    edges = [("input", "fc_neuron"), ("fc_neuron", "fc"), ("fc", "fc_readout"), ("fc_readout", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"timesteps": timesteps}, type_check=False)


def near_ties(steps: int, count: int = 4000) -> np.ndarray:
    """float32 currents ``u`` (threshold units) whose membranes ``m_0 = u 3^(S-1)`` sit on, or a few
    float32 steps either side of, the half-integers (the levels' grid), plus some beyond the span."""
    rng = np.random.default_rng(steps)
    bound = 3**steps / 2
    halves = np.concatenate([rng.integers(-3**steps - 2, 3**steps + 3, count) / 2, [2.5, -2.5, 0.5, bound]])
    u = (halves / 3 ** (steps - 1)).astype(np.float32)
    around = [u] + [np.nextafter(u, np.float32(d * np.inf)) for d in (1, -1)]
    around += [np.nextafter(a, np.float32(d * np.inf)) for a, d in zip(around[1:], (1, -1))]
    return np.concatenate([*around, rng.uniform(-2, 2, count).astype(np.float32)])


def fixed_ternary_spikes(u: np.ndarray, steps: int) -> np.ndarray:
    """``[S, N]`` spikes of the fixed_pt model's integer membrane (threshold 1): the runtime's
    conversion, then the integer steps ``s = sgn(m) [|m| >= W_k / 2]``, ``m -= s W_k`` (``2^-f`` units)."""
    bits = fixed_point.ternary_fraction_bits(steps)
    m = fixed_point.ternary_fixed_membrane(few_spike.ternary_membrane(torch.from_numpy(u), steps).numpy(),
                                           steps, bits)
    out = []
    for k in range(steps):
        weight = 3 ** (steps - 1 - k) << bits
        s = np.where(np.abs(m) >= weight // 2, np.sign(m), 0)
        assert np.abs(m).max() <= fixed_point.STATE_MAX
        m = m - s * weight
        out.append(s)
    return np.stack(out)


@pytest.mark.parametrize("steps", range(1, fixed_point.MAX_TERNARY_FIXED_STEPS + 1))
def test_the_fixed_pt_ternary_membrane_fires_the_float32_spikes_even_next_to_a_level(steps):
    u = near_ties(steps)
    params = few_spike.FewSpikeParams(torch.ones(u.size), signed_digits=True, radix=3)
    reference = few_spike.few_spike_encode(torch.from_numpy(u), params, steps).numpy()
    np.testing.assert_array_equal(fixed_ternary_spikes(u, steps), reference)


def test_truncating_the_ternary_membrane_toward_zero_would_move_a_spike_so_it_is_rounded_to_odd():
    # S=2, levels 1.5 and 0.5: m0 = 2.5 + 2^-20 fires +1 (m = -0.5 + 2^-20), then nothing; truncated to
    # 2.5 it would fire +1 and -1. Rounded to odd (the last of f bits set) it stays above 2.5.
    m0 = np.array([2.5 + 2.0**-20, 2.5, -(2.5 + 2.0**-20)], np.float32)
    params = few_spike.FewSpikeParams(torch.ones(3), signed_digits=True, radix=3)
    reference = few_spike.few_spike_encode(torch.from_numpy(m0 / 3), params, 2)
    assert reference.T.tolist() == [[1, 0], [1, -1], [-1, 0]]
    bits = fixed_point.ternary_fraction_bits(2)
    assert fixed_point.ternary_fixed_membrane(m0, 2, bits).tolist() == [
        (5 << (bits - 1)) + 1, 5 << (bits - 1), -(5 << (bits - 1)) - 1]
    np.testing.assert_array_equal(fixed_ternary_spikes(m0 / np.float32(3), 2), reference.numpy())


def test_the_ternary_membrane_takes_the_most_fraction_bits_that_fit_24_bits_up_to_13_steps():
    assert [fixed_point.ternary_fraction_bits(s) for s in (1, 7, 12, 13)] == [22, 12, 4, 3]
    for s in range(1, fixed_point.MAX_TERNARY_FIXED_STEPS + 1):
        bits = fixed_point.ternary_fraction_bits(s)
        assert 3**s << (bits - 1) <= fixed_point.STATE_MAX < 3**s << bits
    with pytest.raises(ValueError, match="at most 13 steps"):
        fixed_point.ternary_fraction_bits(14)


def test_the_lava_export_writes_radix_3_and_leaves_binary_files_unchanged():
    desc, arrays = export.network_description(ternary_layer(7))
    types = {n["type"]: n["attrs"] for n in desc["nodes"]}
    assert types["FewSpike"]["radix"] == 3 and types["BinaryReadout"]["radix"] == 3
    report = export.quantization_report(desc, arrays, 7)
    assert report["neurons"]["fc_neuron"]["membrane_fraction_bits"] == 12 and "few_spike_ternary" in report["scheme"]
    desc, arrays = export.network_description(converted("gpt2")[1])
    assert not any("radix" in n["attrs"] for n in desc["nodes"])
    assert "few_spike_ternary" not in export.quantization_report(desc, arrays, T)["scheme"]


@pytest.mark.parametrize("timesteps", [14, 15])
def test_the_lava_export_refuses_ternary_codes_longer_than_13_steps_in_one_line(timesteps):
    with pytest.raises(UnsupportedError, match="at most 13 steps") as err:
        export.network_description(ternary_layer(timesteps))
    assert "\n" not in str(err.value) and "-T 13" in err.value.hint
    export.network_description(ternary_layer(timesteps, steps=13))  # a 13-step code in a longer window runs


@pytest.mark.parametrize("timesteps,steps", [(2, 0), (13, 0), (12, 9)])
def test_lava_ternary_neurons_next_to_their_levels_fire_the_reference_spikes_in_both_precisions(
        lava_python, tmp_path, timesteps, steps):
    graph = ternary_layer(timesteps, steps)
    u = near_ties(steps or timesteps, 200)
    x = (u[: u.size // 8 * 8].reshape(1, -1, 8) * graph.nodes["fc_neuron"].threshold).astype(np.float32)
    folder = export.export_lava(graph, tmp_path / "lava")["folder"]
    for precision in ("floating_pt", "fixed_pt"):
        run = compare.run_export(folder, x, precision=precision, python=lava_python)
        result = compare.compare(graph, x, run)
        assert result["spike_agreement"] == 1.0 and result["logits_max_abs_diff"] == 0.0, (precision, result)


def test_lava_fixed_pt_refuses_a_ternary_window_stretched_past_13_steps_at_run_time(lava_python, tmp_path):
    folder = export.export_lava(ternary_layer(7), tmp_path / "lava")["folder"]
    x = np.ones((1, 2, 8), np.float32)
    with pytest.raises(compare.LavaRunError, match="at most 13 steps"):
        compare.run_export(folder, x, timesteps=14, precision="fixed_pt", python=lava_python)
    run = compare.run_export(folder, x, timesteps=14, precision="floating_pt", python=lava_python)
    assert run.spikes["fc_neuron"].shape[0] == 14


@pytest.mark.parametrize("family,digits", [("gpt2", "binary"), ("llama", "signed"), ("gpt2", "ternary"),
                                           ("llama", "ternary")])
def test_lava_floating_pt_is_spike_for_spike_and_fixed_pt_agrees(lava_python, tmp_path, family, digits):
    _, graph, ids, _ = converted(family, digits)
    folder = export.export_lava(graph, tmp_path / "lava")["folder"]
    run = compare.run_export(folder, ids, precision="floating_pt", python=lava_python)
    result = compare.compare(graph, ids, run)
    assert len(result["spike_agreement_per_layer"]) == 9 and result["spike_agreement"] == 1.0
    assert result["logits_max_abs_diff"] < 1e-4 and result["next_token_agreement"] == 1.0
    run = compare.run_export(folder, ids, precision="fixed_pt", python=lava_python)
    per_layer = compare.compare(graph, ids, run)["spike_agreement_per_layer"]
    assert min(per_layer.values()) >= 0.9999, per_layer
    assert all(v["saturated"] == 0 for v in run.meta["readout_accumulator"].values())
