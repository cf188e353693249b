"""The network description of a spikec Lava export: ``network.json`` + ``weights.npz``.

No Lava import: shared with ``spikec.backends.lava.export``. A node's values travel on Lava
ports as ``[features, batch*positions]`` arrays (``numpy_ops.to_lava``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "spikec-lava/1"
NETWORK_FILE = "network.json"
WEIGHTS_FILE = "weights.npz"

SPIKING = "SignedIF"
DENSE = "Dense"
READOUT = "RateReadout"
REAL_OPS = ("Embedding", "LayerNorm", "RMSNorm", "Attention", "Activation", "GatedActivation", "Add", "Affine")
SSA = "SSA"  # spiking self-attention: real q|k|v in, spikes out, like a SignedIF layer
FEW_SPIKE = "FewSpike"  # few-spike neurons (binary or balanced-ternary code), scheduled like a SignedIF layer
BINARY_READOUT = "BinaryReadout"  # the Horner readout of a Dense fed by FewSpike neurons
NEURON_TYPES = (SPIKING, SSA, FEW_SPIKE)
READOUTS = (READOUT, BINARY_READOUT)
NODE_TYPES = ("Input", "Output", SPIKING, SSA, FEW_SPIKE, DENSE, *READOUTS, *REAL_OPS)


class NetworkError(ValueError):
    """The network description is inconsistent or asks for something the runner cannot do."""


@dataclass
class Node:
    name: str
    type: str
    attrs: dict[str, Any]
    preds: list[str] = field(default_factory=list)  # in edge order (fan-in sums in this order)
    succs: list[str] = field(default_factory=list)


@dataclass
class Network:
    """The graph of ``network.json`` plus lazy access to ``weights.npz``."""

    nodes: "OrderedDict[str, Node]"  # topological order
    edges: list[tuple[str, str]]
    meta: dict[str, Any]
    arrays: Any = None  # np.lib.npyio.NpzFile or a dict

    def array(self, node: str, key: str) -> np.ndarray:
        return np.asarray(self.arrays[f"{node}/{key}"])

    @property
    def timesteps(self) -> int:
        return int(self.meta["timesteps"])


def network_from_dict(desc: dict[str, Any], arrays: Any) -> Network:
    """Build a ``Network`` from the parsed ``network.json`` and its arrays; checks the format,
    node types and edges, and orders the nodes topologically (stable: file order)."""
    if desc.get("format") != FORMAT:
        raise NetworkError(f"network format {desc.get('format')!r} is not {FORMAT!r}")
    nodes: OrderedDict[str, Node] = OrderedDict()
    for entry in desc["nodes"]:
        if entry["type"] not in NODE_TYPES:
            raise NetworkError(f"node {entry['name']!r} has unknown type {entry['type']!r}")
        nodes[entry["name"]] = Node(entry["name"], entry["type"], dict(entry.get("attrs", {})))
    edges = [(str(a), str(b)) for a, b in desc["edges"]]
    for src, dst in edges:
        if src not in nodes or dst not in nodes:
            raise NetworkError(f"edge ({src!r}, {dst!r}) names an unknown node")
        nodes[src].succs.append(dst)
        nodes[dst].preds.append(src)
    order: list[str] = []
    indegree = {n: len(node.preds) for n, node in nodes.items()}
    ready = [n for n in nodes if indegree[n] == 0]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for s in nodes[n].succs:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    if len(order) != len(nodes):
        raise NetworkError("the network has a cycle")
    return Network(OrderedDict((n, nodes[n]) for n in order), edges, dict(desc.get("meta", {})), arrays)


def load_network(folder: str | Path) -> Network:
    """Read ``network.json`` and ``weights.npz`` from an export folder."""
    folder = Path(folder)
    desc = json.loads((folder / NETWORK_FILE).read_text())
    return network_from_dict(desc, np.load(folder / WEIGHTS_FILE))


def features(net: Network, name: str) -> int:
    """Output features of a node."""
    return int(net.nodes[name].attrs["features"])
