"""``SpikingModel``: a compiled spiking network as a Python object (``spikec.compile`` and
``spikec.load`` return one). It wraps a compile output directory (``model.nir``,
``report.json``, ``tokenizer/``; see spikec/compiler.py) and runs the same code as the CLI
commands: ``simulate``, ``evaluate`` (``spikec eval``), ``generate`` (``spikec run``),
``energy``, ``report``, ``export_nir``, ``export_lava``; ``save`` copies the directory and
``to_torch`` gives a ``torch.nn.Module``. Errors name the Python arguments (docs/api.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import nir
import torch

from spikec.analysis.energy_models import EnergyModel
from spikec.core.errors import UsageError
from spikec import distributed
import spikec.evaluate as evaluation  # called through the module: what the commands run is patchable in one place
from spikec.evaluate import RUN_FLAGS, Compiled
from spikec.outputs import atomic_directory


MAX_NEW_TOKENS = 2**31 - 1
"""The most tokens ``generate`` takes (the kernels' index range, as ``spikec run``)."""


def check_range(name: str, value: int, low: int, high: int | None = None) -> int:
    """``value`` as an int, or ``UsageError`` naming the argument ``name`` when it is below
    ``low`` (or above ``high``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{name} must be {bound}, got {value}")
    return value


class SimulatorModule(torch.nn.Module):
    """A ``torch.nn.Module`` that runs a NIR graph with spikec's reference simulator:
    ``forward(input_ids [batch=1, positions] int64) -> logits [1, positions, vocab] float32``
    at ``timesteps`` steps per window. It has no parameters (the weights live in the graph):
    use it as a fixed spiking network inside torch code, not for training."""

    def __init__(self, graph: nir.NIRGraph, timesteps: int):
        super().__init__()
        from spikec.backends.simulator import Simulator

        self.graph = graph
        self.timesteps = int(timesteps)
        self.simulator = Simulator(graph)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.simulator.run(input_ids, self.timesteps).output


class SpikingModel:
    """A compiled spiking network (a ``spikec compile`` output directory, loaded).

    Attributes: ``path`` (the directory), ``compile_report`` (report.json as a dict), ``graph`` (the
    ``nir.NIRGraph``), ``timesteps`` (T of the compile), ``tokenizer`` (a transformers tokenizer).
    A model just compiled by ``spikec.compile`` without ``output`` lives in a temporary
    directory: ``save(directory)`` keeps it.
    """

    def __init__(self, compiled: Compiled | Callable[[], Compiled], module: torch.fx.GraphModule | None = None, *,
                 path: Path | None = None, report: dict[str, Any] | None = None,
                 names: dict[str, str] | None = None):
        """compiled: the loaded directory, or a function loading it on first use (``spikec.compile``
        then gives ``path`` and ``report``, which need no loading). names: how error messages
        name the methods' arguments, ``{argument: shown name}`` (default: the argument names)."""
        self._source = compiled
        self._module = module
        self._path, self._report = path, report
        self._names = dict(names or {})

    @property
    def _compiled(self) -> Compiled:
        if not isinstance(self._source, Compiled):
            self._source = self._source()
        return self._source

    def _name(self, argument: str) -> str:
        return self._names.get(argument, argument)

    # ------------------------------------------------------------------ what it is

    @property
    def path(self) -> Path:
        """The compile output directory."""
        return self._path if self._path is not None else self._compiled.path

    @property
    def compile_report(self) -> dict[str, Any]:
        """report.json: model, options, passes, node counts, firing rates, the fx-vs-simulator check."""
        return self._report if self._report is not None else self._compiled.report

    @property
    def graph(self) -> nir.NIRGraph:
        """The spiking network as a NIR graph (with spikec extension nodes; ``export_nir`` writes
        standard NIR)."""
        return self._compiled.graph

    @property
    def timesteps(self) -> int:
        """Timesteps per window the network was compiled for (T)."""
        return int(self.compile_report["timesteps"])

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (from ``DIR/tokenizer``)."""
        return self._compiled.tokenizer

    @property
    def reference(self) -> str:
        """Where the reference ANN (the original model) comes from, in words."""
        return evaluation.describe_reference(self._compiled)

    def __repr__(self) -> str:
        return f"SpikingModel({self.compile_report['model']!r}, T={self.timesteps}, path={str(self.path)!r})"

    # ------------------------------------------------------------------ running it

    def encode(self, text: str) -> torch.Tensor:
        """``text`` as token ids ``[1, positions]`` int64 (no special tokens added)."""
        return torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.int64)

    def simulate(self, inputs: str | torch.Tensor, timesteps: int | None = None, *, record: bool = False,
                 device: str = "cpu") -> Any:
        """Run the network with the reference simulator on ``inputs`` (text, or token ids
        ``[1, positions]`` int64) for ``timesteps`` steps per window (default: the compile's).
        Returns a ``SimResult``: ``output`` (logits ``[1, positions, vocab]``), ``spike_counts``
        and ``firing_rates`` per neuron layer, and with ``record`` the spike trains in ``spikes``."""
        from spikec.backends.simulator import simulate

        t = self.timesteps if timesteps is None else check_range("timesteps", timesteps, 1, 4096)
        ids = self.encode(inputs) if isinstance(inputs, str) else inputs
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise UsageError(f"inputs must be text or token ids of shape [1, positions], got shape {tuple(ids.shape)}")
        return simulate(self.graph, ids, t, record=record, device=device)

    def evaluate(self, text_file: str | None = None, tokens: int = 1024, timesteps: int | list[int] | None = None,
                 seq_len: int | None = None, *, device: str = "cpu", progress: bool = False,
                 save: bool = True, backend: str = "sim", lava_precision: str = "floating_pt",
                 keep_reference: bool = True, ranks: int = 1) -> dict[str, Any] | list[dict[str, Any]]:
        """The reference ANN against the spiking network on the first ``tokens`` tokens of
        ``text_file`` (default: the embedded held-out docstrings), as ``spikec eval`` does.

        Returns a dict (a list of them when ``timesteps`` is a list): ann_ppl, snn_ppl, ppl_ratio
        (SNN/ANN), cosine (mean cosine similarity of logits), top1_agreement, timesteps, tokens,
        spikes_per_neuron_step, seconds. With ``save``, also writes ``DIR/eval.json`` (for reports;
        ``save_eval`` writes it later, e.g. once the figures are shown). ``keep_reference=False`` frees
        the reference ANN once its logits are computed (a later call loads it again). ``ranks`` > 1:
        the simulator runs as a pipeline over that many local processes on ``torch.distributed``
        (``spikec.distributed``, docs/simulator.md), with the same figures as one process.

        backend ``lava``: the first ``tokens`` tokens (at most the compile's ``seq_len``; ``seq_len``
        does not apply) as one sequence, by the simulator and by the Lava export in the Lava
        environment (``lava_precision``: ``floating_pt`` or ``fixed_pt``, docs/lava.md), one T;
        ``spike_agreement``, ``spike_agreement_per_layer``, ``logits_max_abs_diff``, ``lava_seconds``
        are added to the simulator's figures. Nothing is saved."""
        check_range(self._name("tokens"), tokens, 2)
        listed = isinstance(timesteps, list)
        ts = timesteps if listed else ([timesteps] if timesteps is not None else None)
        for t in ts or []:
            check_range(self._name("timesteps"), t, 1, 4096)
        if seq_len is not None:
            check_range(self._name("seq_len"), seq_len, 2, 8192)
        check_range(self._name("ranks"), ranks, 1)
        if self._check_backend(backend) == "lava":
            if ranks > 1:
                raise UsageError(f"backend lava runs in one process; got {self._name('ranks')} {ranks}",
                                 hint=f"leave {self._name('ranks')} at 1")
            return evaluation.evaluate_on_lava(self._compiled, text_file, tokens, ts, lava_precision, progress,
                                               device, self._internal_names())
        if ranks > 1:
            with distributed.pipeline_head(self._compiled.graph, str(self.path), ranks, device) as head:
                results = evaluation.evaluate(self._compiled, text_file, tokens, ts, seq_len, progress=progress,
                                              device=device, keep_model=keep_reference, simulator=head)
        else:
            results = evaluation.evaluate(self._compiled, text_file, tokens, ts, seq_len, progress=progress,
                                          device=device, keep_model=keep_reference)
        if save:
            evaluation.save_eval(self._compiled, results)
        return results if listed else results[0]

    def save_eval(self, results: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Write ``evaluate``'s results (a dict, or the list of a curve) to ``DIR/eval.json``, which
        ``report`` shows. ``ResourceError`` when the directory cannot take it."""
        evaluation.save_eval(self._compiled, results if isinstance(results, list) else [results])

    def generate(self, prompt: str, max_new_tokens: int = 20, timesteps: int | None = None, *,
                 compare: bool = True, device: str = "cpu", progress: bool = False, backend: str = "sim",
                 lava_precision: str = "floating_pt") -> dict[str, Any]:
        """Greedy continuation of ``prompt`` by the spiking network (``snn``) and, with
        ``compare``, by the reference ANN (``ann``; None with ``ann_unavailable`` saying why when
        the original model cannot be loaded), as ``spikec run`` does.

        backend ``lava``: the Lava export's continuation (``lava``, one Lava run per token, in the
        Lava environment; ``lava_precision`` as for ``evaluate``) and the reference simulator's
        (``reference``), with ``tokens_equal``, ``precision``, ``timesteps``, ``lava_seconds``."""
        if not isinstance(prompt, str):
            raise UsageError(f"{self._name('prompt')} must be text, got {type(prompt).__name__}")
        check_range(self._name("max_new_tokens"), max_new_tokens, 1, MAX_NEW_TOKENS)
        if timesteps is not None:
            check_range(self._name("timesteps"), timesteps, 1, 4096)
        if self._check_backend(backend) == "lava":
            return evaluation.generate_on_lava(self._compiled, prompt, max_new_tokens, timesteps, lava_precision,
                                               self._internal_names())
        return evaluation.generate(self._compiled, prompt, max_new_tokens, timesteps, device=device, compare=compare,
                                   progress=progress, names=self._internal_names())

    def _check_backend(self, backend: str) -> str:
        if backend not in ("sim", "lava"):
            raise UsageError(f"{self._name('backend')} must be sim or lava, got {backend!r}")
        return backend

    def _internal_names(self) -> dict[str, str]:
        return {argument: self._name(argument) for argument in RUN_FLAGS}

    def energy(self, text_file: str | None = None, tokens: int = 1024, seq_len: int | None = None,
               timesteps: int | None = None, *, model: str | EnergyModel = "45nm", precision: str = "fp32",
               save: bool = True, progress: bool = False,
               show: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Energy per token, ANN against SNN, per layer, on ``tokens`` tokens of held-out text,
        as ``spikec energy`` does (``model``: ``45nm``, ``45nm-memory``, ``loihi``, a .toml/.json
        file of constants, docs/energy.md, at ``precision``; or an ``EnergyModel``). Returns the
        estimate (totals in joules per token and per layer, ``loihi_fit``); with ``save`` also writes
        ``DIR/energy.json``, after calling ``show`` with the estimate (so that a directory that cannot
        take the file has shown it). ``progress``: a progress bar over the sequences simulated."""
        from spikec.analysis.energy_models import resolve_model
        from spikec.energy import energy_of, save_energy

        check_range(self._name("tokens"), tokens, 2)
        if seq_len is not None:
            check_range(self._name("seq_len"), seq_len, 1)
        if timesteps is not None:
            check_range(self._name("timesteps"), timesteps, 1, 4096)
        constants = model if isinstance(model, EnergyModel) else resolve_model(model, precision)
        est, counts = energy_of(self.graph, self.tokenizer, timesteps or self.timesteps, text_file, tokens, seq_len,
                                constants, progress=progress)
        if show is not None:
            show(est)
        if save:
            save_energy(self.path, est, counts)
        return est

    # ------------------------------------------------------------------ writing it out

    def report(self) -> Path:
        """Write ``DIR/report.html`` again (passes, accuracy, energy, plots) and return its path."""
        from spikec.report import write_report

        return write_report(self.path, self.compile_report, self.graph, self.tokenizer)

    def export_nir(self, output: str | Path, *, profile: str = "portable", importer: str = "nir",
                   force: bool = False) -> Path:
        """Write the network for other NIR tools into the directory ``output``, as ``spikec
        export-nir`` does: ``portable`` (standard NIR subgraphs and manifest.json, docs/interop.md;
        ``importer``: ``nir``, ``norse`` or ``spikingjelly``) or ``full`` (model.nir unchanged).
        Returns ``output``."""
        export_nir_directory(self.path / "model.nir", output, profile=profile, importer=importer, force=force)
        return Path(output)

    def export_lava(self, output: str | Path, *, timesteps: int | None = None, force: bool = False) -> dict[str, Any]:
        """Write the Lava export (docs/lava.md) into the directory ``output``; returns its summary
        (files, processes, stages)."""
        from spikec.backends.lava.export import export_lava

        t = self.timesteps if timesteps is None else check_range("timesteps", timesteps, 1, 4096)
        with atomic_directory(output, force=force) as tmp:
            summary = export_lava(self.graph, tmp, timesteps=t, positions=int(self.compile_report["seq_len"]))
        return summary

    def run_lava(self, inputs: str | torch.Tensor, timesteps: int | None = None, *,
                 precision: str = "floating_pt") -> dict[str, Any]:
        """Run the Lava export (``DIR/lava``, or one made on the fly) in the Lava environment
        (``.venv-lava`` or ``SPIKEC_LAVA_PYTHON``, docs/lava.md) on ``inputs`` (text or ids
        ``[1, positions]``, at most the compile's ``seq_len``) and compare with the reference
        simulator, as ``spikec eval --backend lava`` does: ``spike_agreement`` (share of equal
        spikes), ``spike_agreement_per_layer``, ``logits_max_abs_diff``, ``lava_seconds``.
        ``ResourceError`` when there is no Lava environment."""
        from spikec.backends.lava.compare import evaluate_lava

        ids = self.encode(inputs) if isinstance(inputs, str) else inputs
        if timesteps is not None:
            check_range("timesteps", timesteps, 1, 4096)
        return evaluate_lava(self.path, ids, timesteps=timesteps or self.timesteps, precision=precision)

    def save(self, directory: str | Path, *, force: bool = False) -> SpikingModel:
        """Copy the compile output directory to ``directory`` (``force`` replaces one that
        spikec wrote) and return the model there; ``spikec.load(directory)`` reads it back."""
        with atomic_directory(directory, force=force) as tmp:
            shutil.copytree(self.path, tmp, dirs_exist_ok=True)
        return SpikingModel(evaluation.load_compiled(directory, self._compiled.reference, "reference"), self._module)

    # ------------------------------------------------------------------ torch

    def to_torch(self) -> torch.nn.Module:
        """The spiking network as a ``torch.nn.Module``: ``forward(input_ids [1, positions]) ->
        logits [1, positions, vocab]``.

        Right after ``spikec.compile`` this is the fx module the passes produced (torch ops,
        neurons as spiking functions, its parameters the converted weights), for use in your
        own training loop; its logits equal the simulator's (``compile_report["simulator_check"]``). A model
        read by ``spikec.load`` has no fx module (it is not stored: it would be code), so it is a
        ``SimulatorModule`` running the NIR graph with the reference simulator (no parameters)."""
        if self._module is not None:
            return self._module
        return SimulatorModule(self.graph, self.timesteps)


def export_nir_directory(source: Path, output: str | Path, *, profile: str = "portable", importer: str = "nir",
                         force: bool = False) -> dict[str, Any] | None:
    """Write ``source`` (a model.nir) into the new directory ``output``: ``full`` copies it,
    ``portable`` writes standard subgraphs and returns the manifest (docs/interop.md)."""
    from spikec.backends import nirio, portable
    from spikec.core.errors import InputError
    from spikec.outputs import check_output_target

    if profile not in ("portable", "full"):
        raise UsageError(f"unknown profile {profile!r}; choose portable or full")
    check_output_target(Path(output), force)  # before the NIR file is read
    if not source.is_file():
        raise InputError(f"{str(source)!r} does not exist", hint="pass a `spikec compile` output directory or a .nir file")
    graph = nirio.read(source)
    if profile == "portable":
        portable.check_portable(graph, str(source))  # fail before creating anything
    with atomic_directory(output, force=force) as tmp:
        if profile == "full":
            shutil.copyfile(source, tmp / "model.nir")
            return None
        return portable.write_portable(graph, tmp, source=source.name, importer=importer)
