"""Numba kernel for the hot loop of CSCV across symbols (kernels/overfit.py imports it when used).

CSCV on a sweep ranks the combinations, for both halves of every split, by the median across
symbols of the Sharpe ratio: 252 splits x 2 halves x (combinations x symbols) Sharpe ratios and
medians. In NumPy each Sharpe ratio costs a dozen passes over memory and the NaN-skipping median
a full sort of every row. Here one branch-free pass (it vectorises) computes the Sharpe ratios,
and the median comes from one `np.partition` of the matrix at two fixed positions: the kernel
writes each row's NaN (symbols without a Sharpe ratio) as -inf and +inf alternately, which leaves
the median of the other values at the middle of the row (`median_of_padded`).

The numbers are those of `overfit.sharpe_from_sums` followed by `overfit._nanmedian_rows`: the same
IEEE operations in the same order (no fastmath, so no reassociation or fused multiply-add), the
same degenerate rules, and the median from the same order statistics (padding with values below
and above all others shifts ranks, not values). `tests/test_overfit.py` checks equality against
the NumPy path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_EPS = np.finfo(np.float64).eps


@njit(cache=True, error_model="numpy")
def sharpe_padded_rows(summed, out, counts):
    """`out[i, j]` = the Sharpe ratio of `summed[i, :3, j]` (n, s1, s2) by `sharpe_from_sums`'
    operations and rules, its NaN replaced by -inf, +inf, -inf, ... in turn along the row;
    `counts[i]` = how many were not NaN."""
    N = summed.shape[0]
    M = summed.shape[2]
    for i in range(N):
        n_ = summed[i, 0]
        s1_ = summed[i, 1]
        s2_ = summed[i, 2]
        row = out[i]
        for j in range(M):
            n = n_[j]
            s1 = s1_[j]
            s2 = s2_[j]
            mean = s1 / n
            ss = s2 - s1 * mean
            sr = mean / np.sqrt(ss / (n - 1.0))
            bad = not (ss > 4.0 * n * _EPS * np.abs(s2)) or n < 2
            nan = n < 2 or np.isnan(mean) or np.isnan(ss) or mean == 0
            fix = np.nan if nan else (np.inf if mean > 0 else -np.inf)
            row[j] = fix if bad else sr
        q = 0
        for j in range(M):
            if row[j] != row[j]:
                row[j] = -np.inf if q % 2 == 0 else np.inf
                q += 1
        counts[i] = M - q


def median_of_padded(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median of the `counts[i]` real values of each row of `x` `(N, M)` whose other entries are
    (M - k + 1) // 2 copies of -inf and (M - k) // 2 of +inf (`sharpe_padded_rows`); NaN where
    k = 0. The k real values sit after p = (M - k + 1) // 2 entries in sorted order, so their
    middle ones are at p + (k - 1) // 2 and p + k // 2: always M // 2 - 1, M // 2 (M even) or
    (M - 1) // 2, (M + 1) // 2 (M odd), whatever k, hence one partition for all rows."""
    N, M = x.shape
    k = np.asarray(counts, np.int64)
    out = np.full(N, np.nan)
    has = k > 0
    if M == 0 or not has.any():
        return out
    a = M // 2 - 1 if M % 2 == 0 else (M - 1) // 2
    kth = [p for p in (a, a + 1) if 0 <= p < M]
    part = np.partition(x, kth, axis=1)
    p = (M - k + 1) // 2
    rows = np.flatnonzero(has)
    lo = part[rows, (p + (k - 1) // 2)[rows]]
    hi = part[rows, (p + k // 2)[rows]]
    with np.errstate(invalid="ignore"):
        out[rows] = np.where(k[rows] % 2 == 1, lo, 0.5 * (lo + hi))
    return out
