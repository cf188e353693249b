"""The sentence encoder all-MiniLM-L6-v2 (``minilm-l6``, real weights, offline) as users of sentence
embeddings judge it (issue 20, item 2).

Compiles ``minilm-l6`` with the rate code at T=16 and T=32 and with the few-spike (binary) code at
T=8 and T=16 (calibration on the default GPL-3 text), then evaluates each at its T on the held-out
sentences (the embedded docstrings, the sentences within ``--tokens`` tokens, never used to choose a
setting): mean and least cosine between the ANN's and the SNN's mean-pooled embedding of each
sentence, and the Spearman correlation of their cosines over every pair of sentences. Also the
whole-model energy against the ANN under ``45nm`` (``spikec energy``) for the rate code at T=32.

Writes benchmarks/results/minilm.json.

    python benchmarks/minilm.py [--tokens 1024]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402

from spikec.analysis.energy_models import resolve_model  # noqa: E402
from spikec.compiler import CompileOptions, compile_model  # noqa: E402
from spikec.energy import energy_on_text  # noqa: E402
from spikec.evaluate import evaluate, load_compiled  # noqa: E402

MODEL = "minilm-l6"
RUNS = {"rate_T16": ("rate", 16), "rate_T32": ("rate", 32), "binary_T8": ("binary", 8), "binary_T16": ("binary", 16)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1024, help="held-out tokens (whole sentences) to evaluate on")
    a = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="spikec-minilm-") as scratch:
        for name, (coding, t) in RUNS.items():
            out = str(Path(scratch) / name)
            compile_model(CompileOptions(model=MODEL, output=out, timesteps=t, coding=coding))
            row = evaluate(load_compiled(out), tokens=a.tokens, timesteps=[t], progress=False)[0]
            results[name] = {k: row[k] for k in ("embedding_cosine", "embedding_cosine_min", "pair_spearman",
                                                 "sentences", "pairs", "tokens", "spikes_per_neuron_step")}
            print(name, results[name])
            if name == "rate_T32":
                est = energy_on_text(out, tokens=256, model=resolve_model("45nm"), progress=False)
                results[name]["energy_45nm"] = {k: est[k] for k in ("ann_pj_per_token", "snn_pj_per_token", "reduction")}
    write_results("minilm", {"model": MODEL, "eval_text": "embedded:heldout_docstrings.txt",
                             "calibration_text": "embedded:calibration_gpl3.txt", "runs": results})


if __name__ == "__main__":
    main()
