"""NIR files: atomic writing and a reader that knows spikec's extension nodes.

``write`` stores a graph with ``nir.write`` (HDF5, uncompressed by default: gzip is
about 6x slower for little gain on float weights) into a temporary file beside the
target and renames it into place, so a failed or interrupted write never leaves a
half-written file and keeps any previous file. Groups are written in creation order,
so node order survives the round trip (``nir.read`` too returns it).

``read`` reads standard nodes with nir's own reader (``nir.serialization.read_node``)
and the extension nodes of ``spikec.core.ir`` with their ``from_dict``, recursing
through nested ``NIRGraph`` nodes, and checks the file on the way: every failure is a
one-line ``NIRFormatError`` that names the file and the problem. Metadata values come
back as Python ``str``/``int``/``float``/``bool`` where they were scalars, arrays stay
numpy arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import h5py
import nir
import numpy as np
from nir.serialization import read_node

from spikec.core.errors import InputError, NIRFormatError, UsageError
from spikec.core.ir import EXTENSION_TYPES

# Standard node types nir's reader knows, with the datasets it reads unconditionally.
STANDARD_FIELDS: dict[str, tuple[str, ...]] = {
    "Affine": ("weight", "bias"),
    "AvgPool2d": ("kernel_size", "stride", "padding"),
    "Conv1d": ("weight", "stride", "padding", "dilation", "groups", "bias"),
    "Conv2d": ("weight", "stride", "padding", "dilation", "groups", "bias"),
    "CubaLI": ("tau_mem", "tau_syn", "r", "v_leak", "w_in"),
    "CubaLIF": ("tau_mem", "tau_syn", "r", "v_leak", "v_threshold", "w_in"),
    "Delay": ("delay",),
    "Flatten": ("start_dim", "end_dim"),
    "I": ("r",),
    "IF": ("r", "v_threshold"),
    "Input": ("shape",),
    "LI": ("tau", "r", "v_leak"),
    "LIF": ("tau", "r", "v_leak", "v_threshold"),
    "Linear": ("weight",),
    "NIRGraph": ("nodes", "edges"),
    "Output": ("shape",),
    "Scale": ("scale",),
    "SumPool2d": ("kernel_size", "stride", "padding"),
    "Threshold": ("threshold",),
}

COMPRESSIONS = (None, "gzip", "lzf")
_CORRUPT_HINT = "the file is damaged or was not written by a NIR tool; write it again"


def known_types() -> list[str]:
    """Every node type ``read`` understands: standard NIR plus spikec's extensions."""
    return sorted(set(STANDARD_FIELDS) | set(EXTENSION_TYPES))


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _track_order() -> Iterator[None]:
    """Make h5py record creation order (nir.write gives it no way to ask)."""
    config = h5py.get_config()
    previous = config.track_order
    config.track_order = True
    try:
        yield
    finally:
        config.track_order = previous


def _check_metadata(metadata: Any, where: str) -> None:
    if not isinstance(metadata, dict):
        raise NIRFormatError(f"metadata of {where} is a {type(metadata).__name__}, not a dict")
    for key, value in metadata.items():
        if isinstance(value, dict):
            _check_metadata(value, f"{where}[{key!r}]")
        elif isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (bool, int, float, np.generic)) for v in value
        ):
            continue  # stored as an array, read back as one
        elif not isinstance(value, (str, bool, int, float, np.ndarray, np.generic)):
            raise NIRFormatError(
                f"metadata {key!r} of {where} is a {type(value).__name__}, which NIR files cannot store",
                hint="use str, int, float, bool, a list of numbers or a numpy array (None cannot be stored)",
            )


def _check_writable(graph: nir.NIRGraph, where: str = "the graph") -> None:
    _check_metadata(graph.metadata or {}, where)
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            _check_writable(node, f"subgraph {name!r}")
        else:
            _check_metadata(node.metadata or {}, f"node {name!r}")


def _new_file_mode(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write(path: str | os.PathLike, graph: nir.NIRGraph, compression: str | None = None) -> None:
    """Write ``graph`` to ``path`` atomically (temporary file + ``os.replace``).

    compression: ``None`` (default), ``"gzip"`` or ``"lzf"`` for the array datasets.
    On any failure, including KeyboardInterrupt, the temporary file is removed and an
    existing file at ``path`` is left untouched.
    """
    path = Path(path)
    if compression not in COMPRESSIONS:
        raise UsageError(
            f"unknown NIR compression {compression!r}", hint=f"use one of {', '.join(map(str, COMPRESSIONS))}"
        )
    directory = path.parent
    if not directory.is_dir():
        raise InputError(f"cannot write {str(path)!r}: directory {str(directory)!r} does not exist",
                         hint="create the directory first")
    _check_writable(graph)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with _track_order():
            nir.write(tmp, graph, compression=compression)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _python(value: Any) -> Any:
    """numpy scalars and bytes (how h5py returns them) -> plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_python(v) for v in value.tolist()]
    return value


def _read_metadata(group: h5py.Group) -> dict[str, Any]:
    if "metadata" not in group:
        return {}
    out: dict[str, Any] = {}
    for key, item in group["metadata"].items():
        if isinstance(item, h5py.Group):
            out[key] = _read_metadata_group(item)
        else:
            out[key] = _python(item[()])
    return out


def _read_metadata_group(group: h5py.Group) -> dict[str, Any]:
    return {
        k: _read_metadata_group(v) if isinstance(v, h5py.Group) else _python(v[()]) for k, v in group.items()
    }


class _Reader:
    """Reads one file; ``file`` is only used to name it in error messages."""

    def __init__(self, file: str):
        self.file = file

    def error(self, message: str, hint: str | None = None) -> NIRFormatError:
        return NIRFormatError(f"{self.file}: {message}", hint=hint)

    def node_type(self, group: h5py.Group, name: str) -> str:
        if not isinstance(group, h5py.Group) or "type" not in group:
            raise self.error(f"node {name!r} has no 'type' field", hint=_CORRUPT_HINT)
        return _python(group["type"][()])

    def missing(self, group: h5py.Group, name: str, kind: str, fields: tuple[str, ...]) -> None:
        absent = [f for f in fields if f not in group]
        if absent:
            raise self.error(
                f"node {name!r} ({kind}) is missing field(s) {', '.join(map(repr, absent))}", hint=_CORRUPT_HINT
            )

    def graph(self, group: h5py.Group, name: str) -> nir.NIRGraph:
        self.missing(group, name, "NIRGraph", STANDARD_FIELDS["NIRGraph"])
        prefix = "" if name == "<root>" else f"{name}/"  # names nested nodes in messages only
        nodes = {key: self.node(item, prefix + key) for key, item in group["nodes"].items()}
        where = "" if name == "<root>" else f" of subgraph {name!r}"
        raw = group["edges"][()]
        if raw.size == 0:
            edges: list[tuple[str, str]] = []
        elif raw.ndim != 2 or raw.shape[1] != 2:
            raise self.error(f"edges{where} have shape {list(raw.shape)}, expected [n, 2]", hint=_CORRUPT_HINT)
        else:
            edges = [(_python(a), _python(b)) for a, b in raw]
        for src, dst in edges:
            for end in (src, dst):
                if end not in nodes:
                    raise self.error(
                        f"edge ({src!r}, {dst!r}){where} names unknown node {end!r}",
                        hint=f"the graph has {len(nodes)} nodes; the file is inconsistent, write it again",
                    )
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_read_metadata(group), type_check=False)

    def node(self, group: h5py.Group, name: str) -> nir.NIRNode:
        kind = self.node_type(group, name)
        if kind == "NIRGraph":
            return self.graph(group, name)
        if kind in EXTENSION_TYPES:
            node = self.extension(group, name, kind)
        elif kind in STANDARD_FIELDS:
            self.missing(group, name, kind, STANDARD_FIELDS[kind])
            try:
                node = read_node(group)
            except Exception as e:  # nir asserts and raises bare errors on malformed nodes
                raise self.error(f"node {name!r} ({kind}) is malformed: {type(e).__name__}: {e}",
                                 hint=_CORRUPT_HINT) from e
            node.metadata = _read_metadata(group)  # nir leaves numpy types and drops some
        else:
            raise self.error(f"node {name!r} has unknown type {kind!r}",
                             hint=f"known types: {', '.join(known_types())}")
        self.validate(node, name, kind)
        return node

    def extension(self, group: h5py.Group, name: str, kind: str) -> nir.NIRNode:
        cls = EXTENSION_TYPES[kind]
        required = tuple(
            f.name for f in dataclasses.fields(cls)
            if f.init and f.name != "metadata"
            and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        self.missing(group, name, kind, required)
        fields = {k: v[()] for k, v in group.items() if k not in ("type", "metadata") and isinstance(v, h5py.Dataset)}
        fields["metadata"] = _read_metadata(group)
        try:
            return cls.from_dict(fields)
        except Exception as e:
            raise self.error(f"node {name!r} ({kind}) is malformed: {type(e).__name__}: {e}",
                             hint=_CORRUPT_HINT) from e

    def validate(self, node: nir.NIRNode, name: str, kind: str) -> None:
        for field in dataclasses.fields(node):
            if field.name in ("input_type", "output_type", "metadata"):
                continue
            value = getattr(node, field.name, None)
            if (isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)
                    and not np.isfinite(value).all()):
                raise self.error(f"node {name!r} ({kind}) has NaN or Inf in {field.name!r}",
                                 hint="the model that was exported holds non-finite parameters")
        if isinstance(node, nir.Affine):
            weight, bias = np.asarray(node.weight), np.asarray(node.bias)
            if weight.ndim != 2 or bias.shape != weight.shape[:1]:
                raise self.error(
                    f"node {name!r} (Affine) has weight {list(weight.shape)} and bias {list(bias.shape)}; "
                    "expected weight [out, in] and bias [out]", hint=_CORRUPT_HINT)


def read(path: str | os.PathLike) -> nir.NIRGraph:
    """Read a NIR file written by any NIR tool or by ``write``.

    Returns a ``NIRGraph`` built with ``type_check=False`` (extension nodes carry only
    feature counts, not full shapes). Raises ``NIRFormatError`` for a missing or
    unreadable file, a file without a ``node`` group, unknown node types, missing
    fields, edges naming unknown nodes, non-finite parameters or an Affine whose
    weight and bias disagree.
    """
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise NIRFormatError(f"{file}: no such file", hint="check the path; NIR files are written by `spikec compile`")
    if path.is_dir():
        raise NIRFormatError(f"{file}: is a directory, not a NIR file", hint="pass the .nir file inside it")
    reader = _Reader(file)
    try:
        with h5py.File(path, "r") as f:
            if "node" not in f:
                raise reader.error("no 'node' group: not a NIR file", hint="pass a file written by nir.write")
            root = f["node"]
            kind = reader.node_type(root, "<root>")
            if kind != "NIRGraph":
                raise reader.error(f"the root node is a {kind}, not a NIRGraph", hint="spikec reads whole graphs")
            return reader.graph(root, "<root>")
    except NIRFormatError:
        raise
    except OSError as e:  # h5py: not HDF5, truncated, unreadable
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NIRFormatError(f"{file}: not a readable HDF5/NIR file ({detail})", hint=_CORRUPT_HINT) from e
    except (KeyError, ValueError) as e:  # h5py on damaged groups and datasets
        raise NIRFormatError(f"{file}: malformed NIR file ({type(e).__name__}: {e})", hint=_CORRUPT_HINT) from e
