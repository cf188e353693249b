"""A corpus of malformed NIR files, generated (never stored): each case writes one bad
file and names the category of damage. ``spikec inspect`` must refuse every one with a
one-line error and exit code 3 (see docs/errors.md).

A case starts from ``valid_graph()`` written by ``nirio.write`` and damages it with
h5py, or writes bytes directly. ``build_corpus(directory)`` writes them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import nir
import numpy as np

from spikec.backends import nirio
from spikec.core import ir

D = 4


def valid_graph() -> nir.NIRGraph:
    """A small spikec graph that passes every check: embed -> norm -> SignedIF -> Affine -> readout
    -> attention -> add -> output, plus a standard IF."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = {
        "input": nir.Input(input_type={"input": np.array([8])}),
        "embed": ir.SpikecEmbedding(weight=f32(10, D), position_weight=f32(8, D)),
        "ln": ir.SpikecLayerNorm(weight=f32(D), bias=f32(D), eps=1e-5, metadata={"role": "norm"}),
        "sif": ir.SpikecSignedIF(threshold=np.abs(f32(D)) + 0.1, max_spikes=4, signed=True, v_init=0.5),
        "qkv": nir.Affine(weight=f32(3 * D, D), bias=f32(3 * D)),
        "readout": ir.SpikecRateReadout(features=3 * D),
        "attn": ir.SpikecAttention(num_heads=2, num_kv_heads=2, head_dim=2, rope_theta=0.0, scale=0.7),
        "act": ir.SpikecActivation(activation="gelu", features=D),
        "add": ir.SpikecAdd(features=D),
        "if": nir.IF(r=np.ones(D), v_threshold=np.ones(D), v_reset=np.zeros(D)),
        "output": nir.Output(output_type={"output": np.array([8, D])}),
    }
    names = list(nodes)
    edges = list(zip(names[:-1], names[1:])) + [("ln", "add")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"spikec_version": "0.1.0"}, type_check=False)


def write_valid(path: Path) -> Path:
    nirio.write(path, valid_graph())
    return path


def _edit(edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        write_valid(path)
        with h5py.File(path, "r+") as f:
            edit(f)
    return build


def _replace(dataset: str, **kwargs) -> Callable[[Path], None]:
    """Replace one dataset (``node/...``) by ``h5py.create_dataset(**kwargs)``."""
    def edit(f: h5py.File) -> None:
        parent, _, name = f"node/{dataset}".rpartition("/")
        del f[parent][name]
        f[parent].create_dataset(name, **kwargs)
    return _edit(edit)


def _delete(dataset: str) -> Callable[[Path], None]:
    def edit(f: h5py.File) -> None:
        del f[f"node/{dataset}"]
    return _edit(edit)


def _edges(edges: list[tuple[str, str]]) -> Callable[[Path], None]:
    return _replace("edges", data=np.array(edges, dtype=object), dtype=h5py.string_dtype())


def _bytes(data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        valid = write_valid(path).read_bytes()
        path.write_bytes(data(valid))
    return build


def _random_bytes(n: int, seed: int, hdf5_signature: bool = False) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
        path.write_bytes((b"\x89HDF\r\n\x1a\n" + data) if hdf5_signature else data)
    return build


def _huge(dataset: str, shape: tuple[int, ...]) -> Callable[[Path], None]:
    """A chunked dataset that declares ``shape`` but stores nothing: the file stays tiny."""
    return _replace(dataset, shape=shape, dtype="f4", chunks=(1,) * (len(shape) - 1) + (min(64, shape[-1]),), fillvalue=0.0)


def _valid_edges() -> list[tuple[str, str]]:
    return [tuple(e) for e in valid_graph().edges]


def _no_node_group(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("version", data="1.0")


def _node_is_dataset(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("node", data=np.arange(3))


def _external_link(path: Path) -> None:
    write_valid(path)
    with h5py.File(path, "r+") as f:
        del f["node/nodes/qkv/weight"]
        f["node/nodes/qkv/weight"] = h5py.ExternalLink("/etc/hostname", "/weight")


def _soft_link(f: h5py.File) -> None:
    del f["node/nodes/qkv/bias"]
    f["node/nodes/qkv/bias"] = h5py.SoftLink("/node/nodes/readout/features")


def _hard_link_cycle(f: h5py.File) -> None:
    f["node/nodes/loop"] = f["node"]


def _deep_metadata(f: h5py.File) -> None:
    g = f["node/nodes/ln/metadata"]
    for i in range(40):
        g = g.create_group(f"m{i}")


def _set(path: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        parent, _, name = f"node/{path}".rpartition("/")
        if name in f[parent]:
            del f[parent][name]
        if isinstance(value, str):
            f[parent].create_dataset(name, data=value, dtype=h5py.string_dtype())
        else:
            f[parent].create_dataset(name, data=value)
    return edit


def _truncate(fraction: float | None = None, keep: int | None = None) -> Callable[[Path], None]:
    return _bytes(lambda b: b[: keep if keep is not None else int(len(b) * fraction)])


# name -> (category, builder). Names are test ids; every case must end in exit code 3.
CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    # not HDF5 at all, or cut short
    "empty-file": ("not-hdf5", lambda p: p.write_bytes(b"")),
    "text-file": ("not-hdf5", lambda p: p.write_text("this is not a NIR file\n")),
    "random-bytes-100": ("not-hdf5", _random_bytes(100, 1)),
    "random-bytes-64k": ("not-hdf5", _random_bytes(65536, 2)),
    "hdf5-signature-then-noise": ("not-hdf5", _random_bytes(4096, 3, hdf5_signature=True)),
    "truncated-8-bytes": ("truncated", _truncate(keep=8)),
    "truncated-512-bytes": ("truncated", _truncate(keep=512)),
    "truncated-quarter": ("truncated", _truncate(0.25)),
    "truncated-half": ("truncated", _truncate(0.5)),
    "truncated-last-16-bytes": ("truncated", _bytes(lambda b: b[:-16])),
    # HDF5 but not NIR
    "no-node-group": ("structure", _no_node_group),
    "node-is-a-dataset": ("structure", _node_is_dataset),
    "root-is-not-a-graph": ("structure", _edit(_set("type", "LIF"))),
    "root-without-nodes": ("missing-field", _delete("nodes")),
    "root-without-edges": ("missing-field", _delete("edges")),
    "nodes-is-a-dataset": ("structure", _replace("nodes", data=np.arange(3))),
    # node types
    "type-is-a-number": ("wrong-type", _edit(_set("nodes/act/type", np.arange(3)))),
    "unknown-standard-type": ("wrong-type", _edit(_set("nodes/if/type", "Conv9d"))),
    "unknown-extension-type": ("unknown-extension", _edit(_set("nodes/act/type", "SpikecQuantumGate"))),
    "node-without-type": ("missing-field", _delete("nodes/add/type")),
    # missing fields
    "affine-without-weight": ("missing-field", _delete("nodes/qkv/weight")),
    "signed-if-without-threshold": ("missing-field", _delete("nodes/sif/threshold")),
    "attention-without-heads": ("missing-field", _delete("nodes/attn/num_heads")),
    "if-without-threshold": ("missing-field", _delete("nodes/if/v_threshold")),
    "extension-with-unknown-field": ("wrong-type", _edit(_set("nodes/add/colour", 3))),
    # dtypes
    "weight-is-a-string": ("wrong-dtype", _edit(_set("nodes/qkv/weight", "0.5"))),
    "features-is-a-string": ("wrong-dtype", _edit(_set("nodes/add/features", "four"))),
    "activation-is-a-number": ("wrong-dtype", _edit(_set("nodes/act/activation", 3))),
    "edges-are-numbers": ("wrong-dtype", _replace("edges", data=np.zeros((2, 2), np.int64))),
    "embedding-of-integers": ("wrong-dtype", _edit(_set("nodes/embed/weight", np.ones((10, D), np.int32)))),
    "max-spikes-is-an-array": ("wrong-dtype", _edit(_set("nodes/sif/max_spikes", np.arange(3)))),
    # shapes and values
    "affine-bias-mismatch": ("shape", _edit(_set("nodes/qkv/bias", np.zeros(5, np.float32)))),
    "affine-weight-3d": ("shape", _edit(_set("nodes/qkv/weight", np.zeros((3 * D, D, 2), np.float32)))),
    "edge-feature-mismatch": ("shape", _edit(_set("nodes/sif/threshold", np.ones(D + 1, np.float32)))),
    "layernorm-bias-mismatch": ("shape", _edit(_set("nodes/ln/bias", np.zeros(D + 2, np.float32)))),
    "if-parameters-disagree": ("shape", _edit(_set("nodes/if/r", np.ones(D + 3)))),
    "embedding-1d": ("shape", _edit(_set("nodes/embed/weight", np.ones(10, np.float32)))),
    "embedding-width-mismatch": ("shape", _edit(_set("nodes/embed/position_weight", np.ones((8, D + 1), np.float32)))),
    "input-shape-negative": ("shape", _edit(_set("nodes/input/shape", np.array([-8])))),
    "input-shape-2d": ("shape", _edit(_set("nodes/input/shape", np.ones((2, 2), np.int64)))),
    "threshold-2d": ("shape", _edit(_set("nodes/sif/threshold", np.ones((D, 1), np.float32)))),
    "edges-wrong-shape": ("shape", _replace("edges", data=np.array(["a", "b", "c"], dtype=object),
                                            dtype=h5py.string_dtype())),
    "threshold-negative": ("value", _edit(_set("nodes/sif/threshold", -np.ones(D, np.float32)))),
    "max-spikes-zero": ("value", _edit(_set("nodes/sif/max_spikes", 0))),
    "max-spikes-200": ("value", _edit(_set("nodes/sif/max_spikes", 200))),
    "heads-not-divisible": ("value", _edit(_set("nodes/attn/num_kv_heads", 3))),
    "heads-zero": ("value", _edit(_set("nodes/attn/num_heads", 0))),
    "features-zero": ("value", _edit(_set("nodes/add/features", 0))),
    "features-huge-int": ("value", _edit(_set("nodes/add/features", np.float64(1e300)))),
    "unknown-activation": ("value", _edit(_set("nodes/act/activation", "swish9"))),
    # huge declared tensors (tiny files)
    "huge-affine-weight": ("huge", _huge("nodes/qkv/weight", (1 << 20, 1 << 20))),
    "huge-embedding": ("huge", _huge("nodes/embed/weight", (1 << 40, 64))),
    "huge-metadata-array": ("huge", _huge("nodes/ln/metadata/role", (1 << 36,))),
    "huge-edges": ("huge", _huge("edges", (1 << 34, 2))),
    # edges
    "dangling-edge": ("edges", _edges(_valid_edges() + [("add", "ghost")])),
    "dangling-edge-source": ("edges", _edges([("phantom", "input")] + _valid_edges())),
    "cycle": ("cycle", _edges(_valid_edges() + [("add", "ln")])),
    "self-loop": ("cycle", _edges(_valid_edges() + [("act", "act")])),
    # non-finite parameters
    "nan-weight": ("nan-inf", _edit(_set("nodes/qkv/weight", np.full((3 * D, D), np.nan, np.float32)))),
    "inf-bias": ("nan-inf", _edit(_set("nodes/qkv/bias", np.full(3 * D, np.inf, np.float32)))),
    "nan-threshold": ("nan-inf", _edit(_set("nodes/sif/threshold", np.full(D, np.nan, np.float32)))),
    "nan-eps": ("nan-inf", _edit(_set("nodes/ln/eps", np.nan))),
    "inf-v-init": ("nan-inf", _edit(_set("nodes/sif/v_init", np.inf))),
    "nan-if-threshold": ("nan-inf", _edit(_set("nodes/if/v_threshold", np.full(D, np.nan)))),
    # metadata and links
    "metadata-is-a-dataset": ("metadata", _edit(_set("nodes/ln/metadata", 3))),
    "graph-metadata-is-a-dataset": ("metadata", _edit(_set("metadata", 3))),
    "metadata-nested-too-deep": ("metadata", _edit(_deep_metadata)),
    "external-link": ("links", _external_link),
    "soft-link": ("links", _edit(_soft_link)),
    "hard-link-cycle": ("links", _edit(_hard_link_cycle)),
}


def build_corpus(directory: Path) -> dict[str, Path]:
    """Write every case into ``directory``; returns case name -> file."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (_, build) in CASES.items():
        path = directory / f"{name}.nir"
        build(path)
        out[name] = path
    return out
