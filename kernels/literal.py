"""A literal Numba transcription of ATC_SPEC.md: the benchmark anchor of `atc bench kernel`.

Written from the specification alone (sections 2-6), independently of the fast kernels, and kept
deliberately plain: one symbol at a time, float64, every moving average evaluated from its
definition at every bar (each WMA/LSMA window and KAMA's noise sum recomputed over the whole
window, O(L) per bar; HMA through full WMA windows), no running sums, no lane blocking, no SIMD
layout. It is compute bound like the real kernel, so the ratio kernel/literal measured in the same
run is a machine-independent figure of how much the kernel's design buys, on a shared machine
whose absolute throughput swings by 2x between runs.

    literal_atc(close_1d, params) -> (13, n) array      one symbol, no NaN (its own bars)
    literal_panel(panel, params, parallel=False) -> (13, n_symbols, n_times)

Rows follow the 13 outputs of spec section 6 (kernels.params.OUTPUT_NAMES). Sums run left to
right in spec order. Division by zero follows IEEE rules (error_model="numpy"); where the spec
defines a value instead (KAMA's ER with zero noise, Average_Signal not finite) the code says so.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from kernels.jitcache import caching_enabled
from kernels.params import FAMILIES, ATCParams

N_OUT = 13
_JIT = dict(cache=caching_enabled(), error_model="numpy")

# family codes, in spec order (section 1)
EMA, HMA, WMA, DEMA, LSMA, KAMA = 0, 1, 2, 3, 4, 5


# -- section 2: the moving averages (NaN = not yet defined) ----------------------------------

@numba.njit(**_JIT)
def ema(x, L):
    """NaN for t < L-1; at t = L-1 the mean of x[0..L-1]; then e_t = a*x_t + (1-a)*e_{t-1}."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if n < L:
        return out
    a = 2.0 / (L + 1)
    total = 0.0
    for i in range(L):
        total += x[i]
    e = total / L
    out[L - 1] = e
    for t in range(L, n):
        e = a * x[t] + (1.0 - a) * e
        out[t] = e
    return out


@numba.njit(**_JIT)
def wma_from(src, first, L):
    """WMA(L) of src[first:], placed at the same times: sum_{k=0}^{L-1} (L-k)*src_{t-k} / (L(L+1)/2),
    NaN for t < first + L - 1. The window sum is recomputed from scratch at every bar."""
    n = src.shape[0]
    out = np.full(n, np.nan)
    denom = float(L * (L + 1) // 2)
    for t in range(first + L - 1, n):
        num = 0.0
        for k in range(L):
            num += (L - k) * src[t - k]
        out[t] = num / denom
    return out


@numba.njit(**_JIT)
def wma(x, L):
    return wma_from(x, 0, L)


@numba.njit(**_JIT)
def hma(x, L):
    """True Hull: WMA(2*WMA(x, L//2) - WMA(x, L), isqrt(L)), the outer WMA over the inner series
    from its first defined value (t = L-1); for L = 1 the half length is 1."""
    n = x.shape[0]
    half = L // 2
    if half < 1:
        half = 1
    sq = _isqrt(L)
    w_half = wma_from(x, 0, half)
    w_full = wma_from(x, 0, L)
    inner = np.full(n, np.nan)
    for t in range(n):
        inner[t] = 2.0 * w_half[t] - w_full[t]
    return wma_from(inner, L - 1, sq)


@numba.njit(**_JIT)
def _isqrt(v):
    """Integer square root (largest r with r*r <= v)."""
    r = 0
    while (r + 1) * (r + 1) <= v:
        r += 1
    return r


@numba.njit(**_JIT)
def dema(x, L):
    """2*e1 - e2, e1 = EMA(L), e2 = EMA of e1 with the same a, seeded at t = L-1 with e1[L-1]."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if n < L:
        return out
    a = 2.0 / (L + 1)
    e1 = ema(x, L)
    e2 = e1[L - 1]
    out[L - 1] = 2.0 * e1[L - 1] - e2
    for t in range(L, n):
        e2 = a * e1[t] + (1.0 - a) * e2
        out[t] = 2.0 * e1[t] - e2
    return out


@numba.njit(**_JIT)
def lsma(x, L):
    """Least-squares line through (i, x_{t-L+1+i}), i = 0..L-1, evaluated at i = L-1.

    Ordinary least squares in centred form, recomputed over the window at every bar. With L <= 2
    the line passes through the current point, so the value is x_t exactly."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    xbar = (L - 1) / 2.0
    sxx = 0.0
    for i in range(L):
        sxx += (i - xbar) * (i - xbar)
    for t in range(L - 1, n):
        if L <= 2:
            out[t] = x[t]
            continue
        start = t - L + 1
        sy = 0.0
        for i in range(L):
            sy += x[start + i]
        ybar = sy / L
        sxy = 0.0
        for i in range(L):
            sxy += (i - xbar) * (x[start + i] - ybar)
        slope = sxy / sxx
        out[t] = ybar + slope * ((L - 1) - xbar)
    return out


@numba.njit(**_JIT)
def kama(x, L):
    """k_t = x_0 for t <= L-1; then ER = |x_t - x_{t-L}| / sum_{j=t-L+1}^{t} |x_j - x_{j-1}|
    (0 when the noise sum is 0), sc = (ER*(0.666-0.064) + 0.064)^2, k_t = k_{t-1} + sc*(x_t - k_{t-1})."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if n == 0:
        return out
    k = x[0]
    for t in range(min(L, n)):
        out[t] = k
    for t in range(L, n):
        noise = 0.0
        for j in range(t - L + 1, t + 1):
            noise += abs(x[j] - x[j - 1])
        if noise == 0.0:
            er = 0.0
        else:
            er = abs(x[t] - x[t - L]) / noise
        base = er * (0.666 - 0.064) + 0.064
        sc = base * base
        k = k + sc * (x[t] - k)
        out[t] = k
    return out


@numba.njit(**_JIT)
def moving_average(family, x, L):
    if family == EMA:
        return ema(x, L)
    if family == HMA:
        return hma(x, L)
    if family == WMA:
        return wma(x, L)
    if family == DEMA:
        return dema(x, L)
    if family == LSMA:
        return lsma(x, L)
    return kama(x, L)


# -- section 3: crossover signal ---------------------------------------------------------------

@numba.njit(**_JIT)
def crossover_signal(x, m):
    """Persistent state starting at 0: +1 on a crossover, -1 on a crossunder (NaN compares false)."""
    n = x.shape[0]
    out = np.zeros(n)
    s = 0.0
    for t in range(1, n):
        if x[t] > m[t] and x[t - 1] <= m[t - 1]:
            s = 1.0
        elif x[t] < m[t] and x[t - 1] >= m[t - 1]:
            s = -1.0
        out[t] = s
    return out


# -- section 4: equity curve ------------------------------------------------------------------

@numba.njit(**_JIT)
def returns(x):
    n = x.shape[0]
    out = np.full(n, np.nan)
    for t in range(1, n):
        out[t] = (x[t] - x[t - 1]) / x[t - 1]
    return out


@numba.njit(**_JIT)
def equity(s, R, e0, lam, dec, cutout):
    """NaN before cutout; max(e0, 0.25) at cutout; then E_t = max(0.25, E_{t-1}*(1-dec)*(1+a_t)),
    a_t = +-R_t*exp(lam*(max(t,1)-cutout)) by the sign of s_{t-1}, 0 when s_{t-1} is 0/NaN or r_t NaN."""
    n = s.shape[0]
    out = np.full(n, np.nan)
    if cutout >= n:
        return out
    E = max(e0, 0.25)
    out[cutout] = E
    for t in range(cutout + 1, n):
        g = math.exp(lam * (max(t, 1) - cutout))
        r = R[t] * g
        sp = s[t - 1]
        if math.isnan(r) or math.isnan(sp) or sp == 0.0:
            a = 0.0
        elif sp > 0.0:
            a = r
        else:
            a = -r
        E = max(0.25, E * (1.0 - dec) * (1.0 + a))
        out[t] = E
    return out


# -- sections 5 and 6 ---------------------------------------------------------------------------

@numba.njit(**_JIT)
def round2(v):
    """rint(v * 100) / 100, round half to even (numpy.round(v, 2))."""
    return np.rint(v * 100.0) / 100.0


@numba.njit(**_JIT)
def cut(v, long_threshold, short_threshold):
    if v > long_threshold:
        return 1.0
    if v < short_threshold:
        return -1.0
    return 0.0


@numba.njit(**_JIT)
def atc_core(x, lengths, weights, lam, dec, cutout, long_threshold, short_threshold, strategy_mode):
    """The 13 outputs of one symbol's own bars x (no NaN, n >= max length + 2, cutout < n).

    lengths: (6, 9) int64, the 9 lengths of each family in spec order; weights: (6,) float64."""
    n = x.shape[0]
    out = np.full((N_OUT, n), np.nan)
    R = returns(x)
    for f in range(6):
        # Layer 1: sums over the 9 lines, left to right in spec order
        num = np.zeros(n)
        den = np.zeros(n)
        for j in range(9):
            m = moving_average(f, x, lengths[f, j])
            s = crossover_signal(x, m)
            E = equity(s, R, 1.0, lam, dec, cutout)
            for t in range(n):
                num[t] += s[t] * E[t]
                den[t] += E[t]
        for t in range(cutout, n):
            out[f, t] = round2(num[t] / den[t])
        # Layer 2: equity of the family signal, starting at the family weight
        out[6 + f, :] = equity(out[f], R, weights[f], lam, dec, cutout)
    avg = np.zeros(n)
    for t in range(n):
        num_t = 0.0
        den_t = 0.0
        for f in range(6):
            num_t += cut(out[f, t], long_threshold, short_threshold) * out[6 + f, t]
        for f in range(6):
            den_t += out[6 + f, t]
        ratio = num_t / den_t
        avg[t] = ratio if np.isfinite(ratio) else 0.0  # spec: 0.0 where the ratio is not finite
    if strategy_mode:
        out[12, 0] = 0.0
        for t in range(1, n):
            out[12, t] = avg[t - 1]
    else:
        out[12, :] = avg
    return out


@numba.njit(**_JIT)
def _one_row(row, out, i, lengths, weights, lam, dec, cutout, lt, st, sm, min_bars):
    """Symbol i: compact its own (non-NaN) bars, compute, place the outputs back."""
    n_t = row.shape[0]
    count = 0
    for t in range(n_t):
        if not math.isnan(row[t]):
            count += 1
    if count < min_bars:
        return
    pos = np.empty(count, np.int64)
    x = np.empty(count)
    c = 0
    for t in range(n_t):
        if not math.isnan(row[t]):
            pos[c] = t
            x[c] = row[t]
            c += 1
    res = atc_core(x, lengths, weights, lam, dec, cutout, lt, st, sm)
    for k in range(N_OUT):
        for c in range(count):
            out[k, i, pos[c]] = res[k, c]


@numba.njit(**_JIT)
def _panel_serial(panel, lengths, weights, lam, dec, cutout, lt, st, sm, min_bars):
    n_sym, n_t = panel.shape
    out = np.full((N_OUT, n_sym, n_t), np.nan)
    for i in range(n_sym):
        _one_row(panel[i], out, i, lengths, weights, lam, dec, cutout, lt, st, sm, min_bars)
    return out


@numba.njit(parallel=True, **_JIT)
def _panel_parallel(panel, lengths, weights, lam, dec, cutout, lt, st, sm, min_bars):
    n_sym, n_t = panel.shape
    out = np.full((N_OUT, n_sym, n_t), np.nan)
    for i in numba.prange(n_sym):
        _one_row(panel[i], out, i, lengths, weights, lam, dec, cutout, lt, st, sm, min_bars)
    return out


# -- Python entry points -----------------------------------------------------------------------

def _args(params: ATCParams | None):
    p = ATCParams() if params is None else params
    lengths = np.array([p.lengths(f) for f in FAMILIES], dtype=np.int64)
    weights = np.array([p.weight(f) for f in FAMILIES], dtype=np.float64)
    return p, (lengths, weights, float(p.lam), float(p.dec), int(p.cutout), float(p.long_threshold),
               float(p.short_threshold), bool(p.strategy_mode))


def _check_closes(x: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(np.isinf(x) | (x <= 0))
    if bad.size:
        raise ValueError(f"{what}: invalid close {x.flat[bad[0]]!r} at position {int(bad[0])}; "
                         "closes must be finite and > 0")


def literal_atc(close, params: ATCParams | None = None) -> np.ndarray:
    """The 13 outputs (rows in spec order) of one symbol's closes, its own bars (no NaN), float64."""
    x = np.ascontiguousarray(close, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("literal_atc expects the 1-D closes of one symbol")
    if np.isnan(x).any():
        raise ValueError("literal_atc expects the symbol's own bars (no NaN); use literal_panel")
    _check_closes(x, "literal_atc")
    p, args = _args(params)
    n = len(x)
    if n < p.min_bars:
        return np.full((N_OUT, n), np.nan)
    if p.cutout >= n:
        raise ValueError(f"cutout={p.cutout} must be < the symbol's {n} bars")
    return atc_core(x, *args)


def literal_panel(panel, params: ATCParams | None = None, parallel: bool = False) -> np.ndarray:
    """(13, n_symbols, n_times): each symbol computed alone on its own (non-NaN) bars, placed back
    at its own times, NaN elsewhere and for symbols with fewer than `params.min_bars` bars.
    `parallel=True` spreads the symbols over Numba's threads (prange)."""
    a = np.ascontiguousarray(panel, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError("literal_panel expects a (n_symbols, n_times) panel")
    for i in np.flatnonzero((np.isinf(a) | (a <= 0)).any(axis=1)):
        _check_closes(a[i][~np.isnan(a[i])], f"symbol {int(i)}")
    p, args = _args(params)
    own = np.count_nonzero(~np.isnan(a), axis=1)
    short_cut = (own >= p.min_bars) & (p.cutout >= own)
    if short_cut.any():
        i = int(np.flatnonzero(short_cut)[0])
        raise ValueError(f"cutout={p.cutout} must be < the {int(own[i])} bars of symbol {i}")
    fn = _panel_parallel if parallel else _panel_serial
    return fn(a, *args, int(p.min_bars))
