"""``spikec compile``: model -> canonical fx graph -> passes -> NIR -> output directory.

Output directory contract (everything ``spikec eval`` and ``spikec run`` need):
  model.nir     the spiking network (NIR, with spikec extension nodes)
  report.json   model and options, passes applied (seconds, statistics), node counts,
                compile seconds, per-layer firing rates on calibration data, and the
                fx-vs-simulator agreement check, and the sha256 of model.nir (``model_nir_sha256``)
  tokenizer/    the tokenizer, saved with ``save_pretrained``
  report.html   the human-readable report (spikec.report), with its plots as PNGs beside it
"""

from __future__ import annotations

import dataclasses
import gc
import json
import platform
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from rich.console import Console

import spikec.passes as builtin_passes
from spikec.passes.pipelines import build_pipeline
from spikec.analysis.spiking_parts import spiking_parts
from spikec.backends import nirio
from spikec.backends.lava.export import export_lava
from spikec.backends.simulator import resolve_device
from spikec.budget import SEARCH_SAMPLES, choose_steps, search_sequences
from spikec.compiled_checks import SHA256_KEY, file_sha256, node_counts
from spikec.core.codings import FEW_SPIKE_CODINGS, default_timesteps
from spikec.core.errors import UsageError
from spikec.core.passes import PassContext
from spikec.frontend.canonicalize import capture_canonical
from spikec.frontend.models import LoadedModel, check_dtype, load_model
from spikec.frontend.placement import OFFLOAD_DIR, Placement, check_placement, placement_counts
from spikec.frontend.weight_cache import REFERENCE_DIR, save_weights
from spikec.lower import lower_to_nir
from spikec.outputs import atomic_directory
from spikec.plugins import load_entry_point_plugins, load_plugin_file
from spikec.report import write_report
from spikec.text import CALIBRATION_TEXT, cut_samples, leading_tokens, text_label
from spikec.verify import compare_fx_and_simulator

TARGETS = ("nir", "sim", "lava")
CLI_FLAGS = {"timesteps": "-T", "calib_samples": "--calib-samples", "seq_len": "--seq-len", "options": "--option",
             "budget": "--budget", "coding": "--coding", "dtype": "--dtype", "device_map": "--device-map",
             "max_memory": "--max-memory"}
"""How ``CompileOptions.validate`` names the options it checks, by default."""


@dataclass
class CompileOptions:
    """Options of ``spikec compile`` (defaults are the CLI's)."""

    model: str
    output: str | None = None
    timesteps: int | None = None  # None: the coding's default (spikec.core.codings.DEFAULT_TIMESTEPS)
    target: str = "nir"
    calib_text: str | None = None
    calib_samples: int = 16
    seq_len: int = 128
    passes: list[str] = field(default_factory=lambda: ["default"])
    plugins: list[str] = field(default_factory=list)
    random_weights: bool = False
    config_overrides: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    force: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # pass options (range, burst_spikes ...), over the preset's
    preset: str = "balanced"  # a name of spikec.passes.PRESETS
    device: str = "cpu"  # where the passes (calibration) run; capture, lowering and the check run on CPU
    attention: str = "softmax"  # softmax | spike-softmax | ssa (spikec.passes.pipelines)
    token_encoding: str = "none"  # none | rate | binary
    calibrate: str = "none"  # none | coarse | fine (FAS stage 2)
    coding: str = "rate"  # rate | binary | ternary (spikec.core.codings.CODINGS)
    budget: float | None = None  # few-spike coding: per-layer steps within this calibration ppl ratio (spikec.budget)
    dtype: str = "float32"  # the source model's parameters while loading and capturing (spikec.frontend.models.DTYPES)
    device_map: str | None = None  # place the source model with accelerate (spikec.frontend.placement.PLACEMENTS)
    max_memory: dict[str | int, int] | None = None  # with device_map: bytes per device ("cpu", GPU index)

    def __post_init__(self) -> None:
        if self.timesteps is None:
            self.timesteps = default_timesteps(self.coding)

    def validate(self, names: dict[str, str] | None = None) -> None:
        """Raise ``UsageError`` for a value out of range, naming the option as ``names`` maps it
        (default: the CLI's flags; the Python API passes its argument names)."""
        n = {**CLI_FLAGS, **(names or {})}
        if self.timesteps < 1 or self.timesteps > 4096:
            raise UsageError(f"{n['timesteps']} must be between 1 and 4096, got {self.timesteps}")
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.calib_samples < 1:
            raise UsageError(f"{n['calib_samples']} must be at least 1, got {self.calib_samples}")
        if self.preset not in builtin_passes.PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; choose one of {', '.join(builtin_passes.PRESETS)}")
        if not 2 <= self.seq_len <= 8192:
            raise UsageError(f"{n['seq_len']} must be between 2 and 8192, got {self.seq_len}")
        resolve_device(self.device)
        check_dtype(self.dtype, n["dtype"])
        check_placement(self.device_map, self.max_memory, n)
        if self.budget is not None and (self.coding not in FEW_SPIKE_CODINGS or not self.budget >= 1.0):
            raise UsageError(f"{n['budget']} takes a perplexity ratio >= 1 with {n['coding']} binary or ternary, got "
                             f"{self.budget} with {n['coding']} {self.coding}")
        digits = self.options.get("binary_digits")
        if self.coding == "ternary" and digits not in (None, "ternary"):
            raise UsageError(f"{n['coding']} ternary sets binary_digits=ternary; got binary_digits={digits}",
                             hint=f"drop binary_digits, or use {n['coding']} binary")

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else default_output_dir(self.model)


def default_output_dir(model: str) -> Path:
    """Where ``spikec compile MODEL`` writes without ``-o``: ``build/<model>`` (a Hugging Face
    id's ``/`` as ``--``)."""
    return Path("build") / model.replace("/", "--")


def resolve_pipeline(names: list[str], default: list[str] | None = None) -> list[str]:
    """Expand ``default`` into the built-in pipeline (or ``default``, the one the mode flags
    chose) and check every name exists."""
    resolved: list[str] = []
    for name in names:
        resolved.extend((default or builtin_passes.DEFAULT_PIPELINE) if name == "default" else [name])
    for name in resolved:
        builtin_passes.get_pass(name)  # raises UnknownPassError listing the known passes
    return resolved


def check_option_keys(options: dict[str, Any], pipeline: list[str], flag: str = "--option") -> None:
    """Refuse ``--option`` keys that no pass of ``pipeline`` reads (a typo would otherwise be
    ignored). A pipeline with a plugin pass may read any key, so it is not checked."""
    if any(builtin_passes.get_pass(name).source != "builtin" for name in pipeline):
        return
    valid = builtin_passes.option_keys(pipeline)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise UsageError(f"{flag} {', '.join(unknown)}: not read by any pass of this pipeline "
                         f"({', '.join(pipeline)})", hint=f"valid keys: {', '.join(sorted(valid))}")


def load_plugins(paths: list[str]) -> None:
    """Installed entry-point plugins, then the plugin files named on the command line."""
    load_entry_point_plugins()
    for p in paths:
        load_plugin_file(p)


@dataclass
class CompileResult:
    """What ``compile_network`` produced: the report (as in report.json), the fx module after
    the passes (the spiking network as torch ops, on CPU) and the NIR graph written."""

    report: dict[str, Any]
    module: torch.fx.GraphModule
    graph: Any


@contextmanager
def status(console: Console, text: str) -> Iterator[Callable[[str], None]]:
    """A step's status: rich's spinner on a terminal; elsewhere (a log, a pipe), where the
    spinner shows nothing, plain lines on stdout (stderr keeps errors alone: docs/errors.md).
    Yields a function that changes the text."""
    if console.quiet:  # spikec.compile(quiet=True): no status at all
        yield lambda t: None
        return
    if console.is_terminal:
        with console.status(text) as spinner:
            yield spinner.update
        return

    def line(t: str) -> None:
        print(f"{t} ...", flush=True)

    line(text)
    yield line


def compile_model(opts: CompileOptions, console: Console | None = None) -> dict[str, Any]:
    """Compile ``opts.model`` into ``opts.output_dir``; returns the report (also written
    to report.json). Nothing is left behind on failure or interruption."""
    return compile_network(opts, console).report


def compile_network(opts: CompileOptions, console: Console | None = None, loaded: LoadedModel | None = None,
                    names: dict[str, str] | None = None) -> CompileResult:
    """``compile_model``, returning the fx module and the graph too. ``loaded`` (a model given
    as an object) replaces loading ``opts.model``; its weights are then kept in
    ``DIR/reference`` so that the directory can be evaluated later. ``names``: how errors name
    the options (``CompileOptions.validate``)."""
    console = console or Console(stderr=True)
    opts.validate(names)
    load_plugins(opts.plugins)
    mode_passes, mode_options = build_pipeline(opts.attention, opts.token_encoding, opts.calibrate, opts.coding)
    pipeline = resolve_pipeline(opts.passes, mode_passes)
    check_option_keys(opts.options, pipeline, {**CLI_FLAGS, **(names or {})}["options"])
    start = time.perf_counter()
    torch.manual_seed(opts.seed)
    out_dir = opts.output_dir
    steps: dict[str, float] = {}

    def step_done(name: str, since: float) -> float:
        now = time.perf_counter()
        steps[name] = now - since
        return now

    with atomic_directory(out_dir, force=opts.force) as tmp:
        t0 = time.perf_counter()
        own_model = loaded is None
        # accelerate's offloaded weights go inside this temporary directory, removed with the model
        placement = None if opts.device_map is None else Placement(opts.device_map, opts.max_memory, tmp / OFFLOAD_DIR)
        if loaded is None:
            with status(console, f"loading {opts.model}"):
                loaded = load_model(
                    opts.model, random_weights=opts.random_weights, config_overrides=opts.config_overrides or None,
                    seed=opts.seed, dtype=opts.dtype, placement=placement,
                )
        else:
            save_weights(loaded.model, tmp / REFERENCE_DIR)
        placed = None if placement is None else placement_counts(loaded.model)
        search = SEARCH_SAMPLES if opts.budget is not None else 0  # --budget measures on later sequences
        calib_stream = leading_tokens(loaded.tokenizer, opts.calib_text, CALIBRATION_TEXT,
                                      (opts.calib_samples + search) * opts.seq_len)
        calibration = cut_samples(calib_stream, opts.calib_samples, opts.seq_len, "calibration")
        t0 = step_done("load", t0)
        with status(console, "capturing with torch.export and canonicalizing"):
            drop_model = own_model and opts.budget is None  # nothing below runs the source model
            gm = capture_canonical(loaded, seq_len=min(opts.seq_len, 16), share_weights=drop_model)
        if drop_model:
            # what gm does not share of the model would otherwise stay resident (docs/memory.md)
            loaded = drop_source_model(loaded, placement)
        # passes, calibration, NIR and the simulator check run in float32 (exact, on a bfloat16
        # model's rounded weights); ``float()`` converts one parameter at a time
        gm = gm.float()
        t0 = step_done("capture", t0)
        ctx = PassContext(
            options={"timesteps": opts.timesteps, **builtin_passes.PRESETS[opts.preset], **mode_options, **opts.options},
            calibration=calibration, config=loaded.config,
        )
        with status(console, "running passes") as update:
            gm = gm.to(resolve_device(opts.device))
            gm, records = builtin_passes.run_passes(gm, pipeline, ctx, on_pass=lambda n: update(f"pass {n}"))
            gm = gm.to("cpu")
        t0 = step_done("passes", t0)
        budget = None
        if opts.budget is not None:
            with status(console, "choosing per-layer steps (--budget)") as update:
                search_ids, search_text = search_sequences(calib_stream, calibration.shape[0], opts.seq_len)
                budget = choose_steps(gm, lambda ids: loaded.model(ids).logits, search_ids, opts.timesteps,
                                      opts.budget, on_step=update, text=search_text).to_json()
            t0 = step_done("budget", t0)
            if placement is not None:
                loaded = drop_source_model(loaded, placement)
        example = calibration[:1]
        with status(console, "lowering to NIR"):
            metadata = {
                "spikec_version": "0.1.0", "profile": "full", "dt": 1.0, "timesteps": opts.timesteps,
                "model": loaded.name, "positions": opts.seq_len,
            }
            graph = lower_to_nir(gm, example[:, :2], metadata, positions=opts.seq_len, share_weights=True)
            t0 = step_done("lower", t0)
            nirio.write(tmp / "model.nir", graph)
            t0 = step_done("write", t0)
        lava_summary = None
        if opts.target == "lava":
            with status(console, "exporting to Lava"):
                lava_summary = {**export_lava(graph, tmp / "lava", timesteps=opts.timesteps, positions=opts.seq_len),
                                "folder": "lava"}
            t0 = step_done("lava_export", t0)
        with status(console, "checking the simulator against the fx module on calibration text"):
            agreement = compare_fx_and_simulator(gm, graph, example, opts.timesteps)
        t0 = step_done("simulator_check", t0)
        loaded.tokenizer.save_pretrained(tmp / "tokenizer")
        report = {
            "model": loaded.name,
            "source": loaded.spec,
            "family": loaded.family,
            "timesteps": opts.timesteps,
            "seq_len": opts.seq_len,
            "target": opts.target,
            "calibration": {"text": text_label(opts.calib_text, CALIBRATION_TEXT),
                            "samples": int(calibration.shape[0]), "positions": int(calibration.shape[1])},
            "passes": [asdict(r) for r in records],
            "capture_seconds": steps["capture"],
            "step_seconds": steps,
            "node_counts": node_counts(graph),
            SHA256_KEY: file_sha256(tmp / "model.nir"),  # eval/run/energy check they read this model.nir
            "firing_rates": agreement.firing_rates,
            "simulator_check": {"neuron_layers": agreement.layers, "identical_layers": agreement.identical_layers,
                                "logits_max_abs_diff": agreement.logits_max_abs_diff},
            "preset": opts.preset,
            "calibrate": opts.calibrate,
            "coding": opts.coding,
            "options": opts.options,
            "environment": {"python": platform.python_version(), "torch": torch.__version__},
        }
        if lava_summary is not None:
            report["lava"] = lava_summary
        if budget is not None:
            report["budget"] = budget
        if placement is not None:
            report["placement"] = {"device_map": placement.device_map,
                                   "max_memory": {str(k): v for k, v in (placement.max_memory or {}).items()},
                                   "modules": placed}
        parts = spiking_parts(graph)  # per layer: which parts spike, the attention mode, the token encoding
        report.update(attention=parts["attention"], token_encoding=parts["token_encoding"], spiking_parts=parts)
        report["compile_seconds"] = time.perf_counter() - start
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
        with status(console, "writing report.html"):
            write_report(tmp, json.loads((tmp / "report.json").read_text()), graph, loaded.tokenizer, shown_as=out_dir)
    return CompileResult(report, gm, graph)


def drop_source_model(loaded: LoadedModel, placement: Placement | None) -> LoadedModel:
    """``loaded`` without its model (freed now), and ``placement``'s offload folder, which spikec
    made, removed (the folder only; the directory around it is the compile's own)."""
    loaded = dataclasses.replace(loaded, model=None)
    gc.collect()  # the captured module's wrapper holds the model in a reference cycle
    if placement is not None:
        shutil.rmtree(placement.offload_folder, ignore_errors=True)
    return loaded


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
