"""The Lava target: export format, schedule and Loihi encodings (no Lava needed) and, in the
Python 3.10 Lava environment, spike-for-spike agreement with the reference simulator.

The Lava tests need ``.venv-lava`` (``make lava-env``) or ``SPIKEC_LAVA_PYTHON``. Without it
they skip locally and FAIL when the environment variable ``CI`` is set."""

from __future__ import annotations

import dataclasses

import ast
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

import spikec.passes
from canonical_models import gpt2_like, llama_like, token_ids
from conftest import require_lava
from spikec.backends import nirio
from spikec.backends.lava import compare, env, export
from spikec.backends.lava.runtime import fixed_point, network, numpy_ops
from spikec.backends.lava.runtime.schedule import plan_segments, schedule
from spikec.backends.simulator import simulate
from spikec.core import ir, ops
from spikec.core.errors import InputError, ResourceError, UnsupportedError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.lower import lower_to_nir

T = 8
POSITIONS = 16
FAMILIES = {"gpt2": gpt2_like, "llama": llama_like}


@functools.lru_cache(maxsize=None)
def converted(family: str) -> tuple[nir.NIRGraph, torch.Tensor]:
    """A tiny converted model of ``family`` (default pipeline, T=8) and 16 token ids."""
    torch.manual_seed(0)
    ctx = PassContext(options={"timesteps": T}, calibration=token_ids(seed=2))
    gm, _ = run_passes(FAMILIES[family](), spikec.passes.DEFAULT_PIPELINE, ctx)
    ids = token_ids(samples=1, positions=POSITIONS, seed=5)
    graph = lower_to_nir(gm, ids, {"timesteps": T, "positions": POSITIONS, "model": f"tiny-{family}"})
    return graph, ids


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Lava exports of the tiny models, by family."""
    root = tmp_path_factory.mktemp("lava")
    return {f: Path(export.export_lava(converted(f)[0], root / f / "lava")["folder"]) for f in FAMILIES}


# --- export, schedule, encodings (no Lava) -------------------------------------------------


def test_export_folder_is_self_contained_and_the_runtime_imports_only_lava_nir_numpy_stdlib(exports):
    folder = exports["gpt2"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "network.json", "quantization.json", "run_lava.py", "runtime", "weights.npz"]
    assert (folder / "run_lava.py").read_text() == export.RUNNER_SOURCE.read_text()
    assert export.runtime_files(folder) == export.runtime_files(export.RUNNER_SOURCE.parent)
    assert not list((folder / "runtime").rglob("__pycache__"))
    assert {p.parent.name for p in (folder / "runtime" / "proc").glob("*/models.py")} == {
        "binary_readout", "embedding", "few_spike", "host_value", "positional_dense", "rate_readout", "real_op",
        "signed_if", "spiking_self_attention"}
    desc = json.loads((folder / "network.json").read_text())
    assert desc["format"] == network.FORMAT and desc["meta"]["timesteps"] == T
    assert desc["meta"]["positions"] == POSITIONS
    stdlib = set(__import__("sys").stdlib_module_names)
    for path in [folder / "run_lava.py", *(folder / "runtime").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert imported - {"lava", "nir", "numpy", "runtime"} <= stdlib, path
        # the parts the export side imports have no Lava import
        if path.parent.name == "runtime" and path.stem in ("network", "schedule", "fixed_point", "numpy_ops"):
            assert imported - {"numpy"} <= stdlib, path


def test_every_neuron_layer_gets_one_window_of_T_steps_absorbing_the_dense_delay():
    graph, _ = converted("gpt2")
    desc, arrays = export.network_description(graph)
    net = network.network_from_dict(desc, arrays)
    sched = schedule(net, T)
    neurons = [n for n, node in net.nodes.items() if node.type == "SignedIF"]
    assert sched.windows == [1 + k * T for k in range(len(neurons))]
    for name in neurons:
        (dense,) = net.nodes[name].succs
        (readout,) = net.nodes[dense].succs
        assert sched.window[dense] == sched.window[name]
        assert sched.ready[readout] == sched.window[name] + T  # Dense delivers W s(g) at g+1
        # the next layer starts the step its input is complete
        for user in net.nodes[readout].succs:
            assert sched.ready[user] == sched.window[name] + T
    assert sched.steps == len(neurons) * T + 1


@pytest.mark.parametrize("per_run", [1, 2, 4, 0])
def test_segments_cut_only_real_values_and_cover_every_node_once(per_run):
    graph, _ = converted("llama")
    desc, arrays = export.network_description(graph)
    net = network.network_from_dict(desc, arrays)
    segments = plan_segments(net, schedule(net, T), per_run)
    members = [n for s in segments for n in s.nodes]
    assert sorted(members) == sorted(n for n, node in net.nodes.items() if node.type not in ("Input", "Output"))
    for seg in segments:
        for name in seg.inputs:
            assert net.nodes[name].type not in ("SignedIF", "Dense")
    assert len(segments) == (1 if per_run == 0 else -(-9 // per_run))


@pytest.mark.parametrize("max_spikes", [1, 2, 8, 127])
@pytest.mark.parametrize("current", fixed_point.CURRENT_ENCODINGS)
def test_signed_if_encoding_fits_loihi_registers(max_spikes, current):
    enc = fixed_point.signed_if_encoding(max_spikes, T, current)
    assert 1 <= enc["vth"] <= 2**17 - 1 and enc["theta"] == enc["vth"] << 6
    assert 0 <= enc["bias_exp"] <= 7
    assert (max_spikes + 1) * enc["theta"] <= 2**23 - 1  # 24-bit membrane
    assert max_spikes * enc["theta"] <= enc["mant_max"] << enc["bias_exp"]  # the largest current fits
    if current == "bias13":
        assert enc["mant_max"] == 4095
    assert enc["current_step"] == pytest.approx(2 ** enc["bias_exp"] / enc["theta"])


def _float_neuron(u: np.ndarray, v_init: float, steps: int, low: int, high: int) -> np.ndarray:
    v, out = np.full(u.shape, np.float32(v_init), np.float32), []
    for _ in range(steps):
        v = v + u
        s = np.clip(np.floor(v), low, high)
        v = v - s
        out.append(s)
    return np.stack(out)


def _integer_neuron(bias: np.ndarray, v0: int | np.ndarray, theta: int, steps: int, low: int, high: int) -> np.ndarray:
    v, out = np.full(bias.shape, v0, np.int64), []
    for _ in range(steps):
        v = v + bias
        s = np.clip(np.floor_divide(v, theta), low, high)
        v = v - s * theta
        out.append(s)
    return np.stack(out)


@pytest.mark.parametrize("current", fixed_point.CURRENT_ENCODINGS)
@pytest.mark.parametrize("max_spikes,signed", [(1, True), (4, True), (1, False)])
def test_fixed_point_currents_reproduce_the_float32_neurons_spikes(current, max_spikes, signed):
    # Currents a hair away from the rounding boundaries k / t - v_init, where float32 arithmetic
    # and a plain rint of the integer current disagree, plus ordinary and out-of-range ones.
    rng = np.random.default_rng(3)
    steps, low = 8, -max_spikes if signed else 0
    enc = fixed_point.signed_if_encoding(max_spikes, steps, current)
    ties = np.array([(k + 0.5) / t for t in range(1, steps + 1) for k in range(-max_spikes * t, max_spikes * t)])
    u = np.concatenate([np.nextafter(ties.astype(np.float32), np.float32(np.inf)),
                        np.nextafter(ties.astype(np.float32), np.float32(-np.inf)), ties.astype(np.float32),
                        rng.uniform(-max_spikes - 1, max_spikes + 1, 2000).astype(np.float32)])
    mant, v0 = fixed_point.fixed_point_current(u, 0.5, enc["theta"], enc["bias_exp"], enc["mant_max"], steps, low,
                                          max_spikes)
    assert np.abs(mant).max() <= enc["mant_max"] + 1 and ((v0 >= 0) & (v0 < enc["theta"])).all()
    assert (v0 != round(0.5 * enc["theta"])).mean() < 0.05  # the initial membrane moves only at ties
    got = _integer_neuron(mant << enc["bias_exp"], v0, enc["theta"], steps, low, max_spikes)
    want = _float_neuron(u, 0.5, steps, low, max_spikes)
    assert (got == want).mean() == 1.0
    plain = np.rint(np.clip(u, low, max_spikes).astype(np.float64) * enc["theta"] / 2 ** enc["bias_exp"])
    rounded = _integer_neuron(plain.astype(np.int64) << enc["bias_exp"], round(0.5 * enc["theta"]), enc["theta"],
                              steps, low, max_spikes)
    assert (rounded != want).any()  # the case this rounding exists for


@pytest.mark.parametrize("synapses", [1, 2])
def test_weights_quantize_to_8_bit_synapse_groups_with_a_power_of_two_exponent(synapses):
    w = np.random.default_rng(0).standard_normal((24, 40)).astype(np.float32) * 0.05
    w_int, exp = fixed_point.quantize_weights(w, synapses)
    assert np.abs(w_int).max() <= fixed_point.weight_int_max(synapses)
    assert np.abs(w_int * 2.0**exp - w).max() <= 2.0 ** (exp - 1) + 1e-12
    groups = fixed_point.split_synapses(w_int, synapses)
    assert sum(m.astype(np.int64) << sh for m, sh in groups).tolist() == w_int.tolist()
    assert all(m.dtype == np.int8 and np.abs(m).max() <= 127 for m, _ in groups)


def test_quantized_graph_holds_the_fixed_point_weights_exactly_and_is_reported(exports):
    graph, _ = converted("gpt2")
    q = export.quantized_graph(graph)
    report = json.loads((exports["gpt2"] / "quantization.json").read_text())
    assert set(report["dense"]) == {n for n, node in graph.nodes.items() if isinstance(node, nir.Affine)}
    for name, info in report["dense"].items():
        w = np.asarray(q.nodes[name].weight, np.float64)
        ints = w / 2.0 ** info["weight_exp"]
        assert np.array_equal(ints, np.rint(ints)) and np.abs(ints).max() <= 127
        assert info["max_abs_weight_error"] <= 2.0 ** (info["weight_exp"] - 1)
    assert set(report["neurons"]) == {n for n, node in graph.nodes.items() if isinstance(node, ir.SpikecSignedIF)}


def test_numpy_real_ops_of_the_runtime_match_spikec_core_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 24, generator=g)
    w, b = torch.randn(24, generator=g), torch.randn(24, generator=g)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=2e-6)
    for kind in ("gelu", "gelu_tanh", "relu", "silu"):
        close(numpy_ops.activation(x.numpy(), kind), ops.activation(x, kind).numpy())
    close(numpy_ops.gated_activation(x.numpy(), "silu"), ops.gated_activation(x, "silu").numpy())
    qkv = torch.randn(2, 5, (4 + 2 * 2) * 3 * 2, generator=g)
    close(numpy_ops.attention(qkv.numpy(), 4, 2, 6, 10000.0, 0.4), ops.attention(qkv, 4, 2, 6, 10000.0, 0.4).numpy())


@pytest.mark.parametrize("features", [24, 100, 576, 768])
def test_norms_round_exactly_like_torchs_cpu_kernels(features):
    g = torch.Generator().manual_seed(features)
    x = torch.randn(3, 7, features, generator=g) * 2 + 0.3
    w, b = torch.randn(features, generator=g), torch.randn(features, generator=g)
    width = compare.torch_vec_width()
    ln = numpy_ops.layer_norm(x.numpy(), w.numpy(), b.numpy(), 1e-5, width)
    rms = numpy_ops.rms_norm(x.numpy(), w.numpy(), 1e-6, width)
    if str(torch.backends.cpu.get_cpu_capability()) == "AVX2":  # the build this emulation was verified on
        assert np.array_equal(ln, ops.layer_norm(x, w, b, 1e-5).numpy())
        assert np.array_equal(rms, ops.rms_norm(x, w, 1e-6).numpy())
    np.testing.assert_allclose(ln, ops.layer_norm(x, w, b, 1e-5).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rms, ops.rms_norm(x, w, 1e-6).numpy(), rtol=1e-5, atol=1e-5)


def test_export_refuses_nodes_it_cannot_map():
    nodes = {"input": nir.Input(np.array([2])),
             "if": nir.IF(r=np.ones(2, np.float32), v_threshold=np.ones(2, np.float32), v_reset=np.zeros(2, np.float32)),
             "output": nir.Output(np.array([2]))}
    graph = nir.NIRGraph(nodes=nodes, edges=[("input", "if"), ("if", "output")], type_check=False)
    with pytest.raises(UnsupportedError, match="'if'.*'IF'"):
        export.network_description(graph)


def test_inputs_longer_than_the_export_are_refused_before_running_lava(exports):
    with pytest.raises(InputError, match="17 positions.*at most 16"):
        compare.run_export(exports["gpt2"], np.zeros((1, POSITIONS + 1), np.int64), python="/nonexistent")


def test_a_missing_lava_environment_is_a_resource_error_saying_how_to_get_python_310(monkeypatch, tmp_path):
    monkeypatch.setenv(env.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(ResourceError, match="no Lava environment") as info:
        env.lava_python()
    assert "Python 3.10" in str(info.value) and "make lava-env" in str(info.value)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing on CI"):
        require_lava()


# --- in Lava --------------------------------------------------------------------------------


@pytest.mark.parametrize("family,per_run,batch", [("gpt2", 0, 1), ("llama", 1, 2)])
def test_floating_pt_lava_equals_the_reference_simulator_spike_for_spike(lava_python, exports, family, per_run,
                                                                         batch):
    graph, ids = converted(family)
    ids = token_ids(samples=batch, positions=POSITIONS, seed=5)
    run = compare.run_export(exports[family], ids, precision="floating_pt", stages_per_run=per_run,
                             python=lava_python)
    result = compare.compare(graph, ids, run)
    assert {"spike_agreement", "spike_agreement_per_layer", "logits_max_abs_diff"} <= set(result)
    assert len(result["spike_agreement_per_layer"]) == 9
    assert result["spike_agreement_per_layer"] == {k: 1.0 for k in result["spike_agreement_per_layer"]}
    assert result["spike_agreement"] == 1.0
    assert result["logits_max_abs_diff"] < 1e-4 and result["next_token_agreement"] == 1.0
    assert run.meta["run_config"] == "Loihi2SimCfg" and run.meta["steps_single_network"] == 9 * T + 1
    assert len(run.meta["segments"]) == (1 if per_run == 0 else 9)


@functools.lru_cache(maxsize=None)
def converted_ssa(family: str) -> nir.NIRGraph:
    """The tiny model of ``family`` with spiking self-attention in place of softmax attention."""
    torch.manual_seed(0)
    ctx = PassContext(options={"timesteps": T}, calibration=token_ids(seed=2))
    gm, _ = run_passes(FAMILIES[family](), [*spikec.passes.DEFAULT_PIPELINE, "ssa"], ctx)
    ids = token_ids(samples=1, positions=POSITIONS, seed=5)
    return lower_to_nir(gm, ids, {"timesteps": T, "positions": POSITIONS, "model": f"tiny-{family}-ssa"})


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_runtimes_numpy_ssa_equals_spikec_core_ssa(family):
    from spikec.core.ir import SpikecSSA
    from spikec.core.ssa import spiking_self_attention

    graph = converted_ssa(family)
    (name, node), *_ = [(n, v) for n, v in graph.nodes.items() if isinstance(v, SpikecSSA)]
    heads, kv, d = node.num_heads, node.num_kv_heads, node.head_dim
    qkv = torch.randn(2, 11, (heads + 2 * kv) * d) * 3
    params = {k: np.asarray(getattr(node, k), np.float32) for k in numpy_ops.SSA_PARAMS}
    want = spiking_self_attention(qkv, *(torch.from_numpy(params[k]) for k in numpy_ops.SSA_PARAMS), heads, kv, d,
                                  node.rope_theta, T, node.signed, node.tau, node.normalize)
    got = numpy_ops.ssa_spikes(qkv.numpy(), params, heads, kv, d, node.rope_theta, T, node.signed, node.tau,
                            node.normalize)
    assert got.dtype == np.int8 and np.abs(got).sum() > 0
    assert (got == want.numpy()).all()


def test_export_refuses_a_decaying_ssa_mask_or_map_neurons_and_says_what_to_use():
    from spikec.core.ir import SpikecSSA

    graph = converted_ssa("gpt2")
    nodes = dict(graph.nodes)
    name = next(n for n, v in nodes.items() if isinstance(v, SpikecSSA))
    nodes[name] = dataclasses.replace(nodes[name], decay=np.full(nodes[name].num_heads, 0.9, np.float32))
    with pytest.raises(UnsupportedError, match="ssa_decay=none"):
        export.network_description(nir.NIRGraph(nodes=nodes, edges=graph.edges, type_check=False))
    nodes[name] = dataclasses.replace(graph.nodes[name], map_threshold=np.full(graph.nodes[name].num_heads, 2.0, np.float32))
    with pytest.raises(UnsupportedError, match="ssa_map=none"):
        export.network_description(nir.NIRGraph(nodes=nodes, edges=graph.edges, type_check=False))


@pytest.mark.parametrize("family,precision", [("gpt2", "floating_pt"), ("llama", "fixed_pt")])
def test_ssa_graphs_run_in_lava_spike_for_spike(lava_python, tmp_path, family, precision):
    graph = converted_ssa(family)
    ids = token_ids(samples=1, positions=POSITIONS, seed=5)
    folder = export.export_lava(graph, tmp_path / "lava")["folder"]
    run = compare.run_export(folder, ids, precision=precision, python=lava_python)
    result = compare.compare(graph, ids, run)
    per_layer = result["spike_agreement_per_layer"]
    assert sum(k.endswith("attn_ssa") for k in per_layer) == 2  # the SSA layers are compared too
    assert per_layer == {k: 1.0 for k in per_layer} and result["logits_max_abs_diff"] == 0.0


def test_fixed_pt_agrees_with_the_quantized_network_per_layer_and_reports_the_float_gap(lava_python, exports):
    graph, ids = converted("gpt2")
    run = compare.run_export(exports["gpt2"], ids, precision="fixed_pt", python=lava_python)
    result = compare.compare(graph, ids, run)
    per_layer = result["spike_agreement_per_layer"]
    assert len(per_layer) == 9 and min(per_layer.values()) == 1.0, per_layer  # spike-preserving currents
    assert result["logits_max_abs_diff"] == 0.0
    assert result["reference"].startswith("quantized")
    assert set(result["float_reference"]["spike_agreement_per_layer"]) == set(per_layer)
    assert all(v["saturated"] == 0 for v in run.meta["readout_accumulator"].values())
    first = next(iter(per_layer))  # no weights upstream: only the neuron encoding differs from float
    assert result["float_reference"]["spike_agreement_per_layer"][first] >= 0.99


def test_fixed_pt_teacher_forced_layers_agree_with_the_quantized_network(lava_python, exports):
    graph, ids = converted("llama")
    run = compare.run_export(exports["llama"], ids, precision="fixed_pt", teacher=True, python=lava_python)
    per_layer = compare.compare(graph, ids, run)["spike_agreement_per_layer"]
    assert run.meta["teacher_forced"] and min(per_layer.values()) == 1.0, per_layer


def test_the_export_runs_alone_in_a_venv_holding_only_lava_nir_numpy(lava_python, exports, tmp_path):
    check = subprocess.run([str(lava_python), "-c", "import importlib.util as u; "
                            "print([m for m in ('torch', 'spikec', 'transformers') if u.find_spec(m)])"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert check.stdout.strip() == "[]"
    assert env.probe(str(lava_python))["lava-nc"] == "0.10.0"
    folder = tmp_path / "copied"
    shutil.copytree(exports["llama"], folder)
    graph, ids = converted("llama")
    np.save(tmp_path / "tokens.npy", ids.numpy())
    proc = subprocess.run([str(lava_python), "run_lava.py", "--input", str(tmp_path / "tokens.npy"), "--timesteps",
                           str(T), "--precision", "floating_pt", "--out", str(tmp_path / "out.npz")],
                          cwd=folder, capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = compare.load_run(tmp_path / "out.npz")
    ref = simulate(graph, ids, T)
    assert np.abs(run.output - ref.output.numpy()).max() < 1e-4
    too_long = np.zeros((1, POSITIONS + 1), np.int64)
    np.save(tmp_path / "long.npy", too_long)
    proc = subprocess.run([str(lava_python), "run_lava.py", "--input", str(tmp_path / "long.npy"), "--out",
                           str(tmp_path / "x.npz")], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 3 and "at most 16 positions" in proc.stderr


def test_evaluate_lava_reads_a_compile_directory_and_reports_the_eval_keys(lava_python, tmp_path, monkeypatch):
    monkeypatch.setenv(env.ENV_VAR, str(lava_python))
    graph, ids = converted("gpt2")
    nirio.write(tmp_path / "model.nir", graph)  # compiled without --target lava: exported on the fly
    result = compare.evaluate_lava(tmp_path, ids[:, :8], precision="floating_pt")
    assert result["spike_agreement"] == 1.0 and result["positions"] == 8
    assert json.loads(json.dumps(result))["spike_agreement_per_layer"]


def test_unconverted_affines_run_as_real_valued_ops_in_one_step(lava_python, tmp_path):
    torch.manual_seed(0)
    passes = [p for p in spikec.passes.DEFAULT_PIPELINE if p != "spike-encode"]
    gm, _ = run_passes(gpt2_like(), passes, PassContext(options={"timesteps": T}, calibration=token_ids(seed=2)))
    ids = token_ids(samples=1, positions=6, seed=3)
    graph = lower_to_nir(gm, ids, {"timesteps": T, "positions": 6})
    info = export.export_lava(graph, tmp_path / "lava")
    assert info["stages"] == 0 and info["node_types"]["Affine"] == 9
    run = compare.run_export(tmp_path / "lava", ids, python=lava_python)
    assert run.meta["steps_total"] == 1 and run.spikes == {}
    np.testing.assert_allclose(run.output, simulate(graph, ids, T).output.numpy(), rtol=1e-5, atol=1e-5)


def test_greedy_generation_in_lava_follows_the_reference_simulator(lava_python, tmp_path, monkeypatch):
    monkeypatch.setenv(env.ENV_VAR, str(lava_python))
    graph, ids = converted("gpt2")
    nirio.write(tmp_path / "model.nir", graph)
    export.export_lava(graph, tmp_path / "lava")
    result = compare.generate_lava(tmp_path, ids[:, :6], 2)
    assert len(result["tokens"]) == 2 and result["tokens"] == result["reference_tokens"] and result["tokens_equal"]
    assert result["prompt"]["spike_agreement"] == 1.0 and result["prompt"]["positions"] == 6


def plant(folder: Path, marker: Path) -> None:
    """Make the Lava export in ``folder`` write ``marker`` if any of its code runs."""
    code = f"\nopen({str(marker)!r}, 'w').write('ran')\n"
    (folder / "run_lava.py").write_text(code)
    for path in ("runtime/__init__.py", "runtime/cli.py", "runtime/run.py", "runtime/proc/signed_if/models.py"):
        (folder / path).write_text((folder / path).read_text() + code)


def test_cli_compiles_for_lava_and_eval_runs_the_installed_runtime_on_a_relative_dir(
        lava_python: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from spikec.cli import main

    monkeypatch.chdir(tmp_path)  # DIR given relative to the working directory
    out = Path("tiny-lava")
    assert main(["compile", "gpt2", "--random-weights", "--config", "n_layer=2,n_embd=64,n_head=4", "-T", "4",
                 "--calib-samples", "2", "--seq-len", "16", "--target", "lava", "-o", str(out)]) == 0
    assert (out / "lava" / "run_lava.py").is_file() and (out / "lava" / "network.json").is_file()
    assert json.loads((out / "report.json").read_text())["lava"]["folder"] == "lava"
    capsys.readouterr()
    assert main(["eval", str(out), "--backend", "lava", "--tokens", "12", "--json"]) == 0
    captured = capsys.readouterr()
    assert "differs" not in captured.err
    result = json.loads(captured.out)
    assert result["spike_agreement"] == 1.0
    assert set(result["spike_agreement_per_layer"]) == {n for n in nirio.read(out / "model.nir").nodes if n.endswith("_neuron")}
    assert result["logits_max_abs_diff"] < 1e-4
    assert {"ann_ppl", "snn_ppl", "ppl_ratio", "cosine", "top1_agreement"} <= set(result)
    marker = tmp_path / "planted.txt"
    plant(out / "lava", marker)
    assert main(["eval", str(out), "--backend", "lava", "--tokens", "12", "--json"]) == 0
    captured = capsys.readouterr()
    assert not marker.exists(), "spikec eval --backend lava executed code from the model directory"
    assert json.loads(captured.out)["spike_agreement"] == 1.0
    warnings = [line for line in captured.err.splitlines() if "differs from this spikec" in line]
    assert len(warnings) == 1 and "not executed" in warnings[0]


def test_generation_in_lava_takes_a_relative_dir_and_never_runs_its_code(lava_python, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv(env.ENV_VAR, str(lava_python))
    graph, ids = converted("gpt2")
    nirio.write(tmp_path / "model.nir", graph)
    export.export_lava(graph, tmp_path / "lava")
    marker = tmp_path / "planted.txt"
    plant(tmp_path / "lava", marker)
    monkeypatch.chdir(tmp_path.parent)
    result = compare.generate_lava(tmp_path.name, ids[:, :6], 2)
    assert result["tokens_equal"] and len(result["tokens"]) == 2
    assert not marker.exists()
    assert capsys.readouterr().err.count("differs from this spikec") == 1
    # the planted code does run when the copy in the folder is run by hand
    subprocess.run([str(lava_python), "-c", "import sys; sys.path.insert(0, 'lava'); import runtime.cli"],
                   cwd=tmp_path, check=True, capture_output=True)
    assert marker.exists()
