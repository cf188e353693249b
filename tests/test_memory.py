"""Bounded memory (docs/memory.md): what compile shares instead of copying, and what the
simulator keeps, with the same values as the copying paths."""

from __future__ import annotations

import math
import os

import h5py
import numpy as np
import pytest
import torch

from canonical_models import gpt2_like, llama_like, token_ids
from spikec.backends import nirio
from spikec.backends.simulator import Simulator, simulate
from spikec.backends.simulator.pipeline import node_cost
from spikec.compiler import CompileOptions, compile_model
from spikec.core.errors import NIRFormatError, ResourceError
from spikec.core.lazy import LazyArray, is_lazy
from spikec.energy import measure_energy
from spikec.core.passes import PassContext
from spikec.passes import run_passes
from spikec.evaluate import evaluate, load_compiled
from spikec.frontend.canonicalize import capture_canonical
from spikec.frontend.models import load_model
from spikec.lower import lower_to_nir
from spikec.passes.calibrate import ChannelStats
from spikec.passes import DEFAULT_PIPELINE

TINY_LLAMA = {"num_hidden_layers": "2", "hidden_size": "64", "num_attention_heads": "4",
              "num_key_value_heads": "2", "intermediate_size": "128", "vocab_size": "512"}


def converted(make=llama_like):
    ctx = PassContext(options={"timesteps": 8}, calibration=token_ids(seed=2))
    gm, _ = run_passes(make(), DEFAULT_PIPELINE, ctx)
    return gm


def arrays(graph) -> dict[tuple[str, str], np.ndarray]:
    return {(name, key): value for name, node in graph.nodes.items() for key, value in vars(node).items()
            if isinstance(value, np.ndarray) and value.size > 1}


def test_lowering_copies_weights_by_default_and_shares_them_when_asked() -> None:
    gm = converted()
    ids = token_ids(samples=1, positions=2)
    owned, shared = lower_to_nir(gm, ids), lower_to_nir(gm, ids, share_weights=True)
    params = [p.detach().numpy() for p in [*gm.parameters(), *gm.buffers()] if p.dtype == torch.float32]
    a, b = arrays(owned), arrays(shared)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert not any(np.shares_memory(a[key], p) for p in params), key
    assert sum(any(np.shares_memory(b[key], p) for p in params) for key in b) >= 4  # the affines' weights


def test_canonical_module_shares_the_models_weights_only_when_asked() -> None:
    loaded = load_model("llama", random_weights=True, config_overrides=TINY_LLAMA)
    model_ptrs = {p.data_ptr() for p in loaded.model.parameters()}
    cloned = capture_canonical(loaded)
    shared = capture_canonical(loaded, share_weights=True)
    assert not {p.data_ptr() for p in cloned.parameters()} & model_ptrs
    assert {p.data_ptr() for p in shared.parameters()} & model_ptrs
    ids = token_ids(vocab=512, samples=2, positions=9)
    with torch.no_grad():
        assert torch.equal(cloned(ids), shared(ids))


def test_recording_the_first_positions_keeps_exactly_those_of_the_full_trains() -> None:
    gm = converted(gpt2_like)
    ids = token_ids(samples=1, positions=12, seed=4)
    graph = lower_to_nir(gm, ids[:, :2], positions=12)
    full = simulate(graph, ids, 8, record=True)
    first = simulate(graph, ids, 8, record=True, record_positions=3)
    assert full.spikes.keys() == first.spikes.keys() and full.spikes
    for name, train in full.spikes.items():
        assert torch.equal(first.spikes[name], train[:, :, :3]), name
    assert first.spike_counts == full.spike_counts
    assert torch.equal(first.output, full.output)


@pytest.mark.parametrize("tokens, q", [(32768, 0.999), (1000, 0.99), (777, 0.5), (5, 1.0)])
def test_streaming_percentile_is_the_full_sorts_and_keeps_only_the_top_values(tokens: int, q: float) -> None:
    """Calibration holds no activation store: ``ChannelStats`` keeps the k largest |x| per
    channel (k = tokens - floor(q (tokens - 1))) and gives exactly the linear interpolation of
    the fully sorted values (torch.quantile's rule; torch.quantile itself rounds its rank to
    float32, hence only close to it)."""
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 7, generator=g) * torch.rand(7, generator=g) * 4
    stats = ChannelStats(7, tokens, q)
    for chunk in torch.split(x, 300):
        stats.update(chunk)
        assert stats.top.shape[0] <= stats.k
    got = stats.result()
    ordered = x.abs().sort(0).values
    pos = q * (tokens - 1)
    lo = math.floor(pos)
    expected = torch.lerp(ordered[lo], ordered[min(lo + 1, tokens - 1)], pos - lo) if pos > lo else ordered[lo]
    assert torch.equal(got["percentile"], expected)
    assert torch.equal(got["absmax"], ordered[-1])
    torch.testing.assert_close(got["percentile"], torch.quantile(x.abs(), q, dim=0), rtol=1e-4, atol=0)


def test_shared_canonical_parameters_never_share_storage_with_each_other() -> None:
    """Tied weights (SmolLM2's embedding and lm_head) become two tensors, as with clones, so that
    changing one parameter of the module in place never changes another."""
    loaded = load_model("llama", random_weights=True, config_overrides={**TINY_LLAMA, "tie_word_embeddings": "true"})
    assert loaded.model.get_input_embeddings().weight is loaded.model.get_output_embeddings().weight
    gm = capture_canonical(loaded, share_weights=True)
    storages = [p.untyped_storage().data_ptr() for p in gm.parameters()]
    assert len(storages) == len(set(storages))


def test_eval_can_release_the_reference_model_with_the_same_figures(tmp_path) -> None:
    """``evaluate(keep_model=False)`` (what ``spikec eval`` does) frees the reference ANN once
    its logits are computed: the figures are those of ``keep_model=True``, and the next use of
    ``Compiled.loaded`` loads the model anew."""
    compile_model(CompileOptions(model="gpt2", random_weights=True, config_overrides={"n_layer": "1", "n_embd": "32",
                                 "n_head": "2"}, timesteps=4, calib_samples=1, seq_len=16, output=str(tmp_path / "m")))
    compiled = load_compiled(tmp_path / "m")
    kept = evaluate(compiled, tokens=32, progress=False)
    model = compiled.loaded.model
    released = evaluate(compiled, tokens=32, progress=False, keep_model=False)
    assert released == [{**r, "seconds": s["seconds"]} for r, s in zip(kept, released)]
    assert compiled.loaded.model is not model


TINY_GPT2 = {"n_layer": "1", "n_embd": "32", "n_head": "2"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lazy") / "m"
    compile_model(CompileOptions(model="gpt2", random_weights=True, config_overrides=TINY_GPT2, timesteps=4,
                                 calib_samples=1, seq_len=16, output=str(out)))
    return out


@pytest.fixture
def everything_lazy(monkeypatch):
    """A lazy read leaves every array field in the file (tiny models have no 1 MiB array)."""
    monkeypatch.setattr(nirio, "LAZY_MIN_BYTES", 0)


def test_a_lazy_read_leaves_the_large_arrays_in_the_file_with_their_shapes(tiny_dir) -> None:
    """Arrays of ``LAZY_MIN_BYTES`` (1 MiB) or more stay in the file with their shape and dtype;
    their values, read on demand, are the eager read's; smaller arrays are read as before."""
    eager = nirio.read(tiny_dir / "model.nir")
    lazy = nirio.read(tiny_dir / "model.nir", lazy=True)
    assert not any(is_lazy(n) for n in eager.nodes.values())
    left = [(name, k) for name, node in lazy.nodes.items() for k, v in vars(node).items() if isinstance(v, LazyArray)]
    assert sorted(type(lazy.nodes[n]).__name__ for n, _ in left) == ["Affine", "SpikecEmbedding"]  # 50257 x 32
    for name, key in left:
        kept, full = getattr(lazy.nodes[name], key), getattr(eager.nodes[name], key)
        assert kept.nbytes >= nirio.LAZY_MIN_BYTES and (kept.shape, kept.dtype) == (full.shape, full.dtype)
        np.testing.assert_array_equal(np.asarray(kept), full)
    assert all(v.nbytes < nirio.LAZY_MIN_BYTES for node in lazy.nodes.values()
               for v in vars(node).values() if isinstance(v, np.ndarray))


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_lazy_simulation_is_value_identical_to_eager(tiny_dir, everything_lazy, keep: bool, mode: str) -> None:
    """A lazily read graph gives the eager graph's outputs, spike counts and spike trains, run
    after run, whether the simulator keeps the nodes it read or reads them again every run."""
    eager = Simulator(nirio.read(tiny_dir / "model.nir"), mode=mode)
    lazy_graph = nirio.read(tiny_dir / "model.nir", lazy=True)
    lazy = Simulator(lazy_graph, mode=mode, keep_parameters=keep)
    assert sum(is_lazy(n) for n in lazy_graph.nodes.values()) >= 4
    for seed in (1, 2):
        ids = token_ids(vocab=50257, samples=1, positions=16, seed=seed)
        a, b = eager.run(ids, 4, record=True), lazy.run(ids, 4, record=True)
        assert torch.equal(a.output, b.output)
        assert a.spike_counts == b.spike_counts and a.operations == b.operations
        assert a.spikes.keys() == b.spikes.keys()
        assert all(torch.equal(a.spikes[k], b.spikes[k]) for k in a.spikes)
        assert bool(lazy.loaded) == keep  # what it read stays only when kept
    assert all(is_lazy(lazy_graph.nodes[n]) and not is_lazy(node) for n, node in lazy.loaded.items())


def test_eval_and_energy_on_a_lazy_graph_give_the_eager_figures(tiny_dir, everything_lazy) -> None:
    eager = evaluate(load_compiled(tiny_dir), tokens=40, seq_len=16, progress=False)
    lazy_compiled = load_compiled(tiny_dir, lazy=True)
    lazy = evaluate(lazy_compiled, tokens=40, seq_len=16, progress=False, keep_model=False)
    assert any(is_lazy(n) for n in lazy_compiled.graph.nodes.values())
    assert lazy == [{**e, "seconds": lz["seconds"]} for e, lz in zip(eager, lazy)]
    _, est, counts = measure_energy(tiny_dir, tokens=40, progress=False)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(nirio, "LAZY_MIN_BYTES", 2**62)  # nothing left in the file: the eager figures
        _, est_eager, counts_eager = measure_energy(tiny_dir, tokens=40, progress=False)
    assert counts.to_dict() == counts_eager.to_dict()
    assert {k: v for k, v in est.items() if k != "seconds"} == {k: v for k, v in est_eager.items() if k != "seconds"}


def test_a_lazy_graph_refuses_a_file_changed_since_it_was_read(tiny_dir, everything_lazy, tmp_path) -> None:
    copy = tmp_path / "model.nir"
    copy.write_bytes((tiny_dir / "model.nir").read_bytes())
    graph = nirio.read(copy, lazy=True)
    os.utime(copy, ns=(0, 0))  # same bytes, another modification time
    with pytest.raises(NIRFormatError, match="changed since it was read"):
        Simulator(graph).run(token_ids(vocab=50257, samples=1, positions=4), 4)


def test_a_lazy_read_still_checks_every_value(tiny_dir, everything_lazy, tmp_path) -> None:
    """Values are checked as the file is read (one node at a time), lazily or not."""
    copy = tmp_path / "model.nir"
    copy.write_bytes((tiny_dir / "model.nir").read_bytes())
    with h5py.File(copy, "r+") as f:
        name = next(k for k in f["node/nodes"] if "weight" in f["node/nodes"][k] and
                    f["node/nodes"][k]["weight"].ndim == 2 and f["node/nodes"][k]["type"][()] == b"Affine")
        weight = f["node/nodes"][name]["weight"]
        data = weight[()]
        data[0, 0] = np.nan
        weight[...] = data
    for lazy in (False, True):
        with pytest.raises(NIRFormatError, match="NaN or Inf"):
            nirio.read(copy, lazy=lazy)


def test_a_lazy_read_asks_memory_for_the_small_arrays_and_one_node_only(tiny_dir, monkeypatch) -> None:
    """The eager read wants memory for every array; the lazy one for the arrays under
    ``LAZY_MIN_BYTES`` plus the largest node's (here the 6.4 MB embedding table)."""
    eager = nirio.read(tiny_dir / "model.nir")
    sizes = [sum(v.nbytes for v in vars(n).values() if isinstance(v, np.ndarray)) for n in eager.nodes.values()]
    total = sum(sizes)
    monkeypatch.setattr(nirio, "available_memory", lambda: total - max(sizes) // 2)
    with pytest.raises(ResourceError, match="of memory is available"):
        nirio.read(tiny_dir / "model.nir")
    assert any(is_lazy(n) for n in nirio.read(tiny_dir / "model.nir", lazy=True).nodes.values())


def test_pipeline_stages_weigh_a_lazy_graph_as_the_eager_one(tiny_dir) -> None:
    """Ranks cut the graph by parameter counts; rank 0 may hold a lazy graph, the workers an eager one."""
    eager = nirio.read(tiny_dir / "model.nir")
    lazy = nirio.read(tiny_dir / "model.nir", lazy=True)
    assert [node_cost(n) for n in lazy.nodes.values()] == [node_cost(n) for n in eager.nodes.values()]
