"""``spikec finetune``: compile a model with a fine-tuning pass in the pipeline.

A method names the passes it inserts into the default pipeline and the pass options that
the command's settings map to:

* ``ssa``: spiking self-attention (``ssa``) fine-tuned with surrogate-gradient BPTT
  (``ssa-finetune``), appended after the rate-coded conversion (docs/ssa.md).
* ``qcfs``: FAS stage 1 (``qcfs-finetune``), inserted before ``spike-encode``.

The fine-tuning checkpoint lives beside the output directory (``<output>.finetune.ckpt``
by default), never inside it: the output directory is written atomically at the end, so
an interrupted run leaves only the checkpoint, which ``--resume`` continues. The result
is the usual compile output: the re-emitted ``model.nir``, ``report.json`` (with the
fine-tuning statistics of the pass) and the rest.

This module stays light at import (the CLI builds its parser from it); the compile
machinery is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spikec.arguments import (
    batch_arg, key_values, pass_options, samples_arg, seed_arg, seq_len_arg, steps_arg, timesteps_arg,
)
from spikec.core.errors import UsageError


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: passes to insert (before ``before``, or appended when None) and
    the pass option each command setting maps to (settings absent here are refused)."""

    passes: tuple[str, ...]
    before: str | None
    options: dict[str, str] = field(default_factory=dict)
    summary: str = ""


METHODS: dict[str, Method] = {
    "ssa": Method(("ssa", "ssa-finetune"), None,
                  {"steps": "finetune_steps", "lr": "finetune_lr", "surrogate": "surrogate",
                   "batch": "finetune_batch", "checkpoint": "finetune_checkpoint"},
                  "spiking self-attention, surrogate-gradient fine-tuning of its parameters"),
    "qcfs": Method(("qcfs-finetune",), "spike-encode",
                   {"steps": "qcfs_steps", "lr": "qcfs_lr", "batch": "qcfs_batch", "seq_len": "qcfs_seq_len",
                    "checkpoint": "qcfs_checkpoint"},
                   "FAS stage 1: full fine-tuning with QCFS-quantized activations"),
}
"""``--method`` name -> what it inserts and how its settings map to pass options."""

SURROGATES = ("sigmoid", "arctan")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` command to the CLI's subparsers."""
    f = sub.add_parser("finetune", help="compile with fine-tuning (SSA surrogate gradients, or FAS/QCFS stage 1)")
    f.add_argument("model", help="as for compile")
    f.add_argument("--method", required=True, choices=sorted(METHODS),
                   help="; ".join(f"{k}: {m.summary}" for k, m in METHODS.items()))
    f.add_argument("-o", "--output", help="output directory (default: build/<model>)")
    f.add_argument("-T", "--timesteps", type=timesteps_arg, default=8, help="timesteps per window (default 8)")
    f.add_argument("--steps", type=steps_arg, help="optimizer steps (default: the pass's, 100)")
    f.add_argument("--lr", type=float, help="learning rate (default: the pass's)")
    f.add_argument("--batch", type=batch_arg, help="sequences per step (default: the pass's, 4)")
    f.add_argument("--surrogate", choices=SURROGATES, help="surrogate gradient of the spikes (ssa; default sigmoid)")
    f.add_argument("--seq-len", type=seq_len_arg, default=64, help="positions per fine-tuning/calibration sequence (default 64)")
    f.add_argument("--calib-samples", type=samples_arg, default=32, help="calibration/fine-tuning sequences (default 32)")
    f.add_argument("--calib-text", help="calibration and fine-tuning text file, or embedded:NAME for a shipped text "
                   "(default: the embedded GPL-3 text)")
    f.add_argument("--checkpoint", help="checkpoint file (default: <output>.finetune.ckpt)")
    f.add_argument("--resume", action="store_true", help="continue from the checkpoint of an interrupted run")
    f.add_argument("--preset", default="balanced", choices=("balanced", "accurate"), help="as for compile")
    f.add_argument("--option", type=key_values, default={}, metavar="KEY=VALUE,...", help="pass options, as for compile")
    f.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help="import passes from a file")
    f.add_argument("--random-weights", action="store_true", help="the architecture with seeded random weights")
    f.add_argument("--config", type=key_values, default={}, metavar="KEY=VALUE,...", help="override config fields")
    f.add_argument("--seed", type=seed_arg, default=0, help="seed of random weights and sampling (default 0)")
    f.add_argument("--force", action="store_true", help="replace an existing output directory")
    f.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the passes run")
    return f


def pipeline(method: Method, base: list[str]) -> list[str]:
    """``base`` with the method's passes inserted."""
    if method.before is None:
        return [*base, *method.passes]
    if method.before not in base:
        raise UsageError(f"the pipeline has no {method.before!r} pass to insert {', '.join(method.passes)} before")
    i = base.index(method.before)
    return [*base[:i], *method.passes, *base[i:]]


def checkpoint_path(output_dir: Path) -> Path:
    """The default checkpoint file: beside the output directory, outside its atomic temp copy."""
    return output_dir.with_name(output_dir.name + ".finetune.ckpt")


def run(a: argparse.Namespace) -> int:
    """The ``finetune`` command: check the method and settings, compile, print a summary."""
    import spikec.passes as builtin
    from spikec.compiler import CompileOptions, compile_model, load_plugins

    method = METHODS[a.method]
    load_plugins(a.plugin)
    known = {p.name for p in builtin.registered_passes()}
    missing = [p for p in method.passes if p not in known]
    if missing:
        raise UsageError(f"--method {a.method} needs the pass {', '.join(map(repr, missing))}, which is not registered "
                         "in this installation", hint="update spikec, or load the pass with --plugin FILE.py")
    settings = {"steps": a.steps, "lr": a.lr, "batch": a.batch, "surrogate": a.surrogate}
    for key, value in settings.items():
        if value is not None and key not in method.options:
            raise UsageError(f"--{key} does not apply to --method {a.method}")
    if a.steps is not None and a.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {a.steps}")
    if a.lr is not None and not a.lr > 0:
        raise UsageError(f"--lr must be positive, got {a.lr}")
    if a.batch is not None and a.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {a.batch}")
    opts = CompileOptions(
        model=a.model, output=a.output, timesteps=a.timesteps, calib_text=a.calib_text, calib_samples=a.calib_samples,
        seq_len=a.seq_len, passes=pipeline(method, list(builtin.DEFAULT_PIPELINE)), plugins=a.plugin,
        random_weights=a.random_weights, config_overrides=a.config, seed=a.seed, force=a.force,
        options=pass_options(a.option), device=a.device, preset=a.preset,
    )
    opts.validate()
    if opts.output_dir.exists() and not a.force:
        raise UsageError(f"output directory {str(opts.output_dir)!r} already exists", hint="pass --force to replace it")
    ckpt = Path(a.checkpoint) if a.checkpoint else checkpoint_path(opts.output_dir)
    if ckpt.exists() and not a.resume:
        raise UsageError(f"a checkpoint of an earlier fine-tuning run exists at {str(ckpt)!r}",
                         hint="pass --resume to continue it, or delete it to start afresh")
    if a.resume and not ckpt.exists():
        print(f"no checkpoint at {ckpt}: starting afresh", file=sys.stderr)
    settings.update(checkpoint=str(ckpt), seq_len=a.seq_len)
    for key, value in settings.items():
        if value is not None and key in method.options:
            opts.options.setdefault(method.options[key], value)
    opts.options.setdefault("progress", sys.stderr.isatty())
    report = compile_model(opts)
    stats = next((r["stats"] for r in report["passes"] if r["name"] == method.passes[-1]), {})
    seconds = next((r["seconds"] for r in report["passes"] if r["name"] == method.passes[-1]), 0.0)
    check = report["simulator_check"]
    print(f"fine-tuned ({a.method}) in {seconds / 60:.1f} min"
          + (f", loss {stats['loss_before']:.4g} -> {stats['loss_after']:.4g}" if "loss_after" in stats else "")
          + (f", resumed from step {stats['resumed_from']}" if stats.get("resumed_from") else ""))
    print(f"wrote {opts.output_dir}/model.nir ({sum(report['node_counts'].values())} nodes); simulator vs fx module: "
          f"{check['identical_layers']}/{check['neuron_layers']} neuron layers identical")
    print(f"next: spikec eval {opts.output_dir}")
    return 0
