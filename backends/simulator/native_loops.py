"""The simulator's hot loops compiled to native code (C, via ctypes), and their plain-torch twins.

Each kernel is the same function as the neuron of ``spikec.core.neurons`` it
replaces, fused over the T steps: one pass over the neurons with the T-step loop
inside, membrane in registers, instead of T passes of several torch ops each. The
arithmetic is the same IEEE float32 operations in the same order (compiled with
``-ffp-contract=off``, no fast-math; ``-fno-trapping-math`` only lets floor vectorise),
so the spikes are identical; tests/test_sim_speed.py checks them against the reference.

* ``signed_if_constant``: ``SignedIF`` driven by a constant current. Returns the
  spike *count* per neuron (sum over the T steps) and, if asked, the spike train.
  A readout affine needs only the count, so no ``[T, ...]`` tensor is made.
* ``few_spike_counts``: few-spike neurons (binary or balanced-ternary digits) driven by a
  constant current, as a fused readout reads them: per-group counts and the spike total,
  no spike train (``few_spike.binary_code`` / ``ternary_code`` in one pass).
* ``nir_if``: NIR ``IF`` (reset to ``v_reset``, strict threshold) on a constant or a
  time-series current; spikes come back as int8 (compact; 0/1).
* ``event_matmul``: ``spikes @ W.T + b`` for a small-integer spike matrix, as events:
  each non-zero spike adds (or subtracts) one row of ``W.T``. Pays when spikes are
  sparse (see ``SPARSE_CROSSOVER``); float sums run in another order than a dense
  GEMM, so results equal the dense product up to rounding, and bit for bit when every
  partial sum is exact (e.g. weights on a dyadic grid): ``exact_event_limit`` proves
  that for a layer.

The C source (``native_source``) is compiled once per machine by ``native_build`` into a
private cache (``$SPIKEC_CACHE/kernels``, default ``~/.cache/spikec/kernels``; owner- and
mode-checked, see there) and loaded with ctypes; work is split
over ``torch.get_num_threads()`` threads (ctypes releases the GIL). Without a
compiler, with ``SPIKEC_KERNELS=torch``, and for CUDA tensors, ``signed_if_constant``
runs its torch twin below and the others return None, so that the simulator takes its
torch path (same spikes, slower).
"""

from __future__ import annotations

import ctypes
import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from spikec.core import few_spike

from . import native_build

SPARSE_CROSSOVER = 0.3
"""Spike density (non-zero fraction of a spike matrix) below which ``event_matmul`` is
used instead of the dense float32 GEMM on CPU. ``benchmarks/sim_speed.py`` measures the
crossover (``crossover`` in its JSON): on the 2-core AVX2 development machine events stop
paying between densities 0.3 and 0.4 for 768x3072 layers; 0.3 keeps a margin."""

_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_pool)


def _use_compiled(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    if any(t.device.type != "cpu" for t in tensors):
        return None
    return native_build.compiled_library()


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
        return signed_if_constant_torch(x.float() / threshold.float(), timesteps, low, high, v_init, train)
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


def signed_if_constant_torch(
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
# few-spike neurons (counts only)
# ---------------------------------------------------------------------------


def few_spike_counts(
    x: torch.Tensor, threshold: torch.Tensor, timesteps: int, steps: int, radix: int,
) -> tuple[torch.Tensor, int] | None:
    """Few-spike neurons driven by the constant current ``x [..., F]`` (thresholds ``[F]``), binary
    digits (``radix`` 2, not signed digits) or balanced ternary (3), as a fused readout needs them:
    ``(group counts float64 [G, ..., F], total spikes)`` with ``G = len(step_groups(timesteps))``,
    a code of ``steps`` steps (``1 .. timesteps``; later steps silent). The same numbers as
    ``few_spike.binary_code`` (padded with silent groups) and ``few_spike.ternary_code``, in one pass
    over the neurons. None when the compiled kernel cannot take these tensors (then use those)."""
    lib = _use_compiled(x, threshold)
    if (lib is None or x.dtype != torch.float32 or threshold.dtype != torch.float32 or threshold.ndim != 1
            or x.ndim == 0 or x.shape[-1] != threshold.shape[0] or radix not in (2, 3)):
        return None
    few_spike.check_steps(timesteps, radix)
    steps = few_spike.code_steps(timesteps, steps)
    xc, theta = x.contiguous(), threshold.contiguous()
    features = theta.shape[0]
    rows = xc.numel() // max(features, 1)
    groups = len(few_spike.step_groups(timesteps))
    counts = torch.empty((groups, *xc.shape), dtype=torch.float64)

    def run(start: int, stop: int) -> int:
        if radix == 3:
            return lib.few_spike_ternary(_ptr(xc), _ptr(theta), features, start, stop, timesteps, steps,
                                         _ptr(counts), xc.numel())
        return lib.few_spike_binary(_ptr(xc), _ptr(theta), features, start, stop, steps, groups, _ptr(counts),
                                    xc.numel())

    total = sum(_parallel_rows(run, rows, grain=max(1, (1 << 15) // max(features, 1))))
    return counts, int(total)


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


def exact_event_limit(weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    """The largest spike magnitude ``m`` (0 to 127) for which ``event_matmul`` of this layer
    equals the dense ``F.linear(spikes.float(), weight, bias)`` bit for bit on every spike
    matrix with ``|spikes| <= m``, in any summation order (so whatever order the BLAS takes).

    Proof used: in row ``n`` every term ``s_k W[n, k]`` and ``b[n]`` is an integer multiple of
    ``2^q`` (``q``: the lowest set bit over the row's weights and bias); every partial sum is
    one too, of magnitude at most ``m sum_k |W[n, k]| + |b[n]|``, and such multiples are
    float32 numbers, exactly, up to ``2^(q + 24)``. When that bound holds every addition
    is exact, and all orders give the exact sum. 0 for other dtypes, non-finite values and
    grids below the normal range (so that flushing subnormals cannot matter either).
    ``weight [N, K]`` float32, ``bias [N]`` float32 or None."""
    if weight.dtype != torch.float32 or weight.ndim != 2 or (bias is not None and bias.dtype != torch.float32):
        return 0
    terms = weight if bias is None else torch.cat([weight, bias.reshape(-1, 1)], 1)
    if terms.numel() == 0:
        return 127
    if not bool(torch.isfinite(terms).all()):
        return 0
    bits = terms.contiguous().view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    significand = torch.where(exponent > 0, (bits & 0x7FFFFF) | 0x800000, bits & 0x7FFFFF)
    lowest = significand & -significand  # lowest set bit of the 24-bit significand (0 for zeros)
    lsb = torch.log2(lowest.double()) + exponent.clamp(min=1).double() - 150  # its exponent; -inf for zeros
    q = torch.where(significand > 0, lsb, torch.full_like(lsb, torch.inf)).amin(1)  # [N]; inf: an all-zero row
    if bool((q < -126).any()):
        return 0
    room = torch.exp2((q + 24).clamp(max=127))  # partial sums up to here are exact
    spread = weight.double().abs().sum(1)  # float64: rounds by far less than the margin below
    fixed = bias.double().abs() if bias is not None else torch.zeros_like(spread)
    limit = torch.where(spread > 0, (room - fixed) / spread.clamp(min=1e-300), torch.full_like(spread, torch.inf))
    worst = float(limit.amin())
    return 127 if worst >= 128 else max(0, math.floor(worst * (1 - 2**-20)))


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
