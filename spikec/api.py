"""The Python API: ``spikec.compile`` and ``spikec.load`` (docs/api.md).

``compile`` runs the same pipeline as ``spikec compile`` (spikec/compiler.py) on a model name, a
local directory or a model object and returns a :class:`~spikec.spiking_model.SpikingModel`;
``load`` reads a compile output directory back. Errors are spikec's exceptions (``UsageError``
and the others of ``spikec.core.errors``), and name the Python arguments, not CLI flags.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from spikec.core.errors import UsageError
from spikec.spiking_model import SpikingModel, check_range

ARGUMENT_NAMES = {"timesteps": "timesteps", "calib_samples": "calib_samples", "seq_len": "seq_len", "options": "options:",
                  "budget": "budget", "coding": "coding", "dtype": "dtype", "device_map": "device_map",
                  "max_memory": "max_memory"}
"""How compile errors name the options: by their Python argument names."""


def compile(
    model: str | Path | torch.nn.Module,
    *,
    output: str | Path | None = None,
    timesteps: int | None = None,
    tokenizer: Any = None,
    target: str = "nir",
    preset: str = "balanced",
    attention: str = "softmax",
    token_encoding: str = "none",
    calibrate: str = "none",
    coding: str = "rate",
    budget: float | None = None,
    passes: list[str] | None = None,
    options: dict[str, Any] | None = None,
    calib_text: str | None = None,
    calib_samples: int = 16,
    seq_len: int = 128,
    random_weights: bool = False,
    config: dict[str, Any] | None = None,
    plugins: list[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | None = None,
    max_memory: str | dict[str | int, int | str] | None = None,
    force: bool = False,
    quiet: bool = True,
    names: dict[str, str] | None = None,
) -> SpikingModel:
    """Compile a transformer language model into a spiking network.

    model: a name spikec knows (``gpt2``, ``smollm2-135m``, ``llama``, ...: ``spikec compile
    --help``), a Hugging Face id, a local directory saved with ``save_pretrained``, or a model
    object: a ``torch.nn.Module`` that is an instance of a supported transformers class
    (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...), with any weights; a module wrapping one
    is refused. A model object's weights are kept in ``DIR/reference`` (safetensors) so that
    ``evaluate`` can compare with it later.
    tokenizer: for a model object (default: GPT-2's for ``gpt2``, SmolLM2's for its ``llama``).
    output: the directory to write (default: a new temporary directory; ``save`` keeps it).
    timesteps: T, timesteps per window (1..4096; default: the coding's, ``spikec.core.codings.DEFAULT_TIMESTEPS``:
    rate 16, binary 8, ternary 7). seq_len: positions per calibration sample
    (2..8192), also the longest sequence the network takes when it has learned positions.
    calib_text: a text file (or ``embedded:NAME``) for calibration, calib_samples of it.
    coding: ``rate``, ``binary`` or ``ternary`` (few-spike neurons, docs/few-spike.md); budget: with
    a few-spike coding, the calibration perplexity ratio within which each layer's steps are chosen for energy.
    preset, attention, token_encoding, calibrate, passes, options (pass options such as
    ``{"burst_spikes": 8}``), plugins (files of passes), random_weights and config (field
    overrides, with random weights), seed, target (``nir``, ``sim``, ``lava``), device: as the
    options of ``spikec compile``. dtype: ``float32`` (default) or ``bfloat16``, the named model's
    parameters while it is loaded and captured (half the memory; the network is then built in
    float32 on the bfloat16-rounded weights, and ``evaluate`` loads the reference ANN in bfloat16);
    a model object is refused with ``bfloat16``. device_map: ``auto``, ``cpu`` or ``disk``, place the
    named model with accelerate while it is loaded and captured (GPUs, CPU memory, disk; docs/memory.md),
    within max_memory (``"cpu=4GiB,0=20GB"`` or ``{"cpu": "4GiB"}``); the network is the same.
    quiet: no status lines on stderr.
    names: how error messages name the options, ``{argument: shown name}`` over the argument
    names (the ``spikec compile`` command passes its flags, ``spikec.compiler.CLI_FLAGS``).

    Returns a :class:`SpikingModel` holding the fx module (``to_torch``) besides the files; the
    directory written is read back on first use (``compile_report`` and ``path`` need no reading).
    """
    from rich.console import Console

    from spikec.compiler import CompileOptions, compile_network
    from spikec.evaluate import load_compiled
    from spikec.frontend.model_objects import loaded_from_object
    from spikec.frontend.placement import parse_max_memory

    n = {**ARGUMENT_NAMES, **(names or {})}
    if timesteps is not None:
        check_range(n["timesteps"], timesteps, 1, 4096)
    check_range(n["calib_samples"], calib_samples, 1)
    check_range(n["seq_len"], seq_len, 2, 8192)
    loaded = None
    if isinstance(model, torch.nn.Module):
        if dtype != "float32":
            raise UsageError(f"{n['dtype']}: only for a named model; a model object is captured in float32",
                             hint="compile it by name or directory to load it in bfloat16")
        if device_map is not None:
            raise UsageError(f"{n['device_map']}: only for a named model or directory; a model object is already loaded")
        loaded = loaded_from_object(model, tokenizer)
        name = loaded.name
    elif isinstance(model, (str, Path)):
        name = str(model)
        if tokenizer is not None:
            raise UsageError("tokenizer: only for a model object; a named model brings its own")
    else:
        raise UsageError(f"model: expected a model name, a directory or a torch.nn.Module, got {type(model).__name__}")
    memory = None if max_memory is None else parse_max_memory(max_memory, n["max_memory"])
    made = None if output is not None else Path(tempfile.mkdtemp(prefix="spikec-"))
    out = Path(output) if made is None else made / "model"
    opts = CompileOptions(
        model=name, output=str(out), timesteps=timesteps, target=target, calib_text=calib_text,
        calib_samples=calib_samples, seq_len=seq_len, passes=list(passes or ["default"]), plugins=list(plugins or []),
        random_weights=random_weights, config_overrides={str(k): str(v) for k, v in (config or {}).items()},
        seed=seed, force=force, options=dict(options or {}), preset=preset, device=device, attention=attention,
        token_encoding=token_encoding, calibrate=calibrate, coding=coding, budget=budget, dtype=dtype,
        device_map=device_map, max_memory=memory,
    )
    console = Console(stderr=True, quiet=quiet)
    try:
        result = compile_network(opts, console, loaded, names=n)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)  # the directory this call made, nothing else
        raise
    report = json.loads((out / "report.json").read_text())  # as load_compiled reads it, without the graph
    return SpikingModel(lambda: load_compiled(out, reference_flag="reference"), result.module, path=out, report=report)


def load(directory: str | Path, *, reference: str | None = None, names: dict[str, str] | None = None,
         tokenizer_from_reference: bool = True, lazy: bool = False) -> SpikingModel:
    """Read a compile output directory (``spikec compile ... -o DIR`` or ``SpikingModel.save``).

    reference: the original model to compare with in ``evaluate``/``generate`` (a name or a
    directory), when the source recorded at compile time has moved; by default that source
    (or the copy kept in ``DIR/reference`` for a model compiled from an object).
    names: how error messages name the arguments of ``load`` and of the model's methods,
    ``{argument: shown name}`` (the ``spikec`` commands pass their flags, e.g. ``{"reference": "--model"}``).
    tokenizer_from_reference: a directory without ``tokenizer/`` takes the reference model's
    tokenizer (which loads that model); False makes it an ``InputError`` (``spikec energy`` and
    ``spikec report``, which need no reference ANN). lazy: the network's large arrays stay in
    ``model.nir`` until the simulator runs their node (docs/memory.md): less memory, a second read."""
    from spikec.evaluate import load_compiled

    flag = (names or {}).get("reference", "reference")
    return SpikingModel(load_compiled(directory, reference, flag, tokenizer_from_reference, lazy), names=names)
