"""Shared helpers of the benchmark scripts: where results go and how they are printed."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus machine facts) to benchmarks/results/NAME.json and return the path."""
    RESULTS.mkdir(exist_ok=True)
    payload = {
        **payload,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
