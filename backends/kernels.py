"""Compiled CPU kernels for the simulator's hot loops, and their plain-torch twins.

Each kernel is the same function as the neuron of ``spikec.core.neurons`` it
replaces, fused over the T steps: one pass over the neurons with the T-step loop
inside, membrane in registers, instead of T passes of several torch ops each. The
arithmetic is the same IEEE float32 operations in the same order (compiled with
``-ffp-contract=off``, no fast-math; ``-fno-trapping-math`` only lets floor vectorise),
so the spikes are identical; tests/test_sim_speed.py checks them against the reference.

* ``signed_if_constant``: ``SignedIF`` driven by a constant current. Returns the
  spike *count* per neuron (sum over the T steps) and, if asked, the spike train.
  A readout affine needs only the count, so no ``[T, ...]`` tensor is made.
* ``nir_if``: NIR ``IF`` (reset to ``v_reset``, strict threshold) on a constant or a
  time-series current; spikes come back as int8 (compact; 0/1).
* ``event_matmul``: ``spikes @ W.T + b`` for a small-integer spike matrix, as events:
  each non-zero spike adds (or subtracts) one row of ``W.T``. Pays when spikes are
  sparse (see ``SPARSE_CROSSOVER``); float sums run in another order than a dense
  GEMM, so results equal the dense product up to rounding (exactly when all partial
  sums are exact, e.g. weights on a dyadic grid).

The C source is compiled once per machine with the system C compiler into
``$SPIKEC_CACHE`` (default ``~/.cache/spikec``) and loaded with ctypes; work is split
over ``torch.get_num_threads()`` threads (ctypes releases the GIL). Without a
compiler, with ``SPIKEC_KERNELS=torch``, and for CUDA tensors, ``signed_if_constant``
runs its torch twin below and the others return None, so that the simulator takes its
torch path (same spikes, slower).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SPARSE_CROSSOVER = 0.3
"""Spike density (non-zero fraction of a spike matrix) below which ``event_matmul`` is
used instead of the dense float32 GEMM on CPU. ``benchmarks/sim_speed.py`` measures the
crossover (``crossover`` in its JSON): on the 2-core AVX2 development machine events stop
paying between densities 0.3 and 0.4 for 768x3072 layers; 0.3 keeps a margin."""

_SOURCE = r"""
#include <stdint.h>
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define BLK 512

/* SignedIF driven by the constant current x (rows [r0, r1) of x [rows, F]) for T steps, in
   threshold units u = x / theta (one IEEE division, as torch does it), membrane from v_init:
   v += u; s = clamp(floor(v), low, high); v -= s. count[i] = sum_t s_t; train (if not NULL)
   gets s_t at train[t*tstride + i]. Returns sum |s| over these neurons and steps. */
int64_t signed_if_constant(const float* x, const float* theta, int64_t F, int64_t r0, int64_t r1, int T,
                           float low, float high, float v_init, float* count, int8_t* train, int64_t tstride) {
    int64_t total = 0;
    float u[BLK], v[BLK], c[BLK], a[BLK];
    for (int64_t r = r0; r < r1; ++r) {
        for (int64_t f0 = 0; f0 < F; f0 += BLK) {
            int64_t m = F - f0 < BLK ? F - f0 : BLK;
            int64_t i0 = r * F + f0;
            for (int64_t i = 0; i < m; ++i) {
                u[i] = x[i0 + i] / theta[f0 + i];
                v[i] = v_init; c[i] = 0.0f; a[i] = 0.0f;
            }
            if (train) {
                for (int t = 0; t < T; ++t) {
                    int8_t* tr = train + (int64_t)t * tstride + i0;
                    for (int64_t i = 0; i < m; ++i) {
                        float y = v[i] + u[i];
                        float s = floorf(y);
                        s = s < low ? low : s;
                        s = s > high ? high : s;
                        v[i] = y - s;
                        c[i] += s;
                        a[i] += fabsf(s);
                        tr[i] = (int8_t)s;
                    }
                }
            } else {
                for (int t = 0; t < T; ++t) {
                    for (int64_t i = 0; i < m; ++i) {
                        float y = v[i] + u[i];
                        float s = floorf(y);
                        s = s < low ? low : s;
                        s = s > high ? high : s;
                        v[i] = y - s;
                        c[i] += s;
                        a[i] += fabsf(s);
                    }
                }
            }
            int64_t acc = 0;  /* a[i] holds an exact integer (below 2^24) */
            for (int64_t i = 0; i < m; ++i) acc += (int64_t)a[i];
            total += acc;
            if (count) for (int64_t i = 0; i < m; ++i) count[i0 + i] = c[i];
        }
    }
    return total;
}

/* NIR IF: v += r*I; s = v > th; v = s ? reset : v. cur[t*ctstride + i] (ctstride 0: constant).
   r, th, reset: per-neuron arrays of length n. spikes[t*tstride + i] = s (0/1). Returns the spike total. */
int64_t nir_if(const float* cur, int64_t ctstride, int64_t n, int T, const float* r, const float* th,
               const float* reset, int8_t* spikes, int64_t tstride) {
    int64_t total = 0;
    float v[BLK];
    for (int64_t i0 = 0; i0 < n; i0 += BLK) {
        int64_t m = n - i0 < BLK ? n - i0 : BLK;
        int64_t cnt = 0;
        for (int64_t i = 0; i < m; ++i) v[i] = 0.0f;
        for (int t = 0; t < T; ++t) {
            const float* c = cur + (int64_t)t * ctstride + i0;
            int8_t* sp = spikes + (int64_t)t * tstride + i0;
            for (int64_t i = 0; i < m; ++i) {
                float ri = r[i0 + i] * c[i];
                float x = v[i] + ri;
                int s = x > th[i0 + i];
                v[i] = s ? reset[i0 + i] : x;
                sp[i] = (int8_t)s;
                cnt += s;
            }
        }
        total += cnt;
    }
    return total;
}

/* Event-driven y = s @ W.T + bias for rows [m0, m1) of the int8 spike matrix s [M, K], K <= 65536.
   wp: W packed in column tiles of TW outputs, wp[tile][k][c] = W[tile*TW + c][k] (zero padded),
   so that one event reads TW contiguous floats; a row's TW outputs accumulate in registers
   (events alternate between two sets of accumulators; a spike of 1 adds, any other value v
   adds v*w). */
#define TW 32

/* Lists row sr's events (input index, value); returns their number; *other |= a value != 1. */
static int64_t list_events(const int8_t* sr, int64_t K, uint16_t* idx, int8_t* val, int* other) {
    int64_t e = 0, k = 0;
    int o = 0;
#ifdef __AVX2__
    const __m256i zero = _mm256_setzero_si256();
    for (; k + 32 <= K; k += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(sr + k));
        uint32_t mask = ~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, zero));
        while (mask) {
            int b = __builtin_ctz(mask);
            idx[e] = (uint16_t)(k + b); val[e] = sr[k + b]; o |= sr[k + b] != 1; ++e;
            mask &= mask - 1;
        }
    }
#endif
    for (; k < K; ++k) if (sr[k]) { idx[e] = (uint16_t)k; val[e] = sr[k]; o |= sr[k] != 1; ++e; }
    *other |= o;
    return e;
}

/* counts[m] = number of non-zeros in row m of s [M, K], rows [m0, m1). */
void count_events(const int8_t* s, int64_t K, int64_t m0, int64_t m1, int64_t* counts) {
    for (int64_t m = m0; m < m1; ++m) {
        const int8_t* sr = s + m * K;
        int64_t c = 0, k = 0;
#ifdef __AVX2__
        const __m256i zero = _mm256_setzero_si256();
        for (; k + 32 <= K; k += 32) {
            __m256i v = _mm256_loadu_si256((const __m256i*)(sr + k));
            c += 32 - __builtin_popcount((uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, zero)));
        }
#endif
        for (; k < K; ++k) c += sr[k] != 0;
        counts[m] = c;
    }
}

/* out[0..width) = bias + (or, with accumulate, out +=) the sum of W-tile rows over n events. */
static void row_tile(float* out, int64_t width, const float* bias, const float* wt, const uint16_t* idx,
                     const int8_t* val, int64_t n, int binary, int accumulate) {
#if defined(__AVX2__)
#define NV (TW / 8)
    __m256 a[NV], b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) { a[v] = _mm256_setzero_ps(); b[v] = a[v]; }
    int64_t q = 0;
    if (binary) {
        for (; q + 1 < n; q += 2) {
            const float* w = wt + (int64_t)idx[q] * TW;
            const float* x = wt + (int64_t)idx[q + 1] * TW;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                a[v] = _mm256_add_ps(a[v], _mm256_loadu_ps(w + 8 * v));
                b[v] = _mm256_add_ps(b[v], _mm256_loadu_ps(x + 8 * v));
            }
        }
    } else {
        for (; q + 1 < n; q += 2) {
            const float* w = wt + (int64_t)idx[q] * TW;
            const float* x = wt + (int64_t)idx[q + 1] * TW;
            __m256 f = _mm256_set1_ps((float)val[q]), g = _mm256_set1_ps((float)val[q + 1]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(f, _mm256_loadu_ps(w + 8 * v)));
                b[v] = _mm256_add_ps(b[v], _mm256_mul_ps(g, _mm256_loadu_ps(x + 8 * v)));
            }
        }
    }
    if (q < n) {
        const float* w = wt + (int64_t)idx[q] * TW;
        __m256 f = _mm256_set1_ps((float)val[q]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(f, _mm256_loadu_ps(w + 8 * v)));
    }
    float acc[TW];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(acc + 8 * v, _mm256_add_ps(a[v], b[v]));
#undef NV
#else
    float acc[TW];
    (void)binary;
    for (int c = 0; c < TW; ++c) acc[c] = 0.0f;
    for (int64_t q = 0; q < n; ++q) {
        const float* w = wt + (int64_t)idx[q] * TW;
        float f = (float)val[q];
        for (int c = 0; c < TW; ++c) acc[c] += f * w[c];
    }
#endif
    if (accumulate) for (int64_t c = 0; c < width; ++c) out[c] += acc[c];
    else if (bias) for (int64_t c = 0; c < width; ++c) out[c] = bias[c] + acc[c];
    else for (int64_t c = 0; c < width; ++c) out[c] = acc[c];
}

/* Rows [m0, m1): list the events of each row at idx/val + start[m] (start: [M+1] offsets of
   the non-zeros, computed by the caller), then apply each column tile of W to every row of the
   range, so that a tile is loaded into cache once per thread, not once per row. Inputs go in
   chunks of kc (a kc x TW block of W stays in L2 even when both cores share one); cuts[m*C + c]
   (scratch, C = ceil(K/kc) + 1 per row) marks where row m's events of chunk c begin. */
void event_matmul(const int8_t* s, int64_t K, const float* wp, int64_t N, const float* bias, float* y,
                  int64_t m0, int64_t m1, const int64_t* start, uint16_t* idx, int8_t* val, int64_t kc,
                  int64_t* cuts) {
    int64_t tiles = (N + TW - 1) / TW;
    int64_t chunks = (K + kc - 1) / kc, C = chunks + 1;
    int other = 0;
    for (int64_t m = m0; m < m1; ++m) {
        int64_t e0 = start[m];
        int64_t n = list_events(s + m * K, K, idx + e0, val + e0, &other);
        int64_t* cut = cuts + (m - m0) * C;
        int64_t q = 0;
        for (int64_t c = 0; c < chunks; ++c) {
            cut[c] = e0 + q;
            while (q < n && idx[e0 + q] < (c + 1) * kc) ++q;
        }
        cut[chunks] = e0 + n;
    }
    for (int64_t tile = 0; tile < tiles; ++tile) {
        const float* wt = wp + tile * K * TW;
        int64_t j0 = tile * TW;
        int64_t width = N - j0 < TW ? N - j0 : TW;
        for (int64_t c = 0; c < chunks; ++c)
            for (int64_t m = m0; m < m1; ++m) {
                const int64_t* cut = cuts + (m - m0) * C;
                row_tile(y + m * N + j0, width, bias ? bias + j0 : 0, wt, idx + cut[c], val + cut[c],
                         cut[c + 1] - cut[c], !other, c > 0);
            }
    }
}

/* out[i] = (int8)x[i] when every x[i] is an integer in [-127, 127]; returns the number of
   non-zeros, or -1 (stopping early) at the first value that is not such an integer. */
int64_t to_spikes(const float* x, int64_t n, int8_t* out) {
    int64_t nnz = 0;
    for (int64_t i0 = 0; i0 < n; i0 += BLK) {
        int64_t m = n - i0 < BLK ? n - i0 : BLK;
        int bad = 0;
        for (int64_t i = 0; i < m; ++i) {
            float v = x[i0 + i];
            bad |= !(v == floorf(v) && v >= -127.0f && v <= 127.0f);
            out[i0 + i] = (int8_t)(bad ? 0 : v);
            nnz += v != 0.0f;
        }
        if (bad) return -1;
    }
    return nnz;
}
"""

_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"]
_ARCH_FLAGS = (["-march=native"], [])  # native first; a compiler that rejects it gets the default

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_pool)


def _cpu_signature() -> str:
    """What a -march=native build depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))][:2]
        return "\n".join(keep)
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("SPIKEC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spikec")
    return Path(root) / "kernels"


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _build() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    key = hashlib.sha256("\0".join([_SOURCE, cc, " ".join(_FLAGS), _cpu_signature(), platform.machine()])
                         .encode()).hexdigest()[:16]
    directory = _cache_dir()
    target = directory / f"simkernels-{key}.so"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            src = Path(tmp) / "simkernels.c"
            src.write_text(_SOURCE)
            out = Path(tmp) / "simkernels.so"
            errors = []
            for arch in _ARCH_FLAGS:
                proc = subprocess.run([cc, *_FLAGS, *arch, str(src), "-o", str(out), "-lm"],
                                      capture_output=True, text=True)
                if proc.returncode == 0:
                    break
                errors.append(proc.stderr.strip()[-500:])
            else:
                raise RuntimeError(f"compiling the simulator kernels failed: {errors[-1]}")
            os.replace(out, target)  # atomic: concurrent builders each install a complete file
    lib = ctypes.CDLL(str(target))
    i64, i32, f32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.signed_if_constant.argtypes = [ptr, ptr, i64, i64, i64, i32, f32, f32, f32, ptr, ptr, i64]
    lib.signed_if_constant.restype = i64
    lib.nir_if.argtypes = [ptr, i64, i64, i32, ptr, ptr, ptr, ptr, i64]
    lib.nir_if.restype = i64
    lib.event_matmul.argtypes = [ptr, i64, ptr, i64, ptr, ptr, i64, i64, ptr, ptr, ptr, i64, ptr]
    lib.event_matmul.restype = None
    lib.count_events.argtypes = [ptr, i64, i64, i64, ptr]
    lib.to_spikes.argtypes = [ptr, i64, ptr]
    lib.to_spikes.restype = i64
    lib.count_events.restype = None
    return lib


def compiled_library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None when disabled (``SPIKEC_KERNELS=torch``)
    or when no compiler works (``compiled_error()`` says why)."""
    global _lib, _lib_error
    if os.environ.get("SPIKEC_KERNELS", "").lower() == "torch":
        return None
    with _lock:
        if _lib is None and _lib_error is None:
            try:
                _lib = _build()
            except (RuntimeError, OSError) as e:
                _lib_error = str(e)
        return _lib


def compiled_error() -> str | None:
    """Why the compiled kernels are unavailable (None when they are, or were not tried)."""
    return _lib_error


def _use_compiled(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    if any(t.device.type != "cpu" for t in tensors):
        return None
    return compiled_library()


def _split(fn, n: int, workers: int, align: int = 1) -> list:
    """Run ``fn(start, stop)`` over ``[0, n)`` cut into ``workers`` ranges (multiples of
    ``align``) on a shared thread pool; ctypes calls release the GIL. Returns the results."""
    global _pool
    if workers <= 1:
        return [fn(0, n)]
    if _pool is None or _pool._max_workers < workers:  # noqa: SLF001
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spikec-kernel")
    step = (n + workers - 1) // workers
    step = (step + align - 1) // align * align
    return [f.result() for f in [_pool.submit(fn, s, min(s + step, n)) for s in range(0, n, step)]]


def _parallel(fn, n: int, grain: int) -> list:
    """``fn`` over elements ``[0, n)`` on up to torch.get_num_threads() threads, at least
    ``grain`` elements each, in whole blocks of the C kernels' 512."""
    return _split(fn, n, max(1, min(torch.get_num_threads(), n // max(grain, 1))), align=512)


def _parallel_rows(fn, rows: int, grain: int = 1) -> list:
    """``fn`` over rows ``[0, rows)`` on up to torch.get_num_threads() threads, at least
    ``grain`` rows each."""
    return _split(fn, rows, max(1, min(torch.get_num_threads(), rows // max(grain, 1))))


def _ptr(t: torch.Tensor | None, offset: int = 0) -> int | None:
    return None if t is None else t.data_ptr() + offset * t.element_size()


# ---------------------------------------------------------------------------
# SignedIF with a constant current
# ---------------------------------------------------------------------------


def signed_if_constant(
    x: torch.Tensor, threshold: torch.Tensor, timesteps: int, max_spikes: int, signed: bool,
    v_init: float | torch.Tensor, *, train: bool = False, inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``SignedIF`` (``neurons.signed_if_encode``) driven by the constant current ``x``
    ``[..., F]`` with thresholds ``threshold [F]`` for ``timesteps`` steps.

    Returns ``(count, spikes, total)``: ``count`` float32 of ``x``'s shape, the sum of the
    spikes over the T steps (exact small integers); ``spikes`` the int8 train ``[T, ...]``
    when ``train`` (else None); ``total`` the sum of ``|spikes|``. ``inplace``: the counts
    may overwrite ``x`` (the caller no longer needs it), saving an allocation. A per-neuron
    ``v_init`` (tensor ``[F]``) runs the torch loop."""
    low = float(-max_spikes if signed else 0)
    high = float(max_spikes)
    lib = _use_compiled(x, threshold)
    if (lib is None or x.dtype != torch.float32 or threshold.dtype != torch.float32 or threshold.ndim != 1
            or x.ndim == 0 or x.shape[-1] != threshold.shape[0] or isinstance(v_init, torch.Tensor)):
        return _signed_if_constant_torch(x.float() / threshold.float(), timesteps, low, high, v_init, train)
    xc, theta = x.contiguous(), threshold.contiguous()
    features = theta.shape[0]
    rows = xc.numel() // max(features, 1)
    count = xc if inplace else torch.empty_like(xc)  # the kernel reads a block of x before writing it
    spikes = torch.empty((timesteps, *xc.shape), dtype=torch.int8) if train else None

    def run(start: int, stop: int) -> int:
        return lib.signed_if_constant(_ptr(xc), _ptr(theta), features, start, stop, timesteps, low, high, v_init,
                                      _ptr(count), _ptr(spikes), xc.numel())

    total = sum(_parallel_rows(run, rows, grain=max(1, (1 << 15) // max(features, 1))))
    return count, spikes, int(total)


def _signed_if_constant_torch(
    u: torch.Tensor, timesteps: int, low: float, high: float, v_init: float | torch.Tensor, train: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The same loop with torch ops on ``u = x / threshold`` (CUDA, other dtypes, no
    compiler); state is updated in place so nothing of size T is allocated unless ``train``."""
    u = u.float()
    if isinstance(v_init, torch.Tensor):  # per neuron [F]
        v = v_init.to(device=u.device, dtype=torch.float32).expand_as(u).clone()
    else:
        v = torch.full_like(u, v_init)
    count = torch.zeros_like(u)
    total = torch.zeros((), dtype=torch.float64, device=u.device)
    spikes = torch.empty((timesteps, *u.shape), dtype=torch.int8, device=u.device) if train else None
    s = torch.empty_like(u)
    for t in range(timesteps):
        v.add_(u)
        torch.floor(v, out=s)
        s.clamp_(low, high)
        v.sub_(s)
        count.add_(s)
        total += s.abs().sum(dtype=torch.float64)
        if spikes is not None:
            spikes[t] = s.to(torch.int8)
    return count, spikes, int(round(float(total)))


# ---------------------------------------------------------------------------
# NIR IF
# ---------------------------------------------------------------------------


def nir_if(
    current: torch.Tensor, series: bool, timesteps: int, r: torch.Tensor, v_threshold: torch.Tensor,
    v_reset: torch.Tensor,
) -> tuple[torch.Tensor, int] | None:
    """NIR ``IF`` (``neurons.nir_if_step``) over T steps of ``current`` (``[T, ...]`` when
    ``series``, else constant), membrane from 0. Returns ``(spikes int8 [T, ...], total)``,
    or None when the compiled kernel cannot take these tensors (then use the torch loop)."""
    lib = _use_compiled(current, r, v_threshold, v_reset)
    if lib is None or any(t.dtype != torch.float32 for t in (current, r, v_threshold, v_reset)):
        return None
    shape = current.shape[1:] if series else current.shape
    try:
        params = [p.expand(shape).contiguous() for p in (r, v_threshold, v_reset)]
    except RuntimeError:
        return None  # parameters that do not broadcast to the neurons' shape
    cur = current.contiguous()
    n = params[0].numel()
    spikes = torch.empty((timesteps, *shape), dtype=torch.int8)
    ctstride = n if series else 0

    def run(start: int, stop: int) -> int:
        return lib.nir_if(_ptr(cur, start), ctstride, stop - start, timesteps, _ptr(params[0], start),
                          _ptr(params[1], start), _ptr(params[2], start), _ptr(spikes, start), n)

    total = sum(_parallel(run, n, grain=1 << 14))
    return spikes, int(total)


# ---------------------------------------------------------------------------
# event-driven matmul
# ---------------------------------------------------------------------------


TILE = 32  # TW in the C source
EVENT_BLOCK_BYTES = 96 * 1024  # a block of W the event kernel keeps in L2 (K chunk x 32 outputs)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight [N, K]`` -> the tile layout ``event_matmul`` reads: ``[ceil(N/32), K, 32]``,
    ``packed[t, k, c] = weight[32 t + c, k]`` (zero padded). Pack once per layer."""
    n, k = weight.shape
    tiles = (n + TILE - 1) // TILE
    padded = torch.zeros((tiles * TILE, k), dtype=torch.float32, device=weight.device)
    padded[:n] = weight
    return padded.view(tiles, TILE, k).transpose(1, 2).contiguous()


def event_matmul(
    spikes: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """``spikes @ W.T + bias`` with ``spikes`` int8 ``[..., K]`` and ``packed =
    pack_weight(W)``, as events: every non-zero spike adds (1), subtracts (-1) or adds a
    multiple of one row of ``W.T``. Returns float32 ``[..., N]``, or None when the
    compiled kernel cannot take these tensors (then multiply densely)."""
    lib = _use_compiled(spikes, packed)
    if lib is None or spikes.dtype != torch.int8 or packed.dtype != torch.float32:
        return None
    if bias is not None and bias.dtype != torch.float32:
        return None
    k = packed.shape[1]
    if k > 1 << 16:
        return None  # event indices are 16-bit
    s = spikes.reshape(-1, k).contiguous()
    wp = packed.contiguous()
    b = None if bias is None else bias.contiguous()
    rows = s.shape[0]
    y = torch.empty((rows, out_features), dtype=torch.float32)
    counts = torch.empty(rows, dtype=torch.int64)
    _parallel_rows(lambda a, z: lib.count_events(_ptr(s), k, a, z, _ptr(counts)), rows)
    offsets = torch.zeros(rows + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    nnz = int(offsets[-1])
    idx = torch.empty(max(nnz, 1), dtype=torch.int16)  # read as uint16 by the kernel
    val = torch.empty(max(nnz, 1), dtype=torch.int8)

    chunk = max(TILE, (EVENT_BLOCK_BYTES // (4 * TILE)) // TILE * TILE)  # inputs per L2-resident block of W
    per_row = (k + chunk - 1) // chunk + 1

    def run(start: int, stop: int) -> None:
        cuts = torch.empty((stop - start) * per_row, dtype=torch.int64)
        lib.event_matmul(_ptr(s), k, _ptr(wp), out_features, _ptr(b), _ptr(y), start, stop, _ptr(offsets),
                         _ptr(idx), _ptr(val), chunk, _ptr(cuts))

    _parallel_rows(run, rows)
    return y.reshape(*spikes.shape[:-1], out_features)


def as_spikes(x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``x`` as an int8 spike tensor when every value is an integer in [-127, 127] (spike
    trains handed over as floats, e.g. a graph's input), with its number of non-zeros; None
    otherwise (found at the first other value, so real-valued data costs next to nothing)."""
    lib = _use_compiled(x)
    if lib is None or x.dtype != torch.float32:
        return None
    xc = x.contiguous()
    out = torch.empty(xc.shape, dtype=torch.int8)
    n = xc.numel()

    def run(start: int, stop: int) -> int:
        return lib.to_spikes(_ptr(xc, start), stop - start, _ptr(out, start))

    parts = _parallel(run, n, grain=1 << 16)
    if any(p < 0 for p in parts):
        return None
    return out, int(sum(parts))


def count_nonzero(spikes: torch.Tensor) -> int:
    """Number of non-zero spikes (int8 on CPU: one vectorised pass; torch's own reduction
    over int8 rows is ~10x slower)."""
    lib = _use_compiled(spikes)
    if lib is None or spikes.dtype != torch.int8 or spikes.numel() == 0:
        return int(torch.count_nonzero(spikes))
    s = spikes.contiguous().view(-1, spikes.shape[-1]) if spikes.ndim > 0 else spikes.view(1, 1)
    rows, k = s.shape
    counts = torch.empty(rows, dtype=torch.int64)
    _parallel_rows(lambda a, z: lib.count_events(_ptr(s), k, a, z, _ptr(counts)), rows)
    return int(counts.sum())
