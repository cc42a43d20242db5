"""Batch ATC on the CPU: Numba, vectorised across symbols, parallel across threads.

Layout (why it is fast): symbols are processed in blocks of `LANES` (8 float64 / 16 float32 =
one AVX-512 register). Each symbol of a block is copied so that its own first valid bar is row 0
of a `(time, lane)` buffer; every lane then shares the same local bar index `t`, so the warm-up
ranges, the cutout and the growth factor `exp(lam*(t-cutout))` are the same for all lanes and the
innermost loop over lanes has no data-dependent control flow: LLVM turns it into SIMD code.
A lane whose history ends early is padded with its last close and its padded bars are never
written out. Blocks are filled with symbols sorted by length, so ragged panels waste little.

Per block and family the 9 lines are processed one after another (MA -> crossover -> equity ->
Layer-1 accumulation), reusing one `(time, lane)` MA buffer: nothing of size (symbol, 54, time) is
ever allocated. The math itself is the shared step functions of `kernels.steps`.

Running window sums are re-anchored (recomputed from the window) every `ANCHOR` bars so that
rounding drift cannot accumulate over long histories.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import njit, prange

from kernels.steps import build_steps

ANCHOR = 256
"""Bars between exact recomputations of the running window sums."""

FAMILY_CODES = {"EMA": 0, "HMA": 1, "WMA": 2, "DEMA": 3, "LSMA": 4, "KAMA": 5}


@njit(cache=True, parallel=True)
def scan_spans(close):
    """First valid bar, number of valid bars and first bad bar (-1 if none) of every symbol.

    A bad bar is a NaN inside the valid span, a close <= 0 or an infinite close (spec section 7).
    """
    n_sym, n_bars = close.shape
    starts = np.zeros(n_sym, np.int64)
    lengths = np.zeros(n_sym, np.int64)
    bad = np.full(n_sym, -1, np.int64)
    for i in prange(n_sym):
        first = -1
        last = -1
        for t in range(n_bars):
            if not np.isnan(close[i, t]):
                if first < 0:
                    first = t
                last = t
        if first < 0:
            continue
        starts[i] = first
        lengths[i] = last - first + 1
        for t in range(first, last + 1):
            v = close[i, t]
            if not (v > 0.0) or np.isinf(v):
                bad[i] = t
                break
    return starts, lengths, bad


@lru_cache(maxsize=None)
def build_cpu_kernel(dtype_name: str):
    """Compile the block kernel for one float type (its inner functions are exposed for tests)."""
    ft = np.dtype(dtype_name).type
    st = build_steps(njit, ft)
    B = 8 if ft == np.float64 else 16
    A = ANCHOR
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

    @njit
    def fill_nan(out, t_end, T):
        for t in range(min(t_end, T)):
            for k in range(B):
                out[t, k] = NAN

    @njit
    def ema_block(x, L, out, T):
        fill_nan(out, L - 1, T)
        if L - 1 >= T:
            return
        a = ft(2.0) / ft(L + 1)
        b = ONE - a
        for k in range(B):
            s = ZERO
            for j in range(L):
                s += x[j, k]
            out[L - 1, k] = s / ft(L)
        for t in range(L, T):
            for k in range(B):
                out[t, k] = ema_step(out[t - 1, k], x[t, k], a, b)

    @njit
    def dema_block(x, L, e1, out, T):
        ema_block(x, L, e1, T)
        fill_nan(out, L - 1, T)
        if L - 1 >= T:
            return
        a = ft(2.0) / ft(L + 1)
        b = ONE - a
        e2 = np.empty(B, ft)
        for k in range(B):
            e2[k] = e1[L - 1, k]
            out[L - 1, k] = dema_value(e1[L - 1, k], e2[k])
        for t in range(L, T):
            for k in range(B):
                e2[k] = ema_step(e2[k], e1[t, k], a, b)
                out[t, k] = dema_value(e1[t, k], e2[k])

    @njit
    def window_sums(src, t, L, s, w):
        """Exact (re-anchored) window sums ending at bar t, oldest first."""
        for k in range(B):
            ss = ZERO
            ww = ZERO
            for j in range(L):
                v = src[t - L + 1 + j, k]
                ss += v
                ww += ft(j + 1) * v
            s[k] = ss
            w[k] = ww

    @njit
    def wma_block(src, t0, L, out, T):
        """WMA(L) of src[t0:], written from bar t0+L-1 on, NaN before."""
        first = t0 + L - 1
        fill_nan(out, first, T)
        denom = ft(L * (L + 1) // 2)
        Lf = ft(L)
        s = np.empty(B, ft)
        w = np.empty(B, ft)
        for t in range(first, T):
            if (t - first) % A == 0:
                window_sums(src, t, L, s, w)
            else:
                for k in range(B):
                    s[k], w[k] = weighted_slide(s[k], w[k], src[t, k], src[t - L, k], Lf)
            for k in range(B):
                out[t, k] = wma_value(w[k], denom)

    @njit
    def hma_block(x, L, w1, w2, d, out, T):
        half = max(L // 2, 1)
        sq = int(math.sqrt(L))  # integer square root, corrected below for rounding
        while (sq + 1) * (sq + 1) <= L:
            sq += 1
        while sq * sq > L:
            sq -= 1
        wma_block(x, 0, half, w1, T)
        wma_block(x, 0, L, w2, T)
        for t in range(L - 1, T):
            for k in range(B):
                d[t, k] = hma_diff(w1[t, k], w2[t, k])
        wma_block(d, L - 1, sq, out, T)

    @njit
    def lsma_block(x, L, out, T):
        first = L - 1
        fill_nan(out, first, T)
        Lf = ft(L)
        sum_i = ft(L * (L - 1) // 2)
        sum_i2 = ft((L - 1) * L * (2 * L - 1) // 6)
        denom = Lf * sum_i2 - sum_i * sum_i
        s = np.empty(B, ft)
        w = np.empty(B, ft)
        for t in range(first, T):
            if (t - first) % A == 0:
                window_sums(x, t, L, s, w)
            else:
                for k in range(B):
                    s[k], w[k] = weighted_slide(s[k], w[k], x[t, k], x[t - L, k], Lf)
            for k in range(B):
                out[t, k] = lsma_value(s[k], w[k], Lf, sum_i, denom)

    @njit
    def kama_block(x, ad, L, out, T):
        for t in range(min(L, T)):
            for k in range(B):
                out[t, k] = x[0, k]
        noise = np.empty(B, ft)
        for t in range(L, T):
            if (t - L) % A == 0:
                for k in range(B):
                    nn = ZERO
                    for j in range(t - L + 1, t + 1):
                        nn += ad[j, k]
                    noise[k] = nn
            else:
                for k in range(B):
                    noise[k] = noise[k] + ad[t, k] - ad[t - L, k]
            for k in range(B):
                out[t, k] = kama_step(out[t - 1, k], x[t, k], x[t - L, k], noise[k])

    @njit
    def accumulate_line(x, m, r, num, den, T, cutout, keep):
        """Crossover state and Layer-1 equity of one line, added into the family's sums."""
        s = np.zeros(B, ft)
        e = np.empty(B, ft)
        for t in range(1, min(cutout, T)):
            for k in range(B):
                s[k] = cross_step(s[k], x[t, k], m[t, k], x[t - 1, k], m[t - 1, k])
        if cutout >= T:
            return
        t = cutout
        for k in range(B):
            if t > 0:
                s[k] = cross_step(s[k], x[t, k], m[t, k], x[t - 1, k], m[t - 1, k])
            e[k] = start_equity(ONE)
            num[t, k] += s[k] * e[k]
            den[t, k] += e[k]
        for t in range(cutout + 1, T):
            for k in range(B):
                s_prev = s[k]
                s[k] = cross_step(s_prev, x[t, k], m[t, k], x[t - 1, k], m[t - 1, k])
                e[k] = equity_step(e[k], s_prev, r[t, k], keep)
                num[t, k] += s[k] * e[k]
                den[t, k] += e[k]

    @njit
    def gather(close, syms, starts, lens, nk, T, x):
        for k in range(B):
            if k < nk:
                i = syms[k]
                s0 = starts[i]
                n = lens[i]
                for t in range(n):
                    x[t, k] = close[i, s0 + t]
                for t in range(n, T):
                    x[t, k] = x[n - 1, k]
            else:
                for t in range(T):
                    x[t, k] = ONE

    @njit
    def scatter(buf, out, c, syms, starts, lens, nk, n_bars):
        for k in range(nk):
            i = syms[k]
            s0 = starts[i]
            n = lens[i]
            for t in range(s0):
                out[c, i, t] = NAN
            for t in range(n):
                out[c, i, s0 + t] = buf[t, k]
            for t in range(s0 + n, n_bars):
                out[c, i, t] = NAN

    @njit
    def process_block(close, src, syms, nk, starts, lens, growth, lengths, weights, cutout, keep,
                      short_thr, long_thr, strategy, out, x, r, ad, m, w1, w2, d, num, den, fs, fe, avg):
        T = 0
        for k in range(nk):
            T = max(T, lens[syms[k]])
        gather(src, syms, starts, lens, nk, T, x)
        gather(close, syms, starts, lens, nk, T, r)
        # r_t = R_t * exp(lam*(t - cutout)), R from the closes; in place, newest bar first
        for t in range(T - 1, 0, -1):
            g = growth[t]
            for k in range(B):
                r[t, k] = ((r[t, k] - r[t - 1, k]) / r[t - 1, k]) * g
        for k in range(B):
            r[0, k] = NAN
            ad[0, k] = ZERO
        for t in range(1, T):
            for k in range(B):
                ad[t, k] = abs(x[t, k] - x[t - 1, k])
        # Layer 1, family by family, line by line
        for f in range(6):
            for t in range(T):
                for k in range(B):
                    num[t, k] = ZERO
                    den[t, k] = ZERO
            for j in range(9):
                L = lengths[f, j]
                if f == 0:
                    ema_block(x, L, m, T)
                elif f == 1:
                    hma_block(x, L, w1, w2, d, m, T)
                elif f == 2:
                    wma_block(x, 0, L, m, T)
                elif f == 3:
                    dema_block(x, L, w1, m, T)
                elif f == 4:
                    lsma_block(x, L, m, T)
                else:
                    kama_block(x, ad, L, m, T)
                accumulate_line(x, m, r, num, den, T, cutout, keep)
            for t in range(min(cutout, T)):
                for k in range(B):
                    fs[f, t, k] = NAN
            for t in range(cutout, T):
                for k in range(B):
                    fs[f, t, k] = round2(num[t, k] / den[t, k])
        # Layer 2: one equity per family driven by the sign of its Layer-1 signal
        for f in range(6):
            for t in range(min(cutout + 1, T)):
                for k in range(B):
                    fe[f, t, k] = NAN
            if cutout < T:
                for k in range(B):
                    fe[f, cutout, k] = start_equity(weights[f])
            for t in range(cutout + 1, T):
                for k in range(B):
                    fe[f, t, k] = equity_step(fe[f, t - 1, k], fs[f, t - 1, k], r[t, k], keep)
        for t in range(T):
            for k in range(B):
                nsum = ZERO
                dsum = ZERO
                for f in range(6):
                    nsum += cut(fs[f, t, k], short_thr, long_thr) * fe[f, t, k]
                    dsum += fe[f, t, k]
                avg[t, k] = ratio_or_zero(nsum, dsum)
        if strategy:
            for t in range(T - 1, 0, -1):
                for k in range(B):
                    avg[t, k] = avg[t - 1, k]
            for k in range(B):
                avg[0, k] = ZERO
        n_bars = close.shape[1]
        for f in range(6):
            scatter(fs[f], out, f, syms, starts, lens, nk, n_bars)
            scatter(fe[f], out, 6 + f, syms, starts, lens, nk, n_bars)
        scatter(avg, out, 12, syms, starts, lens, nk, n_bars)

    @njit
    def process_chunk(c, n_chunks, close, src, order, starts, lens, growth, lengths, weights, cutout,
                      keep, short_thr, long_thr, strategy, out):
        n_valid = order.shape[0]
        n_blocks = (n_valid + B - 1) // B
        if c >= n_blocks:
            return
        T = growth.shape[0]
        x = np.empty((T, B), ft)
        r = np.empty((T, B), ft)
        ad = np.empty((T, B), ft)
        m = np.empty((T, B), ft)
        w1 = np.empty((T, B), ft)
        w2 = np.empty((T, B), ft)
        d = np.empty((T, B), ft)
        num = np.empty((T, B), ft)
        den = np.empty((T, B), ft)
        fs = np.empty((6, T, B), ft)
        fe = np.empty((6, T, B), ft)
        avg = np.empty((T, B), ft)
        for b in range(c, n_blocks, n_chunks):
            lo = b * B
            nk = min(B, n_valid - lo)
            syms = order[lo:lo + nk]
            process_block(close, src, syms, nk, starts, lens, growth, lengths, weights, cutout, keep,
                          short_thr, long_thr, strategy, out, x, r, ad, m, w1, w2, d, num, den,
                          fs, fe, avg)

    @njit
    def run_serial(close, src, order, starts, lens, growth, lengths, weights, cutout, keep,
                   short_thr, long_thr, strategy, out):
        process_chunk(0, 1, close, src, order, starts, lens, growth, lengths, weights, cutout, keep,
                      short_thr, long_thr, strategy, out)

    @njit(parallel=True)
    def run_parallel(close, src, order, starts, lens, growth, lengths, weights, cutout, keep,
                     short_thr, long_thr, strategy, out, n_chunks):
        for c in prange(n_chunks):
            process_chunk(c, n_chunks, close, src, order, starts, lens, growth, lengths, weights,
                          cutout, keep, short_thr, long_thr, strategy, out)

    return SimpleNamespace(
        run_serial=run_serial, run_parallel=run_parallel, lanes=B, ema_block=ema_block,
        dema_block=dema_block, wma_block=wma_block, hma_block=hma_block, lsma_block=lsma_block,
        kama_block=kama_block, accumulate_line=accumulate_line, process_block=process_block,
    )
