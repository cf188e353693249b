"""Placing the source model with accelerate's device map while it is loaded and captured
(``spikec compile --device-map``, docs/memory.md).

The model is loaded with ``from_pretrained(device_map="auto", max_memory=..., offload_folder=...)``:
accelerate puts each module on a GPU, in CPU memory or on disk (read back from the checkpoint's
safetensors, or from memory-mapped files in the offload folder) within ``max_memory``, and its
hooks bring a module's weights to the execution device while it runs. torch.export cannot trace
through those hooks, so the graph is captured from a meta-device skeleton of the same class
(:func:`meta_skeleton`: shapes only, no weights), and the canonical builder reads each decoder
block's weights through accelerate (:class:`BlockOnloader`, ``align_module_device``) a block at a
time, while it builds that block. The canonical module then holds the weights, float32, as
without placement, and the calibration and the other passes run on it, giving the same figures.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from spikec.core.errors import UsageError

PLACEMENTS = ("auto", "cpu", "disk")
"""``--device-map`` values: ``auto`` (GPUs, then CPU memory, then disk, within ``--max-memory``),
``cpu`` (CPU memory, then disk: no GPU), ``disk`` (every weight on disk, read when needed)."""

OFFLOAD_DIR = ".offload"
"""The folder spikec makes inside its own temporary output directory for accelerate's offloaded
weights that have no safetensors file to be read from (and SmolLM2's checkpoint, re-headed for
accelerate), removed once the source model is dropped."""


@dataclass(frozen=True)
class Placement:
    """Where the source model's modules go while it is loaded and captured.

    ``device_map``: a value of ``PLACEMENTS``; ``max_memory``: accelerate's ``{device: bytes}``
    (``"cpu"`` or a GPU index), None for accelerate's default (what is free);
    ``offload_folder``: where disk-offloaded weights go (spikec creates it and removes it)."""

    device_map: str
    max_memory: dict[str | int, int] | None
    offload_folder: Path

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of transformers' ``from_pretrained`` for this placement."""
        if self.device_map == "disk":
            max_memory: dict[str | int, int] | None = {"cpu": 0}
        elif self.device_map == "cpu":
            max_memory = {"cpu": (self.max_memory or {}).get("cpu", _available_cpu_memory())}
        else:
            max_memory = self.max_memory
        self.offload_folder.mkdir(parents=True, exist_ok=True)
        return {"device_map": "auto", "max_memory": max_memory, "offload_folder": str(self.offload_folder)}


def _available_cpu_memory() -> int:
    """What accelerate would give the CPU by default (the memory available now), in bytes."""
    from accelerate.utils import get_max_memory

    return int(get_max_memory()["cpu"])


def parse_max_memory(text: str | dict[Any, Any], flag: str = "--max-memory") -> dict[str | int, int]:
    """``"cpu=4GiB,0=20GB"`` (or ``{"cpu": "4GiB", 0: "20GB"}``) -> ``{"cpu": 4294967296, 0:
    20000000000}``: bytes per device, ``cpu`` or a GPU index (``cuda:N`` too), sizes as accelerate
    writes them (``4GiB``, ``500MB``, or bytes). ``UsageError`` naming ``flag`` for anything else."""
    from accelerate.utils import convert_file_size_to_int

    if isinstance(text, dict):
        text = ",".join(f"{k}={v}" for k, v in text.items())
    out: dict[str | int, int] = {}
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key or not value:
            raise UsageError(f"{flag} expects DEVICE=SIZE items such as cpu=4GiB, got {item!r}")
        if key.startswith("cuda:"):
            key = key[5:]
        device: str | int = int(key) if key.isdigit() else key
        if device != "cpu" and not isinstance(device, int):
            raise UsageError(f"{flag} {item!r}: unknown device {key!r}; use cpu or a GPU index (0, 1, ...)")
        try:
            size = int(value) if value.isdigit() else convert_file_size_to_int(value)
        except (ValueError, TypeError):
            raise UsageError(f"{flag} {item!r}: {value!r} is not a size; write e.g. cpu=4GiB or 0=20GB") from None
        if size < 0:
            raise UsageError(f"{flag} {item!r}: the size must not be negative")
        out[device] = size
    if not out:
        raise UsageError(f"{flag} is empty; write DEVICE=SIZE items such as cpu=4GiB")
    return out


def check_placement(device_map: str | None, max_memory: dict[str | int, int] | None,
                    names: dict[str, str] | None = None) -> None:
    """``UsageError`` for a ``device_map`` not in ``PLACEMENTS`` or a ``max_memory`` it cannot
    use, naming the options as ``names`` maps ``device_map`` and ``max_memory``."""
    n = {"device_map": "--device-map", "max_memory": "--max-memory", **(names or {})}
    if device_map is None:
        if max_memory:
            raise UsageError(f"{n['max_memory']} needs {n['device_map']} auto or cpu")
        return
    if device_map not in PLACEMENTS:
        raise UsageError(f"{n['device_map']} {device_map!r} is not a placement; choose one of {', '.join(PLACEMENTS)}")
    if max_memory and device_map == "disk":
        raise UsageError(f"{n['max_memory']}: {n['device_map']} disk keeps no weights in memory",
                         hint=f"use {n['device_map']} cpu with {n['max_memory']} cpu=SIZE")
    if max_memory and device_map == "cpu" and set(max_memory) != {"cpu"}:
        raise UsageError(f"{n['max_memory']}: {n['device_map']} cpu uses no GPU; give cpu=SIZE only")


@contextlib.contextmanager
def offload_notice_off() -> Iterator[None]:
    """accelerate's warning that parameters "are on the meta device because they were offloaded"
    (what ``--device-map`` asked for; stderr is for errors) off inside the block, as it was after."""
    log = logging.getLogger("accelerate.big_modeling")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def rename_safetensors(source: Path, target: Path, names: dict[str, str]) -> None:
    """Copy the safetensors file ``source`` to ``target`` with the tensors named by ``names``'
    keys renamed to its values (only the JSON header changes; the data is copied as it is, a
    block at a time, never held whole in memory)."""
    with open(source, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header = {names.get(k, k): v for k, v in header.items()}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
        with open(target, "wb") as out:
            out.write(len(text).to_bytes(8, "little"))
            out.write(text)
            shutil.copyfileobj(f, out, 1 << 24)


def is_dispatched(model: nn.Module) -> bool:
    """Whether ``model`` was loaded with a device map (accelerate's hooks place its modules)."""
    return getattr(model, "hf_device_map", None) is not None


def placement_counts(model: nn.Module) -> dict[str, int]:
    """How many entries of a dispatched ``model``'s device map went to each device
    (``{"cpu": 4, "disk": 27}``; GPU indices as strings), as report.json's ``placement`` records.
    A model that fitted on one device is not dispatched: ``{that device: 1}``."""
    counts: dict[str, int] = {}
    device_map = getattr(model, "hf_device_map", None) or {"": next(model.parameters()).device.type}
    for device in device_map.values():
        counts[str(device)] = counts.get(str(device), 0) + 1
    return counts


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A model of ``model``'s class and config on the meta device (shapes, no weights), in eval
    mode and with ``model``'s parameter dtype: what torch.export captures in place of a
    dispatched model."""
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        skeleton = type(model)(copy.deepcopy(model.config))
    return skeleton.to(dtype).eval()


class BlockOnloader:
    """Brings offloaded weights of ``model`` (loaded with a device map) into memory for the
    canonical builder, a decoder block at a time.

    ``onload(path)`` before the builder reads the module at ``path``: the offloaded modules of its
    decoder block (``block_index(path)``; every module outside the blocks on its own) are loaded
    with accelerate's ``align_module_device``; blocks two or more before the current one are
    offloaded again, so at most two blocks plus the modules outside the blocks are resident.
    ``close()`` offloads everything still loaded."""

    def __init__(self, model: nn.Module, block_index: Callable[[str], int | None]):
        from accelerate.utils import has_offloaded_params

        self.block_index = block_index
        self.units: dict[Any, list[nn.Module]] = {}
        for path, module in model.named_modules():
            if has_offloaded_params(module):
                self.units.setdefault(self._unit(path), []).append(module)
        self.loaded: dict[Any, ExitStack] = {}

    def _unit(self, path: str) -> Any:
        block = self.block_index(path)
        return ("block", block) if block is not None else ("module", path)

    def onload(self, path: str) -> None:
        """Load the offloaded weights of the block (or module) holding ``path``."""
        from accelerate.utils import align_module_device

        unit = self._unit(path)
        if unit[0] == "block":
            for old in [u for u in self.loaded if u[0] == "block" and u[1] < unit[1] - 1]:
                self.loaded.pop(old).close()
            wanted = [unit] if unit in self.units else []
        else:  # a module outside the blocks, with its offloaded submodules (or inside an offloaded module)
            wanted = [u for u in self.units if u[0] == "module" and (
                u[1] == path or u[1].startswith(path + ".") or path.startswith(u[1] + ".") or not u[1])]
        for u in wanted:
            if u not in self.loaded:
                stack = ExitStack()
                for module in self.units[u]:
                    stack.enter_context(align_module_device(module, torch.device("cpu")))
                self.loaded[u] = stack

    def close(self) -> None:
        """Offload every weight still loaded."""
        while self.loaded:
            self.loaded.popitem()[1].close()
