"""The ``spikec`` command line. Every command fails with one line and a documented
exit code (see spikec/core/errors.py); ``--debug`` shows the traceback instead."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
from pathlib import Path
from typing import Sequence

from spikec.arguments import (
    ENERGY_TOKENS, OneLineParser, energy_seq_len_arg, key_values, new_tokens_arg, pass_options, samples_arg, seed_arg, seq_len_arg,
    ranks_arg, timesteps_arg, timesteps_list_arg, tokens_arg,
)
from spikec.core.codings import CODINGS, timesteps_defaults_text
from spikec.core.errors import MESSAGE_LIMIT, Interrupted, SpikecError, UsageError, from_os_error, one_line

EMBEDDED_TEXTS = ("embedded:calibration_gpl3.txt (the GPL-3 licence, compile's default), "
                  "embedded:heldout_docstrings.txt (Python docstrings, eval's and energy's default), "
                  "embedded:finetune_numpy_docstrings.txt (NumPy docstrings, finetune's)")
DIR_HELP = "a `spikec compile` output directory"


def version() -> str:
    """The installed spikec's version (``unknown`` when run from a tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("spikec")
    except PackageNotFoundError:
        return "unknown"


LAVA_PRECISION = ("floating_pt (default): Lava's floating-point models, spike for spike the simulator's; fixed_pt: "
                  "Loihi's integer arithmetic (8-bit weights), docs/lava.md")


REFERENCE_HELP = ("the original model to compare with (default: the source recorded by compile, "
                  "e.g. when its directory has moved)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="spikec", description="Compile transformer language models into spiking networks.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors (also after the command)")
    p.add_argument("--version", action="version", version=f"spikec {version()}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="convert a model into a spiking network (NIR) in an output directory")
    c.add_argument("model", help="gpt2, gpt2-medium, gpt2-large, distilgpt2, smollm2-135m, llama, a Hugging Face id or a local directory")
    c.add_argument("-o", "--output", help="output directory (default: build/<model>)")
    c.add_argument("-T", "--timesteps", type=timesteps_arg, default=None,
                   help=f"timesteps per window (default by --coding: {timesteps_defaults_text()})")
    c.add_argument("--target", default="nir", help="nir (default), sim, or lava (also writes DIR/lava/, docs/lava.md)")
    c.add_argument("--calib-text", help="calibration text file, or embedded:NAME for a shipped text: " + EMBEDDED_TEXTS
                   + " (default: embedded:calibration_gpl3.txt)")
    c.add_argument("--calib-samples", type=samples_arg, default=16, help="calibration samples (default 16)")
    c.add_argument("--seq-len", type=seq_len_arg, default=128, help="positions per calibration sample (default 128)")
    c.add_argument("--passes", default="default", help="comma list of passes; 'default' is the built-in pipeline")
    c.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help="import passes from a file (repeatable)")
    c.add_argument("--random-weights", action="store_true", help="the architecture with seeded random weights (offline)")
    c.add_argument("--config", type=key_values, default={}, metavar="KEY=VALUE,...", help="override config fields (with --random-weights)")
    c.add_argument("--preset", default="balanced", choices=("balanced", "accurate"),
                   help="neuron settings: balanced (default) or accurate (about twice the spikes, far better at few timesteps)")
    c.add_argument("--attention", default="softmax", choices=("softmax", "spike-softmax", "ssa"),
                   help="softmax (default): real-valued attention core and norms; spike-softmax: every operator "
                        "spike-driven or spike-equivalent (docs/spike-softmax.md); ssa: spiking self-attention, "
                        "no softmax (fine-tune it with `spikec finetune --method ssa`, docs/ssa.md)")
    c.add_argument("--token-encoding", default="none", choices=("none", "rate", "binary"),
                   help="how token embeddings enter the network: none (a real current, default), rate or binary spikes")
    c.add_argument("--coding", default="rate", choices=CODINGS,
                   help="spike code: rate (default), binary or ternary (few-spike neurons, -T steps per token, "
                        f"step k weighted 2^-k or 3^-k; docs/few-spike.md); -T defaults to {timesteps_defaults_text()}")
    c.add_argument("--budget", type=float, default=None, metavar="R",
                   help="with --coding binary or ternary: choose each layer's steps (at most -T) and a coarser threshold for "
                        "channels whose errors cost little, for the least estimated energy with the perplexity "
                        "ratio on the calibration text within R (e.g. 1.04); default: all -T")
    c.add_argument("--calibrate", default="none", choices=("none", "coarse", "fine"),
                   help="FAS stage-2 calibration of thresholds (coarse) and initial membranes (fine), docs/fas.md")
    c.add_argument("--option", type=key_values, default={}, metavar="KEY=VALUE,...",
                   help="pass options, e.g. range=percentile,burst_spikes=8; `spikec passes` lists the keys the "
                        "default pipeline reads (docs/passes.md)")
    c.add_argument("--seed", type=seed_arg, default=0, help="seed of random weights and calibration sampling (default 0)")
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    c.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where calibration runs")
    c.add_argument("--dtype", default="float32", metavar="DTYPE",
                   help="float32 (default) or bfloat16: the source model's weights while loading and capturing "
                        "(half the memory; the network is built in float32 on the rounded weights, and eval's "
                        "reference ANN runs in bfloat16; docs/memory.md)")
    c.add_argument("--device-map", default=None, metavar="PLACE",
                   help="place the source model with accelerate while loading and capturing it: auto (GPUs, then "
                        "CPU memory, then disk), cpu (CPU memory, then disk) or disk (every weight read from disk "
                        "when needed); same network, less memory for the source model (docs/memory.md)")
    c.add_argument("--max-memory", default=None, metavar="DEVICE=SIZE,...",
                   help="with --device-map auto or cpu: memory per device for the source model's weights, e.g. "
                        "cpu=2GiB or 0=20GB,cpu=8GiB (the rest goes to disk, in a folder removed afterwards)")

    e = sub.add_parser("eval", help="compare the original model and its spiking network on held-out text")
    e.add_argument("dir", help=DIR_HELP)
    e.add_argument("--text", help="evaluation text file or embedded:NAME (default: embedded:heldout_docstrings.txt, "
                                  "disjoint from calibration); " + EMBEDDED_TEXTS)
    e.add_argument("--tokens", type=tokens_arg, default=1024, help="held-out tokens to evaluate (default 1024)")
    e.add_argument("-T", "--timesteps", type=timesteps_list_arg, help="timesteps, or a comma list for a curve (default: the compile's)")
    e.add_argument("--seq-len", type=seq_len_arg, help="positions per sequence (default: all tokens, up to the model's maximum)")
    e.add_argument("--json", action="store_true",
                   help="print JSON: the first T's figures at the top level and \"curve\", a list with every T's "
                        "(one shape for any number of T)")
    e.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the model and simulator run")
    e.add_argument("--backend", choices=("sim", "lava"), default="sim",
                   help="sim (default), or lava: also run the Lava export on the first --seq-len tokens and compare")
    e.add_argument("--lava-precision", choices=("floating_pt", "fixed_pt"), default="floating_pt", help=LAVA_PRECISION)
    e.add_argument("--model", metavar="NAME_OR_DIR", help=REFERENCE_HELP)
    e.add_argument("--ranks", type=ranks_arg, default=1,
                   help="run the simulator as a pipeline over N local processes (torch.distributed: gloo on CPU, "
                        "NCCL with a GPU per rank), same figures; under torchrun the world size (docs/simulator.md)")

    r = sub.add_parser("run", help="generate text with the spiking network (and the original beside it)")
    r.add_argument("dir", help=DIR_HELP)
    r.add_argument("--prompt", required=True, help="the text to continue (greedy decoding)")
    r.add_argument("--max-new-tokens", type=new_tokens_arg, default=20, help="tokens to generate (default 20)")
    r.add_argument("-T", "--timesteps", type=timesteps_arg, help="timesteps (default: the compile's)")
    r.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    r.add_argument("--backend", choices=("sim", "lava"), default="sim", help="sim (default) or lava")
    r.add_argument("--lava-precision", choices=("floating_pt", "fixed_pt"), default="floating_pt", help=LAVA_PRECISION)
    r.add_argument("--model", metavar="NAME_OR_DIR", help=REFERENCE_HELP)

    ps = sub.add_parser("passes", help="list the registered passes")
    ps.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                    help="also import passes from a file (repeatable)")

    i = sub.add_parser("inspect", help="summarize a NIR file")
    i.add_argument("file", help="a .nir file (e.g. DIR/model.nir)")
    i.add_argument("--json", action="store_true", help="print the summary and portability as JSON")
    i.add_argument("--all", action="store_true", help="list every node's parameter shapes (default: the first 200)")

    xn = sub.add_parser("export-nir", help="export DIR/model.nir for other NIR tools (docs/interop.md)")
    xn.add_argument("dir", help="a spikec compile output directory, or a .nir file")
    xn.add_argument("--profile", choices=("portable", "full"), default="portable",
                    help="portable (default): standard NIR subgraphs + manifest.json; full: model.nir unchanged")
    xn.add_argument("-o", "--output", required=True, help="output directory")
    xn.add_argument("--force", action="store_true", help="replace an existing output directory")
    xn.add_argument("--importer", choices=("nir", "norse", "spikingjelly"), default="nir",
                    help="portable files to the NIR definition (default), or adjusted for one importer's reading")

    en = sub.add_parser("energy", help="estimate energy per token, ANN vs SNN, per layer, on held-out text")
    en.add_argument("dir", help=DIR_HELP)
    en.add_argument("--text", help="text file or embedded:NAME to run (default: embedded:heldout_docstrings.txt, "
                                   "disjoint from calibration); " + EMBEDDED_TEXTS)
    en.add_argument("--tokens", type=tokens_arg, default=ENERGY_TOKENS,
                    help=f"held-out tokens to simulate (default {ENERGY_TOKENS}, the report's too)")
    en.add_argument("--seq-len", type=energy_seq_len_arg, help="positions per sequence (default: all tokens, up to the maximum)")
    en.add_argument("-T", "--timesteps", type=timesteps_arg, help="timesteps (default: the compile's)")
    en.add_argument("--model", default="45nm", metavar="MODEL",
                    help="45nm (default), 45nm-memory, loihi, or a .toml/.json file of constants (docs/energy.md)")
    en.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                    help="arithmetic precision of the ANN and of real-valued ops (default fp32)")
    en.add_argument("--per-op", action="store_true", help="one row per layer operation instead of per block")
    en.add_argument("--json", action="store_true", help="print JSON (with the Loihi 2 fit under \"loihi_fit\")")

    rp = sub.add_parser("report", help="write DIR/report.html (passes, accuracy, energy, Loihi 2 fit, plots) again")
    rp.add_argument("dir", help=DIR_HELP)

    lv = sub.add_parser("lava-env", help="create or check the Python 3.10 environment that runs Lava (docs/lava.md)")
    lv.add_argument("--python", metavar="PATH", help="the Python 3.10 to build it from (default: pyenv's 3.10.x or "
                                                    "python3.10 on PATH)")
    lv.add_argument("--dir", metavar="DIR", help="where to build it (default: $SPIKEC_LAVA_VENV, a clone's .venv-lava, "
                                                 "else ~/.local/share/spikec/lava-env)")
    lv.add_argument("--check", action="store_true", help="only check the environment spikec would use; build nothing")

    from spikec import finetune  # light: the compile machinery is imported when the command runs

    finetune.add_parser(sub)  # spikec finetune MODEL --method ssa|qcfs (spikec/finetune.py)
    for command in sub.choices.values():  # --debug also after the command; SUPPRESS keeps one given before it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    return p


def _cmd_compile(a: argparse.Namespace) -> int:
    import spikec
    from spikec.compiler import CLI_FLAGS, default_output_dir

    passes = [s.strip() for s in a.passes.split(",") if s.strip()]
    if not passes:
        raise UsageError(f"--passes {one_line(a.passes, 40)!r} names no pass", hint="give 'default' or pass names")
    snn = spikec.compile(
        a.model, output=a.output or default_output_dir(a.model), timesteps=a.timesteps, target=a.target,
        calib_text=a.calib_text, calib_samples=a.calib_samples, seq_len=a.seq_len, passes=passes,
        plugins=a.plugin, random_weights=a.random_weights, config=a.config, seed=a.seed, force=a.force,
        options=pass_options(a.option), device=a.device, preset=a.preset,
        attention=a.attention, token_encoding=a.token_encoding, calibrate=a.calibrate, coding=a.coding,
        budget=a.budget, dtype=a.dtype, device_map=a.device_map,
        max_memory=a.max_memory, quiet=False, names=CLI_FLAGS,
    )
    report = snn.compile_report
    check = report["simulator_check"]
    print(f"wrote {snn.path}/model.nir ({sum(report['node_counts'].values())} nodes, "
          f"{check['neuron_layers']} neuron layers) in {report['compile_seconds']:.1f} s")
    print(f"simulator vs fx module: {check['identical_layers']}/{check['neuron_layers']} layers identical, "
          f"logits max |diff| {check['logits_max_abs_diff']:.3g}")
    print(f"next: spikec eval {snn.path}")
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from spikec import distributed

    place = distributed.world(a.ranks)
    if place.rank > 0:  # a worker of the pipeline: its stage only, nothing printed or written
        return distributed.run_worker(a.dir, a.ranks, a.device)
    snn = _load(a.dir, a.model, lazy=True)  # the weights stay in model.nir until simulated
    if a.backend == "lava":
        if place.size > 1:
            raise UsageError("--backend lava runs in one process", hint="leave --ranks out")
        return _eval_lava(a, snn)
    results = snn.evaluate(a.text, a.tokens, a.timesteps or [snn.timesteps], a.seq_len, progress=not a.json,
                           device=a.device, save=False, ranks=place.size,
                           keep_reference=False)  # nothing below runs the ANN: its memory is freed before simulating
    # on stderr, once it worked: stdout stays the figures, and a failure stays one line
    print(f"reference ANN: {snn.reference}", file=sys.stderr, flush=True)
    # the figures are shown first: a directory that cannot take eval.json must not lose them
    if a.json:
        print(json.dumps({**results[0], "curve": results}, indent=2))
    elif "embedding_cosine" in results[0]:  # a sentence encoder
        print(f"{'T':>5} {'cosine':>8} {'min cos':>8} {'Spearman':>9}")
        for r in results:
            print(f"{r['timesteps']:>5} {r['embedding_cosine']:>8.4f} {r['embedding_cosine_min']:>8.4f} "
                  f"{r['pair_spearman']:>9.4f}")
        print(f"({results[0]['sentences']} sentences, {results[0]['pairs']} pairs, {results[0]['tokens']} tokens)")
    else:
        print(f"{'T':>5} {'ANN ppl':>9} {'SNN ppl':>9} {'ratio':>7} {'cosine':>7} {'top-1':>7}")
        for r in results:
            print(f"{r['timesteps']:>5} {r['ann_ppl']:>9.3f} {r['snn_ppl']:>9.3f} {r['ppl_ratio']:>7.3f} "
                  f"{r['cosine']:>7.4f} {r['top1_agreement']:>7.3f}")
        print(f"({results[0]['tokens']} tokens)")
    sys.stdout.flush()
    snn.save_eval(results)
    return 0


def _eval_lava(a: argparse.Namespace, snn) -> int:
    """``SpikingModel.evaluate(backend="lava")``: the first ``seq_len`` tokens as one sequence,
    by the reference simulator and by Lava; both reported."""
    result = snn.evaluate(a.text, a.tokens, a.timesteps, progress=not a.json, device=a.device, backend="lava",
                          lava_precision=a.lava_precision)
    tokens = min(a.tokens, int(snn.compile_report["seq_len"]))
    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Lava {result['precision']} vs reference simulator, T={result['timesteps']}, {tokens} tokens:")
    for layer, frac in result["spike_agreement_per_layer"].items():
        print(f"  {layer:<32} {100 * frac:8.4f}% spikes equal")
    print(f"spike agreement {100 * result['spike_agreement']:.4f}%, logits max |diff| {result['logits_max_abs_diff']:.3g}, "
          f"Lava {result['lava_seconds']:.1f} s" + (f"; SNN/ANN ppl ratio {result['ppl_ratio']:.3f}" if "ppl_ratio" in result else ""))
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    out = _load(a.dir, a.model).generate(a.prompt, a.max_new_tokens, a.timesteps, device=a.device, progress=True,
                            backend=a.backend, lava_precision=a.lava_precision)
    if a.backend == "lava":
        print(f"prompt:    {a.prompt}")
        print(f"Lava:      {out['lava']}")
        print(f"reference: {out['reference']}")
        print(f"tokens equal: {out['tokens_equal']} (Lava {out['precision']}, T={out['timesteps']}, {out['lava_seconds']:.1f} s)")
        return 0
    print(f"prompt: {a.prompt}")
    print(f"SNN:    {out['snn']}")
    print(f"ANN:    {out['ann'] if out['ann'] is not None else '(not run: ' + out['ann_unavailable'] + ')'}")
    return 0


CLI_NAMES = {"reference": "--model", "timesteps": "-T", "tokens": "--tokens", "seq_len": "--seq-len",
             "backend": "--backend", "ranks": "--ranks", "prompt": "--prompt", "max_new_tokens": "--max-new-tokens"}
"""How the API's errors name the arguments of eval, run, energy and report: by these commands' flags
(spelled out: importing ``spikec.evaluate.RUN_FLAGS`` here would load torch before parsing)."""


def _load(directory: str, reference: str | None = None, tokenizer_from_reference: bool = True, lazy: bool = False):
    """``spikec.load(DIR)``, ``reference`` (eval's and run's ``--model``) the reference ANN, errors naming the CLI's flags."""
    import spikec

    return spikec.load(directory, reference=reference, names=CLI_NAMES, tokenizer_from_reference=tokenizer_from_reference,
                       lazy=lazy)


def _cmd_passes(a: argparse.Namespace) -> int:
    import spikec.passes as builtin
    from spikec.compiler import load_plugins

    load_plugins(a.plugin)
    width = max(len(p.name) for p in builtin.registered_passes())
    for p in builtin.registered_passes():
        origin = "" if p.source == "builtin" else f"  [{p.source}]"
        print(f"{p.name:<{width}}  {p.summary}{origin}")
    print(f"\ndefault = {','.join(builtin.DEFAULT_PIPELINE)}")
    print(f"--option keys the default pipeline reads: {', '.join(sorted(builtin.option_keys(builtin.DEFAULT_PIPELINE)))}")
    return 0


def _cmd_inspect(a: argparse.Namespace) -> int:
    from spikec.backends import nirio
    from spikec.backends.portable import format_portability, portability
    from spikec.analysis.summary import format_summary, summarize

    graph = nirio.read(a.file)
    summary, port = summarize(graph), portability(graph)
    if a.json:
        port_dict = {**dataclasses.asdict(port), "portable": port.portable, "splittable": port.splittable}
        print(json.dumps({**summary, "portability": port_dict}, indent=2, default=_jsonable))
        return 0
    print(format_summary(summary, max_nodes=len(summary["shapes"]) if a.all else 200))
    print()
    print(format_portability(port))
    return 0


def _jsonable(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


def _cmd_export_nir(a: argparse.Namespace) -> int:
    from pathlib import Path

    from spikec.spiking_model import export_nir_directory

    src = Path(a.dir)
    source = src if src.is_file() else src / "model.nir"
    manifest = export_nir_directory(source, a.output, profile=a.profile, importer=a.importer, force=a.force)
    if manifest is None:
        print(f"wrote {a.output}/model.nir (full profile: standard NIR + spikec extension nodes)")
        return 0
    neurons = sum(len(s["neurons"]) for s in manifest["subgraphs"])
    print(f"wrote {len(manifest['subgraphs'])} standard NIR subgraphs ({neurons} neuron layers) and "
          f"manifest.json to {a.output} (docs/interop.md)")
    return 0


def _cmd_energy(a: argparse.Namespace) -> int:
    from spikec.analysis.energy_models import resolve_model
    from spikec.analysis.formatting import format_estimate
    from spikec.analysis.loihi_fit import format_fit

    model = resolve_model(a.model, a.precision)  # fail on a bad model before simulating

    def show(est: dict) -> None:  # before energy.json is written: the figures are shown even when it cannot be
        text = "\n".join([format_estimate(est, per_op=a.per_op), "", *format_fit(est["loihi_fit"])])
        print(json.dumps(est, indent=2) if a.json else text, flush=True)

    _load(a.dir, tokenizer_from_reference=False, lazy=True).energy(a.text, a.tokens, a.seq_len, a.timesteps, model=model,
                                                        progress=not a.json, show=show)
    if not a.json:
        print(f"(wrote {a.dir}/energy.json; 'spikec report {a.dir}' adds it to report.html)")
    return 0


def _cmd_lava_env(a: argparse.Namespace) -> int:
    from spikec.backends.lava import env

    if a.check:
        python = env.lava_python(check=False)
    else:
        target = env.default_env_dir() if a.dir is None else Path(a.dir)
        python = target / "bin" / "python"
        if not python.exists() or a.python:
            print(f"building the Lava environment at {target} ({', '.join(env.REQUIREMENTS)})", flush=True)
            python = env.create_lava_env(target, a.python)
    versions = env.probe(str(python))
    print(f"Lava environment: {python} ({', '.join(f'{k} {v}' for k, v in versions.items())})")
    if env.find_lava_python() != python:
        print(f"spikec looks elsewhere first: set {env.VENV_VAR}={python.parent.parent} (or {env.ENV_VAR}={python})")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    print(f"wrote {_load(a.dir, tokenizer_from_reference=False).report()}")
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    from spikec.finetune import run

    return run(a)


COMMANDS = {"compile": _cmd_compile, "eval": _cmd_eval, "run": _cmd_run, "passes": _cmd_passes, "inspect": _cmd_inspect,
            "energy": _cmd_energy, "report": _cmd_report, "export-nir": _cmd_export_nir, "finetune": _cmd_finetune,
            "lava-env": _cmd_lava_env}


class _Interrupts:
    """Remembers a Ctrl-C (or SIGTERM/SIGHUP): an interrupt that lands inside a C extension's
    import (numpy, torch) can surface later as an unrelated ImportError, which is still the
    user's interrupt."""

    seen = 0  # the signal number, 0 while none came

    @classmethod
    def handler(cls, signum, frame) -> None:
        cls.seen = signum
        raise Interrupted(signum)

    @classmethod
    def install(cls) -> None:
        """Handle SIGINT, SIGTERM and SIGHUP alike (temporary outputs removed, one line, exit
        128 + signal), where nobody else (an embedding program, ``nohup``) has claimed them."""
        import signal

        defaults = {signal.SIGINT: signal.default_int_handler}
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) in (defaults.get(signum), signal.SIG_DFL):
                try:
                    signal.signal(signum, cls.handler)
                except ValueError:  # not the main thread: signals stay with whoever runs it
                    return


def _interrupted(e: BaseException | None = None) -> int:
    signum = getattr(e, "signum", 0) or _Interrupts.seen or 2
    if signum == 2:
        print("spikec: interrupted", file=sys.stderr)
    else:
        import signal

        print(f"spikec: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
    return 128 + signum


def main(argv: Sequence[str] | None = None) -> int:
    # torch is imported by the commands, inside the try: Ctrl-C at any moment is "interrupted", never a traceback
    _Interrupts.seen = 0
    _Interrupts.install()
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except SpikecError as e:  # a value out of range (spikec.arguments)
        return _fail(e, debug=False)
    try:
        from spikec.core.passes import UnknownPassError

        try:
            return COMMANDS[args.command](args)
        except UnknownPassError as e:
            return _fail(UsageError(str(e)), args.debug)
    except SpikecError as e:
        return _fail(e, args.debug)
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except OSError as e:  # the disk, a path or a permission, not spikec: mapped to 3 or 5 by errno
        if _Interrupts.seen:
            return _interrupted()
        return _fail(from_os_error(e), args.debug)
    except Exception as e:  # a bug in spikec: say so plainly
        if _Interrupts.seen:
            return _interrupted()
        if args.debug:
            traceback.print_exc()
        print(f"spikec: internal error: {one_line(f'{type(e).__name__}: {e}', MESSAGE_LIMIT)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 70


def _fail(e: SpikecError, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"spikec: error: {one_line(e, 3 * MESSAGE_LIMIT)}", file=sys.stderr)
    return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
