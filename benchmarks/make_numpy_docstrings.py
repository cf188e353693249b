"""Builds ``spikec/data/finetune_numpy_docstrings.txt``: NumPy's docstrings as fine-tuning text.

The embedded calibration text (the GPL-3 licence) is 7.7k tokens of legal prose. This script
writes a larger, in-domain alternative for fine-tuning: the docstrings of NumPy's pure-Python
modules (BSD-3-Clause, notice in ``spikec/data/NOTICE.txt``), read with ``ast`` (nothing is
imported), in sorted file order, deduplicated, and with every docstring dropped that shares a
16-token window with the held-out text (Python standard-library docstrings), so the two stay
disjoint. The file is shipped, so results do not depend on the NumPy version installed;
this script records how it was made.

    python benchmarks/make_numpy_docstrings.py [--max-chars 200000]
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import tempfile
from pathlib import Path

import numpy

from spikec.frontend.smollm2 import smollm2_tokenizer
from spikec.text import HELDOUT_TEXT, embedded_text

OUT = Path(__file__).resolve().parent.parent / "spikec" / "data" / "finetune_numpy_docstrings.txt"
SKIP_PARTS = {"tests", "testing", "f2py", "distutils", "_pyinstaller", "typing", "_typing"}
WINDOW = 16


def docstrings(root: Path) -> list[str]:
    """Module, class and function docstrings of the ``.py`` files under ``root``, in sorted
    path order, cleaned with ``inspect.cleandoc``, without duplicates or short ones."""
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_PARTS & set(path.relative_to(root).parts):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node, clean=False)
            if doc is None:
                continue
            doc = inspect.cleandoc(doc).strip()
            if len(doc) >= 200 and doc not in seen:
                seen.add(doc)
                out.append(doc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-chars", type=int, default=200_000)
    args = ap.parse_args()
    tok = smollm2_tokenizer()
    heldout_ids = tok(embedded_text(HELDOUT_TEXT), add_special_tokens=False)["input_ids"]
    held = {tuple(heldout_ids[i : i + WINDOW]) for i in range(len(heldout_ids) - WINDOW + 1)}
    kept, dropped, total = [], 0, 0
    for doc in docstrings(Path(numpy.__file__).parent):
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        if any(tuple(ids[i : i + WINDOW]) in held for i in range(len(ids) - WINDOW + 1)):
            dropped += 1
            continue
        if total + len(doc) > args.max_chars:
            break
        kept.append(doc)
        total += len(doc) + 2
    text = "\n\n".join(kept) + "\n"
    fd, tmp = tempfile.mkstemp(dir=OUT.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, OUT)
    n_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
    print(f"numpy {numpy.__version__}: {len(kept)} docstrings, {len(text)} characters, {n_tokens} tokens "
          f"({dropped} dropped for sharing a {WINDOW}-token window with the held-out text) -> {OUT}")


if __name__ == "__main__":
    main()
