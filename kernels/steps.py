"""The per-bar recurrences of ATC_SPEC.md, written once and compiled for every target.

`build_steps(jit, ft)` defines the small scalar step functions with the given decorator
(`numba.njit` for the CPU, `numba.cuda.jit(device=True)` for CUDA device code, or the identity for
plain Python in a streaming engine) and the given float type (`numpy.float64` or `numpy.float32`).
Batch CPU, batch GPU and streaming code call these and nothing else for the math, so they agree by
construction. Each function takes and returns scalars only: no arrays, objects, lists or
exceptions, because real CUDA compilation rejects what the simulator would accept.

Constants are created with `ft(...)` at build time: a bare float literal inside jitted code is
float64 and would silently promote float32 arithmetic to float64.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

# round-half-to-even by the 1.5 * 2**52 trick: exact for |v| < 2**51 (ATC only rounds values in
# [-100, 100]); portable to CUDA, where numpy's rint is not available, and free of branches.
_RINT_MAGIC64 = 6755399441055744.0
_RINT_MAGIC32 = 12582912.0  # 1.5 * 2**23, the float32 counterpart


def build_steps(jit, ft=np.float64) -> SimpleNamespace:
    """Compile the step functions for one target (`jit`) and one float type (`ft`)."""
    ft = np.dtype(ft).type
    ZERO = ft(0.0)
    ONE = ft(1.0)
    MINUS_ONE = ft(-1.0)
    TWO = ft(2.0)
    FLOOR = ft(0.25)
    HUNDRED = ft(100.0)
    KAMA_SPAN = ft(0.666 - 0.064)  # spec: (ER*(0.666 - 0.064) + 0.064)^2
    KAMA_SLOW = ft(0.064)
    MAGIC = ft(_RINT_MAGIC64 if ft == np.float64 else _RINT_MAGIC32)

    @jit
    def ema_step(prev, x, a, one_minus_a):
        """EMA recursion e_t = a*x_t + (1-a)*e_{t-1}, in the spec's operation order."""
        return a * x + one_minus_a * prev

    @jit
    def dema_value(e1, e2):
        return TWO * e1 - e2

    @jit
    def weighted_slide(s, w, x_new, x_old, length_f):
        """Slide the window sums of a WMA/LSMA by one bar in O(1).

        `s` = sum of the window, `w` = sum of (position+1)*x with the newest bar weighted `length`.
        Returns the new (s, w); w uses the old s, so the order of the two updates matters.
        """
        w_new = w + length_f * x_new - s
        s_new = s + x_new - x_old
        return s_new, w_new

    @jit
    def wma_value(w, denom):
        return w / denom

    @jit
    def hma_diff(w_half, w_full):
        return TWO * w_half - w_full

    @jit
    def lsma_value(s, w, length_f, sum_i, denom):
        """Least-squares line through the window, evaluated at the newest bar (position L-1).

        With positions i = 0..L-1 (oldest first): sum(i*x) = w - s, slope
        b = (L*sum(i*x) - sum(i)*sum(x)) / (L*sum(i^2) - sum(i)^2), intercept (s - b*sum(i))/L.
        `denom` is 0 only for L == 1, where the line through one point is that point.
        """
        if denom == ZERO:
            return s
        b = (length_f * (w - s) - sum_i * s) / denom
        return (s - b * sum_i) / length_f + b * (length_f - ONE)

    @jit
    def kama_step(k_prev, x, x_old, noise):
        """KAMA update for t >= L: `x_old` = x_{t-L}, `noise` = sum of |x_j - x_{j-1}| over the window."""
        change = abs(x - x_old)
        er = ZERO
        if noise != ZERO:
            er = change / noise
        sc = er * KAMA_SPAN + KAMA_SLOW
        sc = sc * sc
        return k_prev + sc * (x - k_prev)

    @jit
    def cross_step(s_prev, x, m, x_prev, m_prev):
        """Persistent crossover state: +1 on a cross above the MA, -1 below, else unchanged.

        Comparisons with NaN are false, so nothing fires before the MA has two defined bars.
        """
        s = s_prev
        if x > m and x_prev <= m_prev:
            s = ONE
        if x < m and x_prev >= m_prev:
            s = MINUS_ONE
        return s

    @jit
    def equity_step(e_prev, s_prev, r, keep):
        """E_t = max(0.25, E_{t-1} * (1 - dec) * (1 + a_t)); a_t = +-r_t by the previous signal's sign.

        `keep` = 1 - dec; `r` = R_t * exp(lam * (t - cutout)). A zero/NaN previous signal or a NaN
        return gives a = 0.
        """
        a = ZERO
        if s_prev > ZERO:
            a = r
        if s_prev < ZERO:
            a = -r
        if r != r:
            a = ZERO
        e = e_prev * keep * (ONE + a)
        if e > FLOOR:
            return e
        return FLOOR

    @jit
    def start_equity(e0):
        if e0 > FLOOR:
            return e0
        return FLOOR

    @jit
    def round2(v):
        """rint(v * 100) / 100 with round-half-to-even, as numpy.round(v, 2) computes it."""
        y = v * HUNDRED
        if abs(y) < MAGIC:  # NaN and huge values pass through unchanged
            y = (y + MAGIC) - MAGIC
        return y / HUNDRED

    @jit
    def cut(v, short_threshold, long_threshold):
        if v > long_threshold:
            return ONE
        if v < short_threshold:
            return MINUS_ONE
        return ZERO

    @jit
    def ratio_or_zero(num, den):
        """num / den, or 0 where that is not finite (Average_Signal is never NaN)."""
        if den != ZERO:
            q = num / den
            if q - q == ZERO:  # finite
                return q
        return ZERO

    return SimpleNamespace(
        ema_step=ema_step, dema_value=dema_value, weighted_slide=weighted_slide,
        wma_value=wma_value, hma_diff=hma_diff, lsma_value=lsma_value, kama_step=kama_step,
        cross_step=cross_step, equity_step=equity_step, start_equity=start_equity,
        round2=round2, cut=cut, ratio_or_zero=ratio_or_zero, ft=ft,
    )
