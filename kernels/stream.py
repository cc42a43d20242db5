"""Streaming ATC: advance many symbols by one bar, with exactly the batch kernel's numbers.

A daily user appends today's bars and wants the newest outputs without recomputing years of
history. `StreamState` holds, per symbol, everything the recurrences need to continue: its own bar
count `t`, a window of its last max(L) + 1 closes (the sliding window sums, KAMA's noise sum and
the exact re-anchoring every 256 bars read back that far), the per-line state of the 54 lines
(previous MA, crossover state, equity, running sums; see `kernels.cpu.family_steps`), the HMA
inner-series rings, the previous bar's 13 outputs (Layer 2 starts from them) and the unshifted
average of the previous bar (strategy mode).

Exactness is by construction, not by re-derivation: the batch kernel, the sweep engine and this
engine all call the same two functions, `family_steps` (Layer 1) and `layer2_steps` (Layer 2 and
the average), which resume from a state and a window. `build_stream` is the batch kernel run with
capture on (the state is copied out at each symbol's own last bar, at no extra compute), and
`advance` calls those functions for one bar per symbol. The growth factors come from the same
host function as the batch (`kernels.api.growth_factors`).

Semantics follow ATC_SPEC.md section 7: a NaN among the new closes is a time without a bar of that
symbol (it does not advance and its outputs are NaN); a symbol without history joins when its
first close arrives; a symbol's outputs are NaN until it has `max(54 lengths) + 2` bars of its
own (and more than `cutout`), exactly where the batch would report insufficient history; a close
<= 0 or infinite marks it bad data for good. Everything is plain arrays (`to_arrays` /
`from_arrays`) so a store can keep it without pickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import prange

from kernels import status as st
from kernels.errors import ATCUserError
from kernels.jitcache import KernelSet
from kernels.params import FAMILIES, OUTPUT_NAMES, ATCParams

WINDOW_SLACK = 64
"""Extra rows in each symbol's window of closes, so it is shifted once per this many bars."""

STATE_ARRAYS = ("t", "xo", "x", "fam", "ring", "prev", "avg", "status")
"""The arrays of a `StreamState`, by name (the symbol is always the first axis)."""

_KERNELS = KernelSet()
_kernel = _KERNELS.kernel

# bound per float type by build_stream_kernel (see kernels.cpu for the pattern)
ft = NAN = ZERO = None
family_steps = layer2_steps = None


@_kernel()
def advance_symbol(i, v, need, t, xo, x, fam, ring, prev, avg, status, r2, growth, lens, coef, weights,
                   cutout, keep, short_thr, long_thr, strategy, out, oc, lmax, scr, no_sig, no_ma):
    """One new close `v` of symbol i; its 13 outputs go to out[:, oc] (NaN if it has no bar)."""
    if status[i] != 0 or np.isnan(v):
        for c in range(13):
            out[c, oc] = NAN
        return
    if not (v > 0.0) or np.isinf(v):
        status[i] = 3  # bad data, for good (as a batch over the extended history would say)
        for c in range(13):
            out[c, oc] = NAN
        return
    ti = t[i]
    xi = x[i]
    w = xi.shape[0]
    if ti - xo[i] >= w:  # window full: keep the last max(L) + 1 closes
        drop = w - lmax - 1
        for row in range(lmax + 1):
            xi[row, 0] = xi[row + drop, 0]
        xo[i] += drop
    row = ti - xo[i]
    xi[row, 0] = v
    pi = prev[i]
    ri = r2[i]
    ri[0, 0] = NAN
    if ti == 0:
        ri[1, 0] = NAN
    else:
        ri[1, 0] = ((xi[row, 0] - xi[row - 1, 0]) / xi[row - 1, 0]) * growth[ti]
    for f in range(6):
        family_steps(f, xi, xo[i], ri, ti - 1, ti, ti + 1, 1, lens, coef, cutout, keep, pi[f],
                     fam[i, f], ring[i, f], no_sig, False, no_ma, False, scr)
    layer2_steps(pi, ti - 1, ri, ti, ti + 1, 1, weights, cutout, keep, short_thr, long_thr, strategy,
                 avg[i], scr)
    for c in range(13):
        out[c, oc] = pi[c, 1, 0] if ti + 1 >= need else NAN
        pi[c, 0, 0] = pi[c, 1, 0]
    t[i] = ti + 1


@_kernel()
def _scratch(lens):
    """Allocated once per call over all symbols, not once per symbol."""
    lmax = 1
    for ln in range(54):
        lmax = max(lmax, lens[ln, 0])
    return lmax, np.empty((3, 1), ft), np.zeros((1, 1, 1), np.int8), np.zeros((1, 1, 1), ft)


@_kernel(parallel=True)
def advance_all(closes, need, t, xo, x, fam, ring, prev, avg, status, r2, growth, lens, coef, weights,
                cutout, keep, short_thr, long_thr, strategy, out, n_parts):
    """One new time for every symbol: the one compiled call per update, symbols split over threads
    (every symbol is independent; each part has its own scratch)."""
    n = closes.shape[0]
    for part in prange(n_parts):
        lmax, scr, no_sig, no_ma = _scratch(lens)
        for i in range(part * n // n_parts, (part + 1) * n // n_parts):
            advance_symbol(i, closes[i], need, t, xo, x, fam, ring, prev, avg, status, r2, growth, lens,
                           coef, weights, cutout, keep, short_thr, long_thr, strategy, out, i, lmax, scr,
                           no_sig, no_ma)


@_kernel()
def replay(i, series, need, t, xo, x, fam, ring, prev, avg, status, r2, growth, lens, coef, weights,
           cutout, keep, short_thr, long_thr, strategy, out):
    """Feed symbol i's own closes one by one (for histories the batch does not compute)."""
    lmax, scr, no_sig, no_ma = _scratch(lens)
    for k in range(series.shape[0]):
        advance_symbol(i, series[k], need, t, xo, x, fam, ring, prev, avg, status, r2, growth, lens,
                       coef, weights, cutout, keep, short_thr, long_thr, strategy, out, 0, lmax, scr,
                       no_sig, no_ma)


@lru_cache(maxsize=None)
def build_stream_kernel(dtype_name: str) -> SimpleNamespace:
    """Compile the streaming engine for one float type, on top of the batch kernel's functions."""
    from kernels import cpu

    f = np.dtype(dtype_name).type
    base = cpu.build_cpu_kernel(dtype_name)
    env = cpu._float_env(f)
    env.update(family_steps=base.family_steps, layer2_steps=base.layer2_steps)
    return _KERNELS.compile(globals(), env, ft=f)


def _sq_slots(line_lens: np.ndarray) -> int:
    return max(1, int(line_lens[:, 2].max()))


@dataclass
class StreamState:
    """Per-symbol state that `advance` continues from (all arrays have the symbol first)."""

    params: ATCParams
    dtype: np.dtype
    t: np.ndarray       # int64: own bars seen so far
    xo: np.ndarray      # int64: own bar index of row 0 of the window
    x: np.ndarray       # (n, window, 1) closes
    fam: np.ndarray     # (n, 6, 9 kinds, 9 lines) per-line state
    ring: np.ndarray    # (n, 6, 9, sq, 1) HMA inner series
    prev: np.ndarray    # (n, 13, 2, 1) outputs of the previous bar in row 0
    avg: np.ndarray     # (n, 1) unshifted Average_Signal of the previous bar
    status: np.ndarray  # int8: 0 ok (or not yet enough bars), 3 bad data

    @property
    def n_symbols(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def empty(cls, n_symbols: int, params: ATCParams | None = None, dtype=np.float64) -> "StreamState":
        """Symbols with no bar yet: each joins at its first close."""
        from kernels.cpu import line_tables

        params = ATCParams() if params is None else params
        f = np.dtype(dtype)
        if f not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ATCUserError(f"dtype must be float64 or float32, got {f}")
        line_lens, _ = line_tables(params, f)
        window = int(line_lens[:, 0].max()) + 2 + WINDOW_SLACK
        fam = np.zeros((n_symbols, 6, 9, 9), f)
        fam[:, :, 0, :] = np.nan  # no previous MA yet
        return cls(params, f, np.zeros(n_symbols, np.int64), np.zeros(n_symbols, np.int64),
                   np.zeros((n_symbols, window, 1), f), fam,
                   np.zeros((n_symbols, 6, 9, _sq_slots(line_lens), 1), f),
                   np.zeros((n_symbols, 13, 2, 1), f), np.zeros((n_symbols, 1), f),
                   np.zeros(n_symbols, np.int8))

    def capture(self) -> tuple:
        return (self.t, self.xo, self.x, self.fam, self.ring, self.prev, self.avg)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays by name (for a store); parameters travel separately (`params.to_dict()`)."""
        return {name: getattr(self, name) for name in STATE_ARRAYS}

    @classmethod
    def from_arrays(cls, arrays, params: ATCParams, dtype) -> "StreamState":
        ref = cls.empty(0, params, dtype)
        got = {}
        for name in STATE_ARRAYS:
            a = np.ascontiguousarray(np.asarray(arrays[name]))
            want = getattr(ref, name)
            if a.dtype != want.dtype or a.shape[1:] != want.shape[1:]:
                raise ATCUserError(f"stream state array {name!r} has {a.dtype} {a.shape}; expected "
                                   f"{want.dtype} (n, {', '.join(map(str, want.shape[1:]))}) for these parameters")
            got[name] = a
        n = {a.shape[0] for a in got.values()}
        if len(n) != 1:
            raise ATCUserError(f"stream state arrays disagree on the number of symbols: {sorted(n)}")
        return cls(params, np.dtype(dtype), **got)

    def _consts(self, growth_len: int):
        from kernels.api import growth_factors
        from kernels.cpu import line_tables

        p = self.params
        f = self.dtype
        line_lens, coef = line_tables(p, f)
        weights = np.array([p.weight(fm) for fm in FAMILIES], f)
        growth = growth_factors(p, growth_len, f)
        need = max(p.min_bars, p.cutout + 1)
        return (need, growth, line_lens, coef, weights, p.cutout, f.type(1.0 - p.dec),
                f.type(p.short_threshold), f.type(p.long_threshold), p.strategy_mode)

    def advance(self, closes, parallel: bool = True) -> dict[str, np.ndarray]:
        """Advance every symbol by the new time `closes` (n_symbols,); NaN = no bar for that symbol.

        Returns the 13 outputs of the new time by name, each `(n_symbols,)`. `parallel` spreads the
        symbols over Numba's threads (not from inside multi-threaded Dask workers).
        """
        closes = np.ascontiguousarray(np.asarray(closes, np.float64).reshape(-1))
        if closes.shape[0] != self.n_symbols:
            raise ATCUserError(f"{closes.shape[0]} closes for a stream of {self.n_symbols} symbols")
        kern = build_stream_kernel(self.dtype.name)
        need, growth, lens, coef, weights, cutout, keep, sthr, lthr, strat = self._consts(
            int(self.t.max(initial=0)) + 1)
        out = np.empty((13, self.n_symbols), self.dtype)
        r2 = np.zeros((self.n_symbols, 2, 1), self.dtype)
        parts = numba.get_num_threads() if parallel and self.n_symbols >= 256 else 1
        kern.advance_all(closes, need, self.t, self.xo, self.x, self.fam, self.ring, self.prev, self.avg,
                         self.status, r2, growth, lens, coef, weights, cutout, keep, sthr, lthr, strat, out, parts)
        return {name: out[c] for c, name in enumerate(OUTPUT_NAMES)}


def build_stream(close, params: ATCParams | None = None, *, dtype=np.float64, on_bad: str = "status",
                 symbols=None, parallel: bool = True, index_offset: int = 0,
                 replay: bool = True) -> tuple[st.ATCResult, StreamState]:
    """`compute_atc` on a history `(n_symbols, n_times)` plus the state to continue it bar by bar.

    The outputs are the batch kernel's; the state is copied out by the same kernel at each symbol's
    own last bar. Symbols too short for the batch are fed to the stream one bar at a time (they
    join the computed outputs once they have enough bars); bad data stays bad. With
    `replay=False` their state is left empty (the caller rebuilds them later), and the streaming
    kernel is not even compiled.
    """
    from kernels.api import _as_panel, compute_atc

    params = ATCParams() if params is None else params
    panel = _as_panel(close, "close")
    state = StreamState.empty(panel.shape[0], params, dtype)
    res = compute_atc(panel, params, dtype=dtype, on_bad=on_bad, symbols=symbols, parallel=parallel,
                      index_offset=index_offset, capture=state.capture())
    state.status[res.status == st.BAD_DATA] = st.BAD_DATA
    short = np.flatnonzero(res.status == st.INSUFFICIENT_HISTORY)
    if len(short) and replay:
        kern = build_stream_kernel(state.dtype.name)
        need, growth, lens, coef, weights, cutout, keep, sthr, lthr, strat = state._consts(panel.shape[1] + 1)
        sink = np.empty((13, 1), state.dtype)
        r2 = np.zeros((state.n_symbols, 2, 1), state.dtype)
        for i in short:
            own = np.ascontiguousarray(panel[i][~np.isnan(panel[i])], np.float64)
            kern.replay(int(i), own, need, state.t, state.xo, state.x, state.fam, state.ring, state.prev,
                        state.avg, state.status, r2, growth, lens, coef, weights, cutout, keep, sthr, lthr,
                        strat, sink)
    return res, state
