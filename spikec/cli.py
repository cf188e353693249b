"""The ``spikec`` command line. Every command fails with one line and a documented
exit code (see spikec/core/errors.py); ``--debug`` shows the traceback instead."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any, Sequence

from spikec.core.errors import SpikecError, UsageError


def _key_values(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _int_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or a comma list of integers, got {text!r}") from None


def _parse_option_value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikec", description="Compile transformer language models into spiking networks.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="convert a model into a spiking network (NIR) in an output directory")
    c.add_argument("model", help="gpt2, gpt2-medium, gpt2-large, distilgpt2, smollm2-135m, llama, a Hugging Face id or a local directory")
    c.add_argument("-o", "--output", help="output directory (default: build/<model>)")
    c.add_argument("-T", "--timesteps", type=int, default=16, help="timesteps per window (default 16)")
    c.add_argument("--target", default="nir", help="nir (default), sim, or lava (also writes DIR/lava/, docs/lava.md)")
    c.add_argument("--calib-text", help="calibration text file, or embedded:NAME for a shipped text "
                   "(default: the embedded GPL-3 text)")
    c.add_argument("--calib-samples", type=int, default=16, help="calibration samples (default 16)")
    c.add_argument("--seq-len", type=int, default=128, help="positions per calibration sample (default 128)")
    c.add_argument("--passes", default="default", help="comma list of passes; 'default' is the built-in pipeline")
    c.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help="import passes from a file (repeatable)")
    c.add_argument("--random-weights", action="store_true", help="the architecture with seeded random weights (offline)")
    c.add_argument("--config", type=_key_values, default={}, metavar="KEY=VALUE,...", help="override config fields (with --random-weights)")
    c.add_argument("--preset", default="balanced", choices=("balanced", "accurate"),
                   help="neuron settings: balanced (default) or accurate (about twice the spikes, far better at few timesteps)")
    c.add_argument("--attention", default="softmax", choices=("softmax", "spike-softmax", "ssa"),
                   help="softmax (default): real-valued attention core and norms; spike-softmax: every operator "
                        "spike-driven or spike-equivalent (docs/spike-softmax.md); ssa: spiking self-attention, "
                        "no softmax (fine-tune it with `spikec finetune --method ssa`, docs/ssa.md)")
    c.add_argument("--token-encoding", default="none", choices=("none", "rate", "binary"),
                   help="how token embeddings enter the network: none (a real current, default), rate or binary spikes")
    c.add_argument("--coding", default="rate", choices=("rate", "binary"),
                   help="spike code: rate (default) or binary (few-spike neurons, -T steps per token; docs/few-spike.md)")
    c.add_argument("--calibrate", default="none", choices=("none", "coarse", "fine"),
                   help="FAS stage-2 calibration of thresholds (coarse) and initial membranes (fine), docs/fas.md")
    c.add_argument("--option", type=_key_values, default={}, metavar="KEY=VALUE,...", help="pass options, e.g. range=percentile,burst_spikes=8")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    c.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where calibration runs")

    e = sub.add_parser("eval", help="compare the original model and its spiking network on held-out text")
    e.add_argument("dir")
    e.add_argument("--text", help="evaluation text (default: embedded Python docstrings, disjoint from calibration)")
    e.add_argument("--tokens", type=int, default=1024)
    e.add_argument("-T", "--timesteps", type=_int_list, help="timesteps, or a comma list for a curve (default: the compile's)")
    e.add_argument("--seq-len", type=int, help="positions per sequence (default: all tokens, up to the model's maximum)")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the model and simulator run")
    e.add_argument("--backend", choices=("sim", "lava"), default="sim",
                   help="sim (default), or lava: also run the Lava export on the first --seq-len tokens and compare")
    e.add_argument("--lava-precision", choices=("floating_pt", "fixed_pt"), default="floating_pt")

    r = sub.add_parser("run", help="generate text with the spiking network (and the original beside it)")
    r.add_argument("dir")
    r.add_argument("--prompt", required=True)
    r.add_argument("--max-new-tokens", type=int, default=20)
    r.add_argument("-T", "--timesteps", type=int)
    r.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    r.add_argument("--backend", choices=("sim", "lava"), default="sim", help="sim (default) or lava")
    r.add_argument("--lava-precision", choices=("floating_pt", "fixed_pt"), default="floating_pt")

    ps = sub.add_parser("passes", help="list the registered passes")
    ps.add_argument("--plugin", action="append", default=[], metavar="FILE.py")

    i = sub.add_parser("inspect", help="summarize a NIR file")
    i.add_argument("file")

    xn = sub.add_parser("export-nir", help="export DIR/model.nir for other NIR tools (docs/interop.md)")
    xn.add_argument("dir", help="a spikec compile output directory, or a .nir file")
    xn.add_argument("--profile", choices=("portable", "full"), default="portable",
                    help="portable (default): standard NIR subgraphs + manifest.json; full: model.nir unchanged")
    xn.add_argument("-o", "--output", required=True, help="output directory")
    xn.add_argument("--force", action="store_true", help="replace an existing output directory")
    xn.add_argument("--importer", choices=("nir", "norse", "spikingjelly"), default="nir",
                    help="portable files to the NIR definition (default), or adjusted for one importer's reading")

    en = sub.add_parser("energy", help="estimate energy per token, ANN vs SNN, per layer, on held-out text")
    en.add_argument("dir")
    en.add_argument("--text", help="text to run (default: embedded Python docstrings, disjoint from calibration)")
    en.add_argument("--tokens", type=int, default=1024)
    en.add_argument("--seq-len", type=int, help="positions per sequence (default: all tokens, up to the maximum)")
    en.add_argument("-T", "--timesteps", type=int, help="timesteps (default: the compile's)")
    en.add_argument("--model", default="45nm", metavar="MODEL",
                    help="45nm (default), 45nm-memory, loihi, or a .toml/.json file of constants (docs/energy.md)")
    en.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                    help="arithmetic precision of the ANN and of real-valued ops (default fp32)")
    en.add_argument("--per-op", action="store_true", help="one row per layer operation instead of per block")
    en.add_argument("--json", action="store_true", help="print JSON")

    rp = sub.add_parser("report", help="write DIR/report.html (passes, accuracy, energy, plots) again")
    rp.add_argument("dir")

    from spikec import finetune  # light: the compile machinery is imported when the command runs

    finetune.add_parser(sub)  # spikec finetune MODEL --method ssa|qcfs (spikec/finetune.py)
    return p


def _cmd_compile(a: argparse.Namespace) -> int:
    from spikec.compile import CompileOptions, compile_model

    opts = CompileOptions(
        model=a.model, output=a.output, timesteps=a.timesteps, target=a.target, calib_text=a.calib_text,
        calib_samples=a.calib_samples, seq_len=a.seq_len, passes=[s.strip() for s in a.passes.split(",") if s.strip()],
        plugins=a.plugin, random_weights=a.random_weights, config_overrides=a.config, seed=a.seed, force=a.force,
        options={k: _parse_option_value(v) for k, v in a.option.items()}, device=a.device, preset=a.preset,
        attention=a.attention, token_encoding=a.token_encoding, calibrate=a.calibrate, coding=a.coding,
    )
    report = compile_model(opts)
    check = report["simulator_check"]
    print(f"wrote {opts.output_dir}/model.nir ({sum(report['node_counts'].values())} nodes, "
          f"{check['neuron_layers']} neuron layers) in {report['compile_seconds']:.1f} s")
    print(f"simulator vs fx module: {check['identical_layers']}/{check['neuron_layers']} layers identical, "
          f"logits max |diff| {check['logits_max_abs_diff']:.3g}")
    print(f"next: spikec eval {opts.output_dir}")
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from spikec.evaluate import evaluate, load_compiled, save_eval

    compiled = load_compiled(a.dir)
    if a.backend == "lava":
        return _eval_lava(a, compiled)
    results = evaluate(compiled, a.text, a.tokens, a.timesteps, a.seq_len, progress=not a.json, device=a.device)
    save_eval(compiled, results)
    if a.json:
        print(json.dumps(results[0] if len(results) == 1 else {"curve": results}, indent=2))
        return 0
    print(f"{'T':>5} {'ANN ppl':>9} {'SNN ppl':>9} {'ratio':>7} {'cosine':>7} {'top-1':>7}")
    for r in results:
        print(f"{r['timesteps']:>5} {r['ann_ppl']:>9.3f} {r['snn_ppl']:>9.3f} {r['ppl_ratio']:>7.3f} "
              f"{r['cosine']:>7.4f} {r['top1_agreement']:>7.3f}")
    print(f"({results[0]['tokens']} tokens)")
    return 0


def _eval_lava(a: argparse.Namespace, compiled) -> int:
    """Lava needs positions fixed at compile time: evaluate the first ``seq_len`` tokens as one
    sequence with the reference simulator and with Lava, and report both."""
    from spikec.backends.lava.compare import evaluate_lava
    from spikec.evaluate import evaluate, heldout_ids

    if a.timesteps and len(a.timesteps) > 1:
        raise UsageError("--backend lava takes one -T value")
    tokens = min(a.tokens, int(compiled.report["seq_len"]))
    result = evaluate(compiled, a.text, tokens, a.timesteps, tokens, progress=not a.json, device=a.device)[0]
    ids = heldout_ids(compiled, a.text, tokens)
    lava = evaluate_lava(compiled.path, ids, timesteps=result["timesteps"], precision=a.lava_precision)
    result.update({k: lava[k] for k in ("spike_agreement", "spike_agreement_per_layer", "logits_max_abs_diff",
                                        "next_token_agreement", "precision", "lava_seconds") if k in lava})
    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Lava {result['precision']} vs reference simulator, T={result['timesteps']}, {tokens} tokens:")
    for layer, frac in result["spike_agreement_per_layer"].items():
        print(f"  {layer:<32} {100 * frac:8.4f}% spikes equal")
    print(f"spike agreement {100 * result['spike_agreement']:.4f}%, logits max |diff| {result['logits_max_abs_diff']:.3g}, "
          f"Lava {result['lava_seconds']:.1f} s; SNN/ANN ppl ratio {result['ppl_ratio']:.3f}")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from spikec.evaluate import generate, load_compiled

    if a.backend == "lava":
        return _run_lava(a, load_compiled(a.dir))
    out = generate(load_compiled(a.dir), a.prompt, a.max_new_tokens, a.timesteps, device=a.device)
    print(f"prompt: {a.prompt}")
    print(f"SNN:    {out['snn']}")
    print(f"ANN:    {out['ann']}")
    return 0


def _run_lava(a: argparse.Namespace, compiled) -> int:
    import torch

    from spikec.backends.lava.compare import generate_lava

    tok = compiled.loaded.tokenizer
    ids = torch.tensor([tok(a.prompt, add_special_tokens=False)["input_ids"]], dtype=torch.int64)
    if ids.numel() == 0:
        raise UsageError("--prompt is empty", hint="give some text to continue")
    out = generate_lava(compiled.path, ids, a.max_new_tokens, timesteps=a.timesteps, precision=a.lava_precision)
    print(f"prompt:    {a.prompt}")
    print(f"Lava:      {tok.decode(out['tokens'])}")
    print(f"reference: {tok.decode(out['reference_tokens'])}")
    print(f"tokens equal: {out['tokens_equal']} (Lava {out['precision']}, T={out['timesteps']}, {out['lava_seconds']:.1f} s)")
    return 0


def _cmd_passes(a: argparse.Namespace) -> int:
    import spikec.passes as builtin
    from spikec.compile import load_plugins
    from spikec.core.passes import registered_passes

    load_plugins(a.plugin)
    width = max(len(p.name) for p in registered_passes())
    for p in registered_passes():
        origin = "" if p.source == "builtin" else f"  [{p.source}]"
        print(f"{p.name:<{width}}  {p.summary}{origin}")
    print(f"\ndefault = {','.join(builtin.DEFAULT_PIPELINE)}")
    return 0


def _cmd_inspect(a: argparse.Namespace) -> int:
    from spikec.backends import nirio
    from spikec.backends.portable import format_portability, portability
    from spikec.analysis.summary import format_summary, summarize

    graph = nirio.read(a.file)
    print(format_summary(summarize(graph)))
    print()
    print(format_portability(portability(graph)))
    return 0


def _cmd_export_nir(a: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from spikec.backends import nirio, portable
    from spikec.core.errors import InputError
    from spikec.outputs import atomic_directory

    src = Path(a.dir)
    source = src if src.is_file() else src / "model.nir"
    if not source.is_file():
        raise InputError(f"{str(source)!r} does not exist", hint="pass a `spikec compile` output directory or a .nir file")
    graph = nirio.read(source)
    if a.profile == "portable":
        portable.check_portable(graph, str(source))  # fail before creating anything
    with atomic_directory(a.output, force=a.force) as tmp:
        if a.profile == "full":
            shutil.copyfile(source, tmp / "model.nir")
            print(f"wrote {a.output}/model.nir (full profile: standard NIR + spikec extension nodes)")
            return 0
        manifest = portable.write_portable(graph, tmp, source=source.name, importer=a.importer)
    neurons = sum(len(s["neurons"]) for s in manifest["subgraphs"])
    print(f"wrote {len(manifest['subgraphs'])} standard NIR subgraphs ({neurons} neuron layers) and "
          f"{portable.MANIFEST} to {a.output} (docs/interop.md)")
    return 0


def _cmd_energy(a: argparse.Namespace) -> int:
    from spikec.energy import run

    return run(a)


def _cmd_report(a: argparse.Namespace) -> int:
    from spikec.report import report_from_directory

    print(f"wrote {report_from_directory(a.dir)}")
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    from spikec.finetune import run

    return run(a)


COMMANDS = {"compile": _cmd_compile, "eval": _cmd_eval, "run": _cmd_run, "passes": _cmd_passes, "inspect": _cmd_inspect,
            "energy": _cmd_energy, "report": _cmd_report, "export-nir": _cmd_export_nir, "finetune": _cmd_finetune}


class _Interrupts:
    """Remembers a Ctrl-C: an interrupt that lands inside a C extension's import (numpy, torch)
    can surface later as an unrelated ImportError, which is still the user's Ctrl-C."""

    seen = False

    @classmethod
    def handler(cls, signum, frame) -> None:
        cls.seen = True
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    # torch is imported by the commands, inside the try: Ctrl-C at any moment is "interrupted", never a traceback
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _Interrupts.handler)
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("spikec: interrupted", file=sys.stderr)
        return 130
    try:
        from spikec.core.passes import UnknownPassError

        try:
            return COMMANDS[args.command](args)
        except UnknownPassError as e:
            return _fail(UsageError(str(e)), args.debug)
    except SpikecError as e:
        return _fail(e, args.debug)
    except KeyboardInterrupt:
        print("spikec: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in spikec: say so plainly
        if _Interrupts.seen:
            print("spikec: interrupted", file=sys.stderr)
            return 130
        if args.debug:
            traceback.print_exc()
        print(f"spikec: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 70


def _fail(e: SpikecError, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"spikec: error: {e}", file=sys.stderr)
    return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
