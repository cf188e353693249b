"""Bar: `spikec compile gpt2 --random-weights -T 8` (124M shapes) completes in under 60 s,
calibration included. Prints the wall time and writes benchmarks/results/compile_speed.json."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402

from spikec.compiler import CompileOptions, compile_model  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = compile_model(CompileOptions(model="gpt2", random_weights=True, timesteps=8, output=f"{tmp}/gpt2"))
        wall = time.perf_counter() - start
    passes = {p["name"]: round(p["seconds"], 2) for p in report["passes"]}
    print(f"gpt2 (124M, random weights) -T 8: {wall:.1f} s wall (bar: < 60 s); passes: {passes}")
    write_results("compile_speed", {
        "command": "spikec compile gpt2 --random-weights -T 8", "wall_seconds": wall, "bar_seconds": 60,
        "capture_seconds": report["capture_seconds"], "passes": passes,
        "simulator_check": report["simulator_check"],
    })


if __name__ == "__main__":
    main()
