"""``--budget``: per-layer few-spike steps chosen for energy on calibration text (spikec.budget)."""

from __future__ import annotations

import json

import pytest
import torch

from canonical_models import gpt2_like, token_ids
from spikec.analysis.counts import count_operations
from spikec.backends import nirio
from spikec.backends.lava import compare, export
from spikec.backends.simulator import simulate
import spikec.budget as budget_search
from spikec.budget import choose_steps
from spikec.layer_costs import few_spike_layers
from spikec.passes.fx_graph import fetch_attr
from spikec.cli import build_parser
from spikec.compiler import CompileOptions, compile_model
from spikec.core import few_spike, ir
from spikec.core.errors import UsageError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.lower import lower_to_nir
from spikec.verify import compare_fx_and_simulator

PIPELINE = ["fold-norm-affine", "calibrate", "binary-encode"]
T = 6
POSITIONS = 16


def own_text(ann, samples: int = 8, positions: int = 16) -> torch.Tensor:
    """Token ids the ANN predicts itself (greedy continuations of random first tokens): a random
    model's perplexity on random tokens says nothing; on its own text every error costs."""
    ids = token_ids(samples=samples, positions=positions, seed=2)
    with torch.no_grad():
        for p in range(1, positions):
            ids[:, p] = ann(ids[:, :p])[:, -1].argmax(-1)
    return ids


def budgeted(budget: float):
    ann = gpt2_like()
    calibration = own_text(ann)
    gm, _ = run_passes(gpt2_like(), PIPELINE, PassContext(options={"timesteps": T}, calibration=calibration))
    choice = choose_steps(gm, ann, calibration, T, budget)
    ids = token_ids(samples=1, positions=POSITIONS, seed=5)
    graph = lower_to_nir(gm, ids, {"timesteps": T, "positions": POSITIONS, "model": "tiny-gpt2"})
    return gm, graph, ids, choice


def test_a_shorter_code_is_the_short_code_then_silence():
    x, params = torch.tensor([0.75, -0.3, 1.9]), few_spike.FewSpikeParams(torch.ones(3))
    train = few_spike.few_spike_encode(x, params, 8, steps=3)
    assert torch.equal(train[:3], few_spike.few_spike_encode(x, params, 3)) and not train[3:].any()
    assert torch.equal(few_spike.few_spike_encode(x, params, 8, steps=8), few_spike.few_spike_encode(x, params, 8))
    values, spikes = few_spike.binary_code(x, params.threshold, 3)
    assert torch.equal(values.sum(0), few_spike.weighted_count(train)) and int(spikes.sum()) == int(train.abs().sum())
    with pytest.raises(ValueError):
        few_spike.few_spike_encode(x, params, 4, steps=5)


def test_a_loose_budget_shortens_some_layer_and_the_simulator_still_agrees_spike_for_spike():
    gm, graph, ids, choice = budgeted(1.5)
    assert min(choice.steps.values()) < T and max(choice.steps.values()) <= T
    assert choice.ppl_ratio <= 1.5 and choice.operations < choice.operations_full
    nodes = {n: node for n, node in graph.nodes.items() if isinstance(node, ir.SpikecFewSpike)}
    assert {n: node.steps or T for n, node in nodes.items()} == choice.steps
    assert choice.coarser_channels  # some channels trade resolution for spikes, in the file too
    layer = next(l for l in few_spike_layers(gm) if l.name in choice.coarser_channels)
    assert torch.equal(torch.as_tensor(nodes[layer.name].threshold).float(), fetch_attr(gm, layer.node.args[1].target).float())
    agreement = compare_fx_and_simulator(gm, graph, ids, T)
    assert agreement.identical_layers == agreement.layers == 9 and agreement.logits_max_abs_diff == 0.0
    fast, reference = simulate(graph, ids, T), simulate(graph, ids, T, mode="reference", record=True)
    assert torch.equal(fast.output, reference.output) and fast.spike_counts == reference.spike_counts
    short = next(n for n, s in choice.steps.items() if s < T)
    assert not reference.spikes[short][choice.steps[short]:].any()  # silent after its own steps
    layer = next(l for l in count_operations(graph, fast, positions=POSITIONS).layers if short in l.nodes)
    assert layer.snn.neuron_updates == nodes[short].threshold.shape[0] * choice.steps[short]


def test_budget_one_keeps_every_layer_at_T_and_the_file_unchanged(tmp_path):
    gm, graph, _, choice = budgeted(1.0)
    assert set(choice.steps.values()) == {T} and not choice.trail
    assert all(not n.kwargs.get("steps") for n in (l.node for l in few_spike_layers(gm)))
    nirio.write(tmp_path / "m.nir", graph)
    back = nirio.read(tmp_path / "m.nir")
    assert all(node.steps == 0 for node in back.nodes.values() if isinstance(node, ir.SpikecFewSpike))


def test_steps_round_trip_through_a_nir_file(tmp_path):
    _, graph, ids, choice = budgeted(1.5)
    nirio.write(tmp_path / "m.nir", graph)
    back = nirio.read(tmp_path / "m.nir")
    assert {n: node.steps or T for n, node in back.nodes.items() if isinstance(node, ir.SpikecFewSpike)} == choice.steps
    assert torch.equal(simulate(back, ids, T).output, simulate(graph, ids, T).output)


def test_compile_records_the_choice_in_report_json_and_the_report(tmp_path):
    out = tmp_path / "b"
    compile_model(CompileOptions(model="gpt2", output=str(out), random_weights=True, timesteps=T, calib_samples=4,
                                 seq_len=16, coding="binary", budget=1.5,
                                 config_overrides={"n_layer": "1", "n_embd": "32", "n_head": "2"}))
    report = json.loads((out / "report.json").read_text())
    budget = report["budget"]
    assert budget["text"].startswith(f"calibration, the {budget_search.SEARCH_SAMPLES} sequences after the") and budget["budget"] == 1.5
    assert set(budget["steps"]) and all(1 <= s <= T for s in budget["steps"].values())
    assert report["simulator_check"]["identical_layers"] == report["simulator_check"]["neuron_layers"]
    html = (out / "report.html").read_text()
    assert "Per-layer steps (--budget)" in html and "channels with a coarser threshold" in html
    assert set(budget["coarser_channels"]) <= set(budget["steps"])


def test_the_search_measures_calibration_sequences_the_thresholds_were_not_fitted_to():
    n = budget_search.SEARCH_SAMPLES + 6
    stream = torch.arange(n * 8)
    ids, label = budget_search.search_sequences(stream, fitted=3, seq_len=8)
    assert ids.shape == (budget_search.SEARCH_SAMPLES, 8) and int(ids[0, 0]) == 3 * 8
    assert label == f"calibration, the {budget_search.SEARCH_SAMPLES} sequences after the 3 fitted ones"
    ids, _ = budget_search.search_sequences(stream, fitted=n - 1, seq_len=8)  # one sequence left
    assert ids.shape == (1, 8) and int(ids[0, 0]) == (n - 1) * 8
    ids, label = budget_search.search_sequences(stream, fitted=n, seq_len=8)  # none left: the fitted ones
    assert int(ids[0, 0]) == 0 and "the text has no more" in label


def test_the_budget_needs_binary_coding_and_a_ratio_of_at_least_one():
    assert build_parser().parse_args(["compile", "gpt2", "--coding", "binary", "--budget", "1.04"]).budget == 1.04
    assert build_parser().parse_args(["compile", "gpt2"]).budget is None
    with pytest.raises(UsageError, match="--budget"):
        CompileOptions(model="gpt2", budget=1.04).validate()
    with pytest.raises(UsageError, match="--budget"):
        CompileOptions(model="gpt2", coding="binary", budget=0.9).validate()


def test_lava_takes_each_layer_s_steps_spike_for_spike(lava_python, tmp_path):
    _, graph, ids, choice = budgeted(1.5)
    assert min(choice.steps.values()) < T
    folder = export.export_lava(graph, tmp_path / "lava")["folder"]
    for precision in ("floating_pt", "fixed_pt"):
        run = compare.run_export(folder, ids, precision=precision, python=lava_python)
        result = compare.compare(graph, ids, run)
        assert result["spike_agreement"] == 1.0, (precision, result["spike_agreement_per_layer"])


def test_the_next_allowance_closes_in_on_the_budget_from_the_measurements():
    goal = 0.04
    assert budget_search.next_allowance([(0.04, 0.01)], [], goal) == pytest.approx(0.16)  # too safe: step out
    assert budget_search.next_allowance([(0.04, 0.03)], [], goal) == pytest.approx(0.04 * 4 / 3)
    assert budget_search.next_allowance([], [(0.04, 0.08)], goal) == pytest.approx(0.02)  # past R: step in
    inside = budget_search.next_allowance([(0.04, 0.02)], [(0.12, 0.10)], goal)
    assert inside == pytest.approx(0.06)  # the secant between the bracket's ends
    assert 0.048 <= budget_search.next_allowance([(0.04, 0.039)], [(0.12, 0.10)], goal) < 0.12
    assert budget_search.next_allowance([(0.12, 0.03)], [(0.04, 0.05)], goal) is None  # noise: no bracket
