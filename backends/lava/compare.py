"""Run a Lava export in the Lava environment and compare it with the reference simulator.

The runner runs in a subprocess of the Python 3.10 Lava environment (``env.lava_python``);
its ``out.npz`` comes back as a ``LavaRun``. It is always the installed runtime
(``spikec.backends.lava.runtime`` through ``spikec/backends/lava/run_lava.py``) running on the
data of the export (``--export DIR/lava``): code in a model directory is never executed, and a
copy of the runtime there that differs from the installed one draws a warning. ``compare`` lines up every SignedIF layer's
spike train with the reference simulator's (the runner already aligns each layer's window
to reference steps 0..T-1, see docs/lava.md) and the outputs (logits).

Reference of each precision: floating_pt is compared with the graph itself; fixed_pt with
the graph holding the fixed-point model's weights and biases (``export.quantized_graph``),
so that the agreement measures the Lava fixed-point implementation, while
``float_reference`` reports how far the quantized network is from the float one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch

from spikec.core.errors import InputError, ResourceError, SpikecError, UsageError

from ..simulator import SimResult, simulate
from . import env, export
from .runtime.fixed_point import PRECISIONS
from .runtime.network import NETWORK_FILE


class LavaRunError(SpikecError):
    """The Lava runner failed (its last error lines are in the message)."""

    exit_code = 70


@dataclass
class LavaRun:
    """What one Lava run produced: outputs ``[b, P, F]`` by Output node, spike trains
    ``[T, b, P, F]`` (int8) by SignedIF layer, the runner's meta and the wall time."""

    outputs: dict[str, np.ndarray]
    spikes: dict[str, np.ndarray]
    meta: dict[str, Any]
    seconds: float
    generated: np.ndarray | None = None
    stderr: str = field(default="", repr=False)

    @property
    def output(self) -> np.ndarray:
        if len(self.outputs) != 1:
            raise UsageError(f"the export has {len(self.outputs)} outputs, not one")
        return next(iter(self.outputs.values()))


def torch_vec_width() -> int:
    """SIMD width (floats) of this torch build's CPU kernels, whose rounding the runner's
    norms reproduce: 16 with AVX-512, else 8."""
    return 16 if "AVX512" in str(torch.backends.cpu.get_cpu_capability()).upper() else 8


def _ids_array(inputs: Any) -> np.ndarray:
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    if x.ndim == 1:
        x = x[None]
    if x.ndim < 2:
        raise InputError(f"inputs of shape {list(x.shape)}: expected token ids [batch, positions]")
    return x


def load_run(path: str | Path, seconds: float = 0.0, stderr: str = "") -> LavaRun:
    """Read a runner's ``out.npz``."""
    with np.load(path) as data:
        outputs = {k[len("output/"):]: data[k] for k in data.files if k.startswith("output/")}
        spikes = {k[len("spikes/"):]: data[k] for k in data.files if k.startswith("spikes/")}
        meta = json.loads(str(data["meta"]))
    return LavaRun(outputs, spikes, meta, seconds, None, stderr)


def run_export(lava_dir: str | Path, inputs: Any, *, timesteps: int | None = None, precision: str = "floating_pt",
               stages_per_run: int = 4, current: str = "graded24", teacher: bool = False,
               python: str | Path | None = None, timeout: float | None = None) -> LavaRun:
    """Run the export in ``lava_dir`` on ``inputs`` (token ids ``[b, P]``) in the Lava environment,
    with the installed runtime (``export.RUNNER_SOURCE``), not the copy in ``lava_dir``.

    Raises ``ResourceError`` when there is no Lava environment, ``LavaRunError`` when the
    runner fails (with its last error lines)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown Lava precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    lava_dir = Path(lava_dir).absolute()  # the subprocess runs in a temporary directory
    if not (lava_dir / NETWORK_FILE).exists():
        raise InputError(f"{lava_dir} holds no Lava export ({NETWORK_FILE} is missing)",
                         hint="compile with --target lava")
    ids = _ids_array(inputs)
    limit = json.loads((lava_dir / NETWORK_FILE).read_text())["meta"].get("positions")
    if limit and ids.shape[1] > limit:
        raise InputError(f"{ids.shape[1]} positions given; the Lava export in {lava_dir} takes at most {limit}",
                         hint="cut the input into sequences of at most --seq-len tokens, or compile with a larger "
                              "--seq-len")
    python = Path(python or env.lava_python()).absolute()
    with tempfile.TemporaryDirectory(prefix="spikec-lava-") as tmp:
        src, dst = Path(tmp).absolute() / "inputs.npy", Path(tmp).absolute() / "out.npz"
        np.save(src, ids)
        cmd = [str(python), str(export.RUNNER_SOURCE), "--export", str(lava_dir), "--input", str(src),
               "--out", str(dst), "--precision", precision,
               "--stages-per-run", str(stages_per_run), "--current", current,
               "--torch-vec-width", str(torch_vec_width())]
        if timesteps:
            cmd += ["--timesteps", str(int(timesteps))]
        if teacher:
            cmd.append("--teacher")
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp,
                                  env=env.child_environment())
        except subprocess.TimeoutExpired:
            raise LavaRunError(f"the Lava run timed out after {timeout} s") from None
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not dst.exists():
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:]) or f"exit code {proc.returncode}"
            raise LavaRunError(f"the Lava runner failed: {tail}")
        return load_run(dst, seconds, proc.stderr)


def reference_graph(graph: nir.NIRGraph, precision: str, synapses: int = export.DEFAULT_SYNAPSES) -> nir.NIRGraph:
    """The graph the Lava model of ``precision`` implements (fixed_pt: quantized weights)."""
    return export.quantized_graph(graph, synapses) if precision == "fixed_pt" else graph


def agreement(ref: SimResult, lava: LavaRun) -> dict[str, Any]:
    """``spike_agreement`` (equal entries over all layers' ``[T, b, P, F]`` trains),
    ``spike_agreement_per_layer``, ``logits_max_abs_diff`` and next-token agreement."""
    per_layer, equal, total = {}, 0, 0
    for name, ref_spikes in ref.spikes.items():
        if name not in lava.spikes:
            raise InputError(f"the Lava run has no spike record of layer {name!r}",
                             hint="the export and the NIR graph do not match; export again")
        a, b = ref_spikes.numpy(), lava.spikes[name]
        if a.shape != b.shape:
            raise InputError(f"layer {name!r}: reference spikes {list(a.shape)} vs Lava {list(b.shape)}")
        same = int((a == b).sum())
        per_layer[name] = same / max(a.size, 1)
        equal, total = equal + same, total + a.size
    diffs, top1 = [], []
    for name, value in ref.outputs.items():
        mine = lava.outputs[name]
        ref_value = value.numpy()
        diffs.append(float(np.abs(ref_value.astype(np.float64) - mine).max(initial=0.0)))
        if ref_value.ndim == 3:
            top1.append(float((ref_value.argmax(-1) == mine.argmax(-1)).mean()))
    return {
        "spike_agreement": equal / max(total, 1),
        "spike_agreement_per_layer": per_layer,
        "logits_max_abs_diff": max(diffs, default=0.0),
        "next_token_agreement": float(np.mean(top1)) if top1 else None,
        "spikes_compared": total,
    }


def compare(graph: nir.NIRGraph, inputs: Any, lava: LavaRun, *, synapses: int = export.DEFAULT_SYNAPSES
            ) -> dict[str, Any]:
    """Compare ``lava`` with the reference simulator on the same ``inputs``. For fixed_pt the
    reference is the quantized graph and ``float_reference`` adds the comparison with the
    float graph. Includes the alignment (window start of each layer) and Lava's timing."""
    precision, T = lava.meta["precision"], int(lava.meta["timesteps"])
    ids = torch.from_numpy(_ids_array(inputs))
    start = time.perf_counter()
    ref = simulate(reference_graph(graph, precision, synapses), ids, T, record=True)
    ref_seconds = time.perf_counter() - start
    result = {
        "backend": "lava", "precision": precision, "timesteps": T,
        "batch": int(ids.shape[0]), "positions": int(ids.shape[1]),
        "reference": "quantized graph (fixed_pt weights)" if precision == "fixed_pt" else "graph",
        **agreement(ref, lava),
        "alignment": {"rule": "a SignedIF layer whose current is ready at Lava step w spikes at steps w..w+T-1; "
                              "reference step t = Lava step w+t", "window_start": lava.meta.get("window_start", {})},
        "lava_seconds": lava.seconds, "lava_wall_seconds": lava.meta.get("wall_seconds"),
        "reference_seconds": ref_seconds,
        "lava": {k: lava.meta.get(k) for k in ("steps_total", "steps_single_network", "stages", "processes_max",
                                               "teacher_forced", "current_encoding", "readout_accumulator")
                 if k in lava.meta},
        "lava_segments": len(lava.meta.get("segments", [])),
    }
    if precision == "fixed_pt":
        float_ref = simulate(graph, ids, T, record=True)
        result["float_reference"] = agreement(float_ref, lava)
    return result


def lava_folder(compile_dir: str | Path, graph: nir.NIRGraph | None = None, scratch: str | Path | None = None
                ) -> Path:
    """``compile_dir/lava`` (absolute; warns when its runtime copy differs from the installed
    one), or (compiled without ``--target lava``) a fresh export of its ``model.nir`` into ``scratch``."""
    folder = Path(compile_dir).absolute() / "lava"
    if (folder / NETWORK_FILE).exists():
        warn_if_runtime_differs(folder)
        return folder
    if graph is None or scratch is None:
        raise InputError(f"{compile_dir} has no Lava export", hint="compile with --target lava")
    export.export_lava(graph, Path(scratch) / "lava")
    return Path(scratch) / "lava"


def warn_if_runtime_differs(folder: Path) -> bool:
    """Print one line to stderr when the runtime copied into the export ``folder``
    (``run_lava.py``, ``runtime/``) differs from the installed one, which is what runs.
    Returns whether it differs."""
    differs = export.runtime_files(folder) != export.runtime_files(export.RUNNER_SOURCE.parent)
    if differs:
        print(f"spikec: warning: the Lava runtime in {folder} differs from this spikec's; running the installed "
              f"runtime on the exported network (the copy in {folder} is not executed)", file=sys.stderr)
    return differs


def _synapses(folder: Path) -> int:
    desc = json.loads((folder / NETWORK_FILE).read_text())
    return int(desc["meta"].get("synapses", export.DEFAULT_SYNAPSES))


def evaluate_lava(compile_dir: str | Path, inputs: Any, *, timesteps: int | None = None,
                  precision: str = "floating_pt", stages_per_run: int = 4, teacher: bool | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
    """``spikec eval DIR --backend lava``: run the export on ``inputs`` (token ids ``[b, P]``)
    in Lava and compare with the reference simulator. Returns the dict of ``compare`` (keys
    ``spike_agreement``, ``spike_agreement_per_layer``, ``logits_max_abs_diff``, ...); for
    fixed_pt also ``layerwise`` (teacher-forced per-layer agreement) unless ``teacher`` is False."""
    from ..nirio import read

    compile_dir = Path(compile_dir)
    graph = read(compile_dir / "model.nir")
    with tempfile.TemporaryDirectory(prefix="spikec-lava-export-") as scratch:
        folder = lava_folder(compile_dir, graph, scratch)
        synapses = _synapses(folder)
        lava = run_export(folder, inputs, timesteps=timesteps, precision=precision, stages_per_run=stages_per_run,
                          timeout=timeout)
        result = compare(graph, inputs, lava, synapses=synapses)
        if precision == "fixed_pt" and teacher is not False:
            forced = run_export(folder, inputs, timesteps=timesteps, precision=precision, teacher=True,
                                timeout=timeout)
            layerwise = compare(graph, inputs, forced, synapses=synapses)
            result["layerwise"] = {k: layerwise[k] for k in ("spike_agreement", "spike_agreement_per_layer")}
            result["layerwise"]["note"] = ("each stage fed the float run of the fixed-point network "
                                           "(no propagation of earlier flips)")
    return result


def generate_lava(compile_dir: str | Path, ids: Any, max_new_tokens: int, *, timesteps: int | None = None,
                  precision: str = "floating_pt", stages_per_run: int = 4, timeout: float | None = None
                  ) -> dict[str, Any]:
    """``spikec run DIR --backend lava``: greedy generation, one Lava run per new token, next to
    the reference simulator's greedy generation. Returns ``tokens`` (Lava), ``reference_tokens``,
    ``tokens_equal`` and the comparison of the prompt's run (``prompt``)."""
    from ..nirio import read

    compile_dir = Path(compile_dir)
    graph = read(compile_dir / "model.nir")
    x = _ids_array(ids)[:1].astype(np.int64)
    with tempfile.TemporaryDirectory(prefix="spikec-lava-export-") as scratch:
        folder = lava_folder(compile_dir, graph, scratch)
        synapses = _synapses(folder)
        limit = json.loads((folder / NETWORK_FILE).read_text())["meta"].get("positions") or 10**9
        ref_graph = reference_graph(graph, precision, synapses)
        T = int(timesteps or json.loads((folder / NETWORK_FILE).read_text())["meta"]["timesteps"])
        lava_ids, ref_ids, prompt, seconds = x.copy(), x.copy(), None, 0.0
        for _ in range(max_new_tokens):
            if lava_ids.shape[1] >= limit:
                break
            run = run_export(folder, lava_ids, timesteps=T, precision=precision, stages_per_run=stages_per_run,
                             timeout=timeout)
            seconds += run.seconds
            if prompt is None:
                prompt = compare(graph, lava_ids, run, synapses=synapses)
            lava_ids = np.concatenate([lava_ids, run.output[:, -1:].argmax(-1)], 1)
            ref_out = simulate(ref_graph, torch.from_numpy(ref_ids), T).output.numpy()
            ref_ids = np.concatenate([ref_ids, ref_out[:, -1:].argmax(-1)], 1)
    new = slice(x.shape[1], None)
    return {"tokens": lava_ids[0, new].tolist(), "reference_tokens": ref_ids[0, new].tolist(),
            "tokens_equal": lava_ids[0, new].tolist() == ref_ids[0, new].tolist(), "prompt": prompt,
            "lava_seconds": seconds, "precision": precision, "timesteps": T}


__all__ = ["LavaRun", "LavaRunError", "ResourceError", "agreement", "compare", "evaluate_lava", "generate_lava",
           "load_run", "reference_graph", "run_export", "warn_if_runtime_differs"]
