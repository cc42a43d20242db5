"""Batch ATC on an NVIDIA GPU with numba-cuda: the same numbers as `kernels.cpu`, from the same steps.

Imported only on demand (`compute_atc(..., backend="cuda")`): importing `kernels` never loads
numba.cuda. Without a GPU, the kernels run under numba-cuda's simulator when
`NUMBA_ENABLE_CUDASIM=1` is set before numba.cuda is first imported (tests do this). The design note
is docs/GPU.md. Roofline per symbol-bar (float64): ~1,030 flops (~1,700 FP64 instructions with
divisions expanded) and ~170 B of DRAM traffic (112 B compulsory), i.e. ceilings of ~1e10 (FP64)
and ~2e10 (HBM) symbol-bars/s on an H100 SXM; not yet measured on a GPU.

Layout
------
* Kernel 1, `family_kernel`: one thread per (symbol, family), family-major (thread g handles
  family g // m of symbol g % m, m = symbols in the slice), so the 32 threads of a warp run the same
  family code on 32 symbols (sorted by length, so they also finish together). Each thread starts at
  its own symbol's first valid bar (no padding) and advances its 9 lines bar by bar: MA step ->
  crossover -> equity -> Layer-1 sums, writing only the family's Layer-1 signal. Per-line state
  (previous MA, signal, equity, window sums, the HMA inner series ring) lives in
  `cuda.local.array`s; nothing of size (symbol, 54, time) exists.
* Kernel 2, `layer2_kernel`: one thread per symbol: the 6 Layer-2 equities from the signs of the
  Layer-1 signals, `Average_Signal` (shifted in strategy mode) and NaN outside the valid span.
* Both mirror `kernels.cpu.build_cpu_kernel` (`family_pass`, `layer2_and_average`) statement by
  statement, with the lane loop removed: same exact window-sum recomputation at a window's first bar
  and every ANCHOR bars from it (every bar for one-bar windows), LSMA with L <= 2 equal to x_t, the
  HMA ring, the host-computed growth factors and the same summation orders. All arithmetic is the
  step functions of `kernels.steps`, compiled as device functions.
* Host side: only the symbols with status OK are sent, in the caller's order (longest first), in
  slices of symbols that fit in device memory, trimmed to the slice's columns; a slice with times
  where a symbol has no bar (NaN inside its span) is compacted on the host and scattered back.

Floating-point contraction
--------------------------
NVVM contracts `a*b + c` into one fused multiply-add by default (`-fma=1`, even without
`fastmath`), which rounds once instead of twice; the Numba CPU kernel never contracts. numba-cuda
0.30 has no `cuda.jit` switch for it (NVIDIA/numba-cuda#118, PR #839), so the kernels here are
compiled with NVVM's `-fma=0` through a small hook on `numba.cuda.cudadrv.nvvm.compile_ir` that adds
the option only while this module compiles its own kernels (thread-local, other kernels in the
process are untouched), and with `lto=False` so the PTX (with `mul.rn`/`add.rn`, which ptxas may not
fuse) is what runs. With contraction off, every operation is a correctly rounded IEEE add, sub, mul
or div in the CPU's order, so GPU and CPU results are expected to be bit-identical; the tests keep
the 1e-12 bound of the issue, and `tests/test_cuda.py` checks the PTX and the bit identity on a
real GPU. The cost is a few percent of FP64 issue slots on FMA-able pairs; set `ATC_CUDA_FMA=1` to
allow contraction (results then differ from the CPU in the last bits, still far inside 1e-12 on
*_S and Average_Signal, and a *_Signal can flip only if a Layer-1 ratio lands within an ulp of a
rounding midpoint). If the hook cannot be installed (a numba-cuda without `nvvm.compile_ir`), the
kernels compile with the default and `fma_contraction()` says so.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda
from numba.cuda.core import config as cuda_config

from kernels.cpu import ANCHOR
from kernels.steps import build_steps

THREADS_PER_BLOCK = 128
"""Threads per block of both kernels (4 warps; the kernels use no shared memory)."""

SQ_MAX = 64
"""Largest HMA inner ring (isqrt of the HMA length) the kernel is built for: HMA lengths < 65**2.
The ring is sized per call to the next power of two of the longest one actually needed."""

N_OUT = 13

SLICE_SYMBOLS: int | None = None
"""Upper bound on symbols per device slice (None: as many as fit in 70% of free device memory)."""

SIMULATOR = bool(cuda_config.ENABLE_CUDASIM)
"""True when numba.cuda runs its (pure Python, slow) simulator instead of a GPU."""

SIMULATOR_THREADS_PER_BLOCK = 1
"""Block size under the simulator. It runs every thread of a block as a Python thread while the
launching thread polls them in a loop that competes for the GIL (profiled: ~70% of samples in the
poll); with 128 threads a 3-symbol test took minutes. The kernels use no shared memory or
synchronisation, so one thread per block computes the same thing without the contention."""

_KERNEL_OPTS = {} if SIMULATOR else {"lto": False}
"""lto=False: NVVM's PTX (compiled with -fma=0) is what runs; the simulator's jit takes no `lto`."""

ALLOW_FMA = os.environ.get("ATC_CUDA_FMA", "0") == "1"
"""Default for FMA contraction (off: bit-identical to the CPU kernel; see the module docstring)."""


# ---- FMA control --------------------------------------------------------------------------------

_no_fma = threading.local()
_hook_state = {"installed": None}


def _install_fma_hook() -> bool:
    """Wrap nvvm.compile_ir once so that compilations flagged by `_no_fma.on` get `-fma=0`."""
    if _hook_state["installed"] is not None:
        return _hook_state["installed"]
    try:
        from numba.cuda.cudadrv import nvvm
    except ImportError:  # pragma: no cover - simulator or exotic build
        _hook_state["installed"] = False
        return False
    original = getattr(nvvm, "compile_ir", None)
    if original is None:  # pragma: no cover - future numba-cuda
        _hook_state["installed"] = False
        return False
    if not getattr(original, "_atc_fma_hook", False):
        def compile_ir(llvmir, **options):
            if getattr(_no_fma, "on", False) and not options.get("fastmath"):
                options.setdefault("fma", False)
            return original(llvmir, **options)

        compile_ir._atc_fma_hook = True
        nvvm.compile_ir = compile_ir
    _hook_state["installed"] = True
    return True


class _FmaOff:
    """Context in which kernels compiled by this thread get NVVM's `-fma=0`."""

    def __init__(self, active: bool):
        self.active = active

    def __enter__(self):
        self.prev = getattr(_no_fma, "on", False)
        _no_fma.on = self.active
        return self

    def __exit__(self, *exc):
        _no_fma.on = self.prev
        return False


def fma_contraction(allow_fma: bool | None = None) -> bool:
    """Whether the kernels are (or will be) compiled with FMA contraction."""
    allow = ALLOW_FMA if allow_fma is None else allow_fma
    if SIMULATOR:
        return False  # the simulator evaluates each operation in numpy, one rounding each
    return allow or not _install_fma_hook()


# ---- availability ------------------------------------------------------------------------------


def gpu_status() -> tuple[bool, str]:
    """(usable, description): a real GPU, or the simulator, or why neither works."""
    if SIMULATOR:
        return True, "numba-cuda simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        if not cuda.is_available():
            return False, "numba.cuda.is_available() is False (no NVIDIA GPU or no working CUDA driver)"
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        return True, f"{name} (compute capability {dev.compute_capability[0]}.{dev.compute_capability[1]})"
    except Exception as exc:  # driver errors come in many types
        return False, f"CUDA initialisation failed: {exc}"


# ---- kernels -----------------------------------------------------------------------------------


def ring_size(line_lens: np.ndarray) -> int:
    """Slots of the HMA ring buffer needed for these lines (a power of two >= the longest sq)."""
    need = int(line_lens[9:18, 2].max())
    if need > SQ_MAX:
        from kernels.api import ATCBackendError

        raise ATCBackendError(f"HMA length {int(line_lens[9:18, 0].max())} needs an inner ring of {need} "
                         f"slots; the CUDA kernel is built for at most {SQ_MAX} (HMA lengths < "
                         f"{(SQ_MAX + 1) ** 2}); use backend='cpu'")
    size = 1
    while size < need:
        size *= 2
    return size


@lru_cache(maxsize=None)
def build_cuda_kernels(dtype_name: str, sq_slots: int, allow_fma: bool = False) -> SimpleNamespace:
    """Compile-on-first-launch kernels for one float type and one HMA ring size."""
    ft = np.dtype(dtype_name).type
    F = numba.from_dtype(np.dtype(dtype_name))
    st = build_steps(cuda.jit(device=True), ft)
    AM = ANCHOR - 1
    SQ = sq_slots
    RING = 9 * sq_slots
    NAN = ft(np.nan)
    ZERO = ft(0.0)
    ONE = ft(1.0)
    ema_step = st.ema_step
    dema_value = st.dema_value
    weighted_slide = st.weighted_slide
    wma_value = st.wma_value
    hma_diff = st.hma_diff
    lsma_value = st.lsma_value
    kama_step = st.kama_step
    cross_step = st.cross_step
    equity_step = st.equity_step
    start_equity = st.start_equity
    round2 = st.round2
    cut = st.cut
    ratio_or_zero = st.ratio_or_zero

    @cuda.jit(device=True)
    def window_sums(x, i, c, L):
        """Exact sums of the window of length L ending at column c: (sum x, sum (pos+1)*x)."""
        S = ZERO
        W = ZERO
        for jj in range(L):
            wj = ft(jj + 1)
            v = x[i, c - L + 1 + jj]
            S += v
            W += wj * v
        return S, W

    @cuda.jit(shared_memory_carveout="MaxL1", **_KERNEL_OPTS)
    def family_kernel(x, p, col0, nbars, growth, lens, coef, cutout, keep, out):
        """Layer-1 signal of family g // m for symbol g % m into out[fam, i, col0[i]:col0[i]+n]."""
        m = x.shape[0]
        g = cuda.grid(1)
        if g >= 6 * m:
            return
        fam = g // m
        i = g - fam * m
        c0 = col0[i]
        T = nbars[i]
        mprev = cuda.local.array(9, F)
        s = cuda.local.array(9, F)
        e = cuda.local.array(9, F)
        S1 = cuda.local.array(9, F)
        W1 = cuda.local.array(9, F)
        S2 = cuda.local.array(9, F)
        W2 = cuda.local.array(9, F)
        S3 = cuda.local.array(9, F)
        W3 = cuda.local.array(9, F)
        ring = cuda.local.array(RING, F)
        for j in range(9):
            mprev[j] = NAN
            s[j] = ZERO
            e[j] = ZERO
            S1[j] = ZERO
            W1[j] = ZERO
            S2[j] = ZERO
            W2[j] = ZERO
            S3[j] = ZERO
            W3[j] = ZERO
        for k in range(RING):
            ring[k] = ZERO
        for t in range(T):
            c = c0 + t
            xt = x[i, c]
            xprev = NAN
            r = NAN
            if t > 0:
                xprev = x[i, c - 1]
                r = ((p[i, c] - p[i, c - 1]) / p[i, c - 1]) * growth[t]
            num = ZERO
            den = ZERO
            for j in range(9):
                ln = fam * 9 + j
                L = lens[ln, 0]
                # ---- the MA of this line at bar t ----
                if fam == 5:  # KAMA: defined from bar 0
                    if t <= L - 1:
                        mv = x[i, c0]
                    else:
                        if ((t - L) & AM) == 0:
                            acc = ZERO
                            for u in range(c - L + 1, c + 1):
                                acc += abs(x[i, u] - x[i, u - 1])
                            S1[j] = acc
                        else:
                            S1[j] = (S1[j] + abs(xt - xprev) - abs(x[i, c - L] - x[i, c - L - 1]))
                        mv = kama_step(mprev[j], xt, x[i, c - L], S1[j])
                elif fam == 1:  # HMA: WMA(2*WMA(x, half) - WMA(x, L), sq), inner series in a ring
                    half = lens[ln, 1]
                    sq = lens[ln, 2]
                    if t >= half - 1:
                        if half == 1 or ((t - half + 1) & AM) == 0:
                            S1[j], W1[j] = window_sums(x, i, c, half)
                        else:
                            S1[j], W1[j] = weighted_slide(S1[j], W1[j], xt, x[i, c - half], coef[ln, 1])
                    if t < L - 1:
                        mv = NAN
                    else:
                        if L == 1 or ((t - L + 1) & AM) == 0:
                            S2[j], W2[j] = window_sums(x, i, c, L)
                        else:
                            S2[j], W2[j] = weighted_slide(S2[j], W2[j], xt, x[i, c - L], coef[ln, 0])
                        slot = j * SQ + t % sq
                        # d_{t-sq} sits in this slot until it is overwritten with d_t
                        d_old = ring[slot]
                        d_new = hma_diff(wma_value(W1[j], coef[ln, 4]), wma_value(W2[j], coef[ln, 3]))
                        ring[slot] = d_new
                        first = L - 1 + sq - 1
                        if t < first:
                            mv = NAN
                        else:
                            if sq == 1 or ((t - first) & AM) == 0:
                                acc_s = ZERO
                                acc_w = ZERO
                                for u in range(sq):
                                    wi = ft(u + 1)
                                    v = ring[j * SQ + (t - sq + 1 + u) % sq]
                                    acc_s += v
                                    acc_w += wi * v
                                S3[j] = acc_s
                                W3[j] = acc_w
                            else:
                                S3[j], W3[j] = weighted_slide(S3[j], W3[j], d_new, d_old, coef[ln, 2])
                            mv = wma_value(W3[j], coef[ln, 5])
                elif t < L - 1:
                    mv = NAN
                elif fam == 0 or fam == 3:  # EMA / DEMA (S1 = e1, W1 = e2)
                    if t == L - 1:
                        acc = ZERO
                        for u in range(L):
                            acc += x[i, c0 + u]
                        S1[j] = acc / ft(L)
                        W1[j] = S1[j]
                    elif fam == 0:
                        S1[j] = ema_step(S1[j], xt, coef[ln, 0], coef[ln, 1])
                    else:
                        e1 = ema_step(S1[j], xt, coef[ln, 0], coef[ln, 1])
                        S1[j] = e1
                        W1[j] = ema_step(W1[j], e1, coef[ln, 0], coef[ln, 1])
                    if fam == 0:
                        mv = S1[j]
                    else:
                        mv = dema_value(S1[j], W1[j])
                elif fam == 4 and L <= 2:  # a line through 1 or 2 points passes through x_t
                    mv = xt
                else:  # WMA (2) / LSMA (4) from the same window sums
                    if L == 1 or ((t - L + 1) & AM) == 0:
                        S1[j], W1[j] = window_sums(x, i, c, L)
                    else:
                        S1[j], W1[j] = weighted_slide(S1[j], W1[j], xt, x[i, c - L], coef[ln, 0])
                    if fam == 2:
                        mv = wma_value(W1[j], coef[ln, 1])
                    else:
                        mv = lsma_value(S1[j], W1[j], coef[ln, 0], coef[ln, 1], coef[ln, 2])
                # ---- crossover state, equity, Layer-1 sums ----
                if t == 0:
                    pass  # no previous bar: the state stays 0
                elif t <= cutout:
                    s[j] = cross_step(s[j], xt, mv, xprev, mprev[j])
                else:
                    sp = s[j]
                    sn = cross_step(sp, xt, mv, xprev, mprev[j])
                    en = equity_step(e[j], sp, r, keep)
                    s[j] = sn
                    e[j] = en
                    num += sn * en
                    den += en
                if t == cutout:
                    e[j] = start_equity(ONE)
                    num += s[j] * e[j]
                    den += e[j]
                mprev[j] = mv
            if t < cutout:
                out[fam, i, c] = NAN
            else:
                out[fam, i, c] = round2(num / den)

    @cuda.jit(**_KERNEL_OPTS)
    def layer2_kernel(p, col0, nbars, growth, weights, cutout, keep, short_thr, long_thr, strategy, out):
        """Layer 2, Average_Signal and the NaN outside the span, for symbol i (Layer 1 is in out[:6])."""
        m = p.shape[0]
        i = cuda.grid(1)
        if i >= m:
            return
        c0 = col0[i]
        T = nbars[i]
        width = p.shape[1]
        for ch in range(N_OUT):
            for c in range(c0):
                out[ch, i, c] = NAN
            for c in range(c0 + T, width):
                out[ch, i, c] = NAN
        eq = cuda.local.array(6, F)
        for f in range(6):
            eq[f] = NAN
        prev_avg = ZERO
        for t in range(T):
            c = c0 + t
            r = NAN
            if t > 0:
                r = ((p[i, c] - p[i, c - 1]) / p[i, c - 1]) * growth[t]
            num = ZERO
            den = ZERO
            for f in range(6):
                if t < cutout:
                    v = NAN
                elif t == cutout:
                    v = start_equity(weights[f])
                else:
                    v = equity_step(eq[f], out[f, i, c - 1], r, keep)
                eq[f] = v
                out[6 + f, i, c] = v
                num += cut(out[f, i, c], short_thr, long_thr) * v
                den += v
            avg = ratio_or_zero(num, den)
            if strategy:
                out[12, i, c] = prev_avg
                prev_avg = avg
            else:
                out[12, i, c] = avg

    def launch(d_x, d_p, d_col0, d_nbars, consts, d_out, stream=0):
        """Run both kernels on device arrays (no transfers, no synchronisation)."""
        m = d_x.shape[0]
        tpb = SIMULATOR_THREADS_PER_BLOCK if SIMULATOR else THREADS_PER_BLOCK
        with _FmaOff(not allow_fma and not SIMULATOR):
            family_kernel[(6 * m + tpb - 1) // tpb, tpb, stream](
                d_x, d_p, d_col0, d_nbars, consts.growth, consts.lens, consts.coef, consts.cutout,
                consts.keep, d_out)
            layer2_kernel[(m + tpb - 1) // tpb, tpb, stream](
                d_p, d_col0, d_nbars, consts.growth, consts.weights, consts.cutout, consts.keep,
                consts.short_thr, consts.long_thr, consts.strategy, d_out)

    if not allow_fma and not SIMULATOR:
        _install_fma_hook()
    return SimpleNamespace(family_kernel=family_kernel, layer2_kernel=layer2_kernel, launch=launch,
                           steps=st, ft=ft, sq_slots=sq_slots, allow_fma=allow_fma)


# ---- host side ---------------------------------------------------------------------------------


def device_constants(growth, line_lens, coef, weights, cutout, keep, short_thr, long_thr, strategy,
                     stream=0) -> SimpleNamespace:
    """Per-call constants on the device (the same host arrays the CPU kernel gets)."""
    return SimpleNamespace(
        growth=cuda.to_device(np.ascontiguousarray(growth), stream=stream),
        lens=cuda.to_device(np.ascontiguousarray(line_lens), stream=stream),
        coef=cuda.to_device(np.ascontiguousarray(coef), stream=stream),
        weights=cuda.to_device(np.ascontiguousarray(weights), stream=stream),
        cutout=int(cutout), keep=keep, short_thr=short_thr, long_thr=long_thr, strategy=bool(strategy))


def symbols_per_slice(width: int, itemsize: int, two_inputs: bool, n_symbols: int,
                      max_symbols: int | None = None, fraction: float = 0.7) -> int:
    """How many symbols of `width` bars fit in `fraction` of the free device memory at once."""
    per_symbol = width * itemsize * (N_OUT + (2 if two_inputs else 1)) + 16
    m = n_symbols
    if max_symbols is not None:
        m = min(m, max(1, int(max_symbols)))
    try:
        free, _total = cuda.current_context().get_memory_info()
    except Exception:  # pragma: no cover - simulator variants without memory info
        free = float("inf")
    if free != float("inf"):
        fit = int(free * fraction) // per_symbol
        if fit < 1:
            raise MemoryError(f"one symbol of {width} bars needs {per_symbol} bytes of device memory; "
                              f"{int(free)} are free")
        m = min(m, fit)
    return max(1, m)


def _own_bars(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, position in the row's compacted series) of every own bar (`mask` True)."""
    rows, cols = np.nonzero(mask)
    return rows, cols, np.cumsum(mask, axis=1)[rows, cols] - 1


def _compact(sub: np.ndarray, own, width: int, ft) -> np.ndarray:
    """Each row's own bars moved left, in order: the symbols' compacted series."""
    rows, cols, pos = own
    h = np.ones((sub.shape[0], width), ft)
    h[rows, pos] = sub[rows, cols]
    return h


def run_panel(panel, src_panel, same_src, order, starts, ends, lens, growth, line_lens, coef, weights,
              cutout, keep, short_thr, long_thr, strategy, out, *, max_symbols=None,
              allow_fma: bool | None = None) -> None:
    """Fill out[:, order, :] (13, n_symbols, n_bars) for the symbols in `order` (all status OK).

    Called by `kernels.api.compute_atc` after validation, with the same arguments the CPU kernel
    gets. Symbols go to the device in slices of at most `max_symbols` (and what fits in memory),
    each trimmed to the columns its symbols span. A slice where some symbol has no bar at some time
    inside its span (a NaN close, spec section 7) is compacted on the host first (each row's own
    bars moved left) and its outputs are placed back at the symbols' own times afterwards: the
    device kernels always see gap-free series.
    """
    ft = np.dtype(out.dtype)
    allow = ALLOW_FMA if allow_fma is None else bool(allow_fma)
    kern = build_cuda_kernels(ft.name, ring_size(line_lens), allow)
    stream = cuda.stream()
    consts = device_constants(growth, line_lens, coef, weights, cutout, keep, short_thr, long_thr,
                              strategy, stream=stream)
    order = np.asarray(order, np.int64)
    width_all = int(ends[order].max() - starts[order].min())
    m = symbols_per_slice(width_all, ft.itemsize, not same_src, len(order),
                          SLICE_SYMBOLS if max_symbols is None else max_symbols)
    for lo in range(0, len(order), m):
        idx = order[lo:lo + m]
        c_lo = int(starts[idx].min())
        c_hi = int(ends[idx].max())
        holes = bool(np.any(lens[idx] != ends[idx] - starts[idx]))
        if holes:
            own = _own_bars(~np.isnan(panel[idx, c_lo:c_hi]))
            width = int(lens[idx].max())
            h_x = _compact(src_panel[idx, c_lo:c_hi], own, width, ft)
            h_p = None if same_src else _compact(panel[idx, c_lo:c_hi], own, width, ft)
            col0 = np.zeros(len(idx), np.int64)
        else:
            width = c_hi - c_lo
            h_x = np.ascontiguousarray(src_panel[idx, c_lo:c_hi], dtype=ft)
            h_p = None if same_src else np.ascontiguousarray(panel[idx, c_lo:c_hi], dtype=ft)
            col0 = (starts[idx] - c_lo).astype(np.int64)
        d_x = cuda.to_device(h_x, stream=stream)
        d_p = d_x if same_src else cuda.to_device(h_p, stream=stream)
        d_col0 = cuda.to_device(col0, stream=stream)
        d_n = cuda.to_device(lens[idx].astype(np.int64), stream=stream)
        d_out = cuda.device_array((N_OUT, len(idx), width), ft, stream=stream)
        kern.launch(d_x, d_p, d_col0, d_n, consts, d_out, stream)
        if not holes and d_out.shape == out.shape and np.array_equal(idx, np.arange(out.shape[1])):
            d_out.copy_to_host(out, stream=stream)  # the whole panel in order: no host-side copy
            stream.synchronize()
            continue
        h_out = d_out.copy_to_host(stream=stream)
        stream.synchronize()
        if holes:
            rows, cols, pos = own
            placed = np.full((N_OUT, len(idx), c_hi - c_lo), np.nan, ft)
            placed[:, rows, cols] = h_out[:, rows, pos]
            h_out = placed
        out[:, idx, c_lo:c_hi] = h_out
        out[:, idx, :c_lo] = np.nan
        out[:, idx, c_hi:] = np.nan


class DevicePanel:
    """A panel of valid symbols kept on the device, for timing the kernels without transfers.

    `run()` launches both kernels and waits for them; `outputs()` copies the 13 outputs back as
    `(13, n_symbols, n_bars)`. Every row must be a full valid history (no NaN); this is the
    benchmark's path, `compute_atc(..., backend="cuda")` is the general one.
    """

    def __init__(self, panel, params, dtype=np.float64, allow_fma: bool | None = None):
        from kernels.api import growth_factors
        from kernels.cpu import line_tables
        from kernels.params import FAMILIES

        ft = np.dtype(dtype)
        host = np.ascontiguousarray(panel, dtype=ft)
        if host.ndim != 2 or not np.all(np.isfinite(host)) or np.any(host <= 0):
            raise ValueError("DevicePanel wants a 2-D panel of finite closes > 0")
        n_sym, n_bars = host.shape
        line_lens, coef = line_tables(params, ft)
        allow = ALLOW_FMA if allow_fma is None else bool(allow_fma)
        self.kern = build_cuda_kernels(ft.name, ring_size(line_lens), allow)
        self.stream = cuda.stream()
        self.consts = device_constants(
            growth_factors(params, n_bars, ft), line_lens, coef,
            np.array([params.weight(f) for f in FAMILIES], ft), params.cutout,
            ft.type(1.0 - params.dec), ft.type(params.short_threshold), ft.type(params.long_threshold),
            params.strategy_mode, stream=self.stream)
        self.d_x = cuda.to_device(host, stream=self.stream)
        self.d_col0 = cuda.to_device(np.zeros(n_sym, np.int64), stream=self.stream)
        self.d_n = cuda.to_device(np.full(n_sym, n_bars, np.int64), stream=self.stream)
        self.d_out = cuda.device_array((N_OUT, n_sym, n_bars), ft, stream=self.stream)
        self.stream.synchronize()

    def run(self) -> None:
        self.kern.launch(self.d_x, self.d_x, self.d_col0, self.d_n, self.consts, self.d_out, self.stream)
        self.stream.synchronize()

    def outputs(self) -> np.ndarray:
        h = self.d_out.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return h
