"""Batch ATC on the CPU: Numba, fused bar by bar, vectorised across symbols, parallel across threads.

Why it is laid out this way (measured, see docs/PERFORMANCE.md):

* Symbols are processed in blocks of `lanes`. Each symbol's own bars (its non-NaN closes: a NaN is a
  time without a bar of that symbol) are copied, compacted, to rows 0.. of a `(time, lane)` buffer
  and the outputs are scattered back to its own times; every lane then shares its own bar index `t`, so
  warm-up ranges, the cutout and the growth factor `exp(lam*(t-cutout))` are the same for all lanes
  and the innermost loop over lanes has no data-dependent control flow (LLVM vectorises it). A lane
  whose history ends early is padded with its last close; its padded bars are never written out.
  Blocks are filled with symbols sorted by length, so ragged panels waste little.
* Time is the outer loop and all 54 lines advance one bar at a time (MA step -> crossover ->
  equity -> Layer-1 sums), then Layer 2 and the average for that bar. Per-line state lives in small
  `(line, lane)` arrays that stay in L1; nothing of size (symbol, 54, time) exists, and no MA series
  is ever stored. An earlier pass-per-line layout was memory bound at 5 M symbol-bars/s.
* The lane count is a run-time value on purpose: with a compile-time constant LLVM fully unrolls the
  lane loop, and Numba does not run the SLP vectoriser, so the code stays scalar.
* Running window sums are re-anchored (recomputed from the window) every `ANCHOR` bars, so rounding
  drift cannot accumulate over long histories.

All arithmetic is the shared step functions of `kernels.steps`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit as _njit
from numba import prange

from kernels.jitcache import KernelSet
from kernels.steps import build_steps

ANCHOR = 256
"""Bars between exact recomputations of running window sums (a power of two)."""

LANES = {"float64": 32, "float32": 64}
"""Symbols per block: eight AVX2 registers wide. Narrower blocks (16 float64) leave the fused lane
loops of `family_steps` scalar: LLVM checks at run time that their many arrays do not overlap and
only takes the vector path from about 20 lanes up (docs/PERFORMANCE.md)."""


@_njit(cache=True)
def scan_bars(close):
    """Where each symbol's own bars are: first and one-past-last column, number of own bars, and
    the first bad column (-1 if none).

    A NaN close is a time without a bar of that symbol (spec section 7), not an error; a bad bar is
    a close <= 0 or an infinite close. Serial on purpose: it is a few percent of the kernel's time,
    and a parallel region here would be entered by every thread of a multi-threaded Dask worker
    even with `parallel=False`.
    """
    n_sym, n_bars = close.shape
    starts = np.zeros(n_sym, np.int64)
    ends = np.zeros(n_sym, np.int64)
    counts = np.zeros(n_sym, np.int64)
    bad = np.full(n_sym, -1, np.int64)
    for i in range(n_sym):
        first = -1
        last = -1
        n = 0
        for t in range(n_bars):
            v = close[i, t]
            if not np.isnan(v):
                if first < 0:
                    first = t
                last = t
                n += 1
                if bad[i] < 0 and (not (v > 0.0) or np.isinf(v)):
                    bad[i] = t
        if first < 0:
            continue
        starts[i] = first
        ends[i] = last + 1
        counts[i] = n
    return starts, ends, counts, bad


def isqrt(n: int) -> int:
    return math.isqrt(n)


# ---- kernel functions (compiled per float type by build_cpu_kernel) -------------------------
# They read `ft`, the float constants and the step functions from globals that build_cpu_kernel
# supplies per float type; called directly from Python they would fail by design.

_KERNELS = KernelSet()


def _kernel(**options):
    """Register a kernel function. IEEE division (error_model="numpy"): no zero-division check
    in the lane loops, which would keep LLVM from vectorising them (no division here is by zero
    on valid input, so the results are the same)."""
    return _KERNELS.kernel(**{"error_model": "numpy", **options})

# Names the kernel functions read as globals, bound per float type by `_float_env` when
# build_cpu_kernel compiles them; at module level they are only placeholders.
ft = NAN = ZERO = ONE = AM = None
ema_step = dema_value = weighted_slide = wma_value = hma_diff = lsma_value = kama_step = None
cross_step = equity_step = start_equity = round2 = cut = ratio_or_zero = None


@_kernel()
def window_sums(src, t, L, q, S, W, nb):
    """Exact window sums ending at bar t (oldest first): S = sum x, W = sum (pos+1)*x."""
    for k in range(nb):
        S[q + k] = ZERO
        W[q + k] = ZERO
    for j in range(L):
        wj = ft(j + 1)
        row = t - L + 1 + j
        for k in range(nb):
            v = src[row, k]
            S[q + k] += v
            W[q + k] += wj * v


@_kernel()
def family_pass(fam, x, r, T, nb, lens, coef, cutout, keep, fsig, sig_out, store_sig, ma_out,
                store_ma):
    """MA -> crossover -> equity -> Layer-1 signal for the 9 lines of family `fam`, bars 0..T-1.

    With `store_sig`, the crossover state of line j at bar t is also written to
    `sig_out[j, t, k]` (int8): parameter sweeps reuse it for every La/De/cutout combination,
    since the MAs and crossovers depend only on the lengths. With `store_ma`, the MA values
    go to `ma_out[j, t, k]` (for tests and inspection; the batch path never stores them).
    """
    st = new_family_state(nb)
    ring = new_family_ring(fam, lens, nb)
    family_steps(fam, x, 0, r, 0, 0, T, nb, lens, coef, cutout, keep, fsig, st, ring, sig_out,
                 store_sig, ma_out, store_ma, np.empty((3, nb), ft))


@_kernel()
def new_family_state(nb):
    """The per-line state of one family before its first bar (rows in `family_steps`' order)."""
    st = np.zeros((9, 9 * nb), ft)
    for q in range(9 * nb):
        st[0, q] = NAN
    return st


@_kernel()
def new_family_ring(fam, lens, nb):
    sqmax = 1
    for j in range(9):
        sqmax = max(sqmax, lens[fam * 9 + j, 2])
    return np.zeros((9, sqmax, nb), ft)


@_kernel()
def steady_line(fam, t, L, half, sq):
    """Whether line (fam, L) at bar t is past its warm-up and not re-anchoring its window sums,
    so that `family_steps` can take its one-loop path (it must compute exactly what the general
    path computes there)."""
    if fam == 0 or fam == 3:
        return t >= L
    if fam == 5:
        return t > L and ((t - L) & AM) != 0
    if fam == 4 and L <= 2:
        return t >= L
    if fam == 1:
        first = L - 1 + sq - 1
        return (sq > 1 and t >= first and ((t - half + 1) & AM) != 0 and ((t - L + 1) & AM) != 0
                and ((t - first) & AM) != 0)
    return L > 1 and t >= L and ((t - L + 1) & AM) != 0  # WMA, LSMA


@_kernel()
def line_tail(sp, ep, xt, m, xp, mp, rt, keep):
    """Crossover state and equity of one line at a bar past the cutout: (new state, new equity)."""
    return cross_step(sp, xt, m, xp, mp), equity_step(ep, sp, rt, keep)


@_kernel()
def family_steps(fam, x, xo, r, oo, t0, T, nb, lens, coef, cutout, keep, fsig, st, ring, sig_out,
                 store_sig, ma_out, store_ma, scr):
    """Advance the 9 lines of family `fam` from bar t0 to bar T-1, resuming from `st` and `ring`.

    The one implementation of Layer 1 for the batch kernel (t0 = 0, T = the whole history), the
    sweep engine and the streaming engine (one bar at a time), so they agree bit for bit.
    Per-line state `st` (9, 9*nb): rows previous MA, crossover state, equity, and the running
    sums S1, W1, S2, W2, S3, W3; `ring` (9, sq, nb) holds the HMA inner series; `scr` (3, nb) is
    scratch, passed in so that a one-bar call (streaming) allocates nothing. Time-indexed
    buffers are windows: closes `x` hold bar t at row t - xo, returns `r`, `fsig` and the
    optional `sig_out`/`ma_out` hold bar t at row t - oo. `x` must reach back max(L) + 1 bars,
    and xo must be 0 while t < max(L) (KAMA's warm-up reads the first close).

    One function on purpose: the per-bar work for a line is only a few vector instructions,
    and a call with array arguments per (bar, line) would cost more than the work (Numba
    reference-counts every array argument). Only scalar step functions are called inside.
    Sliding window sums are recomputed exactly at their first bar, then every ANCHOR bars,
    and every bar for one-bar windows (an MA equal to the close must stay exactly equal).
    A line past its warm-up and the cutout, at a bar where it does not re-anchor (`steady_line`:
    all but a few bars in 256), runs as one lane loop per line, with the same step functions in
    the same order as the general path below; the general path handles every other bar.
    """
    mprev = st[0]
    s = st[1]
    e = st[2]
    S1 = st[3]
    W1 = st[4]
    S2 = st[5]
    W2 = st[6]
    S3 = st[7]
    W3 = st[8]
    mrow = scr[0]
    num = scr[1]
    den = scr[2]
    for t in range(t0, T):
        for k in range(nb):
            num[k] = ZERO
            den[k] = ZERO
        xr = t - xo
        rr = t - oo
        for j in range(9):
            ln = fam * 9 + j
            q = j * nb
            L = lens[ln, 0]
            if t > cutout and steady_line(fam, t, L, lens[ln, 1], lens[ln, 2]):
                # the common case, one lane loop per line: no warm-up, no re-anchoring, past the cutout.
                # The six loops repeat their tail (state, equity, Layer-1 sums) on purpose: a helper
                # taking arrays would be reference-counted per call and keep the loop scalar.
                if fam == 0:
                    a = coef[ln, 0]
                    b = coef[ln, 1]
                    for k in range(nb):
                        xt = x[xr, k]
                        m = ema_step(S1[q + k], xt, a, b)
                        S1[q + k] = m
                        sn, en = line_tail(s[q + k], e[q + k], xt, m, x[xr - 1, k], mprev[q + k], r[rr, k],
                                           keep)
                        s[q + k] = sn
                        e[q + k] = en
                        num[k] += sn * en
                        den[k] += en
                        mprev[q + k] = m
                elif fam == 3:
                    a = coef[ln, 0]
                    b = coef[ln, 1]
                    for k in range(nb):
                        xt = x[xr, k]
                        e1 = ema_step(S1[q + k], xt, a, b)
                        e2 = ema_step(W1[q + k], e1, a, b)
                        S1[q + k] = e1
                        W1[q + k] = e2
                        m = dema_value(e1, e2)
                        sn, en = line_tail(s[q + k], e[q + k], xt, m, x[xr - 1, k], mprev[q + k], r[rr, k],
                                           keep)
                        s[q + k] = sn
                        e[q + k] = en
                        num[k] += sn * en
                        den[k] += en
                        mprev[q + k] = m
                elif fam == 2:
                    Lf = coef[ln, 0]
                    den_w = coef[ln, 1]
                    for k in range(nb):
                        xt = x[xr, k]
                        s1, w1 = weighted_slide(S1[q + k], W1[q + k], xt, x[xr - L, k], Lf)
                        S1[q + k] = s1
                        W1[q + k] = w1
                        m = wma_value(w1, den_w)
                        sn, en = line_tail(s[q + k], e[q + k], xt, m, x[xr - 1, k], mprev[q + k], r[rr, k],
                                           keep)
                        s[q + k] = sn
                        e[q + k] = en
                        num[k] += sn * en
                        den[k] += en
                        mprev[q + k] = m
                elif fam == 4 and L <= 2:
                    for k in range(nb):
                        xt = x[xr, k]
                        sn, en = line_tail(s[q + k], e[q + k], xt, xt, x[xr - 1, k], mprev[q + k], r[rr, k],
                                           keep)
                        s[q + k] = sn
                        e[q + k] = en
                        num[k] += sn * en
                        den[k] += en
                        mprev[q + k] = xt
                elif fam == 4:
                    Lf = coef[ln, 0]
                    sum_i = coef[ln, 1]
                    den_ls = coef[ln, 2]
                    for k in range(nb):
                        xt = x[xr, k]
                        s1, w1 = weighted_slide(S1[q + k], W1[q + k], xt, x[xr - L, k], Lf)
                        S1[q + k] = s1
                        W1[q + k] = w1
                        m = lsma_value(s1, w1, Lf, sum_i, den_ls)
                        sn, en = line_tail(s[q + k], e[q + k], xt, m, x[xr - 1, k], mprev[q + k], r[rr, k],
                                           keep)
                        s[q + k] = sn
                        e[q + k] = en
                        num[k] += sn * en
                        den[k] += en
                        mprev[q + k] = m
                elif fam == 5:
                    for k in range(nb):
                        xt = x[xr, k]
                        xl = x[xr - L, k]
                        xp = x[xr - 1, k]
                        n1 = S1[q + k] + abs(xt - xp) - abs(xl - x[xr - L - 1, k])
                        S1[q + k] = n1
                        mp = mprev[q + k]
                        m = kama_step(mp, xt, xl, n1)
                        sn, en = line_tail(s[q + k], e[q + k], xt, m, xp, mp, r[rr, k], keep)
                        s[q + k] = sn
                        e[q + k] = en
                        num[k] += sn * en
                        den[k] += en
                        mprev[q + k] = m
                else:  # HMA
                    half = lens[ln, 1]
                    sq = lens[ln, 2]
                    Lf = coef[ln, 0]
                    hf = coef[ln, 1]
                    sqf = coef[ln, 2]
                    den_l = coef[ln, 3]
                    den_h = coef[ln, 4]
                    den_s = coef[ln, 5]
                    slot = t % sq
                    for k in range(nb):
                        xt = x[xr, k]
                        s1, w1 = weighted_slide(S1[q + k], W1[q + k], xt, x[xr - half, k], hf)
                        s2, w2 = weighted_slide(S2[q + k], W2[q + k], xt, x[xr - L, k], Lf)
                        S1[q + k] = s1
                        W1[q + k] = w1
                        S2[q + k] = s2
                        W2[q + k] = w2
                        d_old = ring[j, slot, k]
                        d = hma_diff(wma_value(w1, den_h), wma_value(w2, den_l))
                        ring[j, slot, k] = d
                        s3, w3 = weighted_slide(S3[q + k], W3[q + k], d, d_old, sqf)
                        S3[q + k] = s3
                        W3[q + k] = w3
                        m = wma_value(w3, den_s)
                        sn, en = line_tail(s[q + k], e[q + k], xt, m, x[xr - 1, k], mprev[q + k], r[rr, k],
                                           keep)
                        s[q + k] = sn
                        e[q + k] = en
                        num[k] += sn * en
                        den[k] += en
                        mprev[q + k] = m
                if store_sig:
                    for k in range(nb):
                        sig_out[j, rr, k] = np.int8(s[q + k])
                if store_ma:
                    for k in range(nb):
                        ma_out[j, rr, k] = mprev[q + k]
                continue
            # ---- the MA of this line at bar t, into mrow ----
            if fam == 5:  # KAMA: defined from bar 0
                if t <= L - 1:
                    for k in range(nb):
                        mrow[k] = x[0, k]  # t <= L-1 < window: xo is 0 here
                else:
                    if ((t - L) & AM) == 0:
                        for k in range(nb):
                            S1[q + k] = ZERO
                        for i in range(t - L + 1, t + 1):
                            for k in range(nb):
                                S1[q + k] += abs(x[i - xo, k] - x[i - xo - 1, k])
                    else:
                        for k in range(nb):
                            S1[q + k] = (S1[q + k] + abs(x[t - xo, k] - x[t - xo - 1, k])
                                         - abs(x[t - xo - L, k] - x[t - xo - L - 1, k]))
                    for k in range(nb):
                        mrow[k] = kama_step(mprev[q + k], x[t - xo, k], x[t - xo - L, k], S1[q + k])
            elif fam == 1:  # HMA: WMA(2*WMA(x, half) - WMA(x, L), sq), inner series in a ring
                half = lens[ln, 1]
                sq = lens[ln, 2]
                if t >= half - 1:
                    if half == 1 or ((t - half + 1) & AM) == 0:
                        window_sums(x, t - xo, half, q, S1, W1, nb)
                    else:
                        hf = coef[ln, 1]
                        for k in range(nb):
                            S1[q + k], W1[q + k] = weighted_slide(S1[q + k], W1[q + k], x[t - xo, k],
                                                                  x[t - xo - half, k], hf)
                if t < L - 1:
                    for k in range(nb):
                        mrow[k] = NAN
                else:
                    if L == 1 or ((t - L + 1) & AM) == 0:
                        window_sums(x, t - xo, L, q, S2, W2, nb)
                    else:
                        Lf = coef[ln, 0]
                        for k in range(nb):
                            S2[q + k], W2[q + k] = weighted_slide(S2[q + k], W2[q + k], x[t - xo, k],
                                                                  x[t - xo - L, k], Lf)
                    slot = t % sq
                    den_l = coef[ln, 3]
                    den_h = coef[ln, 4]
                    # d_{t-sq} sits in this slot until it is overwritten with d_t
                    for k in range(nb):
                        mrow[k] = ring[j, slot, k]
                        ring[j, slot, k] = hma_diff(wma_value(W1[q + k], den_h),
                                                    wma_value(W2[q + k], den_l))
                    first = L - 1 + sq - 1
                    if t < first:
                        for k in range(nb):
                            mrow[k] = NAN
                    else:
                        if sq == 1 or ((t - first) & AM) == 0:
                            for k in range(nb):
                                S3[q + k] = ZERO
                                W3[q + k] = ZERO
                            for i in range(sq):
                                wi = ft(i + 1)
                                sl = (t - sq + 1 + i) % sq
                                for k in range(nb):
                                    v = ring[j, sl, k]
                                    S3[q + k] += v
                                    W3[q + k] += wi * v
                        else:
                            sqf = coef[ln, 2]
                            for k in range(nb):
                                S3[q + k], W3[q + k] = weighted_slide(
                                    S3[q + k], W3[q + k], ring[j, slot, k], mrow[k], sqf)
                        den_s = coef[ln, 5]
                        for k in range(nb):
                            mrow[k] = wma_value(W3[q + k], den_s)
            elif t < L - 1:
                for k in range(nb):
                    mrow[k] = NAN
            elif fam == 0 or fam == 3:  # EMA / DEMA (S1 = e1, W1 = e2)
                a = coef[ln, 0]
                b = coef[ln, 1]
                if t == L - 1:
                    for k in range(nb):
                        S1[q + k] = ZERO
                    for i in range(L):
                        for k in range(nb):
                            S1[q + k] += x[i - xo, k]
                    for k in range(nb):
                        S1[q + k] = S1[q + k] / ft(L)
                        W1[q + k] = S1[q + k]
                elif fam == 0:
                    for k in range(nb):
                        S1[q + k] = ema_step(S1[q + k], x[t - xo, k], a, b)
                else:
                    for k in range(nb):
                        e1 = ema_step(S1[q + k], x[t - xo, k], a, b)
                        S1[q + k] = e1
                        W1[q + k] = ema_step(W1[q + k], e1, a, b)
                if fam == 0:
                    for k in range(nb):
                        mrow[k] = S1[q + k]
                else:
                    for k in range(nb):
                        mrow[k] = dema_value(S1[q + k], W1[q + k])
            elif fam == 4 and L <= 2:  # a line through 1 or 2 points passes through x_t
                for k in range(nb):
                    mrow[k] = x[t - xo, k]
            else:  # WMA (2) / LSMA (4) from the same window sums
                Lf = coef[ln, 0]
                if L == 1 or ((t - L + 1) & AM) == 0:
                    window_sums(x, t - xo, L, q, S1, W1, nb)
                else:
                    for k in range(nb):
                        S1[q + k], W1[q + k] = weighted_slide(S1[q + k], W1[q + k], x[t - xo, k],
                                                              x[t - xo - L, k], Lf)
                if fam == 2:
                    den_w = coef[ln, 1]
                    for k in range(nb):
                        mrow[k] = wma_value(W1[q + k], den_w)
                else:
                    sum_i = coef[ln, 1]
                    den_ls = coef[ln, 2]
                    for k in range(nb):
                        mrow[k] = lsma_value(S1[q + k], W1[q + k], Lf, sum_i, den_ls)
            # ---- crossover state, equity, Layer-1 sums ----
            if t == 0:
                pass  # no previous bar: the state stays 0
            elif t <= cutout:
                for k in range(nb):
                    s[q + k] = cross_step(s[q + k], x[t - xo, k], mrow[k], x[t - xo - 1, k], mprev[q + k])
            else:
                for k in range(nb):
                    sp = s[q + k]
                    sn = cross_step(sp, x[t - xo, k], mrow[k], x[t - xo - 1, k], mprev[q + k])
                    en = equity_step(e[q + k], sp, r[t - oo, k], keep)
                    s[q + k] = sn
                    e[q + k] = en
                    num[k] += sn * en
                    den[k] += en
            if t == cutout:
                for k in range(nb):
                    e[q + k] = start_equity(ONE)
                    num[k] += s[q + k] * e[q + k]
                    den[k] += e[q + k]
            for k in range(nb):
                mprev[q + k] = mrow[k]
            if store_sig:
                for k in range(nb):
                    sig_out[j, t - oo, k] = np.int8(s[q + k])
            if store_ma:
                for k in range(nb):
                    ma_out[j, t - oo, k] = mrow[k]
        if t < cutout:
            for k in range(nb):
                fsig[t - oo, k] = NAN
        else:
            for k in range(nb):
                fsig[t - oo, k] = round2(num[k] / den[k])


@_kernel()
def layer2_and_average(obuf, r, T, nb, weights, cutout, keep, short_thr, long_thr, strategy):
    """Family equities (Layer 2) and Average_Signal for bars 0..T-1 (Layer 1 is in obuf[:6])."""
    avg_prev = np.zeros(nb, ft)
    layer2_steps(obuf, 0, r, 0, T, nb, weights, cutout, keep, short_thr, long_thr, strategy, avg_prev,
                 np.empty((3, nb), ft))


@_kernel()
def layer2_steps(obuf, oo, r, t0, T, nb, weights, cutout, keep, short_thr, long_thr, strategy,
                 avg_prev, scr):
    """Layer 2 and Average_Signal from bar t0 to T-1, resuming from the previous bar's row.

    Family equities follow the sign of the previous Layer-1 signal; bar t sits at row t - oo of
    `obuf` and `r` (row t - oo - 1 holds the previous bar when t0 > 0). `avg_prev` carries the
    unshifted average of the previous bar for strategy mode (0 before the first bar). Shared by
    the batch, sweep and streaming engines.
    """
    num = scr[1]
    den = scr[2]
    for t in range(t0, T):
        row = t - oo
        for k in range(nb):
            num[k] = ZERO
            den[k] = ZERO
        for f in range(6):
            if t < cutout:
                for k in range(nb):
                    obuf[6 + f, row, k] = NAN
            elif t == cutout:
                for k in range(nb):
                    obuf[6 + f, row, k] = start_equity(weights[f])
            else:
                for k in range(nb):
                    obuf[6 + f, row, k] = equity_step(obuf[6 + f, row - 1, k], obuf[f, row - 1, k],
                                                      r[row, k], keep)
            for k in range(nb):
                num[k] += cut(obuf[f, row, k], short_thr, long_thr) * obuf[6 + f, row, k]
                den[k] += obuf[6 + f, row, k]
        if strategy:
            for k in range(nb):
                avg = ratio_or_zero(num[k], den[k])
                obuf[12, row, k] = avg_prev[k]
                avg_prev[k] = avg
        else:
            for k in range(nb):
                obuf[12, row, k] = ratio_or_zero(num[k], den[k])


@_kernel()
def process_block(x, p, r, T, nb, growth, lens, coef, weights, cutout, keep, short_thr, long_thr,
                  strategy, obuf, syms, nk, lane_n, cap):
    """x: MA source (T, nb); p: closes for returns; writes the 13 outputs into obuf (13, T, nb).

    `cap` = (on, t, xo, x, fam, ring, prev, avg) are a stream state's arrays (kernels.stream),
    indexed by symbol. With `on`, the block runs in segments that end where a lane's own history
    ends, and each lane's state (window of closes, per-line state, HMA rings, last outputs) is
    copied into `cap` for symbol `syms[k]` at its own last bar: the stream then continues exactly
    where the batch stopped, at no extra compute cost. Segments do not change the arithmetic.
    """
    cap_on, c_t, c_xo, c_x, c_fam, c_ring, c_prev, c_avg = cap
    for k in range(nb):
        r[0, k] = NAN
    for t in range(1, T):
        g = growth[t]
        for k in range(nb):
            r[t, k] = ((p[t, k] - p[t - 1, k]) / p[t - 1, k]) * g
    no_sig = np.zeros((1, 1, 1), np.int8)
    no_ma = np.zeros((1, 1, 1), ft)
    sqmax = 1
    lmax = 1
    for ln in range(54):
        sqmax = max(sqmax, lens[ln, 2])
        lmax = max(lmax, lens[ln, 0])
    sts = np.zeros((6, 9, 9 * nb), ft)
    for f in range(6):
        for q in range(9 * nb):
            sts[f, 0, q] = NAN
    rings = np.zeros((6, 9, sqmax, nb), ft)
    avg_prev = np.zeros(nb, ft)
    scr = np.empty((3, nb), ft)  # scratch rows of family_steps / layer2_steps
    t0 = 0
    while t0 < T:
        e = T
        if cap_on:
            for k in range(nk):
                if lane_n[k] > t0 and lane_n[k] < e:
                    e = lane_n[k]
        for f in range(6):
            family_steps(f, x, 0, r, 0, t0, e, nb, lens, coef, cutout, keep, obuf[f], sts[f], rings[f],
                         no_sig, False, no_ma, False, scr)
        layer2_steps(obuf, 0, r, t0, e, nb, weights, cutout, keep, short_thr, long_thr, strategy, avg_prev, scr)
        if cap_on:
            for k in range(nk):
                if lane_n[k] == e:
                    i = syms[k]
                    xo = max(0, e - lmax - 1)  # the stream reads back max(L) + 1 bars
                    c_t[i] = e
                    c_xo[i] = xo
                    for row in range(e - xo):
                        c_x[i, row, 0] = x[xo + row, k]
                    for f in range(6):
                        for kind in range(9):
                            for j in range(9):
                                c_fam[i, f, kind, j] = sts[f, kind, j * nb + k]
                        for j in range(9):
                            for sl in range(sqmax):
                                c_ring[i, f, j, sl, 0] = rings[f, j, sl, k]
                    for c in range(13):
                        c_prev[i, c, 0, 0] = obuf[c, e - 1, k]
                    c_avg[i, 0] = avg_prev[k]
        t0 = e


# ---- panel <-> block buffers -----------------------------------------------------------------


@_kernel()
def gather(panel, syms, starts, ends, nk, T, buf):
    """Copy each symbol's own bars (its non-NaN closes, in order) to row 0.. of its lane.

    This is where a symbol's series is compacted (spec section 7): the kernel never sees a time
    at which the symbol has no bar. A lane shorter than the block is padded with its last close.
    """
    nb = buf.shape[1]
    for k in range(nb):
        if k < nk:
            i = syms[k]
            n = 0
            for t in range(starts[i], ends[i]):
                v = panel[i, t]
                if not np.isnan(v):
                    buf[n, k] = v
                    n += 1
            for t in range(n, T):
                buf[t, k] = buf[n - 1, k]
        else:
            for t in range(T):
                buf[t, k] = ONE


@_kernel()
def scatter_row(vals, out_row, panel_row, s0, e0):
    """Place one symbol's compacted values back at its own times, NaN at every other time."""
    for t in range(s0):
        out_row[t] = NAN
    n = 0
    for t in range(s0, e0):
        if np.isnan(panel_row[t]):
            out_row[t] = NAN
        else:
            out_row[t] = vals[n]
            n += 1
    for t in range(e0, out_row.shape[0]):
        out_row[t] = NAN


@_kernel()
def scatter(obuf, out, panel, syms, starts, ends, nk):
    for c in range(13):
        for k in range(nk):
            i = syms[k]
            scatter_row(obuf[c, :, k], out[c, i], panel[i], starts[i], ends[i])


@_kernel()
def process_chunk(c, n_chunks, nb, close, src, same_src, order, starts, ends, lens_sym, growth, lens,
                  coef, weights, cutout, keep, short_thr, long_thr, strategy, out, cap):
    n_valid = order.shape[0]
    n_blocks = (n_valid + nb - 1) // nb
    if c >= n_blocks:
        return
    t_max = growth.shape[0]
    x = np.empty((t_max, nb), ft)
    p = x if same_src else np.empty((t_max, nb), ft)
    r = np.empty((t_max, nb), ft)
    obuf = np.empty((13, t_max, nb), ft)
    lane_n = np.zeros(nb, np.int64)
    for b in range(c, n_blocks, n_chunks):
        lo = b * nb
        nk = min(nb, n_valid - lo)
        syms = order[lo:lo + nk]
        T = 0
        for k in range(nk):
            lane_n[k] = lens_sym[syms[k]]
            T = max(T, lane_n[k])
        gather(src, syms, starts, ends, nk, T, x)
        if not same_src:
            gather(close, syms, starts, ends, nk, T, p)
        process_block(x, p, r, T, nb, growth, lens, coef, weights, cutout, keep, short_thr,
                      long_thr, strategy, obuf, syms, nk, lane_n, cap)
        scatter(obuf, out, close, syms, starts, ends, nk)


@_kernel()
def run_serial(nb, close, src, same_src, order, starts, ends, lens_sym, growth, lens, coef, weights,
               cutout, keep, short_thr, long_thr, strategy, out, cap):
    process_chunk(0, 1, nb, close, src, same_src, order, starts, ends, lens_sym, growth, lens, coef,
                  weights, cutout, keep, short_thr, long_thr, strategy, out, cap)


@_kernel(parallel=True)
def run_parallel(n_chunks, nb, close, src, same_src, order, starts, ends, lens_sym, growth, lens,
                 coef, weights, cutout, keep, short_thr, long_thr, strategy, out, cap):
    for c in prange(n_chunks):
        process_chunk(c, n_chunks, nb, close, src, same_src, order, starts, ends, lens_sym, growth,
                      lens, coef, weights, cutout, keep, short_thr, long_thr, strategy, out, cap)


def _float_env(ft) -> dict:
    """The names the kernel functions use besides their arguments: float constants and the
    step functions of `kernels.steps`, all of float type `ft`."""
    st = build_steps(_njit_numpy, ft)
    env = {name: getattr(st, name) for name in (
        "ema_step", "dema_value", "weighted_slide", "wma_value", "hma_diff", "lsma_value",
        "kama_step", "cross_step", "equity_step", "start_equity", "round2", "cut", "ratio_or_zero")}
    env.update(ft=ft, NAN=ft(np.nan), ZERO=ft(0.0), ONE=ft(1.0), AM=ANCHOR - 1)
    return env


def _njit_numpy(fn):
    return _njit(error_model="numpy")(fn)


@lru_cache(maxsize=None)
def build_cpu_kernel(dtype_name: str):
    """Compile the fused block kernel for one float type; inner pieces are exposed for tests.

    Compiled code is cached on disk (kernels.jitcache): only the first process compiles.
    """
    ft = np.dtype(dtype_name).type
    return _KERNELS.compile(globals(), _float_env(ft), lanes=LANES[dtype_name], ft=ft)


def line_tables(params, ft):
    """Per-line integer and float constants, computed once in Python (exact integer arithmetic).

    lens[line] = (L, half, sq) and coef[line] = family-specific constants (see each *_row).
    Lines are numbered family * 9 + j in spec order.
    """
    from kernels.params import FAMILIES

    lens = np.zeros((54, 3), np.int64)
    coef = np.zeros((54, 6), np.float64)
    for f, fam in enumerate(FAMILIES):
        for j, L in enumerate(params.lengths(fam)):
            ln = f * 9 + j
            lens[ln, 0] = L
            if fam in ("EMA", "DEMA"):
                a = 2.0 / (L + 1)
                coef[ln, :2] = (a, 1.0 - a)
            elif fam == "WMA":
                coef[ln, :2] = (L, L * (L + 1) // 2)
            elif fam == "LSMA":
                sum_i = L * (L - 1) // 2
                sum_i2 = (L - 1) * L * (2 * L - 1) // 6
                coef[ln, :3] = (L, sum_i, L * sum_i2 - sum_i * sum_i)
            elif fam == "HMA":
                half = max(L // 2, 1)
                sq = isqrt(L)
                lens[ln, 1:] = (half, sq)
                coef[ln, :] = (L, half, sq, L * (L + 1) // 2, half * (half + 1) // 2, sq * (sq + 1) // 2)
    return lens, coef.astype(ft)
