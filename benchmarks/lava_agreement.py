"""Bars of the Lava target (`--target lava`), measured end to end:

1. a 2-layer GPT-2-shaped model (random weights) and 2. the first transformer block of
SmolLM2-135M, exported to Lava and run at T=8 on a 16-token input: per-layer spike agreement
with the reference simulator in floating_pt (bar: 100%) and fixed_pt (bar: >= 99% per layer;
reported end to end, teacher-forced per layer, and against the float network);
3. the whole SmolLM2-135M (30 blocks) in Lava floating_pt on one 8-token input: next token equal
to the reference simulator's, wall time; 4. `compile gpt2 --random-weights` (124M) + the Lava
export under 90 s.

Prints the figures and writes benchmarks/results/lava_agreement.json. Needs the Lava
environment (`make lava-env`). About 6-8 minutes on 2 cores.
Usage: python benchmarks/lava_agreement.py [--skip-full] [--smollm2-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nir
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402

from spikec.backends import nirio  # noqa: E402
from spikec.backends.lava import compare, export  # noqa: E402
from spikec.compiler import CompileOptions, compile_model  # noqa: E402
from spikec.text import HELDOUT_TEXT, embedded_text  # noqa: E402

T = 8


def compile_dir(model: str, out: Path, **kw: Any) -> tuple[Path, float]:
    start = time.perf_counter()
    compile_model(CompileOptions(model=model, timesteps=T, seq_len=16, calib_samples=4, output=str(out), force=True,
                                 **kw))
    return out, time.perf_counter() - start


def tokens(folder: Path, n: int) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    return np.array([tok(embedded_text(HELDOUT_TEXT))["input_ids"][:n]], np.int64)


def first_block(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The embedding and transformer block 0, its residual stream as the output."""
    keep = {n for n in graph.nodes if n in ("input", "embed") or n.startswith("h_0_")}
    nodes = {n: graph.nodes[n] for n in graph.nodes if n in keep}
    d = int(np.asarray(graph.nodes["embed"].weight).shape[1])
    nodes["output"] = nir.Output(output_type={"output": np.array([16, d])})
    edges = [(a, b) for a, b in graph.edges if a in keep and b in keep] + [("h_0_add_mlp", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(graph.metadata), type_check=False)


def layers(result: dict[str, Any]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in result["spike_agreement_per_layer"].items()}


def agreement_bars(name: str, graph: nir.NIRGraph, ids: np.ndarray, work: Path) -> dict[str, Any]:
    folder = Path(export.export_lava(graph, work / name / "lava")["folder"])
    out: dict[str, Any] = {"positions": int(ids.shape[1]), "timesteps": T}
    run = compare.run_export(folder, ids, precision="floating_pt")
    r = compare.compare(graph, ids, run)
    out["floating_pt"] = {"spike_agreement": r["spike_agreement"], "per_layer": layers(r),
                          "logits_max_abs_diff": r["logits_max_abs_diff"], "lava_seconds": run.seconds}
    run = compare.run_export(folder, ids, precision="fixed_pt")
    r = compare.compare(graph, ids, run)
    forced = compare.run_export(folder, ids, precision="fixed_pt", teacher=True)
    rf = compare.compare(graph, ids, forced)
    out["fixed_pt"] = {
        "end_to_end_vs_quantized": {"spike_agreement": r["spike_agreement"], "per_layer": layers(r),
                                    "logits_max_abs_diff": r["logits_max_abs_diff"]},
        "teacher_forced_vs_quantized": {"spike_agreement": rf["spike_agreement"], "per_layer": layers(rf)},
        "end_to_end_vs_float": {"spike_agreement": r["float_reference"]["spike_agreement"],
                                "per_layer": layers(r["float_reference"]),
                                "logits_max_abs_diff": r["float_reference"]["logits_max_abs_diff"]},
        "lava_seconds": run.seconds,
    }
    fl, fx = out["floating_pt"], out["fixed_pt"]
    print(f"\n{name}: floating_pt {fl['spike_agreement']:.6f} (min layer {min(fl['per_layer'].values()):.6f}, "
          f"logits |diff| {fl['logits_max_abs_diff']:.2e}, {fl['lava_seconds']:.1f} s)")
    for key, label in (("end_to_end_vs_quantized", "fixed_pt end to end"),
                       ("teacher_forced_vs_quantized", "fixed_pt per layer (teacher-forced)"),
                       ("end_to_end_vs_float", "fixed_pt vs float network")):
        per = fx[key]["per_layer"]
        print(f"  {label}: {fx[key]['spike_agreement']:.6f}; " + ", ".join(f"{k} {v:.4f}" for k, v in per.items()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-full", action="store_true", help="skip the 30-block SmolLM2 run")
    ap.add_argument("--smollm2-dir", help="an existing `spikec compile smollm2-135m -T 8` directory")
    a = ap.parse_args()
    results: dict[str, Any] = {"timesteps": T}
    with tempfile.TemporaryDirectory(prefix="spikec-lava-bench-") as tmp:
        work = Path(tmp)
        gpt2_dir, _ = compile_dir("gpt2", work / "gpt2-2l", random_weights=True, config_overrides={"n_layer": "2"})
        graph = nirio.read(gpt2_dir / "model.nir")
        results["gpt2_2layer_random"] = agreement_bars("gpt2_2layer_random", graph, tokens(gpt2_dir, 16), work)

        smol = Path(a.smollm2_dir) if a.smollm2_dir else compile_dir("smollm2-135m", work / "smollm2")[0]
        full = nirio.read(smol / "model.nir")
        results["smollm2_block0"] = agreement_bars("smollm2_block0", first_block(full), tokens(smol, 16), work)

        if not a.skip_full:
            import torch

            from spikec.backends.simulator import simulate

            folder = Path(export.export_lava(full, work / "smol-full" / "lava")["folder"])
            runs = []
            for offset in (0, 8, 16):  # three 8-token windows of the held-out text
                ids = np.ascontiguousarray(tokens(smol, offset + 8)[:, offset:])
                run = compare.run_export(folder, ids, precision="floating_pt")
                r = compare.compare(full, ids, run)
                ref_next = int(simulate(full, torch.from_numpy(ids), T).output[0, -1].argmax())
                lava_next = int(run.output[0, -1].argmax())
                first = next((k for k, v in r["spike_agreement_per_layer"].items() if v < 1.0), None)
                runs.append({"tokens": ids[0].tolist(), "next_token_lava": lava_next, "next_token_reference": ref_next,
                             "next_token_equal": lava_next == ref_next, "spike_agreement": r["spike_agreement"],
                             "first_layer_below_100pct": first, "logits_max_abs_diff": r["logits_max_abs_diff"],
                             "wall_seconds": run.seconds})
                print(f"\nSmolLM2-135M, 30 blocks, floating_pt, tokens {offset}..{offset + 7}: next token Lava "
                      f"{lava_next} / reference {ref_next}; spikes {r['spike_agreement']:.6f} over "
                      f"{len(r['spike_agreement_per_layer'])} layers (first layer below 100%: {first}); "
                      f"{run.seconds:.1f} s wall ({r['lava_segments']} Lava runs, <= {r['lava']['processes_max']} "
                      f"processes, {r['lava']['steps_total']} steps)")
            results["smollm2_full_floating_pt"] = {"positions": 8, "runs": runs,
                                                   "next_token_equal": sum(x["next_token_equal"] for x in runs)}

        start = time.perf_counter()
        g124, compile_s = compile_dir("gpt2", work / "gpt2-124m", random_weights=True)
        info = export.export_lava(nirio.read(g124 / "model.nir"), g124 / "lava")
        total = time.perf_counter() - start
        results["gpt2_124m_compile_and_export"] = {"compile_seconds": compile_s, "export_seconds": info["seconds"],
                                                   "total_seconds": total, "bar_seconds": 90,
                                                   "lava_processes": info["lava_processes"]}
        print(f"\ngpt2 124M --random-weights: compile {compile_s:.1f} s + Lava export {info['seconds']:.1f} s "
              f"= {total:.1f} s (bar < 90 s)")
    write_results("lava_agreement", results)


if __name__ == "__main__":
    main()
