"""The notebooks in examples/ run from top to bottom (nbclient), so that they stay true.

Each runs in a fresh kernel of this interpreter, in a temporary working directory, with its
temporary files (``tempfile``, ``spikec.compile`` without ``output``) under it too. The SmolLM2
notebook loads the real weights (``slow``); the others use tiny random GPT-2s."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = [
    "custom_pass.ipynb",
    "nir_to_norse.ipynb",
    "lava.ipynb",
    pytest.param("getting_started.ipynb", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "nir_to_norse.ipynb":
        pytest.importorskip("norse.torch")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile outputs go where pytest cleans up
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
