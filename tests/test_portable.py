"""The portable profile: the ``portable-encode`` conversion (standard NIR IF neurons), the
export of a model.nir as standard NIR subgraphs plus a manifest, its refusal of
non-portable neurons, ``spikec export-nir`` and what ``spikec inspect`` says about
portability."""

from __future__ import annotations

import json
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

import spikec.passes  # noqa: F401  (registers the passes)
from canonical_models import calls_to, gpt2_like, llama_like, token_ids
from spikec.backends import nirio, portable
from spikec.backends.simulator import simulate
from spikec.cli import main
from spikec.core import ir, neurons, ops
from spikec.core.errors import UnsupportedError, UsageError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.lower import lower_to_nir
from spikec.verify import compare_fx_and_simulator

T = 8
PORTABLE = ["fold-norm-affine", "calibrate", "portable-encode"]
DEFAULT = ["fold-norm-affine", "calibrate", "burst-all", "spike-encode"]


def convert(family, passes=PORTABLE, timesteps: int = T, **options):
    gm, ids = family(), token_ids()
    ctx = PassContext(options={"timesteps": timesteps, **options}, calibration=ids)
    gm, records = run_passes(gm, passes, ctx)
    return gm, ids, records[-1].stats


def lowered(family, passes=PORTABLE, timesteps: int = T):
    gm, ids, _ = convert(family, passes, timesteps)
    meta = {"spikec_version": "0.1.0", "profile": "full", "dt": 1.0, "timesteps": timesteps, "model": "tiny"}
    return gm, ids, lower_to_nir(gm, ids[:, :2], meta)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Llama converted with portable-encode: (model.nir path, graph, export dir)."""
    root = tmp_path_factory.mktemp("portable")
    _, _, graph = lowered(llama_like)
    nirio.write(root / "model.nir", graph)
    assert main(["export-nir", str(root), "--profile", "portable", "-o", str(root / "out")]) == 0
    return root / "model.nir", graph, root / "out"


# ---------------------------------------------------------------------------
# the neuron and the pass
# ---------------------------------------------------------------------------


def test_portable_neuron_follows_the_nir_if_definition_literally() -> None:
    # v += I; spike only where v > 1 (strictly: 0.5 + 0.5 = 1.0 does not fire); then v = 0
    current = torch.tensor([0.5, 0.3, 1.2, 0.0, -0.7])
    spikes = ops.nir_if(current, 6)
    expected = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [1, 0, 1, 0, 0],
                             [0, 1, 1, 0, 0], [0, 0, 1, 0, 0], [1, 0, 1, 0, 0]], dtype=torch.int8)
    assert torch.equal(spikes, expected)
    assert spikes.dtype == neurons.SPIKE_DTYPE


def test_reset_to_zero_fires_every_floor_one_over_u_plus_one_steps() -> None:
    u = torch.linspace(0.01, 0.99, 97)
    counts = ops.nir_if(u, 64).sum(0, dtype=torch.int64)
    period = torch.floor(1 / u) + 1
    exact = (1 / u) == torch.floor(1 / u)  # v lands on the threshold: one more step
    period = torch.where(exact, 1 / u + 1, period)
    assert torch.equal(counts, torch.floor(64 / period).to(torch.int64))


def test_portable_encode_leaves_only_standard_neurons() -> None:
    gm, _, stats = convert(gpt2_like)
    assert not calls_to(gm, ops.signed_if) and not calls_to(gm, ops.affine)
    assert len(calls_to(gm, ops.nir_if)) == len(calls_to(gm, ops.rate_readout_affine)) == stats["affines_encoded"] == 9
    for n in calls_to(gm, ops.nir_if):
        assert n.meta["role"] == "neuron" and n.kwargs["r"] == 1.0 and n.kwargs["v_reset"] == 0.0


def test_each_affine_computes_w_times_the_sign_split_rate_code_plus_b() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    theta = torch.rand(16) + 0.5
    w, b = torch.randn(4, 16), torch.randn(4)
    gain = 1.25
    spikes = ops.nir_if(ops.linear(x, portable_pass().sign_split(theta, True)), T)
    folded = w * (theta * gain)[None, :]
    y = ops.rate_readout_affine(spikes, torch.cat([folded, -folded], 1), b)
    rate = lambda u: ops.nir_if(u, T).sum(0, dtype=torch.float32) / T  # noqa: E731
    q = gain * theta * (rate(x / theta) - rate(-x / theta))
    assert torch.allclose(y, q @ w.T + b, atol=1e-5)


def portable_pass():
    from spikec.passes import portable_encode as module

    return module


def test_inputs_after_a_relu_get_only_positive_neurons() -> None:
    gm, _, stats = convert(lambda: gpt2_like(activation="relu"))
    (enc,) = [n for n in calls_to(gm, ops.linear) if n.meta["spikec_name"] == "h.0.mlp.out.encode"]
    weight = getattr(gm, enc.args[1].target)
    assert weight.shape == (128, 128) and (torch.diagonal(weight) > 0).all()
    assert stats["unsigned_layers"] == 2


@pytest.mark.parametrize("family", [gpt2_like, llama_like], ids=["gpt2", "llama"])
def test_simulator_reproduces_the_portable_fx_module_spike_for_spike(family) -> None:
    gm, ids, graph = lowered(family)
    agreement = compare_fx_and_simulator(gm, graph, ids, T)
    assert agreement.layers == 9 and agreement.identical


def test_portable_model_nir_is_standard_except_the_glue() -> None:
    _, _, graph = lowered(llama_like)
    kinds = {type(n) for n in graph.nodes.values()}
    assert {nir.Linear, nir.IF, nir.Affine} <= kinds and ir.SpikecSignedIF not in kinds
    for node in graph.nodes.values():
        if isinstance(node, nir.IF):
            assert (node.r == 1).all() and (node.v_threshold == 1).all() and (node.v_reset == 0).all()


def test_portable_encode_needs_calibration_and_sane_options() -> None:
    with pytest.raises(UsageError, match="calibrate"):
        run_passes(gpt2_like(), ["portable-encode"], PassContext(options={"timesteps": T}))
    for bad in ({"portable_range": "median"}, {"portable_range_scale": -1}, {"portable_gain": "x"},
                {"portable_fit": "l1"}):
        with pytest.raises(UsageError, match="portable_"):
            convert(gpt2_like, **bad)


def test_without_the_fit_the_range_scale_option_sets_the_encoder_thresholds() -> None:
    gm1, _, _ = convert(gpt2_like, portable_fit="none")
    gm2, _, _ = convert(gpt2_like, portable_fit="none", portable_range_scale=3.0)
    enc = lambda gm: getattr(gm, calls_to(gm, ops.linear)[0].args[1].target)  # noqa: E731
    assert torch.allclose(enc(gm1) * 1.5, enc(gm2) * 3.0)


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------


def test_export_writes_one_standard_subgraph_per_spiking_affine(exported) -> None:
    _, graph, out = exported
    manifest = json.loads((out / "manifest.json").read_text())
    affines = [n for n, node in graph.nodes.items() if isinstance(node, nir.Affine)]
    assert sorted(s["name"] for s in manifest["subgraphs"]) == sorted(affines)
    for entry in manifest["subgraphs"]:
        sub = nir.read(out / entry["file"])  # nir's own reader: no extension node inside
        assert [type(sub.nodes[n]).__name__ for n in sub.nodes] == ["Input", "Linear", "IF", "Affine", "Output"]
        assert float(sub.metadata["dt"]) == 1.0 and int(sub.metadata["timesteps"]) == T
        assert entry["neurons"] == [entry["name"] + "_neuron"]
        assert [s for s, d in sub.edges if d == "output"] == [entry["name"]]


def test_manifest_lists_every_node_once_in_dependency_order(exported) -> None:
    _, graph, out = exported
    manifest = portable.read_manifest(out)
    seen: set[str] = set()
    covered = []
    for step in manifest["steps"]:
        unit = step.get("node", step.get("subgraph"))
        assert all(src in seen for src in step["inputs"]), step
        seen.add(unit)
        if "subgraph" in step:
            covered += [n for s in manifest["subgraphs"] if s["name"] == unit for n in s["nodes"]]
        else:
            covered.append(unit)
    assert sorted(covered) == sorted(graph.nodes)
    glue = [s["type"] for s in manifest["steps"] if "node" in s]
    assert "SpikecRMSNorm" in glue and "SpikecAttention" in glue and "SpikecRateReadout" in glue


def test_subgraphs_joined_as_the_manifest_says_give_the_model_back(exported) -> None:
    _, graph, out = exported
    ids = token_ids(samples=2)
    rebuilt = portable.recompose(out, graph)
    assert rebuilt.edges == graph.edges
    assert torch.equal(simulate(rebuilt, ids, T).output, simulate(graph, ids, T).output)


def test_export_of_default_neurons_fails_naming_them(tmp_path: Path, capsys) -> None:
    _, _, graph = lowered(gpt2_like, DEFAULT)
    with pytest.raises(UnsupportedError, match="SpikecSignedIF.*portable-encode"):
        portable.write_portable(graph, tmp_path)
    assert not list(tmp_path.iterdir())
    nirio.write(tmp_path / "model.nir", graph)
    assert main(["export-nir", str(tmp_path), "-o", str(tmp_path / "out")]) == 4
    err = capsys.readouterr().err
    assert "h_0_attn_qkv_neuron" in err and "--passes fold-norm-affine,calibrate,portable-encode" in err
    assert not (tmp_path / "out").exists()


def test_full_profile_copies_model_nir_byte_for_byte(exported, tmp_path: Path) -> None:
    model, _, _ = exported
    assert main(["export-nir", str(model), "--profile", "full", "-o", str(tmp_path / "full")]) == 0
    assert (tmp_path / "full" / "model.nir").read_bytes() == model.read_bytes()


def test_export_keeps_an_existing_output_without_force(exported, capsys) -> None:
    model, _, out = exported
    before = (out / "manifest.json").read_text()
    assert main(["export-nir", str(model), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export-nir", str(model), "-o", str(out), "--force"]) == 0
    assert (out / "manifest.json").read_text() == before


def test_export_of_a_missing_directory_is_bad_input(tmp_path: Path) -> None:
    assert main(["export-nir", str(tmp_path / "nothing"), "-o", str(tmp_path / "out")]) == 3


# ---------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------


def test_inspect_says_which_nodes_are_standard_and_whether_the_file_is_portable(exported, tmp_path, capsys) -> None:
    model, _, out = exported
    assert main(["inspect", str(out / "h_0_mlp_in.nir")]) == 0
    text = capsys.readouterr().out
    assert "spikec extension nodes: 0" in text and "portable: yes" in text
    assert main(["inspect", str(model)]) == 0
    text = capsys.readouterr().out
    assert "standard NIR nodes: 29" in text and "SpikecRMSNorm x5" in text and "splits it into 9" in text
    _, _, default = lowered(gpt2_like, DEFAULT)
    nirio.write(tmp_path / "default.nir", default)
    assert main(["inspect", str(tmp_path / "default.nir")]) == 0
    text = capsys.readouterr().out
    assert "portable: no; nodes with no standard NIR equivalent: SpikecSignedIF x9" in text


def test_portability_of_a_hand_written_standard_graph() -> None:
    graph = nir.NIRGraph.from_list(nir.Linear(weight=np.eye(3, dtype=np.float32)),
                                   nir.IF(r=np.ones(3), v_threshold=np.ones(3)))
    p = portable.portability(graph)
    assert p.portable and p.splittable and not p.extension


# ---------------------------------------------------------------------------
# the per-channel fit
# ---------------------------------------------------------------------------


def test_closed_form_rate_matches_the_simulated_neuron() -> None:
    u = torch.linspace(-1.5, 2.5, 4001)
    simulated = ops.nir_if(u, 32).sum(0, dtype=torch.float32) / 32
    assert torch.equal(portable_pass().if_rate(u, 32), simulated)


def test_mse_fit_beats_the_fixed_range_on_calibration_activations() -> None:
    module = portable_pass()
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((4096, 8)) * torch.linspace(0.5, 4.0, 8)
    base = x.abs().quantile(0.999, dim=0)
    fit = module.ChannelFit(base, signed=True, timesteps=32)
    fit.update(x)
    theta, gain = fit.result()

    def error(theta: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        u = x / theta
        q = gain * theta * (module.if_rate(u, 32) - module.if_rate(-u, 32))
        return (q - x).pow(2).mean(0)

    fitted, fixed = error(theta, gain), error(base * 1.5, torch.ones(8))
    assert (fitted < fixed).all()
    assert (fitted < 0.6 * fixed).any()
    assert set((theta / base).round(decimals=4).tolist()) <= {round(s, 4) for s in module.FIT_SCALES}


def test_fit_none_uses_the_range_scale_and_gain_options() -> None:
    _, _, stats = convert(gpt2_like, portable_fit="none", portable_gain=1.1)
    assert stats["fit"] == "none" and stats["gain"] == 1.1 and stats["range_scale"] == 1.5
    _, _, stats = convert(gpt2_like)
    assert stats["fit"] == "mse" and 0.5 <= stats["fitted_gain_median"] <= 4.0


def test_export_for_spikingjelly_moves_each_threshold_to_the_next_float_up(exported, tmp_path: Path) -> None:
    model, _, _ = exported
    assert main(["export-nir", str(model), "--importer", "spikingjelly", "-o", str(tmp_path / "sj")]) == 0
    manifest = portable.read_manifest(tmp_path / "sj")
    sub = nir.read(tmp_path / "sj" / manifest["subgraphs"][0]["file"])
    (neuron,) = [n for n in sub.nodes.values() if isinstance(n, nir.IF)]
    assert (neuron.v_threshold == np.nextafter(np.float32(1), np.float32(2))).all()
    assert manifest["importer"] == "spikingjelly" and sub.metadata["adjusted_for"] == "spikingjelly"
