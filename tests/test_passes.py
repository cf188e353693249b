"""Specification of the built-in conversion passes on hand-built canonical graphs."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import fx

import spikec.passes
from spikec.passes.calibrate import DEFAULT_PERCENTILE
from canonical_models import FAMILIES, GraphBuilder, by_name, calls_to, gpt2_like, llama_like, token_ids
from spikec.core import ops
from spikec.core.errors import InputError, UsageError
from spikec.core.neurons import SignedIFParams, signed_if_rate
from spikec.core.passes import PassContext, register_pass, registering_from
from spikec.passes import get_pass, registered_passes, run_passes

BUILTIN = ["fold-norm-affine", "calibrate", "spike-encode", "burst-mlp-out", "wide-range-mlp-out", "burst-all"]


def convert(gm: fx.GraphModule, names: list[str], timesteps: int = 16, **options: Any):
    ctx = PassContext(options={"timesteps": timesteps, **options}, calibration=token_ids(seed=2))
    out, _ = run_passes(gm, names, ctx)
    return out, ctx


def run(gm: fx.GraphModule, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return gm(ids)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


class AffineInputs(fx.Interpreter):
    """Oracle: records every affine's input, keyed by spikec_name, over one run."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.inputs: dict[str, list[torch.Tensor]] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_function" and n.target is ops.affine:
            x = self.env[n.args[0]]
            self.inputs.setdefault(n.meta["spikec_name"], []).append(x.reshape(-1, x.shape[-1]).abs())
        return super().run_node(n)


def recorded_inputs(gm: fx.GraphModule, ids: torch.Tensor, batch: int = 3) -> dict[str, torch.Tensor]:
    """|x| of every affine input over all tokens of ``ids``: ``{name: [tokens, in]}``."""
    rec = AffineInputs(gm)
    with torch.no_grad():
        for i in range(0, ids.shape[0], batch):
            rec.run(ids[i:i + batch])
    return {k: torch.cat(v) for k, v in rec.inputs.items()}


class QuantizedReference(fx.Interpreter):
    """Hand-computed quantized network: every affine computes ``W @ Q(x) + b`` with the
    closed-form SignedIF rate quantizer and the thresholds given per affine name."""

    def __init__(self, gm: fx.GraphModule, params: dict[str, SignedIFParams], timesteps: int):
        super().__init__(gm)
        self.params, self.timesteps = params, timesteps

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_function" and n.target is ops.affine:
            x, w, b = self.map_nodes_to_values(n.args, n)
            q = signed_if_rate(x, self.params[n.meta["spikec_name"]], self.timesteps)
            return F.linear(q, w, b)
        return super().run_node(n)


# --------------------------------------------------------------------------- fold-norm-affine


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fold_norm_affine_preserves_output_and_strips_norm_params(family: str) -> None:
    gm = FAMILIES[family]()
    ids = token_ids()
    before = run(gm, ids)
    folded, ctx = convert(gm, ["fold-norm-affine"])
    after = run(folded, ids)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    norms = calls_to(folded, ops.layer_norm) + calls_to(folded, ops.rms_norm)
    assert len(norms) == 5
    for norm in norms:
        assert norm.args[1] is None
        if norm.target is ops.layer_norm:
            assert norm.args[2] is None
    assert ctx.stats["fold-norm-affine"]["norms_folded"] == 5
    assert ctx.stats["fold-norm-affine"]["affines_folded"] == 5


def test_fold_norm_affine_leaves_a_norm_with_a_non_affine_user_alone() -> None:
    g = GraphBuilder(seed=3)
    ids = g.input()
    emb = g.call(ops.embedding, (ids, g.param("wte", g.randn(11, 8)), None), name="embed", role="embedding",
                 module_path="wte")
    h = g.layer_norm(emb, 8, name="h.0.ln_1", module_path="ln")
    y = g.linear(h, 8, 8, name="h.0.attn.out", role="attn_out", module_path="proj")
    gm = g.build(g.call(ops.add, (h, y), name="h.0.add_attn", role="residual", module_path="h"))
    ids_t = token_ids(vocab=11)
    before = run(gm, ids_t)
    folded, ctx = convert(gm, ["fold-norm-affine"])
    norm = calls_to(folded, ops.layer_norm)[0]
    assert norm.args[1] is not None and norm.args[2] is not None
    assert ctx.stats["fold-norm-affine"] == {"norms_folded": 0, "affines_folded": 0, "norms_skipped": ["h.0.ln_1"]}
    torch.testing.assert_close(run(folded, ids_t), before, rtol=0, atol=0)


def test_fold_norm_affine_does_not_modify_the_tied_embedding() -> None:
    gm = gpt2_like()
    wte = gm.wte_weight
    saved = wte.clone()
    folded, _ = convert(gm, ["fold-norm-affine"])
    assert torch.equal(wte, saved)
    embed = by_name(folded)["embed"]
    assert folded.get_buffer(embed.args[1].target) is wte
    assert by_name(folded)["lm_head"].args[1].target != embed.args[1].target


def test_fold_norm_affine_removes_attributes_no_node_reads() -> None:
    folded, _ = convert(llama_like(), ["fold-norm-affine"])
    read = {n.target for n in folded.graph.nodes if n.op == "get_attr"}
    assert {name for name, _ in folded.named_buffers()} == read


# --------------------------------------------------------------------------- calibrate


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_calibrate_stores_exact_per_channel_absmax_and_percentile_for_every_affine(family: str) -> None:
    gm = FAMILIES[family]()
    calibrated, ctx = convert(gm, ["calibrate"], calibration_percentile=99.0)
    oracle = recorded_inputs(gm, ctx.calibration)
    affines = calls_to(calibrated, ops.affine)
    assert len(affines) == 9
    for node in affines:
        stats = node.meta["spikec_calibration"]
        xs = oracle[node.meta["spikec_name"]]
        n_in = calibrated.get_buffer(node.args[1].target).shape[1]
        assert stats["absmax"].shape == stats["percentile"].shape == (n_in,)
        assert torch.equal(stats["absmax"], xs.amax(0))
        torch.testing.assert_close(stats["percentile"], torch.quantile(xs, 0.99, dim=0), rtol=1e-5, atol=0)
        assert stats["tokens"] == xs.shape[0] == ctx.calibration.numel()
        assert stats["q"] == 99.0
        assert (stats["percentile"] < stats["absmax"]).any()


def test_calibrate_statistics_do_not_depend_on_the_batch_size() -> None:
    one, _ = convert(gpt2_like(), ["calibrate"], calibration_batch=1)
    many, _ = convert(gpt2_like(), ["calibrate"], calibration_batch=5)
    for a, b in zip(calls_to(one, ops.affine), calls_to(many, ops.affine)):
        for key in ("absmax", "percentile"):
            torch.testing.assert_close(a.meta["spikec_calibration"][key], b.meta["spikec_calibration"][key])


@pytest.mark.parametrize("calibration", [None, torch.zeros(0, 16, dtype=torch.int64)])
def test_calibrate_refuses_missing_or_empty_calibration_data(calibration: torch.Tensor | None) -> None:
    ctx = PassContext(options={}, calibration=calibration)
    with pytest.raises(InputError, match="calibration"):
        run_passes(gpt2_like(), ["calibrate"], ctx)


# --------------------------------------------------------------------------- spike-encode


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("outliers", [[], ["burst-mlp-out"], ["wide-range-mlp-out"]])
def test_spike_encode_computes_exactly_the_quantized_network(family: str, outliers: list[str]) -> None:
    timesteps = 8
    gm = FAMILIES[family]()
    original = copy.deepcopy(gm)
    converted, ctx = convert(gm, ["calibrate", *outliers, "spike-encode"], timesteps=timesteps)
    oracle = recorded_inputs(original, ctx.calibration)
    params = {}
    for name, xs in oracle.items():
        mlp_out = name.endswith("mlp.out")
        if mlp_out and outliers == ["burst-mlp-out"]:
            params[name] = SignedIFParams(torch.quantile(xs, DEFAULT_PERCENTILE / 100, dim=0), max_spikes=8)
        elif mlp_out and outliers == ["wide-range-mlp-out"]:
            params[name] = SignedIFParams(xs.amax(0) * 2.0)
        else:
            params[name] = SignedIFParams(xs.amax(0))
    ids = token_ids(seed=5)
    with torch.no_grad():
        expected = QuantizedReference(original, params, timesteps).run(ids)
        ann = original(ids)
    got = run(converted, ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - ann).abs().max() > 1e-2  # T=8 is coarse: the check above can tell the two apart


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_default_pipeline_at_256_timesteps_is_close_to_the_ann(family: str) -> None:
    gm = FAMILIES[family]()
    ids = token_ids(seed=7)
    ann = run(gm, ids)
    converted, _ = convert(gm, spikec.passes.DEFAULT_PIPELINE, timesteps=256)
    assert cosine(run(converted, ids), ann) > 0.99


class SpikeTrains(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.trains: dict[str, tuple[torch.Tensor, dict]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.op == "call_function" and n.target is ops.signed_if:
            self.trains[n.meta["spikec_neuron_of"]] = (out, n.kwargs)
        return out


@pytest.mark.parametrize("activation", ["gelu_tanh", "relu"])
def test_spike_trains_are_int8_within_max_spikes_and_unsigned_only_after_relu(activation: str) -> None:
    timesteps = 16
    converted, ctx = convert(gpt2_like(activation=activation), ["calibrate", "burst-mlp-out", "spike-encode"],
                             timesteps=timesteps)
    rec = SpikeTrains(converted)
    ids = token_ids(seed=4)
    with torch.no_grad():
        rec.run(ids)
    assert len(rec.trains) == 9
    for name, (spikes, kw) in rec.trains.items():
        b = kw["max_spikes"]
        assert spikes.dtype == torch.int8
        assert spikes.shape[:3] == (timesteps, *ids.shape)
        assert b == (8 if name.endswith("mlp.out") else 1)
        assert kw["signed"] == (not (activation == "relu" and name.endswith("mlp.out")))
        low = -b if kw["signed"] else 0
        assert spikes.min() >= low and spikes.max() <= b
        assert spikes.min() < 0 or not kw["signed"]  # signed trains do use negative spikes
    assert ctx.stats["spike-encode"]["unsigned_layers"] == (2 if activation == "relu" else 0)


def test_spike_encode_names_and_tags_the_new_nodes() -> None:
    converted, ctx = convert(llama_like(), ["calibrate", "spike-encode"])
    nodes = by_name(converted)
    assert not calls_to(converted, ops.affine)
    readout = nodes["h.1.mlp.out"]
    neuron = nodes["h.1.mlp.out.neuron"]
    assert readout.target is ops.rate_readout_affine and readout.args[0] is neuron
    assert readout.meta["role"] == "mlp_out" and readout.meta["module_path"] == "model.layers.1.mlp.down_proj"
    assert neuron.target is ops.signed_if and neuron.meta["role"] == "neuron"
    assert neuron.meta["spikec_neuron_of"] == "h.1.mlp.out"
    assert neuron.kwargs == {"timesteps": 16, "max_spikes": 1, "signed": True, "v_init": 0.5}
    stats = ctx.stats["spike-encode"]
    assert stats["neurons"] == {"qkv": 64, "attn_out": 64, "mlp_in": 64, "mlp_out": 128, "lm_head": 32}
    assert stats["max_spikes"] == {r: 1 for r in ("qkv", "attn_out", "mlp_in", "mlp_out", "lm_head")}


def test_conversion_leaves_the_original_tensors_untouched() -> None:
    gm = gpt2_like()
    tensors = dict(gm.named_buffers())
    saved = {k: v.clone() for k, v in tensors.items()}
    convert(gm, spikec.passes.DEFAULT_PIPELINE)
    for k, t in tensors.items():
        assert torch.equal(t, saved[k]), k


def test_spike_encode_gives_silent_channels_a_small_positive_threshold() -> None:
    gm, ctx = convert(gpt2_like(), ["calibrate"])
    node = by_name(gm)["h.0.mlp.out"]
    node.meta["spikec_calibration"]["absmax"][:5] = 0.0
    ctx.current_pass = "spike-encode"
    get_pass("spike-encode").fn(gm, ctx)
    theta = gm.get_buffer(by_name(gm)["h.0.mlp.out.neuron"].args[1].target)
    assert (theta > 0).all() and (theta[:5] < 1e-5).all()
    assert torch.isfinite(run(gm, token_ids())).all()


def test_spike_encode_without_calibration_asks_for_the_calibrate_pass() -> None:
    with pytest.raises(UsageError, match="calibrate"):
        convert(gpt2_like(), ["spike-encode"])


def test_spike_encode_rejects_an_unknown_range() -> None:
    with pytest.raises(UsageError, match="range"):
        convert(gpt2_like(), ["calibrate", "spike-encode"], range="median")


# --------------------------------------------------------------------------- outlier handling


@pytest.mark.parametrize("name, roles, expected", [
    ("burst-mlp-out", {"mlp_out"}, {"range": "percentile", "range_scale": 1.0, "max_spikes": 8}),
    ("wide-range-mlp-out", {"mlp_out"}, {"range": "absmax", "range_scale": 2.0, "max_spikes": 1}),
    ("burst-all", {"qkv", "attn_out", "mlp_in", "mlp_out", "lm_head"},
     {"range": "percentile", "range_scale": 1.0, "max_spikes": 8}),
])
def test_outlier_passes_configure_only_the_neurons_of_their_roles(name: str, roles: set[str], expected: dict) -> None:
    gm = llama_like()
    code = gm.code
    configured, ctx = convert(gm, [name])
    assert configured.code == code  # meta only
    for node in calls_to(configured, ops.affine):
        if node.meta["role"] in roles:
            assert node.meta["spikec_neuron"] == expected
        else:
            assert "spikec_neuron" not in node.meta
    assert ctx.stats[name]["affines"] == (2 if roles == {"mlp_out"} else 9)


def test_outlier_options_set_burst_size_and_range_scale() -> None:
    gm, _ = convert(llama_like(), ["burst-mlp-out"], burst_spikes=4)
    assert by_name(gm)["h.0.mlp.out"].meta["spikec_neuron"]["max_spikes"] == 4
    gm, _ = convert(llama_like(), ["wide-range-mlp-out"], wide_range_scale=3.0)
    assert by_name(gm)["h.0.mlp.out"].meta["spikec_neuron"]["range_scale"] == 3.0


def _mlp_out_neuron(passes: list[str], timesteps: int, **options: Any) -> tuple[SignedIFParams, torch.Tensor]:
    gm, _ = convert(llama_like(), ["calibrate", *passes, "spike-encode"], timesteps=timesteps, **options)
    neuron = by_name(gm)["h.0.mlp.out.neuron"]
    params = SignedIFParams(gm.get_buffer(neuron.args[1].target), neuron.kwargs["max_spikes"],
                            neuron.kwargs["signed"], neuron.kwargs["v_init"])
    return params, by_name(gm)["h.0.mlp.out"].meta["spikec_calibration"]["percentile"]


def test_burst_neurons_represent_an_outlier_at_5x_the_percentile_range_without_clipping() -> None:
    timesteps = 16
    burst, pct = _mlp_out_neuron(["burst-mlp-out"], timesteps)
    binary, _ = _mlp_out_neuron([], timesteps, range="percentile")
    sign = torch.where(torch.arange(pct.numel()) % 2 == 0, 1.0, -1.0)
    outlier = (5 * pct * sign)[None, None, :]  # one token, every channel at 5x its range
    rate = ops.signed_if(outlier, burst.threshold, timesteps, burst.max_spikes, burst.signed).sum(0) / timesteps
    decoded = rate * burst.threshold
    step = burst.threshold / timesteps
    assert ((decoded - outlier).abs() <= step / 2 + 1e-6).all()
    torch.testing.assert_close(step, pct / timesteps)  # same resolution as binary neurons over that range
    clipped = signed_if_rate(outlier, binary, timesteps)
    torch.testing.assert_close(clipped, (pct * sign)[None, None, :])  # binary neurons over that range clip it


# --------------------------------------------------------------------------- registry


def test_every_builtin_pass_is_registered_with_a_summary() -> None:
    infos = {p.name: p for p in registered_passes()}
    for name in BUILTIN:
        assert name in infos
        assert infos[name].summary and infos[name].summary != "(no docstring)"
        assert infos[name].source == "builtin"


def test_default_pipeline_names_registered_passes_in_order() -> None:
    assert spikec.passes.DEFAULT_PIPELINE == ["fold-norm-affine", "calibrate", "burst-all", "spike-encode"]
    for name in spikec.passes.DEFAULT_PIPELINE:
        get_pass(name)


def test_the_registry_lists_every_pass_module_and_options_record() -> None:
    registered = {info.name for info in registered_passes() if info.source == "builtin"}
    assert registered == set(spikec.passes.BUILTIN_PASSES)  # the table is the only source of built-in passes
    assert all(info.fn.__module__.startswith("spikec.passes.") for info in spikec.passes.BUILTIN_PASSES.values())
    assert set(spikec.passes.OPTION_RECORDS) <= registered
    assert set(spikec.passes.UNTYPED_OPTION_KEYS) <= registered
    keys = spikec.passes.option_keys(spikec.passes.DEFAULT_PIPELINE)
    assert {"timesteps", "calibration_percentile", "calibration_batch", "range", "range_scale", "max_spikes",
            "burst_spikes", "burst_range_scale"} == keys
    fas = spikec.passes.option_keys(["qcfs-finetune", "fas-calibrate"])
    assert {"qcfs_steps", "fas_steps", "fas_state_dir", "calibrate", "progress"} <= fas
    assert spikec.passes.option_keys(["my-plugin-pass"]) == {"timesteps"}


def test_a_user_pass_is_recorded_apart_from_the_builtin_ones_and_may_not_take_a_builtin_name() -> None:
    def census(gm, ctx):
        """Count nothing."""

    with registering_from("tests/test_passes.py"):
        register_pass("test-user-census")(census)
        register_pass("test-user-census")(census)  # registering again from the same source is allowed
    assert "test-user-census" not in spikec.passes.BUILTIN_PASSES
    info = get_pass("test-user-census")
    assert (info.fn, info.summary, info.source) == (census, "Count nothing.", "tests/test_passes.py")
    with registering_from("another.py"), pytest.raises(ValueError, match="'test-user-census' is already registered"):
        register_pass("test-user-census")(lambda gm, ctx: None)
    with registering_from("plugin.py", reserved=spikec.passes.BUILTIN_PASSES), \
            pytest.raises(ValueError, match="'calibrate' is built in"):
        register_pass("calibrate")(census)
    assert get_pass("calibrate").source == "builtin"
