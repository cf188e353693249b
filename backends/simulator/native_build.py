"""Builds and loads the simulator's compiled loops (``native_source.SOURCE``), from a private cache.

The C source is compiled once per machine with the system C compiler into
``$SPIKEC_CACHE/kernels`` (default ``~/.cache/spikec/kernels``), named by a hash of the
source, the compiler, the flags and the CPU, and loaded with ctypes.

A shared library is code: the cache never loads one that another user could have written.

* The cache directory is created with mode 0700. An existing one is used only when it is a
  real directory (not a symlink) owned by the current user and writable by no one else
  (then it is tightened to 0700); otherwise the compiled loops are not used at all
  (``compiled_error()`` says why) and the simulator takes its torch path.
* A library is opened without following symlinks, relative to that checked directory, and
  loaded only if the opened file is a regular file owned by the current user and writable by
  no one else; it is loaded through that very open file (``/proc/self/fd``), so what is
  checked is what is loaded. A library that fails the check is rebuilt over it.
* A build writes to a fresh ``mkstemp`` file in the cache directory and ``os.replace``-s it
  into place: concurrent builders each install a complete file; readers never see half of one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

from spikec.core.private_paths import cache_root, make_private_dir, unsafe_reason

from .native_source import SOURCE

FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"]
"""Compiler flags: no fast-math and no contraction, so the loops' float32 arithmetic is torch's."""
_ARCH_FLAGS = (["-march=native"], [])  # native first; a compiler that rejects it gets the default

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None


class UnsafeCacheError(RuntimeError):
    """The kernel cache (directory or library) could have been written by another user."""


def cache_dir() -> Path:
    """Where compiled libraries are kept: ``$SPIKEC_CACHE/kernels`` or ``~/.cache/spikec/kernels``."""
    return cache_root() / "kernels"


def _open_private_dir(path: Path) -> int:
    """An fd of the cache directory ``path``, created 0700 if missing; ``UnsafeCacheError`` when
    it is a symlink, not ours, or writable by others."""
    make_private_dir(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise UnsafeCacheError(f"kernel cache {path} cannot be opened as a directory ({e.strerror}); "
                               "not using compiled kernels") from None
    st = os.fstat(fd)
    reason = unsafe_reason(st, os.getuid(), directory=True)
    if reason is not None:
        os.close(fd)
        raise UnsafeCacheError(f"kernel cache {path} {reason}; not using compiled kernels "
                               "(remove it, or set SPIKEC_CACHE to a private directory)")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.fchmod(fd, 0o700)
    return fd


def find_compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_signature() -> str:
    """What a -march=native build depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))][:2]
        return "\n".join(keep)
    except OSError:
        return platform.processor()


def library_name(cc: str) -> str:
    """The cache file name of the library compiled by ``cc``: a hash of source, compiler, flags and CPU."""
    key = hashlib.sha256("\0".join([SOURCE, cc, " ".join(FLAGS), _cpu_signature(), platform.machine()])
                         .encode()).hexdigest()[:16]
    return f"simkernels-{key}.so"


def _compile(cc: str, directory: Path, name: str) -> None:
    """Compile into a fresh ``mkstemp`` file of ``directory``, then atomically rename it to ``name``."""
    fd, tmp = tempfile.mkstemp(prefix=".simkernels-", suffix=".so.tmp", dir=directory)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".simkernels-src-") as src_dir:
            src = Path(src_dir) / "simkernels.c"
            src.write_text(SOURCE)
            errors = []
            for arch in _ARCH_FLAGS:
                proc = subprocess.run([cc, *FLAGS, *arch, str(src), "-o", tmp, "-lm"], capture_output=True, text=True)
                if proc.returncode == 0:
                    break
                errors.append(proc.stderr.strip()[-500:])
            else:
                raise RuntimeError(f"compiling the simulator kernels failed: {errors[-1]}")
        os.chmod(tmp, 0o700)  # the linker applies the umask; a library must be ours alone
        os.replace(tmp, directory / name)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _load_checked(dir_fd: int, directory: Path, name: str) -> ctypes.CDLL | None:
    """The library ``name`` in the directory ``dir_fd``, loaded through the very file checked;
    None when it is missing or fails ``unsafe_reason``."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:  # missing, a symlink (ELOOP) or unreadable: (re)build it
        return None
    try:
        if unsafe_reason(os.fstat(fd), os.getuid(), directory=False) is not None:
            return None
        proc_path = f"/proc/self/fd/{fd}"
        return ctypes.CDLL(proc_path if os.path.exists(proc_path) else str(directory / name))
    finally:
        os.close(fd)


def load_library(directory: Path) -> ctypes.CDLL:
    """The compiled loops from the private cache ``directory``, built there when missing or
    not trusted. Raises ``UnsafeCacheError`` (directory not private), ``RuntimeError`` (no
    compiler, compile error) or ``OSError``."""
    cc = find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    name = library_name(cc)
    dir_fd = _open_private_dir(directory)
    try:
        lib = _load_checked(dir_fd, directory, name)
        if lib is None:
            _compile(cc, directory, name)
            lib = _load_checked(dir_fd, directory, name)
            if lib is None:
                raise UnsafeCacheError(f"the kernel library built in {directory} did not pass the owner/mode check")
    finally:
        os.close(dir_fd)
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    i64, i32, f32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.signed_if_constant.argtypes = [ptr, ptr, i64, i64, i64, i32, f32, f32, f32, ptr, ptr, i64]
    lib.signed_if_constant.restype = i64
    lib.nir_if.argtypes = [ptr, i64, i64, i32, ptr, ptr, ptr, ptr, i64]
    lib.nir_if.restype = i64
    lib.event_matmul.argtypes = [ptr, i64, ptr, i64, ptr, ptr, i64, i64, ptr, ptr, ptr, i64, ptr]
    lib.event_matmul.restype = None
    lib.count_events.argtypes = [ptr, i64, i64, i64, ptr]
    lib.count_events.restype = None
    lib.to_spikes.argtypes = [ptr, i64, ptr]
    lib.to_spikes.restype = i64
    lib.few_spike_binary.argtypes = [ptr, ptr, i64, i64, i64, i32, i32, ptr, i64]
    lib.few_spike_binary.restype = i64
    lib.few_spike_ternary.argtypes = [ptr, ptr, i64, i64, i64, i32, i32, ptr, i64]
    lib.few_spike_ternary.restype = i64


class KernelsUnavailable(RuntimeWarning):
    """Warned once per process when the compiled loops cannot be built or loaded."""


def compiled_library() -> ctypes.CDLL | None:
    """The compiled loops, built on first use; None when disabled (``SPIKEC_KERNELS=torch``),
    when the cache is not private, or when no compiler works (``compiled_error()`` says why,
    and a ``KernelsUnavailable`` warning says so once)."""
    global _lib, _lib_error
    if os.environ.get("SPIKEC_KERNELS", "").lower() == "torch":
        return None
    with _lock:
        if _lib is None and _lib_error is None:
            try:
                _lib = load_library(cache_dir())
            except (RuntimeError, OSError) as e:
                _lib_error = str(e)
                warnings.warn(f"the compiled simulator kernels are unavailable ({_lib_error}); the simulator "
                              "takes its slower torch path (same results; SPIKEC_KERNELS=torch silences this)",
                              KernelsUnavailable, stacklevel=2)
        return _lib


def compiled_error() -> str | None:
    """Why the compiled loops are unavailable (None when they are, or were not tried)."""
    return _lib_error
