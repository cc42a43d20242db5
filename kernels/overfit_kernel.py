"""Numba kernel for the hot loop of CSCV across symbols (kernels/overfit.py imports it when used).

CSCV on a sweep ranks the combinations, for both halves of every split, by the median across
symbols of the Sharpe ratio: 252 splits x 2 halves x (combinations x symbols) Sharpe ratios and
medians. In NumPy each Sharpe ratio costs a dozen passes over memory plus a full sort per row; here
one pass computes a row's Sharpe ratios and a selection finds its median.

The numbers are those of `overfit.sharpe_from_sums` followed by `overfit._nanmedian_rows`: the same
IEEE operations in the same order (no fastmath, so no reassociation or fused multiply-add), the
same degenerate rules, and the median from the same order statistics (selection instead of a sort
finds the same values). `tests/test_overfit.py` checks equality against the NumPy path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_EPS = np.finfo(np.float64).eps


@njit(cache=True, error_model="numpy")
def sharpe_median_rows(summed, out, buf):
    """`out[i]` = median over the symbols j of the Sharpe ratio of `summed[i, :3, j]` (n, s1, s2),
    NaN values left out (NaN if all are); `buf` is scratch of at least 2 x n_symbols.

    The Sharpe loop is branch-free (selects) so that it vectorises; the NaN are dropped after it."""
    N = summed.shape[0]
    M = summed.shape[2]
    row = buf[:M]
    vals = buf[M:2 * M]
    for i in range(N):
        n_ = summed[i, 0]
        s1_ = summed[i, 1]
        s2_ = summed[i, 2]
        for j in range(M):
            n = n_[j]
            s1 = s1_[j]
            s2 = s2_[j]
            mean = s1 / n
            ss = s2 - s1 * mean
            sr = mean / np.sqrt(ss / (n - 1.0))
            bad = not (ss > 4.0 * n * _EPS * np.abs(s2)) or n < 2
            nan = n < 2 or mean != mean or ss != ss or mean == 0
            fix = np.nan if nan else (np.inf if mean > 0 else -np.inf)
            row[j] = fix if bad else sr
        k = 0
        for j in range(M):
            v = row[j]
            if v == v:
                vals[k] = v
                k += 1
        if k == 0:
            out[i] = np.nan
            continue
        h = k // 2
        p = np.partition(vals[:k], h)
        hi = p[h]
        if k % 2 == 1:
            out[i] = hi
        else:
            lo = p[0]
            for q in range(1, h):
                if p[q] > lo:
                    lo = p[q]
            out[i] = 0.5 * (lo + hi)
