"""The compiled-loop cache never loads a library another user could have written (issue 19):
a cache directory that is not private is not used (the simulator takes its torch path), a
planted library with the wrong mode or owner is rebuilt, never loaded, and concurrent builds
leave only complete files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from spikec.backends.simulator import native_build

needs_compiler = pytest.mark.skipif(native_build.find_compiler() is None, reason="no C compiler")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``SPIKEC_CACHE``; returns its kernels directory (not yet created)."""
    monkeypatch.setenv("SPIKEC_CACHE", str(tmp_path / "cache"))
    return native_build.cache_dir()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("simkernels-"))


@needs_compiler
def test_a_new_cache_is_private_and_holds_one_complete_library(cache):
    native_build.load_library(cache)
    assert _mode(cache) == 0o700 and cache.stat().st_uid == os.getuid()
    (library,) = cache.iterdir()
    assert library.name == native_build.library_name(native_build.find_compiler())
    assert native_build.unsafe_reason(library.stat(), os.getuid(), directory=False) is None
    assert _mode(library) & 0o077 == 0


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
def test_a_cache_directory_writable_by_group_or_others_is_not_used(cache, mode):
    cache.mkdir(parents=True)
    os.chmod(cache, mode)
    with pytest.raises(native_build.UnsafeCacheError, match="writable by group or others"):
        native_build.load_library(cache)
    assert list(cache.iterdir()) == []  # nothing built, nothing loaded
    assert _mode(cache) == mode  # and not "repaired" behind the owner's back


def test_a_cache_directory_of_another_user_is_not_used(cache, monkeypatch):
    cache.mkdir(parents=True, mode=0o700)
    other = os.getuid() + 1
    monkeypatch.setattr(os, "getuid", lambda: other)
    with pytest.raises(native_build.UnsafeCacheError, match="owned by uid"):
        native_build.load_library(cache)
    assert list(cache.iterdir()) == []


def test_a_symlinked_cache_directory_is_not_used(cache, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    cache.parent.mkdir(parents=True)
    cache.symlink_to(target)
    with pytest.raises(native_build.UnsafeCacheError, match="cannot be opened as a directory"):
        native_build.load_library(cache)
    assert list(target.iterdir()) == []


def test_a_library_owned_by_another_user_or_writable_by_others_is_refused(tmp_path):
    library = tmp_path / "lib.so"
    library.write_bytes(b"x")
    os.chmod(library, 0o700)
    uid = os.getuid()
    assert native_build.unsafe_reason(library.stat(), uid, directory=False) is None
    assert "owned by uid" in native_build.unsafe_reason(library.stat(), uid + 1, directory=False)
    os.chmod(library, 0o722)
    assert "writable by group or others" in native_build.unsafe_reason(library.stat(), uid, directory=False)
    assert "not a regular file" in native_build.unsafe_reason(tmp_path.stat(), uid, directory=False)


@needs_compiler
@pytest.mark.parametrize("plant", ["world-writable", "group-writable", "symlink"])
def test_a_planted_library_that_fails_the_check_is_rebuilt_never_loaded(cache, tmp_path, plant):
    """The planted file is not a library at all: loading it would raise. It is replaced by a
    fresh build, and that build is what gets loaded."""
    cache.mkdir(parents=True, mode=0o700)
    target = cache / native_build.library_name(native_build.find_compiler())
    junk = b"not a shared library, but code an attacker wants run"
    if plant == "symlink":
        planted = tmp_path / "planted.so"
        planted.write_bytes(junk)
        os.chmod(planted, 0o700)
        target.symlink_to(planted)
    else:
        target.write_bytes(junk)
        os.chmod(target, 0o766 if plant == "world-writable" else 0o770)
    lib = native_build.load_library(cache)  # would raise OSError had the junk been loaded
    assert lib.signed_if_constant is not None
    assert not target.is_symlink() and target.read_bytes() != junk
    assert _mode(target) & 0o022 == 0
    assert _leftovers(cache) == []


@needs_compiler
def test_concurrent_builds_leave_one_complete_library_and_no_temporary_files(cache):
    errors: list[BaseException] = []

    def build() -> None:
        try:
            native_build.load_library(cache)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in cache.iterdir()] == [native_build.library_name(native_build.find_compiler())]


@needs_compiler
def test_a_failed_build_leaves_no_temporary_files(cache, monkeypatch):
    monkeypatch.setattr(native_build, "SOURCE", "this is not C;")
    with pytest.raises(RuntimeError, match="compiling the simulator kernels failed"):
        native_build.load_library(cache)
    assert list(cache.iterdir()) == []


def test_the_simulator_takes_its_torch_path_when_the_cache_is_not_private(tmp_path):
    """End to end, in a fresh process: an unsafe cache means no compiled loops, an explanation
    in ``compiled_error()``, one warning, and simulations that still run (on the torch path)."""
    cache = tmp_path / "kernels"
    cache.mkdir(mode=0o700)
    os.chmod(cache, 0o777)
    code = (
        "import torch\n"
        "from spikec.backends.simulator import native_build, native_loops\n"
        "assert native_build.compiled_library() is None\n"
        "print(native_build.compiled_error())\n"
        "count, spikes, total = native_loops.signed_if_constant(torch.ones(2, 3), torch.full((3,), 0.5), 4, 2,"
        " True, 0.0, train=True)\n"
        "assert total == 48, total\n"
    )
    env = {**os.environ, "SPIKEC_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("SPIKEC_KERNELS", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "writable by group or others" in proc.stdout
    assert proc.stderr.count("compiled simulator kernels are unavailable") == 1, proc.stderr  # warned once
    assert list(cache.iterdir()) == []
