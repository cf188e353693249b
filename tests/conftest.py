"""Fixtures every test module may use.

- Every test starts from torch seed 0, so results reproduce whatever order the tests run in.
- ``one_thread``: torch on one thread for the test (tiny tensors; a second thread only adds
  OpenMP contention on a busy 2-core machine, tens of times slower).
- ``interrupt``: ``with interrupt(module, "name", after=n): ...`` makes the call after the n-th of
  ``module.name`` raise inside the block (a run killed part-way) and requires that it did.
- ``lava_python`` (module scope): the Lava environment's interpreter (``require_lava``): the Lava
  tests skip without one, and FAIL when the environment variable ``CI`` is set.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from spikec.backends.lava import env
from spikec.core.errors import ResourceError


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Interruption:
    """Kills a run part-way by making one function raise after ``after`` calls."""

    class Interrupted(Exception):
        pass

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch

    @contextlib.contextmanager
    def __call__(self, module: Any, name: str, after: int) -> Iterator[None]:
        original = getattr(module, name)
        calls = 0

        def dying(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls > after:
                raise self.Interrupted
            return original(*args, **kwargs)

        with self.monkeypatch.context() as patch:
            patch.setattr(module, name, dying)
            with pytest.raises(self.Interrupted):
                yield


@pytest.fixture
def interrupt(monkeypatch: pytest.MonkeyPatch) -> Interruption:
    return Interruption(monkeypatch)


def require_lava() -> Path:
    """The Lava interpreter; skip without one, or fail when running on CI."""
    try:
        return env.lava_python()
    except ResourceError as e:
        if os.environ.get("CI"):
            pytest.fail(f"the Lava environment is missing on CI: {e}")
        pytest.skip(f"no Lava environment: {e}")


@pytest.fixture(scope="module")
def lava_python() -> Path:
    return require_lava()
