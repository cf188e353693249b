"""Spiking self-attention (``--attention ssa``): the operator, its surrogate gradients, the
``ssa`` and ``ssa-finetune`` passes, the simulator kernel and ``spikec finetune``."""

from __future__ import annotations

import dataclasses
import json

from pathlib import Path

import numpy as np
import pytest
import spikec.passes
import spikec.passes.ssa_finetune as pass_ssa_finetune
import torch
from canonical_models import by_name, calls_to, gpt2_like, llama_like, token_ids
from spikec.backends import nirio
from spikec.backends.simulator import simulate
from torch import fx

from spikec.cli import main
from spikec.core import ops, ssa
from spikec.core.ir import SpikecSSA
from spikec.core.errors import UnsupportedError, UsageError
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.lower import lower_to_nir
from spikec.verify import SpikeRecorder, compare_fx_and_simulator

T = 4
PIPELINE = [*spikec.passes.DEFAULT_PIPELINE, "ssa"]
FAMILIES = {"gpt2": lambda: gpt2_like(d=32, n_head=4, n_layer=2),
            "llama": lambda: llama_like(d=32, n_head=4, n_kv_head=2, n_layer=2)}


pytestmark = pytest.mark.usefixtures("one_thread")


def convert(family: str, names: list[str] = PIPELINE, samples: int = 8, **options) -> tuple[fx.GraphModule, PassContext]:
    ctx = PassContext(options={"timesteps": T, "progress": False, **options},
                      calibration=token_ids(samples=samples, positions=12, seed=2))
    gm, _ = run_passes(FAMILIES[family](), names, ctx)
    return gm, ctx


def ssa_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return calls_to(gm, ssa.spiking_self_attention)


# --- the operator -----------------------------------------------------------------------------


@pytest.mark.parametrize("surrogate, alpha", [("sigmoid", 4.0), ("arctan", 2.0)])
def test_spike_is_a_step_forward_and_the_surrogate_derivative_backward(surrogate, alpha):
    v = torch.tensor([-2.0, -1e-6, 0.0, 0.5, 1.0 - 1e-6, 1.0, 3.0], requires_grad=True)
    s = ssa.spike(v, signed=True, surrogate=surrogate, alpha=alpha)
    assert s.tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert ssa.spike(v.detach(), signed=False).tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    s.sum().backward()
    peak = alpha / 4 if surrogate == "sigmoid" else alpha / 2  # the surrogate's slope at its step
    expected = ssa.surrogate_derivative(v.detach() - 1, surrogate, alpha) + ssa.surrogate_derivative(
        v.detach(), surrogate, alpha)
    assert torch.allclose(v.grad, expected)
    assert v.grad[5] == pytest.approx(peak + float(ssa.surrogate_derivative(torch.tensor(1.0), surrogate, alpha)))
    assert v.grad[0] < v.grad[2] and v.grad[6] < v.grad[5]  # peaked at the two thresholds


def test_unknown_surrogate_is_refused():
    with pytest.raises(ValueError, match="surrogate"):
        ssa.spike(torch.zeros(2, requires_grad=True), True, "relu")


@pytest.mark.parametrize("signed", [True, False])
def test_if_neuron_on_a_constant_current_counts_round_of_t_times_the_current(signed: bool):
    u = torch.linspace(-1.3, 1.3, 27)
    v = torch.full_like(u, ssa.V_INIT)
    count = torch.zeros_like(u)
    for _ in range(8):
        s, v = ssa.neuron_step(u, v, signed)
        count += s
    expected = torch.clamp(torch.floor(8 * u + 0.5), -8 if signed else 0, 8)
    assert torch.equal(count, expected)


def _reference_ssa(qkv, thr, h, kv, d, rope, steps, signed, normalize, decay=None, map_threshold=None,
                   map_bias=None):
    """SSA written out position by position, head by head, with scalar neurons (and, with
    ``map_threshold``, one scalar map neuron per head and causal pair)."""
    q, k, v = ssa.split_heads(qkv, h, kv, d, rope)
    b, _, p, _ = q.shape
    qt, kt, vt, scale, ot = (x.view(-1, d) for x in thr)

    def train(x, theta):  # constant current -> IF spike train, [T, ...]
        u, mem, out = x / theta, torch.full_like(x, 0.5), []
        for _ in range(steps):
            mem = mem + u
            s = (mem >= 1).float() - ((mem < 0).float() if signed else 0)
            mem = mem - s
            out.append(s)
        return torch.stack(out)

    sq = train(q, qt[None, :, None, :])
    sk = train(k, kt[None, :, None, :])
    sv = train(v, vt[None, :, None, :])
    out = torch.zeros(steps, b, p, h * d)
    mem = torch.full((b, h, p, d), 0.5)
    map_mem = torch.full((b, h, p, p), 0.5)
    for t in range(steps):
        y = torch.zeros(b, h, p, d)
        for head in range(h):
            g = head // (h // kv)
            for i in range(p):
                lam = 1.0 if decay is None else float(decay[head])
                for j in range(i + 1):  # causal: j <= i only
                    a = (sq[t, :, head, i] * sk[t, :, g, j]).sum(-1)
                    if map_threshold is not None:  # an unsigned IF neuron on the map entry
                        map_mem[:, head, i, j] += a / map_threshold[head] - map_bias[head]
                        a = (map_mem[:, head, i, j] >= 1).float()
                        map_mem[:, head, i, j] -= a
                    a = a * lam ** (i - j)
                    y[:, head, i] += a[:, None] * sv[t, :, g, j]
                if normalize:
                    y[:, head, i] /= sum(lam ** n for n in range(i + 1))
        mem = mem + y * (scale / ot)[None, :, None, :]
        s = (mem >= 1).float() - ((mem < 0).float() if signed else 0)
        mem = mem - s
        out[t] = s.transpose(1, 2).reshape(b, p, h * d)
    return out


@pytest.mark.parametrize("h, kv, rope, signed, normalize, decay, map_neurons", [
    (2, 2, 0.0, True, True, None, False), (4, 2, 100.0, False, True, None, False),
    (2, 1, 10000.0, True, False, None, False), (4, 2, 10000.0, True, True, [1.0, 0.9, 0.5, 0.75], False),
    (2, 1, 10000.0, True, True, None, True), (4, 2, 0.0, False, True, [1.0, 0.9, 0.5, 0.75], True)])
def test_ssa_equals_the_written_out_definition(h, kv, rope, signed, normalize, decay, map_neurons):
    d, p = 4, 5
    qkv = torch.randn(2, p, (h + 2 * kv) * d) * 2
    thr = [torch.rand(h * d) + 0.5, torch.rand(kv * d) + 0.5, torch.rand(kv * d) + 0.5, torch.randn(h * d),
           torch.rand(h * d) + 0.5]
    decay = None if decay is None else torch.tensor(decay)
    maps = {"map_threshold": torch.rand(h) + 0.5, "map_bias": torch.rand(h) * 0.5} if map_neurons else {}
    got = ssa.spiking_self_attention(qkv, *thr, h, kv, d, rope, 6, signed, 0.0, normalize, decay=decay, **maps)
    want = _reference_ssa(qkv, thr, h, kv, d, rope, 6, signed, normalize, decay, **maps)
    assert got.dtype == torch.int8 and got.shape == (6, 2, p, h * d)
    assert got.abs().sum() > 0
    if map_neurons:  # the map neurons do select: they differ from the raw products
        assert not torch.equal(got, ssa.spiking_self_attention(qkv, *thr, h, kv, d, rope, 6, signed, 0.0,
                                                               normalize, decay=decay))
    if decay is None and not map_neurons:
        assert torch.equal(got.float(), want)  # integer sums: exact whatever the order
    else:  # real-valued weights: equal up to float rounding at a threshold
        assert (got.float() != want).float().mean() < 0.01


def test_gradients_reach_every_threshold_and_the_scale_through_the_time_steps():
    h, kv, d = 2, 1, 4
    qkv = torch.randn(2, 6, (h + 2 * kv) * d)
    params = [torch.full((n * d,), 0.7, requires_grad=True) for n in (h, kv, kv, h, h)]
    out = ssa.ssa_forward(qkv, *params, h, kv, d, 0.0, 5, surrogate="arctan")
    (out.mean(0) * torch.randn_like(out[0])).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


# --- the ssa pass, the simulator, NIR ------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ssa_pass_replaces_every_attention_and_the_projection_reads_its_spikes(family: str):
    gm, ctx = convert(family)
    assert not calls_to(gm, ops.attention)
    nodes = ssa_nodes(gm)
    assert [n.meta["spikec_name"] for n in nodes] == ["h.0.attn.ssa", "h.1.attn.ssa"]
    for node in nodes:
        (readout,) = node.users
        assert readout.target is ops.rate_readout_affine and readout.meta["role"] == "attn_out"
    names = by_name(gm)
    assert "h.0.attn.out.neuron" not in names  # the projection's own encoder is gone
    with torch.no_grad():
        spikes = SpikeRecorder(gm)
        spikes.run(token_ids(samples=2, positions=10, seed=5))
    train = spikes.spikes["h_0_attn_ssa"]
    assert train.dtype == torch.int8 and train.shape[0] == T and set(train.unique().tolist()) <= {-1, 0, 1}
    assert ctx.stats["ssa"]["layers"] == 2


VARIANTS = [("gpt2", {}), ("llama", {}), ("llama", {"ssa_decay": "fit"}),
            ("llama", {"ssa_decay": "fit", "ssa_map": "spike"})]


@pytest.mark.parametrize("family, options", VARIANTS)
def test_fx_module_and_simulator_give_identical_spikes_and_logits(family: str, options: dict):
    gm, _ = convert(family, **options)
    ids = token_ids(samples=1, positions=9, seed=7)
    graph = lower_to_nir(gm, ids[:, :2])
    assert sum(type(n).__name__ == "SpikecSSA" for n in graph.nodes.values()) == 2
    agreement = compare_fx_and_simulator(gm, graph, ids, T)  # fast mode
    assert agreement.identical and agreement.layers == 9  # 2 SSA + 7 SignedIF layers
    fx_spikes = SpikeRecorder(gm)
    with torch.no_grad():
        logits = fx_spikes.run(ids)
    ref = simulate(graph, ids, T, record=True, mode="reference")
    assert torch.equal(ref.spikes["h_1_attn_ssa"], fx_spikes.spikes["h_1_attn_ssa"])
    assert torch.equal(ref.output, logits)


@pytest.mark.parametrize("family, options", VARIANTS)
def test_changing_a_later_token_never_changes_an_earlier_positions_spikes(family: str, options: dict):
    gm, _ = convert(family, **options)
    ids = token_ids(samples=1, positions=10, seed=7)
    later = ids.clone()
    later[0, 6:] = (later[0, 6:] + 11) % 61
    graph = lower_to_nir(gm, ids[:, :2])
    fx_a, fx_b = SpikeRecorder(gm), SpikeRecorder(gm)
    with torch.no_grad():
        fx_a.run(ids)
        fx_b.run(later)
    sim_a, sim_b = (simulate(graph, x, T, record=True) for x in (ids, later))
    for name in ("h_0_attn_ssa", "h_1_attn_ssa"):
        for a, b in ((fx_a.spikes[name], fx_b.spikes[name]), (sim_a.spikes[name], sim_b.spikes[name])):
            assert torch.equal(a[:, :, :6], b[:, :, :6])  # positions 0..5 never see tokens 6..9
            assert not torch.equal(a[:, :, 6:], b[:, :, 6:])  # (and the change did reach the later ones)


def test_ssa_node_survives_a_nir_file_round_trip(tmp_path: Path):
    gm, _ = convert("llama")
    ids = token_ids(samples=1, positions=8, seed=7)
    graph = lower_to_nir(gm, ids[:, :2])
    nirio.write(tmp_path / "m.nir", graph)
    back = nirio.read(tmp_path / "m.nir")
    node = back.nodes["h_0_attn_ssa"]
    assert isinstance(node, SpikecSSA) and node.signed and node.normalize and node.rope_theta == 10000.0
    assert not node.has_map_neurons
    assert torch.equal(simulate(back, ids, T).output, simulate(graph, ids, T).output)


def test_attention_map_neurons_survive_a_nir_file_round_trip_and_a_file_without_them_reads(tmp_path: Path):
    gm, ctx = convert("llama", ssa_map="spike")
    assert ctx.stats["ssa"]["map"] == "spike"
    ids = token_ids(samples=1, positions=8, seed=7)
    graph = lower_to_nir(gm, ids[:, :2])
    nirio.write(tmp_path / "m.nir", graph)
    node = nirio.read(tmp_path / "m.nir").nodes["h_0_attn_ssa"]
    assert node.has_map_neurons and node.map_threshold.shape == (4,) and (node.map_threshold > 0).all()
    np.testing.assert_array_equal(node.map_bias, graph.nodes["h_0_attn_ssa"].map_bias)
    older = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)
             if f.name not in ("map_threshold", "map_bias", "input_type", "output_type")}
    assert not SpikecSSA(**older).has_map_neurons  # written before map neurons existed: none


def test_an_ssa_node_with_a_non_positive_threshold_or_a_decay_above_one_is_refused():
    ones = torch.ones(4).numpy()
    fields = {"num_heads": 2, "num_kv_heads": 1, "head_dim": 2, "rope_theta": 0.0, "q_threshold": ones,
              "k_threshold": ones[:2], "v_threshold": ones[:2], "scale": ones, "o_threshold": ones, "signed": True,
              "tau": 0.0, "normalize": True, "decay": ones[:2]}
    SpikecSSA(**fields)
    with pytest.raises(ValueError, match="thresholds must be positive"):
        SpikecSSA(**{**fields, "v_threshold": -ones[:2]})
    with pytest.raises(ValueError, match="decay"):
        SpikecSSA(**{**fields, "decay": 2 * ones[:2]})
    with pytest.raises(ValueError, match="map_threshold must be all positive"):
        SpikecSSA(**{**fields, "map_threshold": np.array([1.0, 0.0], np.float32)})


def test_binary_lif_variant_emits_only_zero_or_one():
    gm, ctx = convert("gpt2", ssa_signed=0, ssa_tau=2.0)
    spikes = SpikeRecorder(gm)
    with torch.no_grad():
        spikes.run(token_ids(samples=1, positions=8, seed=5))
    assert set(spikes.spikes["h_0_attn_ssa"].unique().tolist()) <= {0, 1}
    assert ctx.stats["ssa"]["neuron"] == "LIF tau=2.0" and ctx.stats["ssa"]["signed"] is False


def test_ssa_pass_errors_name_the_problem():
    with pytest.raises(UsageError, match="no softmax attention"):
        convert("gpt2", [*PIPELINE, "ssa"])  # already replaced
    with pytest.raises(UsageError, match="ssa_tau"):
        convert("gpt2", ssa_tau=0.5)
    with pytest.raises(UsageError, match="ssa_map must be one of none, spike"):
        convert("gpt2", ssa_map="relu")
    gm = gpt2_like(n_layer=1)
    attn = calls_to(gm, ops.attention)[0]
    attn.args = (*attn.args[:5], None, False)  # non-causal
    with pytest.raises(UnsupportedError, match="causal"):
        run_passes(gm, ["ssa"], PassContext(options={"timesteps": T}, calibration=token_ids(seed=2)))
    with pytest.raises(UsageError, match="run the ssa pass"):
        convert("gpt2", [*spikec.passes.DEFAULT_PIPELINE, "ssa-finetune"])
    with pytest.raises(UsageError, match="surrogate"):
        convert("gpt2", [*PIPELINE, "ssa-finetune"], surrogate="relu")


# --- fine-tuning ----------------------------------------------------------------------------------


@pytest.mark.parametrize("map_neurons", ["none", "spike"])
def test_finetuning_lowers_the_loss_and_trains_only_the_ssa_parameters(map_neurons: str):
    gm, ctx = convert("llama", finetune_steps=12, finetune_lr=2e-2, finetune_rank=4, ssa_decay="fit",
                      ssa_map=map_neurons)
    decays = [gm.get_buffer(n.kwargs["decay"].target).clone() for n in ssa_nodes(gm)]
    maps = [gm.get_buffer(n.kwargs["map_threshold"].target).clone() for n in ssa_nodes(gm) if "map_threshold" in n.kwargs]
    assert len(maps) == (2 if map_neurons == "spike" else 0)
    frozen = {k: v.clone() for k, v in gm.state_dict().items()}
    tuned, _ = run_passes(gm, ["ssa-finetune"], ctx)
    stats = ctx.stats["ssa-finetune"]
    assert stats["loss_after"] < 0.9 * stats["loss_before"]
    assert len(stats["train_losses"]) == 12 and stats["trained_parameters"] > 0
    changed = {k for k, v in tuned.state_dict().items() if k not in frozen or not torch.equal(v, frozen[k])}
    assert changed and all(("ssa" in k or "attn" in k) for k in changed)  # nothing outside attention moved
    assert all("mlp" not in k and "lm_head" not in k and "embed" not in k for k in changed)
    trained = [tuned.get_buffer(n.kwargs["decay"].target) for n in ssa_nodes(tuned)]
    assert any(not torch.equal(a, b) for a, b in zip(decays, trained)) and all((t > 0).all() and (t <= 1).all()
                                                                             for t in trained)
    for before, node in zip(maps, ssa_nodes(tuned)):  # the map thresholds train too
        assert not torch.equal(before, tuned.get_buffer(node.kwargs["map_threshold"].target))
    ids = token_ids(samples=1, positions=8, seed=7)
    assert compare_fx_and_simulator(tuned, lower_to_nir(tuned, ids[:, :2]), ids, T).identical


def test_resumed_finetuning_ends_where_an_uninterrupted_run_ends(tmp_path: Path, interrupt):
    options = {"finetune_steps": 8, "finetune_lr": 1e-2, "finetune_rank": 2, "finetune_checkpoint_every": 2}
    full, _ = convert("gpt2", [*PIPELINE, "ssa-finetune"], **options)

    ckpt = tmp_path / "ft.ckpt"
    # 2 blocks x (mean loss of 2 batches) + 5 training steps
    with interrupt(pass_ssa_finetune, "block_loss", after=2 * 2 + 2 * 5):
        convert("gpt2", [*PIPELINE, "ssa-finetune"], **options, finetune_checkpoint=str(ckpt))
    assert ckpt.exists()
    resumed, ctx = convert("gpt2", [*PIPELINE, "ssa-finetune"], **options, finetune_checkpoint=str(ckpt))
    assert ctx.stats["ssa-finetune"]["resumed_from"] == 4
    assert not ckpt.exists()
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the command line -----------------------------------------------------------------------------

TINY = ["gpt2", "--random-weights", "--config", "n_layer=1,n_embd=32,n_head=2", "-T", "4", "--seq-len", "16",
        "--calib-samples", "4"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spikec: error: "), err
    return err[0]


def test_finetune_command_writes_a_compile_output_and_removes_its_checkpoint(tmp_path: Path, capsys):
    out = tmp_path / "m"
    assert main(["finetune", *TINY, "--method", "ssa", "--steps", "3", "--surrogate", "arctan", "-o", str(out)]) == 0
    assert (out / "model.nir").is_file() and (out / "report.json").is_file()
    assert "fine-tuned (ssa)" in capsys.readouterr().out
    assert not (tmp_path / "m.finetune.ckpt").exists()
    graph = nirio.read(out / "model.nir")
    assert any(isinstance(n, SpikecSSA) for n in graph.nodes.values())
    # its energy: the SSA cores are attention layers counted from their spike products
    assert main(["energy", str(out), "--tokens", "32", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    cores = [l for l in est["layers"] if l["kind"] == "attention"]
    assert cores and all(l["attention"] and l["snn"]["synops"] > 0 and l["snn"]["macs"] == 0 for l in cores)
    assert not [l for l in est["layers"] if l["kind"] == "uncounted"]
    assert est["attention_reduction"] is not None


def test_finetune_command_errors(tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "m"
    (tmp_path / "m.finetune.ckpt").write_bytes(b"x")
    assert main(["finetune", *TINY, "--method", "ssa", "-o", str(out)]) == 2
    assert "--resume" in _error(capsys)
    assert main(["finetune", *TINY, "--method", "ssa", "--steps", "-1", "-o", str(tmp_path / "n")]) == 2
    assert "--steps" in _error(capsys)
    with pytest.raises(SystemExit):
        main(["finetune", *TINY, "--method", "sgd"])
    capsys.readouterr()
    from spikec import finetune

    monkeypatch.setitem(finetune.METHODS, "ssa", finetune.Method(("ssa", "no-such-pass"), None))
    assert main(["finetune", *TINY, "--method", "ssa", "-o", str(tmp_path / "k")]) == 2
    assert "'no-such-pass', which is not registered" in _error(capsys)
    if "qcfs-finetune" in {p.name for p in __import__("spikec.passes", fromlist=["x"]).registered_passes()}:
        assert main(["finetune", *TINY, "--method", "qcfs", "--surrogate", "arctan", "-o", str(tmp_path / "q")]) == 2
        assert "--surrogate does not apply" in _error(capsys)


def test_finetune_command_maps_its_settings_to_the_qcfs_pass_options(tmp_path: Path, monkeypatch, capsys):
    import spikec.compiler

    seen = {}

    def fake_compile(opts):
        seen["opts"] = opts
        return {"passes": [{"name": "qcfs-finetune", "stats": {}, "seconds": 1.0}], "node_counts": {"Affine": 1},
                "simulator_check": {"identical_layers": 1, "neuron_layers": 1}}

    monkeypatch.setattr(spikec.compiler, "compile_model", fake_compile)
    assert main(["finetune", *TINY, "--method", "qcfs", "--steps", "2", "--lr", "1e-5", "-o", str(tmp_path / "q")]) == 0
    opts = seen["opts"]
    assert opts.passes.index("qcfs-finetune") == opts.passes.index("spike-encode") - 1
    assert opts.options["qcfs_steps"] == 2 and opts.options["qcfs_lr"] == 1e-5 and opts.options["qcfs_seq_len"] == 16
    assert opts.options["qcfs_checkpoint"] == str(tmp_path / "q.finetune.ckpt")
    assert "finetune_steps" not in opts.options


def test_finetune_pipelines_insert_the_method_passes():
    from spikec import finetune

    base = list(spikec.passes.DEFAULT_PIPELINE)
    assert finetune.pipeline(finetune.METHODS["ssa"], base) == [*base, "ssa", "ssa-finetune"]
    qcfs = finetune.pipeline(finetune.METHODS["qcfs"], base)
    assert qcfs.index("qcfs-finetune") == qcfs.index("spike-encode") - 1
    assert finetune.checkpoint_path(Path("build/x")) == Path("build/x.finetune.ckpt")
