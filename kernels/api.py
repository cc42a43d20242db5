"""Public entry points: `compute_atc` on arrays and the pandas drop-in `compute_atc_signals`.

This layer validates inputs, decides per symbol whether it can be computed (spec section 7), and
hands the valid symbols to a backend. It never does per-bar math itself.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

from kernels import status as st
from kernels.errors import ATCInputError, ATCUserError
from kernels.params import FAMILIES, OUTPUT_NAMES, ATCParams

BACKENDS = ("auto", "cpu", "cuda")


def no_capture(ft) -> tuple:
    """Empty capture arrays of the same types as a real stream state, so the batch kernel compiles
    once whether or not it captures."""
    f = np.dtype(ft)
    return (False, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 1, 1), f),
            np.zeros((0, 6, 9, 9), f), np.zeros((0, 6, 9, 1, 1), f), np.zeros((0, 13, 2, 1), f),
            np.zeros((0, 1), f))


class ATCBackendError(ATCUserError):
    """The requested backend cannot run here (e.g. `cuda` without a GPU)."""


def _as_panel(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise ATCInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ATCInputError(f"{name} must be 1-D (one symbol) or 2-D (symbols x bars), got shape {arr.shape}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr.reshape(1, -1) if arr.ndim == 1 else arr)


def _symbol_label(i: int, symbols, offset: int = 0) -> str:
    if symbols is None:
        return f"symbol index {i + offset}"
    return f"symbol {symbols[i]!r} (index {i + offset})"


def _bad_reason(v: float, t: int) -> str:
    if np.isinf(v):
        return f"an infinite close at bar {t}"
    return f"a close <= 0 ({v!r}) at bar {t}"


@lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, bool, str]:
    """(usable, simulated, description) of the CUDA backend, probed once per process.

    Imports numba.cuda (and so kernels.cuda) only here, on first use: importing `kernels` never does.
    """
    try:
        from kernels import cuda as gpu
    except Exception as exc:  # numba-cuda or its CUDA bindings missing
        return False, False, (f"numba-cuda cannot be imported ({exc}); install the GPU extra: "
                              "pip install 'atc-pipeline[gpu]'")
    usable, what = gpu.gpu_status()
    return usable, gpu.SIMULATOR, what


def _resolve_backend(backend: str) -> str:
    """'cpu' or 'cuda'. 'auto' takes a real GPU when one is usable (never the slow simulator)."""
    if backend not in BACKENDS:
        raise ATCBackendError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "cpu":
        return "cpu"
    usable, simulated, what = cuda_status()
    if backend == "auto":
        return "cuda" if usable and not simulated else "cpu"
    if not usable:
        raise ATCBackendError(f"backend 'cuda' needs a usable NVIDIA GPU: {what}. Use backend='cpu', "
                              "or backend='auto' to fall back to the CPU (tests without a GPU: set "
                              "NUMBA_ENABLE_CUDASIM=1 before numba.cuda is imported)")
    return "cuda"


def growth_factors(params: ATCParams, t_max: int, ft) -> np.ndarray:
    """growth[t] = exp(lam * (max(t, 1) - cutout)), computed once on the host for every backend."""
    tt = np.maximum(np.arange(t_max, dtype=np.float64), 1.0) - params.cutout
    return np.exp(params.lam * tt).astype(ft)


def compute_atc(close, params: ATCParams | None = None, *, backend: str = "cpu", dtype=np.float64,
                src=None, parallel: bool = True, on_bad: str = "raise", symbols=None,
                index_offset: int = 0, lanes: int | None = None, capture=None) -> st.ATCResult:
    """The 13 ATC outputs of ATC_SPEC.md for one series `(n_bars,)` or a panel `(n_symbols, n_bars)`.

    A NaN close is a time at which the symbol has no bar (ATC_SPEC.md section 7): each symbol is
    computed exactly as if alone on its own bars (its non-NaN closes, compacted) and its outputs are
    placed back at its own times, NaN at every other time. Symbols with too few bars of their own
    get NaN outputs and status INSUFFICIENT_HISTORY; symbols with an infinite close or a close <= 0
    raise `ATCInputError` naming symbol and bar, or, with `on_bad="status"`, get NaN outputs and
    status BAD_DATA so the rest of a batch completes.

    `src` (same shape as `close`) feeds the moving averages and crossovers while returns come from
    `close`, as in the pandas API; by default both are `close`. `parallel=False` keeps the kernel on
    the calling thread (for Dask workers that run several tasks at once). `lanes` overrides the
    number of symbols per SIMD block (a tuning knob for benchmarks; results do not depend on it).
    `symbols` (names) and `index_offset` (position of this panel's first row in a larger universe,
    e.g. a store chunk) only make messages name symbols the way the user knows them.
    `backend`: "cpu" (Numba), "cuda" (numba-cuda on a GPU, or its simulator when
    NUMBA_ENABLE_CUDASIM=1; same numbers as "cpu"; `parallel` and `lanes` do not apply) or "auto"
    (the GPU when a real one is usable, else the CPU).
    `capture` is for `kernels.stream`: the arrays of a stream state that the CPU kernel fills, for
    every computed symbol, with what it needs to continue bar by bar (see `build_stream`).
    """
    params = ATCParams() if params is None else params
    if not isinstance(params, ATCParams):
        raise ATCUserError(f"params must be an ATCParams, got {type(params).__name__}")
    if on_bad not in ("raise", "status"):
        raise ATCUserError(f"on_bad must be 'raise' or 'status', got {on_bad!r}")
    ft = np.dtype(dtype)
    if ft not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ATCUserError(f"dtype must be float64 or float32, got {ft}")
    use = _resolve_backend(backend)

    one_d = np.ndim(close) == 1
    panel = _as_panel(close, "close")
    n_sym, n_bars = panel.shape
    if symbols is not None and len(symbols) != n_sym:
        raise ATCInputError(f"{len(symbols)} symbol names for {n_sym} symbols")
    if src is None:
        src_panel = panel
    else:
        src_panel = _as_panel(src, "src")
        if src_panel.shape != panel.shape:
            raise ATCInputError(f"src has shape {np.shape(src)}, close has shape {np.shape(close)}")
        mismatch = np.isnan(src_panel) != np.isnan(panel)
        if mismatch.any():
            i, t = np.argwhere(mismatch)[0]
            raise ATCInputError(
                f"{_symbol_label(int(i), symbols, index_offset)}: src and close differ in missing bars at bar {t}")

    from kernels.cpu import build_cpu_kernel, line_tables, scan_bars

    starts, ends, lens, bad = scan_bars(panel)
    if src is not None:
        bad_src = scan_bars(src_panel)[3]
        bad = np.where(bad >= 0, bad, bad_src)
    need = max(params.min_bars, params.cutout + 1)
    status = np.full(n_sym, st.OK, np.int8)
    messages: dict[int, str] = {}
    for i in np.flatnonzero(bad >= 0):
        t = int(bad[i])
        v = panel[i, t] if not (panel[i, t] > 0 and np.isfinite(panel[i, t])) else src_panel[i, t]
        msg = f"{_symbol_label(int(i), symbols, index_offset)} has {_bad_reason(float(v), t)}"
        if on_bad == "raise":
            raise ATCInputError(msg)
        status[i] = st.BAD_DATA
        messages[int(i)] = msg
    for i in np.flatnonzero((bad < 0) & (lens < need)):
        if lens[i] == 0:
            status[i] = st.NO_DATA
            messages[int(i)] = f"{_symbol_label(int(i), symbols, index_offset)} has no valid close"
        else:
            status[i] = st.INSUFFICIENT_HISTORY
            messages[int(i)] = (f"{_symbol_label(int(i), symbols, index_offset)}: insufficient history, "
                                f"{int(lens[i])} bars of its own < {need} needed")

    ok = np.flatnonzero(status == st.OK)
    # longest first: blocks then hold symbols of similar length and waste little padding
    order = ok[np.argsort(-lens[ok], kind="stable")].astype(np.int64)
    out = np.empty((len(OUTPUT_NAMES), n_sym, n_bars), ft)
    out[:, status != st.OK, :] = np.nan
    if len(order):
        growth = growth_factors(params, int(lens[order].max()), ft)
        line_lens, coef = line_tables(params, ft)
        weights = np.array([params.weight(f) for f in FAMILIES], ft)
        args = (panel, src_panel, src is None, order, starts, ends, lens, growth, line_lens, coef, weights,
                params.cutout, ft.type(1.0 - params.dec), ft.type(params.short_threshold),
                ft.type(params.long_threshold), params.strategy_mode, out)
        if capture is not None and (use == "cuda" or src is not None):
            raise ATCUserError("a stream state is captured by the CPU kernel with src = close only")
        if use == "cuda":
            from kernels import cuda as gpu

            gpu.run_panel(*args)
        else:
            kern = build_cpu_kernel(ft.name)
            cap = no_capture(ft) if capture is None else (True, *capture)
            nb = kern.lanes if lanes is None else int(lanes)
            n_blocks = -(-len(order) // nb)
            if parallel and n_blocks > 1:
                kern.run_parallel(min(n_blocks, 4 * numba.get_num_threads()), nb, *args, cap)
            else:
                kern.run_serial(nb, *args, cap)

    outputs = {name: (out[c, 0] if one_d else out[c]) for c, name in enumerate(OUTPUT_NAMES)}
    return st.ATCResult(outputs, status[0] if one_d else status, messages)
