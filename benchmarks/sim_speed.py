"""Speed and memory of the simulator, every figure a ratio of times measured in this one run
(the machine is shared: absolute seconds drift, interleaved ratios much less).
Writes benchmarks/results/sim_speed.json.

1. ``gpt2``: GPT-2 124M shapes (random weights, compiled at T=8), 128 positions, batch 1.
   ``ratio`` = simulation time at T / (T x dense forward of the original model); bar <= 1.0
   at T = 8, 16, 32 (aim 0.5). Peak memory of a T=32 run against the dense forward, each in a
   fresh process (``ru_maxrss`` minus the RSS before the call); bar <= 2x.
2. ``nir``: the standard NIR graph Affine(768->3072) -> IF -> Affine(3072->768) -> IF, batch
   64, T=32, a random spike-train input (Bernoulli, rate 0.1), run by spikec, Norse
   (``norse.torch.from_nir``, stepped) and SpikingJelly (``import_from_nir``, multi-step);
   identical output spikes required; bar: spikec >= 2x faster than the faster of the two.
   Weights and biases lie on a 2^-8 grid and thresholds off it, so float sums are exact in
   any order and no membrane ever equals a threshold (NIR fires at v > threshold,
   SpikingJelly at v >= threshold): the spike-for-spike comparison is then well defined.
   Also: the input-rate sweep and a real-valued (dense) input, to show where the lead shrinks;
   and ``float_weights``: plain float32 weights (not on a grid) with a constant real input, where
   the default multiplies fc2 densely (an event sum is not provably exact there), against the
   opt-in ``sparse="inexact"`` and SpikingJelly, with the output spikes differing from the definition.
3. ``crossover``: event-driven vs dense matmul of int8 spikes for both layer shapes over
   spike densities; the density where events stop paying (``native_loops.SPARSE_CROSSOVER``).
4. ``smollm2`` (with ``--smollm2``): ``spikec eval`` of SmolLM2-135M, 1024 tokens, T=32,
   wall time and peak RSS of the child process; bar < 300 s.
5. ``few_spike`` (with ``--sections few_spike``; compiles three SmolLM2-135M networks unless
   ``--few-spike-dirs`` names them, minutes): simulation time of the same 512 held-out tokens
   (one sequence) by the binary and the ternary network at T=7 and the rate network at T=16
   (issue 17's bar: few-spike T=7 / rate T=16 <= 1), best of ``--repeats``, interleaved. Each
   few-spike network runs twice: with the compiled few-spike kernel (``native_loops.few_spike_counts``,
   the default) and with the torch closed forms it replaces (``few_spike.binary_code`` /
   ``ternary_code``, the fallback, here by stubbing the kernel to decline), outputs required
   identical. The rounds rotate the order; the best wall time and the best CPU time of the process
   (less sensitive to other jobs on a shared machine) are both reported, each as a ratio to rate
   T=16. Run it with ``OMP_NUM_THREADS=1`` for the one-thread figures.

Sections not measured in a run keep their rows from the previous results file, with the threads and
load of the run that measured them (``measured_with``).

    python benchmarks/sim_speed.py [--gpt2-dir DIR] [--repeats 5] [--smollm2 [--smollm2-dir DIR]]
    OMP_NUM_THREADS=1 python benchmarks/sim_speed.py --sections few_spike --repeats 3 \
        [--few-spike-dirs BINARY_T7 TERNARY_T7 RATE_T16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import RESULTS, write_results  # noqa: E402

import nir  # noqa: E402

from spikec.backends.simulator import native_build, native_loops  # noqa: E402
from spikec.backends.simulator import Simulator  # noqa: E402
from spikec.evaluate import heldout_ids, load_compiled  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, after one warm-up each; the
    functions take turns within a round so that load from elsewhere hits all of them alike."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            best[k] = min(best[k], _timed(fn)[0])
    return best


def _load(load_average: list[float]) -> None:
    load_average.append(os.getloadavg()[0])


# --- 1. GPT-2 ---------------------------------------------------------------------------------


def gpt2_section(directory: str | None, repeats: int, positions: int = 128) -> dict[str, Any]:
    from spikec.evaluate import load_compiled

    with tempfile.TemporaryDirectory() as tmp:
        if directory is None:
            from spikec.compiler import CompileOptions, compile_model

            directory = f"{tmp}/gpt2"
            print("compiling gpt2 (random weights, -T 8) ...", flush=True)
            compile_model(CompileOptions(model="gpt2", random_weights=True, timesteps=8, output=directory))
        compiled = load_compiled(directory)
        ids = torch.randint(0, compiled.loaded.config.vocab_size, (1, positions), generator=torch.Generator().manual_seed(0))
        model, sim = compiled.loaded.model, Simulator(compiled.graph)
        steps = (8, 16, 32)
        fns: dict[str, Callable[[], Any]] = {"dense": lambda: model(input_ids=ids, use_cache=False).logits}
        with torch.no_grad():
            for t in steps:
                fns[f"T={t}"] = lambda t=t: sim.run(ids, t).output
            best = interleaved_best(fns, repeats)
            reference = Simulator(compiled.graph, mode="reference")
            ref_best = {t: interleaved_best({"r": lambda t=t: reference.run(ids, t)}, 1)["r"] for t in steps}
        memory = _memory(directory, 32, positions)
    dense = best["dense"]
    rows = {}
    for t in steps:
        rows[str(t)] = {
            "sim_seconds": best[f"T={t}"], "ratio": best[f"T={t}"] / (t * dense), "sim_over_one_dense": best[f"T={t}"] / dense,
            "reference_mode_seconds": ref_best[t], "speedup_over_reference_mode": ref_best[t] / best[f"T={t}"],
        }
    peak_ratio = max(memory[k]["ratio"] for k in ("default_allocator", "freed_memory_returned"))
    print(f"gpt2 128 positions: dense forward {dense * 1e3:.0f} ms; " + "; ".join(
        f"T={t}: sim {r['sim_seconds'] * 1e3:.0f} ms, ratio {r['ratio']:.3f} (bar <= 1.0)" for t, r in rows.items()))
    for view in ("default_allocator", "freed_memory_returned"):
        m = memory[view]
        print(f"gpt2 T=32 memory during the call ({view}): sim/dense {m['ratio']:.2f}x (bar <= 2x); dense "
              f"+{m['dense']['transient_bytes'] / 2**20:.0f} MiB, sim +{m['simulate']['transient_bytes'] / 2**20:.0f} MiB")
    print(f"gpt2 T=32 whole-process peak RSS, sim/dense: {memory['whole_process_peak_ratio']:.2f}x")
    return {"model": "gpt2 124M shapes, random weights, compiled at T=8", "positions": positions, "batch": 1,
            "dense_forward_seconds": dense, "timesteps": rows, "bar": "ratio <= 1.0 at every T (aim 0.5)",
            "passes": all(r["ratio"] <= 1.0 for r in rows.values()),
            "memory_T32": {**memory, "worst_ratio": peak_ratio, "bar": "<= 2x", "passes": peak_ratio <= 2.0}}


def _memory(directory: str, timesteps: int, positions: int) -> dict[str, Any]:
    """Memory a call takes beyond what was resident before it (peak RSS minus RSS), dense forward
    and simulation each in a fresh process, with glibc's default allocator (which keeps freed
    heap memory, so fragmentation counts) and with freed memory returned at once
    (``MALLOC_TRIM_THRESHOLD_=0``: RSS then follows the live tensors)."""
    views: dict[str, Any] = {}
    for view, env in (("default_allocator", {}), ("freed_memory_returned", {"MALLOC_TRIM_THRESHOLD_": "0"})):
        runs = {kind: _memory_in_child(kind, directory, timesteps, positions, env) for kind in ("dense", "simulate")}
        views[view] = {**runs, "ratio": runs["simulate"]["transient_bytes"] / max(runs["dense"]["transient_bytes"], 1)}
    default = views["default_allocator"]
    views["whole_process_peak_ratio"] = default["simulate"]["peak_rss_bytes"] / default["dense"]["peak_rss_bytes"]
    return views


def _memory_in_child(kind: str, directory: str, timesteps: int, positions: int, env: dict[str, str]) -> dict[str, int]:
    out = subprocess.run([sys.executable, __file__, "--memory-child", kind, directory, str(timesteps), str(positions)],
                         capture_output=True, text=True, check=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(kind: str, directory: str, timesteps: int, positions: int) -> None:
    """In a fresh process: load what ``kind`` needs, then run it once; print RSS figures."""
    from spikec.backends import nirio
    from spikec.frontend.models import load_from_spec

    report = json.loads((Path(directory) / "report.json").read_text())
    ids = torch.randint(0, 50257, (1, positions), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if kind == "dense":
            model = load_from_spec(report["source"]).model
            run = lambda: model(input_ids=ids, use_cache=False).logits  # noqa: E731
        else:
            sim = Simulator(nirio.read(Path(directory) / "model.nir"))
            run = lambda: sim.run(ids, timesteps).output  # noqa: E731
        reset = _reset_peak()
        before = _status_kib("VmRSS") * 1024
        run()
    # VmHWM, unlike ru_maxrss, does not include the parent's RSS inherited at fork
    peak = _status_kib("VmHWM") * 1024
    print(json.dumps({"rss_before_bytes": before, "peak_rss_bytes": peak, "transient_bytes": peak - before,
                      "peak_reset_before_the_call": reset}))


# --- 2. the standard NIR graph against Norse and SpikingJelly ---------------------------------


def _dyadic(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return (np.round(rng.standard_normal(shape) * scale * 256) / 256).astype(np.float32)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def standard_graph(n_in: int = 768, n_hidden: int = 3072, n_out: int = 768, seed: int = 0,
                   grid: bool = True) -> nir.NIRGraph:
    """The standard graph; ``grid=False``: weights and biases are plain float32 normals."""
    rng = np.random.default_rng(seed)
    draw = _dyadic if grid else _normal

    def if_node(n: int) -> nir.IF:
        return nir.IF(r=np.ones(n, np.float32), v_threshold=np.full(n, 1 + 2**-10, np.float32),
                      v_reset=np.zeros(n, np.float32))

    nodes = {
        "input": nir.Input(np.array([n_in])),
        "fc1": nir.Affine(weight=draw(rng, (n_hidden, n_in), 0.1), bias=draw(rng, (n_hidden,), 0.01)),
        "if1": if_node(n_hidden),
        "fc2": nir.Affine(weight=draw(rng, (n_out, n_hidden), 0.05), bias=draw(rng, (n_out,), 0.01)),
        "if2": if_node(n_out),
        "output": nir.Output(np.array([n_out])),
    }
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata={"dt": 1.0})


def _others(graph: nir.NIRGraph, timesteps: int) -> tuple[dict[str, Callable], dict[str, str]]:
    """Runners ``x [T, batch, features] -> spikes`` of Norse and SpikingJelly, where installed."""
    runners: dict[str, Callable] = {}
    versions: dict[str, str] = {}
    try:
        import norse
        import norse.torch as norse_torch

        norse_model = norse_torch.from_nir(graph, dt=1.0)

        def run_norse(x: torch.Tensor) -> torch.Tensor:
            state, outs = None, []
            for t in range(timesteps):
                out, state = norse_model(x[t], state)
                outs.append(out)
            return torch.stack(outs)

        runners["norse"], versions["norse"] = run_norse, norse.__version__
    except ImportError as e:
        versions["norse"] = f"not installed ({e})"
    try:
        import logging

        import spikingjelly
        from spikingjelly.activation_based.nir_exchange import import_from_nir

        logging.getLogger("spikingjelly").setLevel(logging.WARNING)
        sj_model = import_from_nir(graph, dt=1.0, step_mode="m")
        runners["spikingjelly"] = lambda x: sj_model(x, None)[0]
        versions["spikingjelly"] = getattr(spikingjelly, "__version__", "2.0.0")
    except ImportError as e:
        versions["spikingjelly"] = f"not installed ({e})"
    return runners, versions


def nir_section(repeats: int, timesteps: int = 32, batch: int = 64, rate: float = 0.1) -> dict[str, Any]:
    try:
        from loguru import logger

        logger.remove()  # SpikingJelly logs every import at INFO
    except ImportError:
        pass
    graph = standard_graph()
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(timesteps, batch, 768, generator=gen) < rate).float()
    runners, versions = _others(graph, timesteps)
    fast, dense, reference = (Simulator(graph, sparse="auto"), Simulator(graph, sparse="never"),
                              Simulator(graph, mode="reference"))
    fns: dict[str, Callable[[], Any]] = {
        "spikec": lambda: fast.run(x, timesteps, inputs_are_series=True).output,
        "spikec_dense_matmul": lambda: dense.run(x, timesteps, inputs_are_series=True).output,
    }
    fns.update({k: (lambda f=f: f(x)) for k, f in runners.items()})
    with torch.no_grad():
        outputs = {k: fn() for k, fn in fns.items()}
        outputs["spikec_reference_mode"] = reference.run(x, timesteps, inputs_are_series=True).output
        identical = {k: bool(torch.equal(v.float(), outputs["spikec_reference_mode"])) for k, v in outputs.items()}
        best = interleaved_best(fns, repeats)
        best["spikec_reference_mode"] = interleaved_best(
            {"r": lambda: reference.run(x, timesteps, inputs_are_series=True)}, 1)["r"]
        rates = fast.run(x, timesteps, inputs_are_series=True).firing_rates
        others = [best[k] for k in runners]
        speedup = min(others) / best["spikec"] if others else None
        sweep = _rate_sweep(graph, runners.get("spikingjelly"), timesteps, batch, repeats)
        float_weights = _float_weights(repeats, timesteps, batch)
    print(f"nir graph, batch {batch}, T={timesteps}, input rate {rate}: " + ", ".join(
        f"{k} {v * 1e3:.0f} ms" for k, v in best.items()) + f"; identical spikes: {identical}")
    if speedup is not None:
        print(f"spikec is {speedup:.2f}x faster than the faster of {', '.join(runners)} (bar >= 2x)")
    return {"graph": "Affine(768->3072) -> IF -> Affine(3072->768) -> IF", "batch": batch, "timesteps": timesteps,
            "input": f"Bernoulli spike trains, rate {rate}", "firing_rates": rates, "seconds": best,
            "identical_spikes": identical, "versions": versions,
            "speedup_over_fastest_other": speedup, "bar": ">= 2x, identical spikes",
            "passes": speedup is not None and speedup >= 2.0 and all(identical.values()), "rate_sweep": sweep,
            "float_weights": float_weights}


def _float_weights(repeats: int, timesteps: int, batch: int) -> dict[str, Any]:
    """The graph with plain float32 weights (not on a grid) and a constant real input: the
    default (events only where provably exact, so fc2 is dense here) against the opt-in
    ``sparse="inexact"`` and SpikingJelly, with output spikes that differ from the reference
    mode (the plain-torch definition)."""
    graph = standard_graph(grid=False)
    x = torch.randn(batch, 768, generator=torch.Generator().manual_seed(4)) * 0.3
    sj = _others(graph, timesteps)[0].get("spikingjelly")
    sims = {"spikec": Simulator(graph), "spikec_inexact": Simulator(graph, sparse="inexact")}
    fns: dict[str, Callable[[], Any]] = {k: (lambda s=s: s.run(x, timesteps).output) for k, s in sims.items()}
    if sj is not None:
        series = x.expand(timesteps, *x.shape).contiguous()
        fns["spikingjelly"] = lambda: sj(series)
    reference = Simulator(graph, mode="reference").run(x, timesteps)
    outputs = {k: fn().float() for k, fn in fns.items()}
    mismatches = {k: int((v != reference.output).sum()) for k, v in outputs.items()}
    best = interleaved_best(fns, repeats)
    row: dict[str, Any] = {"input": "constant real input N(0, 0.3^2)", "firing_rates": reference.firing_rates,
                           "output_spikes": int(reference.output.sum()), "seconds": best,
                           "spikes_differing_from_reference_mode": mismatches}
    if sj is not None:
        row["speedup_over_spikingjelly"] = {k: best["spikingjelly"] / best[k] for k in sims}
    print("float32 weights, constant real input: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in best.items())
          + f"; spikes differing from the definition (of {row['output_spikes']}): {mismatches}")
    return row


def _rate_sweep(graph: nir.NIRGraph, sj: Callable | None, timesteps: int, batch: int, repeats: int) -> list[dict]:
    """spikec against SpikingJelly over input spike rates, and for a real-valued input."""
    fast = Simulator(graph)
    rows = []
    gen = torch.Generator().manual_seed(2)
    inputs = {f"spikes rate {r}": (torch.rand(timesteps, batch, 768, generator=gen) < r).float()
              for r in (0.02, 0.05, 0.2, 0.3)}
    inputs["real-valued N(0,1) input"] = torch.randn(timesteps, batch, 768, generator=gen) * 0.3
    for label, x in inputs.items():
        fns = {"spikec": lambda x=x: fast.run(x, timesteps, inputs_are_series=True).output}
        if sj is not None:
            fns["spikingjelly"] = lambda x=x: sj(x)
        best = interleaved_best(fns, max(2, repeats // 2))
        hidden = fast.run(x, timesteps, inputs_are_series=True).firing_rates["if1"]
        row = {"input": label, "hidden_rate": hidden, **{f"{k}_seconds": v for k, v in best.items()}}
        if sj is not None:
            row["speedup_over_spikingjelly"] = best["spikingjelly"] / best["spikec"]
        rows.append(row)
        print(f"  {label}: hidden rate {hidden:.3f}, " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in best.items()))
    return rows


# --- 3. crossover of event-driven and dense matmul --------------------------------------------


def crossover_section(repeats: int, rows: int = 2048) -> dict[str, Any]:
    from torch.nn import functional as F

    densities = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
    result: dict[str, Any] = {"threshold_in_use": native_loops.SPARSE_CROSSOVER, "rows": rows, "shapes": {}}
    if native_build.compiled_library() is None:
        result["skipped"] = f"no compiled kernels: {native_build.compiled_error()}"
        return result
    gen = torch.Generator().manual_seed(3)
    for n_in, n_out in ((768, 3072), (3072, 768)):
        w, b = torch.randn(n_out, n_in, generator=gen), torch.randn(n_out, generator=gen)
        packed = native_loops.pack_weight(w)
        curve = []
        for d in densities:
            s = (torch.rand(rows, n_in, generator=gen) < d).to(torch.int8)
            best = interleaved_best({"events": lambda s=s: native_loops.event_matmul(s, packed, n_out, b),
                                     "dense": lambda s=s: F.linear(s.float(), w, b)}, repeats)
            curve.append({"density": d, "events_seconds": best["events"], "dense_seconds": best["dense"],
                          "events_over_dense": best["events"] / best["dense"]})
        slower = [c["density"] for c in curve if c["events_over_dense"] >= 1.0]
        result["shapes"][f"{n_in}->{n_out}"] = {"curve": curve, "crossover_density": min(slower) if slower else None}
        print(f"crossover {n_in}->{n_out}: events stop paying at density {min(slower) if slower else '> 0.5'}; "
              + ", ".join(f"{c['density']}: {c['events_over_dense']:.2f}" for c in curve))
    return result


# --- 4. spikec eval of SmolLM2-135M -------------------------------------------------------------


def smollm2_section(directory: str | None, timesteps: int = 32, tokens: int = 1024) -> dict[str, Any]:
    spikec = str(Path(sys.executable).parent / "spikec")
    with tempfile.TemporaryDirectory() as tmp:
        if directory is None:
            directory = f"{tmp}/smol"
            subprocess.run([spikec, "compile", "smollm2-135m", "-T", str(timesteps), "-o", directory], check=True)
        # /usr/bin/time reports the child's own peak; ru_maxrss of a child forked from this large
        # process would include the RSS it inherited at fork
        timer = ["/usr/bin/time", "-f", "PEAK_KIB %M"] if Path("/usr/bin/time").exists() else []
        start = time.perf_counter()
        proc = subprocess.run([*timer, spikec, "eval", directory, "-T", str(timesteps), "--tokens", str(tokens),
                               "--json"], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    peaks = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_KIB ")]
    peak = peaks[-1] * 1024 if peaks else None
    metrics = json.loads(proc.stdout)
    print(f"spikec eval smollm2-135m, {tokens} tokens, T={timesteps}: {wall:.1f} s wall (bar < 300 s), "
          f"peak RSS {peak / 2**30 if peak else float('nan'):.2f} GiB, simulator {metrics['seconds']:.1f} s, "
          f"ppl ratio {metrics['ppl_ratio']:.3f}")
    return {"command": f"spikec eval DIR -T {timesteps} --tokens {tokens}", "wall_seconds": wall,
            "peak_rss_bytes": peak, "simulator_seconds": metrics["seconds"],
            "metrics": metrics, "bar": "< 300 s", "passes": wall < 300}


# --- 5. few-spike kernels: binary and ternary T=7 against rate T=16 on SmolLM2-135M --------------

FEW_SPIKE_NETWORKS = {"binary_T7": ["--coding", "binary", "-T", "7"], "ternary_T7": ["--coding", "ternary", "-T", "7"],
                      "rate_T16": ["-T", "16"]}


def few_spike_section(dirs: list[str] | None, repeats: int, tokens: int = 512) -> dict[str, Any]:
    spikec = str(Path(sys.executable).parent / "spikec")
    with tempfile.TemporaryDirectory() as tmp:
        if not dirs:
            dirs = [f"{tmp}/{name}" for name in FEW_SPIKE_NETWORKS]
            for name, directory in zip(FEW_SPIKE_NETWORKS, dirs):
                subprocess.run([spikec, "compile", "smollm2-135m", *FEW_SPIKE_NETWORKS[name], "-o", directory],
                               check=True, stdout=subprocess.DEVNULL)
        compiled = {name: load_compiled(d) for name, d in zip(FEW_SPIKE_NETWORKS, dirs)}
        ids = heldout_ids(compiled["rate_T16"], None, tokens)[:1]
    sims = {name: (Simulator(c.graph), int(c.report["timesteps"])) for name, c in compiled.items()}

    def run(name: str, kernel: bool) -> torch.Tensor:
        sim, timesteps = sims[name]
        if kernel:
            return sim.run(ids, timesteps).output
        with mock.patch.object(native_loops, "few_spike_counts", return_value=None):  # the torch closed forms
            return sim.run(ids, timesteps).output

    variants = {"rate_T16": ("rate_T16", True)}
    for name in ("binary_T7", "ternary_T7"):
        variants[name] = (name, True)
        variants[f"{name}_torch"] = (name, False)
    outputs = {v: run(*args) for v, args in variants.items()}  # warm-up
    for name in ("binary_T7", "ternary_T7"):
        assert torch.equal(outputs[name], outputs[f"{name}_torch"]), f"{name}: kernel and closed form differ"
    best = {v: float("inf") for v in variants}
    cpu = dict(best)
    order = list(variants)
    for r in range(repeats):  # interleaved, the order rotated each round so no variant always follows another
        for v in order[r % len(order):] + order[:r % len(order)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            run(*variants[v])
            best[v] = min(best[v], time.perf_counter() - start)
            cpu[v] = min(cpu[v], time.process_time() - start_cpu)
    ratios = {v: best[v] / best["rate_T16"] for v in variants if v != "rate_T16"}
    cpu_ratios = {v: cpu[v] / cpu["rate_T16"] for v in variants if v != "rate_T16"}
    for v, r in ratios.items():
        print(f"{tokens} tokens, {v}: {best[v]:.2f} s, / rate T=16 ({best['rate_T16']:.2f} s) = {r:.2f}; "
              f"CPU time {cpu[v]:.2f} s / {cpu['rate_T16']:.2f} s = {cpu_ratios[v]:.2f}")
    return {"tokens": int(ids.numel()), "threads": torch.get_num_threads(), "repeats": repeats,
            "seconds": best, "over_rate_T16": ratios, "cpu_seconds": cpu, "cpu_over_rate_T16": cpu_ratios,
            "bar": "few-spike T=7 / rate T=16 <= 1",
            "passes": {name: ratios[name] <= 1.0 for name in ("binary_T7", "ternary_T7")}}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpt2-dir", help="an existing `spikec compile gpt2 --random-weights -T 8` output")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sections", default="gpt2,nir,crossover",
                    help="comma list of gpt2, nir, crossover, few_spike (minutes: compiles SmolLM2-135M three times)")
    ap.add_argument("--smollm2", action="store_true", help="also time `spikec eval` of SmolLM2-135M (minutes)")
    ap.add_argument("--smollm2-dir", help="an existing `spikec compile smollm2-135m -T 32` output")
    ap.add_argument("--few-spike-dirs", nargs=3, metavar=("BINARY_T7", "TERNARY_T7", "RATE_T16"),
                    help="existing `spikec compile smollm2-135m` outputs for the few_spike section")
    a = ap.parse_args()
    loads: list[float] = []
    payload: dict[str, Any] = {"threads": torch.get_num_threads(),
                               "compiled_kernels": native_build.compiled_library() is not None}
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    for name, run in (("crossover", lambda: crossover_section(a.repeats)), ("nir", lambda: nir_section(a.repeats)),
                      ("gpt2", lambda: gpt2_section(a.gpt2_dir, a.repeats)),
                      ("few_spike", lambda: few_spike_section(a.few_spike_dirs, a.repeats))):
        if name in sections:
            _load(loads)
            payload[name] = run()
    if a.smollm2:
        _load(loads)
        payload["smollm2"] = smollm2_section(a.smollm2_dir)
    _load(loads)
    payload["load_average_1min"] = loads  # other work on the machine while this ran
    previous = RESULTS / "sim_speed.json"
    if previous.exists():  # keep the rows of the sections this run did not measure
        kept = json.loads(previous.read_text())
        for name in ("crossover", "nir", "gpt2", "smollm2", "few_spike"):
            if name not in payload and name in kept:  # with the facts of the run that measured it
                payload[name] = {"measured_with": {k: kept.get(k) for k in ("threads", "load_average_1min")},
                                 **kept[name]}
    write_results("sim_speed", payload)


if __name__ == "__main__":
    main()
