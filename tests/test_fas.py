"""FAS two-stage conversion (passes/qcfs_finetune.py, passes/fas_calibrate.py) and per-neuron initial membranes: stage 1
lowers its loss and hands its thresholds to spike-encode, stage 2 lowers every layer's
error, both resume after an interruption exactly where an uninterrupted run ends, and a
per-neuron v_init runs spike for spike the same in the fx module, the simulator and
through a NIR file."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import spikec.passes  # noqa: F401  (registers the passes)
import torch
import torch.nn.functional as F
from canonical_models import llama_like, token_ids
from spikec.backends import nirio
from spikec.backends.lava.export import network_description
from spikec.backends.simulator import simulate
from spikec.passes import fas_layer, qcfs_finetune
from spikec.passes.fas_state import REFERENCE_KEY
from spikec.passes.fx_graph import attr_tensor, calls, get_arg
from spikec.passes.encode import thresholds
from torch import fx

from spikec.core import ir, neurons, ops
from spikec.core.errors import UnsupportedError, UsageError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.lower import lower_to_nir
from spikec.verify import compare_fx_and_simulator

T = 4
PREPARE = ["fold-norm-affine", "calibrate", "burst-all"]
STAGE1 = ["qcfs-finetune", "spike-encode"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared() -> fx.GraphModule:
    """A tiny Llama-shaped model after fold, calibrate and burst-all."""
    gm, _ = run_passes(llama_like(), PREPARE, _ctx("unused"))
    return gm


def _ctx(state: Any, **options: Any) -> PassContext:
    opts = {"timesteps": T, "qcfs_steps": 12, "qcfs_lr": 1e-3, "qcfs_seq_len": 16, "qcfs_batch": 2,
            "qcfs_checkpoint_every": 3, "fas_seq_len": 16, "fas_samples": 4, "fas_steps": 15,
            "fas_state_dir": str(state), "progress": False, **options}
    return PassContext(options=opts, calibration=token_ids(samples=8, positions=32, seed=2))


def _run(gm: fx.GraphModule, names: list[str], ctx: PassContext) -> fx.GraphModule:
    out, _ = run_passes(copy.deepcopy(gm), names, ctx)
    return out


def _kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(F.kl_div(F.log_softmax(out, -1).flatten(0, -2), F.log_softmax(ref, -1).flatten(0, -2),
                          log_target=True, reduction="batchmean"))


def _neurons(gm: fx.GraphModule) -> dict[str, tuple[torch.Tensor, Any]]:
    """threshold and v_init (float or tensor) of every SignedIF node, by name."""
    out = {}
    for n in calls(gm, ops.signed_if):
        v = get_arg(n, 5, "v_init")
        out[n.meta["spikec_name"]] = (attr_tensor(gm, get_arg(n, 1, "threshold")),
                                      attr_tensor(gm, v) if isinstance(v, fx.Node) else v)
    return out


# --- the quantizer -----------------------------------------------------------------------


def test_qcfs_is_the_rate_of_constant_current_signed_if_neurons():
    x = torch.randn(3, 5, 16) * 2
    theta = torch.rand(16) + 0.2
    v_init = torch.rand(16)
    for signed in (True, False):
        params = neurons.SignedIFParams(theta, max_spikes=2, signed=signed, v_init=v_init)
        simulated = neurons.signed_if_encode(x, params, 8).float().mean(0) * theta
        assert torch.allclose(fas_layer.qcfs(x, theta, 8, 2, signed, v_init), simulated, atol=1e-5)


def test_qcfs_gradients_are_straight_through_inside_the_range_and_zero_outside():
    x = torch.tensor([0.3, -0.7, 50.0], requires_grad=True)
    fas_layer.qcfs(x, torch.ones(3), 4, 1, True).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]


# --- stage 1 -----------------------------------------------------------------------------


def test_qcfs_finetune_lowers_its_distillation_loss(prepared, tmp_path):
    ctx = _ctx(tmp_path, qcfs_steps=30)
    _run(prepared, STAGE1, ctx)
    losses = ctx.stats["qcfs-finetune"]["losses"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_qcfs_finetune_hands_its_learned_thresholds_to_spike_encode(prepared, tmp_path):
    before = {n.name: n.meta["spikec_neuron"]["range_scale"] for n in calls(prepared, ops.affine)}
    original_weights = {k: v.clone() for k, v in prepared.state_dict().items()}
    ctx = _ctx(tmp_path, qcfs_steps=6)
    gm = _run(prepared, ["qcfs-finetune"], ctx)
    for n in calls(gm, ops.affine):
        assert n.meta["spikec_neuron"]["range_scale"] != before[n.name]  # each layer learned its own scale
    for k, v in prepared.state_dict().items():
        assert torch.equal(v, original_weights[k])  # the input module is untouched
    changed = [k for k, v in gm.state_dict().items() if not torch.equal(v, original_weights[k])]
    assert len(changed) >= len(list(calls(gm, ops.affine)))  # weights were fine-tuned too
    run_passes(gm, ["spike-encode"], ctx)
    for n in calls(gm, ops.signed_if):
        affine = next(iter(n.users))
        expected = thresholds(affine.meta["spikec_calibration"], affine.meta["spikec_neuron"])
        assert torch.equal(attr_tensor(gm, get_arg(n, 1, "threshold")), expected)


def test_qcfs_finetune_resumed_after_an_interruption_ends_like_an_uninterrupted_run(prepared, tmp_path, interrupt):
    full = _run(prepared, ["qcfs-finetune"], _ctx(tmp_path / "a"))
    # one KL per step: dies during step 7, after the checkpoint of step 6
    with interrupt(qcfs_finetune, "kl", after=7):
        _run(prepared, ["qcfs-finetune"], _ctx(tmp_path / "b"))
    assert list((tmp_path / "b").glob("qcfs-*.ckpt"))
    ctx = _ctx(tmp_path / "b")
    resumed = _run(prepared, ["qcfs-finetune"], ctx)
    assert ctx.stats["qcfs-finetune"]["resumed_from"] == 6
    for (k, v), (k2, v2) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    scales = lambda gm: [n.meta["spikec_neuron"]["range_scale"] for n in calls(gm, ops.affine)]
    assert scales(full) == scales(resumed)
    kept = _ctx(tmp_path / "c", qcfs_reuse=True)
    _run(prepared, ["qcfs-finetune"], kept)
    again = _ctx(tmp_path / "c", qcfs_reuse=True)
    reused = _run(prepared, ["qcfs-finetune"], again)  # a finished run is reused, not recomputed
    assert again.stats["qcfs-finetune"]["reused_finished_run"]
    assert scales(reused) == scales(full)


def test_qcfs_finetune_refuses_to_run_after_spike_encode(prepared, tmp_path):
    gm = _run(prepared, ["spike-encode"], _ctx(tmp_path))
    with pytest.raises(UsageError, match="before spike-encode"):
        run_passes(gm, ["qcfs-finetune"], _ctx(tmp_path))


# --- stage 2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["coarse", "fine"])
def test_fas_calibrate_lowers_every_layer_error_and_the_logits_error(prepared, tmp_path, mode):
    encoded = _run(prepared, ["spike-encode"], _ctx(tmp_path))
    ctx = _ctx(tmp_path, calibrate=mode)
    calibrated = _run(encoded, ["fas-calibrate"], ctx)
    stats = ctx.stats["fas-calibrate"]
    assert stats["layers"] == len(list(calls(encoded, ops.signed_if)))
    for n in calls(calibrated, ops.signed_if):
        info = n.meta["spikec_fas"]
        assert info["layer_mse_after"] <= info["layer_mse_before"]
    assert stats["layer_mse_sum_after"] < 0.5 * stats["layer_mse_sum_before"]
    ids = token_ids(samples=4, positions=16, seed=9)  # not the calibration tokens
    with torch.no_grad():
        ann = prepared(ids)
        assert _kl(ann, calibrated(ids)) < 0.5 * _kl(ann, encoded(ids))


def test_coarse_keeps_one_v_init_per_layer_fine_sets_one_per_neuron(prepared, tmp_path):
    encoded = _run(prepared, ["spike-encode"], _ctx(tmp_path))
    coarse = _neurons(_run(encoded, ["fas-calibrate"], _ctx(tmp_path, calibrate="coarse")))
    fine = _neurons(_run(encoded, ["fas-calibrate"], _ctx(tmp_path, calibrate="fine")))
    for name, (theta, v_init) in coarse.items():
        assert v_init == 0.5
        ratio = theta / _neurons(encoded)[name][0]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))  # one multiplier per layer
    per_neuron = [v for theta, v in fine.values() if isinstance(v, torch.Tensor) and v.shape == theta.shape]
    assert per_neuron and all(isinstance(v, torch.Tensor) or v == 0.5 for _, v in fine.values())


def test_fas_calibrate_refolds_the_thresholds_into_the_readout_weights(prepared, tmp_path):
    encoded = _run(prepared, ["spike-encode"], _ctx(tmp_path))
    calibrated = _run(encoded, ["fas-calibrate"], _ctx(tmp_path))
    for gm_a, gm_b in [(encoded, calibrated)]:
        for a, b in zip(calls(gm_a, ops.rate_readout_affine), calls(gm_b, ops.rate_readout_affine)):
            theta_a = attr_tensor(gm_a, get_arg(a.args[0], 1, "threshold"))
            theta_b = attr_tensor(gm_b, get_arg(b.args[0], 1, "threshold"))
            w_a, w_b = attr_tensor(gm_a, a.args[1]), attr_tensor(gm_b, b.args[1])
            assert torch.allclose(w_a / theta_a, w_b / theta_b, rtol=1e-5, atol=1e-7)  # the same W


def test_fas_calibrate_resumed_after_an_interruption_ends_like_an_uninterrupted_run(prepared, tmp_path, interrupt):
    encoded = _run(prepared, ["spike-encode"], _ctx(tmp_path))
    full = _neurons(_run(encoded, ["fas-calibrate"], _ctx(tmp_path / "a", fas_logits_steps=4)))
    with interrupt(fas_layer, "calibrate_layer", after=3):
        _run(encoded, ["fas-calibrate"], _ctx(tmp_path / "b", fas_logits_steps=4))
    ctx = _ctx(tmp_path / "b", fas_logits_steps=4)
    resumed = _neurons(_run(encoded, ["fas-calibrate"], ctx))
    assert ctx.stats["fas-calibrate"]["resumed_layers"] == 3
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name][0], resumed[name][0])
        assert torch.equal(full[name][1], resumed[name][1])


def test_fas_calibrate_needs_spike_encode_and_a_known_mode(prepared, tmp_path):
    with pytest.raises(UsageError, match="spike-encode"):
        run_passes(copy.deepcopy(prepared), ["fas-calibrate"], _ctx(tmp_path))
    encoded = _run(prepared, ["spike-encode"], _ctx(tmp_path))
    with pytest.raises(UsageError, match="calibrate mode"):
        run_passes(encoded, ["fas-calibrate"], _ctx(tmp_path, calibrate="medium"))


def test_after_qcfs_finetune_stage_2_targets_the_network_before_fine_tuning(prepared, tmp_path):
    gm = _run(prepared, STAGE1, _ctx(tmp_path, qcfs_steps=4))
    reference = gm.meta[REFERENCE_KEY]
    ids = token_ids(samples=3, positions=16, seed=9)
    layers = fas_layer.find_layers(gm)
    teacher = fas_layer.calibrate_layers(gm, layers, ids, 2, "coarse", 0, 1e-2, 0, ("threshold",), reference,
                              {"layers": {}}, lambda: None, False)
    with torch.no_grad():
        assert torch.allclose(teacher, prepared(ids), atol=1e-4)  # the original network's logits
        assert not torch.allclose(teacher, _run(gm, [], _ctx(tmp_path))(ids), atol=1e-2)
    run_passes(gm, ["fas-calibrate"], _ctx(tmp_path))
    assert REFERENCE_KEY not in gm.meta  # dropped once used


def test_both_stages_together_beat_plain_conversion(prepared, tmp_path):
    ids = token_ids(samples=4, positions=16, seed=9)
    plain = _run(prepared, ["spike-encode"], _ctx(tmp_path))
    both = _run(prepared, [*STAGE1, "fas-calibrate"], _ctx(tmp_path, qcfs_lr=1e-4))
    with torch.no_grad():
        ann = prepared(ids)
        assert _kl(ann, both(ids)) < 0.5 * _kl(ann, plain(ids))


# --- per-neuron v_init through lowering, the simulator, NIR files and Lava ---------------


@pytest.fixture(scope="module")
def fine_model(prepared, tmp_path_factory) -> tuple[fx.GraphModule, Any]:
    state = tmp_path_factory.mktemp("fas")
    gm = _run(prepared, ["spike-encode", "fas-calibrate"], _ctx(state))
    ids = token_ids(samples=1, positions=8, seed=4)
    return gm, lower_to_nir(gm, ids[:, :2], {"timesteps": T}, positions=8)


def test_per_neuron_v_init_runs_spike_for_spike_in_fx_and_the_simulator(fine_model):
    gm, graph = fine_model
    sif = [n for n in graph.nodes.values() if isinstance(n, ir.SpikecSignedIF)]
    per_neuron = [n for n in sif if isinstance(n.v_init, np.ndarray)]  # fine keeps them where they helped
    assert per_neuron and all(n.v_init.shape == n.threshold.shape for n in per_neuron)
    ids = token_ids(samples=2, positions=8, seed=4)
    agreement = compare_fx_and_simulator(gm, graph, ids, T)
    assert agreement.identical, agreement
    with torch.no_grad():
        assert torch.equal(simulate(graph, ids, T).output, gm(ids))  # the fast (count-only) path too
        assert torch.equal(simulate(graph, ids, T, mode="reference").output, gm(ids))


def test_per_neuron_v_init_round_trips_through_a_nir_file_and_scalar_files_still_read(fine_model, tmp_path):
    _, graph = fine_model
    nirio.write(tmp_path / "m.nir", graph)
    back = nirio.read(tmp_path / "m.nir")
    for name, node in graph.nodes.items():
        if isinstance(node, ir.SpikecSignedIF) and isinstance(node.v_init, np.ndarray):
            assert back.nodes[name].v_init.dtype == np.float32
            assert np.array_equal(back.nodes[name].v_init, node.v_init)
        elif isinstance(node, ir.SpikecSignedIF):
            assert type(back.nodes[name].v_init) is float and back.nodes[name].v_init == node.v_init
    scalar = ir.SpikecSignedIF(threshold=np.ones(3, np.float32), max_spikes=1, signed=True, v_init=0.5)
    one = type(graph)(nodes={"input": graph.nodes["input"], "n": scalar, "output": graph.nodes["output"]},
                      edges=[("input", "n"), ("n", "output")], type_check=False)
    nirio.write(tmp_path / "s.nir", one)
    read = nirio.read(tmp_path / "s.nir").nodes["n"].v_init
    assert type(read) is float and read == 0.5


def test_nir_reader_rejects_a_v_init_of_the_wrong_length(tmp_path):
    node = ir.SpikecSignedIF(threshold=np.ones(3, np.float32), max_spikes=1, signed=True,
                             v_init=np.zeros(2, np.float32))
    from spikec.core.ir import SpikecAdd
    graph = __import__("nir").NIRGraph(
        nodes={"input": __import__("nir").Input(input_type={"input": np.array([3])}), "n": node,
               "a": SpikecAdd(features=3), "output": __import__("nir").Output(output_type={"output": np.array([3])})},
        edges=[("input", "n"), ("n", "a"), ("a", "output")], type_check=False)
    nirio.write(tmp_path / "bad.nir", graph)
    with pytest.raises(Exception, match="v_init"):
        nirio.read(tmp_path / "bad.nir")


def test_lava_export_refuses_per_neuron_v_init_and_names_the_way_out(fine_model):
    _, graph = fine_model
    with pytest.raises(UnsupportedError, match="coarse"):
        network_description(graph, timesteps=T, positions=8)


def test_signed_if_with_per_neuron_v_init_equals_each_neuron_with_its_own_scalar():
    x = torch.randn(2, 3, 5)
    theta = torch.rand(5) + 0.5
    v_init = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.9])
    together = ops.signed_if(x, theta, 6, 2, True, v_init)
    for f in range(5):
        alone = ops.signed_if(x[..., f:f + 1], theta[f:f + 1], 6, 2, True, float(v_init[f]))
        assert torch.equal(together[..., f:f + 1], alone)


def test_state_lives_where_the_option_says(prepared, tmp_path):
    ctx = _ctx(tmp_path / "state", qcfs_steps=2)
    _run(prepared, [*STAGE1, "fas-calibrate"], ctx)
    assert Path(ctx.stats["qcfs-finetune"]["checkpoint"]).parent == tmp_path / "state"
    assert Path(ctx.stats["fas-calibrate"]["state_file"]).is_file()


# --- state files -------------------------------------------------------------------------


class _Planted:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_state_file_is_never_loaded_and_the_pass_still_works(prepared, tmp_path, capsys):
    encoded = _run(prepared, ["spike-encode"], _ctx(tmp_path / "x"))
    first = _ctx(tmp_path / "state", calibrate="coarse")
    expected = _neurons(_run(encoded, ["fas-calibrate"], first))
    path = Path(first.stats["fas-calibrate"]["state_file"])
    marker = tmp_path / "pwned"
    torch.save({"run_id": first.stats["fas-calibrate"]["run_id"], "complete": True,
                "payload": _Planted(str(marker))}, path)  # what another user could plant
    ctx = _ctx(tmp_path / "state", calibrate="coarse")
    got = _neurons(_run(encoded, ["fas-calibrate"], ctx))
    assert not marker.exists()
    assert not ctx.stats["fas-calibrate"]["reused_finished_run"]
    assert "not a spikec safetensors state" in capsys.readouterr().err
    for name in expected:
        assert torch.equal(expected[name][0], got[name][0])


def test_a_state_folder_others_can_write_is_not_used(prepared, tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    encoded = _run(prepared, ["spike-encode"], _ctx(tmp_path / "x"))
    ctx = _ctx(shared, calibrate="coarse")
    _run(encoded, ["fas-calibrate"], ctx)
    assert ctx.stats["fas-calibrate"]["state_file"] is None
    assert not list(shared.iterdir())
    assert "group and others cannot write" in capsys.readouterr().err
    ctx = _ctx(shared, qcfs_steps=2, qcfs_reuse=True)
    _run(prepared, ["qcfs-finetune"], ctx)
    assert ctx.stats["qcfs-finetune"]["checkpoint"] is None and not list(shared.iterdir())


def test_state_folders_are_created_private(prepared, tmp_path):
    encoded = _run(prepared, ["spike-encode"], _ctx(tmp_path / "x"))
    _run(encoded, ["fas-calibrate"], _ctx(tmp_path / "new" / "state", calibrate="coarse"))
    assert (tmp_path / "new" / "state").stat().st_mode & 0o777 == 0o700
