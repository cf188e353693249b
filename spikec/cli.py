"""The ``spikec`` command line. Every command fails with one line and a documented
exit code (see spikec/core/errors.py); ``--debug`` shows the traceback instead."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any, Sequence

from spikec.core.errors import SpikecError, UsageError
from spikec.core.passes import UnknownPassError


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
    c.add_argument("--target", default="nir", help="nir (default) or sim")
    c.add_argument("--calib-text", help="calibration text file (default: the embedded GPL-3 text)")
    c.add_argument("--calib-samples", type=int, default=16, help="calibration samples (default 16)")
    c.add_argument("--seq-len", type=int, default=128, help="positions per calibration sample (default 128)")
    c.add_argument("--passes", default="default", help="comma list of passes; 'default' is the built-in pipeline")
    c.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help="import passes from a file (repeatable)")
    c.add_argument("--random-weights", action="store_true", help="the architecture with seeded random weights (offline)")
    c.add_argument("--config", type=_key_values, default={}, metavar="KEY=VALUE,...", help="override config fields (with --random-weights)")
    c.add_argument("--option", type=_key_values, default={}, metavar="KEY=VALUE,...", help="pass options, e.g. range=percentile,burst_spikes=8")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--force", action="store_true", help="replace an existing output directory")

    e = sub.add_parser("eval", help="compare the original model and its spiking network on held-out text")
    e.add_argument("dir")
    e.add_argument("--text", help="evaluation text (default: embedded Python docstrings, disjoint from calibration)")
    e.add_argument("--tokens", type=int, default=1024)
    e.add_argument("-T", "--timesteps", type=_int_list, help="timesteps, or a comma list for a curve (default: the compile's)")
    e.add_argument("--seq-len", type=int, help="positions per sequence (default: all tokens, up to the model's maximum)")
    e.add_argument("--json", action="store_true", help="print JSON")

    r = sub.add_parser("run", help="generate text with the spiking network (and the original beside it)")
    r.add_argument("dir")
    r.add_argument("--prompt", required=True)
    r.add_argument("--max-new-tokens", type=int, default=20)
    r.add_argument("-T", "--timesteps", type=int)

    ps = sub.add_parser("passes", help="list the registered passes")
    ps.add_argument("--plugin", action="append", default=[], metavar="FILE.py")

    i = sub.add_parser("inspect", help="summarize a NIR file")
    i.add_argument("file")
    return p


def _cmd_compile(a: argparse.Namespace) -> int:
    from spikec.compile import CompileOptions, compile_model

    opts = CompileOptions(
        model=a.model, output=a.output, timesteps=a.timesteps, target=a.target, calib_text=a.calib_text,
        calib_samples=a.calib_samples, seq_len=a.seq_len, passes=[s.strip() for s in a.passes.split(",") if s.strip()],
        plugins=a.plugin, random_weights=a.random_weights, config_overrides=a.config, seed=a.seed, force=a.force,
        options={k: _parse_option_value(v) for k, v in a.option.items()},
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
    results = evaluate(compiled, a.text, a.tokens, a.timesteps, a.seq_len, progress=not a.json)
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


def _cmd_run(a: argparse.Namespace) -> int:
    from spikec.evaluate import generate, load_compiled

    out = generate(load_compiled(a.dir), a.prompt, a.max_new_tokens, a.timesteps)
    print(f"prompt: {a.prompt}")
    print(f"SNN:    {out['snn']}")
    print(f"ANN:    {out['ann']}")
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
    from spikec.backends.summary import format_summary, summarize

    print(format_summary(summarize(nirio.read(a.file))))
    return 0


COMMANDS = {"compile": _cmd_compile, "eval": _cmd_eval, "run": _cmd_run, "passes": _cmd_passes, "inspect": _cmd_inspect}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
