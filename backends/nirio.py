"""NIR files: atomic writing and a reader that knows spikec's extension nodes.

``write`` stores a graph in ``nir.write``'s layout (HDF5, uncompressed by default: gzip is
about 6x slower for little gain on float weights), byte for byte the file ``nir.write``
makes, but serializing one node at a time (``nir.write`` deep-copies every array twice
first, through ``NIRGraph.to_dict``, so writing a model cost three times its weights). It
writes into a temporary file beside the target and renames it into place, so a failed or
interrupted write never leaves a half-written file and keeps any previous file. Groups are
written in creation order, so node order survives the round trip (``nir.read`` too returns it).

``read`` reads standard nodes with nir's own reader (``nir.serialization.read_node``)
and the extension nodes of ``spikec.core.ir`` with their ``from_dict``, recursing
through nested ``NIRGraph`` nodes, and checks the file on the way: every failure is a
one-line ``NIRFormatError`` that names the file and the problem. Metadata values come
back as Python ``str``/``int``/``float``/``bool`` where they were scalars, arrays stay
numpy arrays.

Before any array is read, ``read`` surveys the file's metadata only (h5py link and
dataset headers): soft and external links, hard links that share or loop, nesting
deeper than ``MAX_DEPTH``, and a declared total size above ``max_nir_bytes()`` (env
``SPIKEC_MAX_NIR_BYTES``, default 16 GiB) or above the available memory are refused,
so a tiny file that declares a huge tensor cannot exhaust memory. What is checked
after that (``nir_checks``: each node's values and shapes, feature counts across edges, no
cycle in a spikec graph) is listed in docs/errors.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import h5py
import nir
import numpy as np
from nir.serialization import read_node

from spikec.core.errors import InputError, NIRFormatError, ResourceError, UsageError
from spikec.core.ir import EXTENSION_TYPES
from spikec.core.lazy import LazyArray

from .nir_checks import CORRUPT_HINT, check_edges, check_node

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

MAX_BYTES_ENV = "SPIKEC_MAX_NIR_BYTES"
DEFAULT_MAX_BYTES = 16 * 2**30
MAX_DEPTH = 32  # nesting of HDF5 groups (a NIR graph uses 3 levels per subgraph)
LAZY_MIN_BYTES = 2**20
"""With ``read(..., lazy=True)``, array fields of at least this many bytes stay in the file."""


def max_nir_bytes() -> int:
    """The largest total of declared dataset bytes ``read`` accepts: ``SPIKEC_MAX_NIR_BYTES``
    (an integer number of bytes) or 16 GiB."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{MAX_BYTES_ENV}={raw!r} is not an integer number of bytes") from None
    if value < 0:
        raise UsageError(f"{MAX_BYTES_ENV}={raw!r} is negative")
    return value


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


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
        with _track_order(), h5py.File(tmp, "w") as f:
            f.create_dataset("version", data=nir.version, dtype=h5py.string_dtype())
            _write_graph(f.create_group("node"), graph, compression)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_graph(group: h5py.Group, graph: nir.NIRGraph, compression: str | None) -> None:
    """``graph.to_dict()`` written into ``group`` as ``nir.write`` does (same keys in the same
    order), with each node serialized (copied) only while it is written."""
    _write_value(group, "metadata", graph.metadata, compression)
    nodes = group.create_group("nodes")
    for name, node in graph.nodes.items():
        sub = nodes.create_group(str(name))
        if isinstance(node, nir.NIRGraph):
            _write_graph(sub, node, compression)
        else:
            for k, v in node.to_dict().items():
                _write_value(sub, k, v, compression)
    _write_value(group, "edges", graph.edges, compression)
    _write_value(group, "type", type(graph).__name__, compression)


def _write_value(group: h5py.Group, key: str, value: Any, compression: str | None) -> None:
    """One entry of a node's dict, as ``nir.write``'s ``write_recursive`` stores it."""
    if key == "metadata":
        if value != {}:
            sub = group.create_group(key)
            for k, v in value.items():
                _write_value(sub, k, v, compression)
    elif isinstance(value, str):
        group.create_dataset(key, data=value, dtype=h5py.string_dtype())
    elif isinstance(value, np.ndarray):
        group.create_dataset(key, data=value, dtype=value.dtype, compression=compression)
    elif isinstance(value, dict):
        sub = group.create_group(str(key))
        for k, v in value.items():
            _write_value(sub, k, v, compression)
    else:
        group.create_dataset(key, data=value)


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


def _stamp(path: Path) -> tuple[int, ...]:
    """What identifies the file's content without reading it: device, inode, size, mtime."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _NodeSource:
    """Reads one node of a lazily read file again, whole and checked (``spikec.core.lazy``);
    a file changed since it was read is a ``NIRFormatError``."""

    def __init__(self, path: Path, file: str, group: str, name: str, stamp: tuple[int, ...]):
        self.path, self.file, self.group, self.name, self.stamp = path, file, group, name, stamp

    def __call__(self) -> nir.NIRNode:
        with _file_errors(self.file):
            if _stamp(self.path) != self.stamp:
                raise NIRFormatError(f"{self.file}: the file changed since it was read",
                                     hint="run the command again on the new file")
            with h5py.File(self.path, "r") as f:
                return _Reader(self.file).node(f[self.group], self.name)


class _Reader:
    """Reads one file; ``file`` is only used to name it in error messages. With ``lazy`` (the
    file's path and stamp), large array fields are left in the file (``LazyArray``)."""

    def __init__(self, file: str, lazy: tuple[Path, tuple[int, ...]] | None = None):
        self.file = file
        self.lazy = lazy

    def error(self, message: str, hint: str | None = None) -> NIRFormatError:
        return NIRFormatError(f"{self.file}: {message}", hint=hint)

    def survey(self, root: h5py.Group) -> int:
        """Check links and declared sizes from HDF5 metadata alone (no data is read);
        returns the declared bytes of every dataset under ``root``."""
        hard_links = 0
        problems: list[NIRFormatError] = []

        def on_link(name: bytes, info: Any) -> int | None:
            nonlocal hard_links
            path = name.decode("utf8", "replace")
            if info.type != h5py.h5l.TYPE_HARD:
                problems.append(self.error(
                    f"{path!r} is a soft or external link; NIR files hold no links",
                    hint="spikec follows no links to other objects or files; write the file again"))
            elif path.count("/") >= MAX_DEPTH:
                problems.append(self.error(f"{path!r} is nested deeper than {MAX_DEPTH} groups", hint=CORRUPT_HINT))
            hard_links += 1
            return 1 if problems else None  # non-None stops the visit

        root.id.links.visit(on_link, info=True)  # each group once, even through cycles
        if problems:
            raise problems[0]
        objects, total, small = 0, 0, 0
        per_group: Counter[str] = Counter()

        def on_object(name: str, obj: Any) -> None:
            nonlocal objects, total, small
            objects += 1
            if isinstance(obj, h5py.Dataset) and obj.shape is not None:
                size = math.prod(obj.shape) * obj.dtype.itemsize
                total += size
                small += size if size < LAZY_MIN_BYTES else 0
                per_group[name.rpartition("/")[0]] += size

        root.visititems(on_object)  # each object once
        if hard_links != objects:
            raise self.error("the file links one group or array from several places (shared or cyclic)",
                             hint=CORRUPT_HINT)
        limit = max_nir_bytes()
        if total > limit:
            raise self.error(f"the file declares {_gib(total)} of arrays, more than the limit of {_gib(limit)}",
                             hint=f"if the file is genuine, raise the limit with {MAX_BYTES_ENV}=BYTES")
        # read lazily, memory holds the small arrays and one node's at a time
        needed = total if self.lazy is None else small + max(per_group.values(), default=0)
        available = available_memory()
        if available is not None and needed > available:
            held = "" if self.lazy is None else " to hold at once"
            raise ResourceError(f"{self.file}: the file declares {_gib(needed)} of arrays{held} but only "
                                f"{_gib(available)} of memory is available", hint="free memory or use a larger machine")
        return total

    def node_type(self, group: h5py.Group, name: str) -> str:
        if not isinstance(group, h5py.Group) or "type" not in group:
            raise self.error(f"node {name!r} has no 'type' field", hint=CORRUPT_HINT)
        item = group["type"]
        kind = _python(item[()]) if isinstance(item, h5py.Dataset) and item.shape == () else None
        if not isinstance(kind, str):
            raise self.error(f"node {name!r} has a 'type' field that is not a string", hint=CORRUPT_HINT)
        return kind

    def check_dtypes(self, group: h5py.Group, name: str, kind: str, strings: tuple[str, ...] = ()) -> None:
        """Every field dataset holds numbers, except the named string fields."""
        for key, item in group.items():
            if key == "type":
                continue
            if key == "metadata":
                if not isinstance(item, h5py.Group):
                    raise self.error(f"node {name!r} ({kind}) metadata is not a group", hint=CORRUPT_HINT)
                continue
            if not isinstance(item, h5py.Dataset):
                raise self.error(f"node {name!r} ({kind}) field {key!r} is a group, not an array", hint=CORRUPT_HINT)
            want_string = key in strings
            is_string = item.dtype.kind in "OSU"
            if want_string != is_string or not (is_string or item.dtype.kind in "biuf"):
                expected = "a string" if want_string else "numbers"
                raise self.error(f"node {name!r} ({kind}) field {key!r} has dtype {item.dtype}, expected {expected}",
                                 hint=CORRUPT_HINT)

    def missing(self, group: h5py.Group, name: str, kind: str, fields: tuple[str, ...]) -> None:
        absent = [f for f in fields if f not in group]
        if absent:
            raise self.error(
                f"node {name!r} ({kind}) is missing field(s) {', '.join(map(repr, absent))}", hint=CORRUPT_HINT
            )

    def graph(self, group: h5py.Group, name: str) -> nir.NIRGraph:
        self.missing(group, name, "NIRGraph", STANDARD_FIELDS["NIRGraph"])
        where = "" if name == "<root>" else f" of subgraph {name!r}"
        if (not isinstance(group["nodes"], h5py.Group) or not isinstance(group["edges"], h5py.Dataset)
                or ("metadata" in group and not isinstance(group["metadata"], h5py.Group))):
            raise self.error(f"'nodes', 'edges' or 'metadata'{where} has the wrong HDF5 kind", hint=CORRUPT_HINT)
        if group["edges"].dtype.kind not in "OSU" and group["edges"].size:
            raise self.error(f"edges{where} have dtype {group['edges'].dtype}, expected node names",
                             hint=CORRUPT_HINT)
        prefix = "" if name == "<root>" else f"{name}/"  # names nested nodes in messages only
        nodes = {key: self.node(item, prefix + key) for key, item in group["nodes"].items()}
        raw = group["edges"][()]
        if raw.size == 0:
            edges: list[tuple[str, str]] = []
        elif raw.ndim != 2 or raw.shape[1] != 2:
            raise self.error(f"edges{where} have shape {list(raw.shape)}, expected [n, 2]", hint=CORRUPT_HINT)
        else:
            edges = [(_python(a), _python(b)) for a, b in raw]
        repeated = [edge for edge, n in Counter(edges).items() if n > 1]
        if repeated:  # NIR sums fan-in: a repeated edge would add its source twice
            raise self.error(f"edge {repeated[0]!r}{where} appears more than once",
                             hint="each edge must be listed once; write the file again")
        for src, dst in edges:
            for end in (src, dst):
                if end not in nodes:
                    raise self.error(
                        f"edge ({src!r}, {dst!r}){where} names unknown node {end!r}",
                        hint=f"the graph has {len(nodes)} nodes; the file is inconsistent, write it again",
                    )
        check_edges(nodes, edges, where, self.error)
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_read_metadata(group), type_check=False)

    def node(self, group: h5py.Group, name: str) -> nir.NIRNode:
        kind = self.node_type(group, name)
        if kind == "NIRGraph":
            return self.graph(group, name)
        if kind in EXTENSION_TYPES:
            node = self.extension(group, name, kind)
        elif kind in STANDARD_FIELDS:
            self.missing(group, name, kind, STANDARD_FIELDS[kind])
            self.check_dtypes(group, name, kind)
            try:
                node = read_node(group)
            except Exception as e:  # nir asserts and raises bare errors on malformed nodes
                raise self.error(f"node {name!r} ({kind}) is malformed: {type(e).__name__}: {e}",
                                 hint=CORRUPT_HINT) from e
            node.metadata = _read_metadata(group)  # nir leaves numpy types and drops some
        else:
            raise self.error(f"node {name!r} has unknown type {kind!r}",
                             hint=f"known types: {', '.join(known_types())}")
        check_node(node, name, kind, self.error)
        if self.lazy is not None:
            self.leave_in_file(node, group, name)
        return node

    def leave_in_file(self, node: nir.NIRNode, group: h5py.Group, name: str) -> None:
        """Replace ``node``'s large array fields (checked already) by ``LazyArray``s that read
        the node again from the file."""
        assert self.lazy is not None
        source = _NodeSource(self.lazy[0], self.file, group.name, name, self.lazy[1])
        for field in dataclasses.fields(node):
            value = getattr(node, field.name, None)
            if isinstance(value, np.ndarray) and value.nbytes >= LAZY_MIN_BYTES:
                setattr(node, field.name, LazyArray(tuple(value.shape), value.dtype, source, field.name))

    def extension(self, group: h5py.Group, name: str, kind: str) -> nir.NIRNode:
        cls = EXTENSION_TYPES[kind]
        required = tuple(
            f.name for f in dataclasses.fields(cls)
            if f.init and f.name != "metadata"
            and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        self.missing(group, name, kind, required)
        strings = tuple(f.name for f in dataclasses.fields(cls) if str(f.type) == "str")
        self.check_dtypes(group, name, kind, strings)
        fields = {k: v[()] for k, v in group.items() if k not in ("type", "metadata") and isinstance(v, h5py.Dataset)}
        fields["metadata"] = _read_metadata(group)
        try:
            return cls.from_dict(fields)
        except Exception as e:
            raise self.error(f"node {name!r} ({kind}) is malformed: {type(e).__name__}: {e}",
                             hint=CORRUPT_HINT) from e


def read(path: str | os.PathLike, lazy: bool = False) -> nir.NIRGraph:
    """Read a NIR file written by any NIR tool or by ``write``.

    lazy: leave every array field of at least ``LAZY_MIN_BYTES`` in the file (a
    ``spikec.core.lazy.LazyArray``: shape and dtype; the simulator reads each node when it
    runs it). Each node is still read whole once and checked as below, one at a time, and the
    memory check asks only for the small arrays plus the largest node. A node read again finds
    the file unchanged (device, inode, size, mtime) or raises ``NIRFormatError``.

    Returns a ``NIRGraph`` built with ``type_check=False`` (extension nodes carry only
    feature counts, not full shapes). Raises ``NIRFormatError`` for a missing or
    unreadable file, a file without a ``node`` group, links, a declared size over
    ``max_nir_bytes()``, unknown node types, missing fields, wrong dtypes, parameters
    whose shapes or values disagree, non-finite parameters, edges naming unknown nodes
    or joining different feature counts, and cycles in spikec graphs (list in
    docs/errors.md); ``ResourceError`` when the declared size exceeds available memory.
    """
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise NIRFormatError(f"{file}: no such file", hint="check the path; NIR files are written by `spikec compile`")
    if path.is_dir():
        raise NIRFormatError(f"{file}: is a directory, not a NIR file", hint="pass the .nir file inside it")
    if not path.is_file():  # a FIFO or device would block or never end
        raise NIRFormatError(f"{file}: not a regular file", hint="pass a NIR file written by `spikec compile`")
    reader = _Reader(file, (path, _stamp(path)) if lazy else None)
    with _file_errors(file), h5py.File(path, "r") as f:
        if "node" not in f:
            raise reader.error("no 'node' group: not a NIR file", hint="pass a file written by nir.write")
        root = f["node"]
        if not isinstance(root, h5py.Group):
            raise reader.error("'node' is not a group: not a NIR file", hint="pass a file written by nir.write")
        reader.survey(f)
        kind = reader.node_type(root, "<root>")
        if kind != "NIRGraph":
            raise reader.error(f"the root node is a {kind}, not a NIRGraph", hint="spikec reads whole graphs")
        return reader.graph(root, "<root>")


@contextlib.contextmanager
def _file_errors(file: str) -> Iterator[None]:
    """h5py's and numpy's errors on a damaged file as one-line ``NIRFormatError``s naming ``file``."""
    try:
        yield
    except (NIRFormatError, ResourceError):
        raise
    except OSError as e:  # h5py: not HDF5, truncated, unreadable
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NIRFormatError(f"{file}: not a readable HDF5/NIR file ({detail})", hint=CORRUPT_HINT) from e
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, OverflowError, RuntimeError) as e:
        # h5py and numpy on damaged groups and datasets: still the file's fault, not a bug
        raise NIRFormatError(f"{file}: malformed NIR file ({type(e).__name__}: {e})", hint=CORRUPT_HINT) from e
