"""NIR file I/O: round trips of standard and extension nodes, atomic writes, clear errors."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest

from spikec.backends import nirio
from spikec.analysis.summary import format_summary, summarize
from spikec.core import ir
from spikec.core.errors import NIRFormatError

RNG = np.random.default_rng(0)


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def every_node_graph(metadata: dict | None = None) -> nir.NIRGraph:
    """One node of every extension type plus standard Affine, IF and LIF."""
    d = 4
    nodes = {
        "input": nir.Input(input_type={"input": np.array([3])}),
        "embed": ir.SpikecEmbedding(weight=_f32(10, d), position_weight=_f32(8, d)),
        "embed_nopos": ir.SpikecEmbedding(weight=_f32(10, d), position_weight=np.zeros((0, d), np.float32)),
        "h.0.ln_1": ir.SpikecLayerNorm(weight=_f32(d), bias=_f32(d), eps=1e-5, metadata={"role": "norm"}),
        "h.0.rms": ir.SpikecRMSNorm(weight=_f32(d), eps=1e-6),
        "h.0.attn.core": ir.SpikecAttention(num_heads=2, num_kv_heads=1, head_dim=2, rope_theta=10000.0, scale=0.5),
        "h.0.act": ir.SpikecActivation(activation="gelu_tanh", features=d),
        "h.0.gated": ir.SpikecGatedActivation(activation="silu", features=d),
        "h.0.add": ir.SpikecAdd(features=d),
        "h.0.sif": ir.SpikecSignedIF(threshold=_f32(d) ** 2 + 0.1, max_spikes=2, signed=False, v_init=0.5),
        "h.0.readout": ir.SpikecRateReadout(features=d, metadata={"role": "mlp_out", "block": 0}),
        "affine": nir.Affine(weight=_f32(d, d), bias=_f32(d)),
        "if": nir.IF(r=np.ones(d), v_threshold=np.full(d, 1.0), v_reset=np.zeros(d)),
        "lif": nir.LIF(tau=np.full(d, 2.0), r=np.ones(d), v_leak=np.zeros(d), v_threshold=np.ones(d),
                       v_reset=np.zeros(d)),
        "output": nir.Output(output_type={"output": np.array([d])}),
    }
    names = list(nodes)
    edges = list(zip(names[:-1], names[1:]))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(metadata or {}), type_check=False)


def _fields(node: nir.NIRNode) -> dict:
    return {f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.name not in ("input_type",
                                                                                             "output_type")}


def assert_same_graph(a: nir.NIRGraph, b: nir.NIRGraph) -> None:
    assert list(a.nodes) == list(b.nodes)
    assert a.edges == b.edges
    for name in a.nodes:
        na, nb = a.nodes[name], b.nodes[name]
        assert type(na) is type(nb), name
        fa, fb = _fields(na), _fields(nb)
        assert fa.keys() == fb.keys(), name
        for key, va in fa.items():
            vb = fb[key]
            if isinstance(va, np.ndarray):
                assert isinstance(vb, np.ndarray) and va.dtype == vb.dtype and np.array_equal(va, vb), (name, key)
            else:
                assert va == vb and type(va) is type(vb), (name, key, va, vb)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_round_trip_keeps_every_node_field_dtype_edge_and_order(tmp_path: Path, compression):
    graph = every_node_graph({"dt": 1.0, "model": "tiny"})
    nirio.write(tmp_path / "m.nir", graph, compression=compression)
    assert_same_graph(graph, nirio.read(tmp_path / "m.nir"))


def test_metadata_round_trips_as_python_values(tmp_path: Path):
    meta = {"spikec_version": "0.1.0", "timesteps": 32, "dt": 1.0, "signed": True, "scales": np.arange(3.0)}
    nirio.write(tmp_path / "m.nir", every_node_graph(meta))
    back = nirio.read(tmp_path / "m.nir").metadata
    assert back.keys() == meta.keys()
    for key in ("spikec_version", "timesteps", "dt", "signed"):
        assert back[key] == meta[key] and type(back[key]) is type(meta[key]), key
    assert np.array_equal(back["scales"], meta["scales"])
    assert nirio.read(tmp_path / "m.nir").nodes["h.0.readout"].metadata == {"role": "mlp_out", "block": 0}


def test_standard_graph_written_by_spikec_reads_with_nir_itself(tmp_path: Path):
    graph = nir.NIRGraph.from_list(nir.Affine(weight=_f32(2, 3), bias=_f32(2)), nir.IF(
        r=np.ones(2), v_threshold=np.ones(2), v_reset=np.zeros(2)))
    nirio.write(tmp_path / "m.nir", graph)
    back = nir.read(tmp_path / "m.nir")
    assert list(back.nodes) == list(graph.nodes)
    assert np.array_equal(back.nodes["affine"].weight, graph.nodes["affine"].weight)


def test_nested_graph_round_trips(tmp_path: Path):
    inner = nir.NIRGraph.from_list(nir.Affine(weight=_f32(2, 2), bias=_f32(2)), type_check=False)
    outer = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([2])), "sub": inner, "sif": ir.SpikecSignedIF(
            threshold=np.ones(2, np.float32), max_spikes=1, signed=True, v_init=0.5),
            "output": nir.Output(np.array([2]))},
        edges=[("input", "sub"), ("sub", "sif"), ("sif", "output")], type_check=False)
    nirio.write(tmp_path / "m.nir", outer)
    back = nirio.read(tmp_path / "m.nir")
    assert_same_graph(inner, back.nodes["sub"])
    assert isinstance(back.nodes["sif"], ir.SpikecSignedIF)


def test_write_is_atomic_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch):
    target = tmp_path / "m.nir"
    nirio.write(target, every_node_graph({"version": "old"}))
    before = target.read_bytes()

    def broken_to_dict(self):
        raise KeyboardInterrupt  # as if Ctrl-C arrived mid-write, after the nodes before it

    monkeypatch.setattr(nir.Affine, "to_dict", broken_to_dict)
    with pytest.raises(KeyboardInterrupt):
        nirio.write(target, every_node_graph({"version": "new"}))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nir"]
    monkeypatch.undo()
    assert nirio.read(target).metadata == {"version": "old"}


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_write_makes_nir_writes_file_byte_for_byte(tmp_path: Path, compression):
    """``nirio.write`` serializes one node at a time (bounded memory, docs/memory.md) yet writes
    the very bytes ``nir.write`` does, nested subgraphs and metadata included."""
    graph = every_node_graph({"version": "x", "nested": {"a": 1}})
    outer = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([4])}), "sub": graph,
                                "output": nir.Output(output_type={"output": np.array([4])})},
                         edges=[("input", "sub"), ("sub", "output")], metadata={"k": 2}, type_check=False)
    for name, g in (("flat", graph), ("nested", outer)):
        ours, theirs = tmp_path / f"{name}_ours.nir", tmp_path / f"{name}_theirs.nir"
        nirio.write(ours, g, compression=compression)
        previous = h5py.get_config().track_order
        h5py.get_config().track_order = True  # as nirio.write asks h5py
        try:
            nir.write(theirs, g, compression=compression)
        finally:
            h5py.get_config().track_order = previous
        assert ours.read_bytes() == theirs.read_bytes(), name


def test_write_replaces_existing_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "m.nir"
    nirio.write(target, every_node_graph({"version": "old"}))
    nirio.write(target, every_node_graph({"version": "new"}))
    assert nirio.read(target).metadata == {"version": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.nir"]


def test_write_rejects_metadata_nir_cannot_store(tmp_path: Path):
    with pytest.raises(NIRFormatError, match="None cannot be stored"):
        nirio.write(tmp_path / "m.nir", every_node_graph({"tokenizer": None}))
    assert list(tmp_path.iterdir()) == []


# --- errors: one line, naming the file and the problem -----------------------------------


def _expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(NIRFormatError) as info:
        nirio.read(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.exit_code == 3
    return message


def _written(tmp_path: Path, graph: nir.NIRGraph | None = None) -> Path:
    path = tmp_path / "m.nir"
    nirio.write(path, graph if graph is not None else every_node_graph())
    return path


def test_missing_file_is_reported(tmp_path: Path):
    _expect_error(tmp_path / "absent.nir", "no such file")


def test_non_hdf5_file_is_reported(tmp_path: Path):
    path = tmp_path / "m.nir"
    path.write_text("this is not HDF5\n")
    _expect_error(path, "not a readable HDF5")


def test_truncated_file_is_reported(tmp_path: Path):
    path = _written(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path)


def test_file_without_node_group_is_reported(tmp_path: Path):
    path = tmp_path / "m.nir"
    with h5py.File(path, "w") as f:
        f.create_dataset("version", data="1.0")
    _expect_error(path, "no 'node' group")


def test_unknown_node_type_names_type_node_and_known_types(tmp_path: Path):
    path = _written(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["node/nodes/h.0.act/type"]
        f["node/nodes/h.0.act"].create_dataset("type", data="SpikecBogus", dtype=h5py.string_dtype())
    _expect_error(path, "'SpikecBogus'", "'h.0.act'", "known types", "SpikecAttention", "LIF")


@pytest.mark.parametrize("node, field", [("h.0.attn.core", "num_heads"), ("affine", "bias"), ("if", "r")])
def test_missing_field_is_reported(tmp_path: Path, node: str, field: str):
    path = _written(tmp_path)
    with h5py.File(path, "r+") as f:
        del f[f"node/nodes/{node}/{field}"]
    _expect_error(path, f"{node!r}", "missing", f"{field!r}")


def test_edge_naming_unknown_node_is_reported(tmp_path: Path):
    graph = every_node_graph()
    graph.edges.append(("h.0.add", "ghost"))
    _expect_error(_written(tmp_path, graph), "'ghost'", "unknown node")


def test_nan_in_parameters_is_reported(tmp_path: Path):
    graph = every_node_graph()
    graph.nodes["affine"].weight[1, 2] = np.nan
    _expect_error(_written(tmp_path, graph), "'affine'", "NaN or Inf", "'weight'")


def test_inf_in_extension_parameters_is_reported(tmp_path: Path):
    graph = every_node_graph()
    graph.nodes["h.0.sif"].threshold[0] = np.inf
    _expect_error(_written(tmp_path, graph), "'h.0.sif'", "NaN or Inf", "'threshold'")


def test_affine_with_disagreeing_bias_is_reported(tmp_path: Path):
    graph = every_node_graph()
    graph.nodes["affine"].bias = _f32(3)
    _expect_error(_written(tmp_path, graph), "'affine'", "bias [3]")


def test_summary_counts_types_parameters_and_extensions():
    graph = every_node_graph({"model": "tiny"})
    s = summarize(graph)
    assert s["nodes"] == len(graph.nodes) and s["edges"] == len(graph.edges)
    assert s["types"]["SpikecEmbedding"] == 2 and s["types"]["Affine"] == 1
    assert "SpikecAttention" in s["extension_types"] and "Affine" not in s["extension_types"]
    expected = sum(
        v.size for n in graph.nodes.values() for k, v in _fields(n).items() if isinstance(v, np.ndarray)
    )
    assert s["parameters"] == expected
    assert s["shapes"]["embed"] == {"weight": [10, 4], "position_weight": [8, 4]}
    text = format_summary(s)
    assert "SpikecSignedIF" in text and "spikec extension" in text and "model: tiny" in text
    assert "h.0.attn.core" in text


def test_read_of_file_is_unaffected_by_cwd(tmp_path: Path, monkeypatch):
    path = _written(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert list(nirio.read(os.path.basename(path)).nodes) == list(every_node_graph().nodes)
