"""Out-of-sample and overfitting statistics of a parameter sweep, from per-block sufficient statistics.

NumPy, no I/O; the default CSCV ranking across symbols (per-bar Sharpe, median) runs in one Numba
pass, `kernels/overfit_kernel.py`, imported when used, with the same numbers. Formulas, assumptions
and how to read the results: docs/OVERFITTING.md.

Block statistics layout (what the sweep must produce)
-----------------------------------------------------
The time axis is cut into S contiguous blocks. For one return series r (a strategy's returns on one
symbol, or a portfolio's) and block b, the sweep keeps five sums over the bars of b that carry a
return (a backtest's first bar carries none and is left out, as in `kernels.metrics`):

    field 0  n   count of returns
    field 1  s1  sum r
    field 2  s2  sum r^2
    field 3  s3  sum r^3
    field 4  s4  sum r^4

An array of block statistics is shaped `(n_combinations, S, 5, *extra)`: axis 0 the combinations
(trials), axis 1 the blocks in time order, axis 2 the fields above, then any trailing axes (usually
one, the symbols). `kernels.sweep.sweep_panel(..., folds=S).fold_stats` is exactly this with
`extra = (n_symbols,)`. Sums add, so the statistics of any union of blocks are the sum over its
blocks, and the Sharpe ratio needs only n, s1, s2. Skewness and kurtosis (for the probabilistic and
deflated Sharpe ratios) cannot be recovered from n, s1, s2: they need s3 and s4, which is why five
sums are kept. Functions that only need the Sharpe ratio accept 3 fields as well.

Sharpe ratio (consistent with `kernels.metrics`): mean / std with ddof=1, risk-free rate 0,
`mean = s1 / n`, `var = (s2 - s1^2 / n) / (n - 1)`; per bar, times sqrt(P) when periods per year P
are given. Degenerate cases, as in `kernels.metrics`: n < 2 gives NaN; zero variance gives +inf /
-inf by the sign of the mean, NaN for a zero mean (e.g. a block never in the market). Because the
variance comes from a difference of sums, a variance within rounding of zero (below
`4 n eps s2 / (n - 1)`, eps the float64 epsilon) counts as zero: a constant series must not get a
Sharpe ratio of 1e8 out of cancellation noise.

Ranking: the ranking metric (Sharpe by default) of each combination, aggregated over the trailing
axes when there are any (median by default), orders the combinations. NaN ranks below every number
(a combination that cannot be measured is never preferred); among equal best values the lowest
combination index is selected; ranks of equal values are mid-ranks (see `cscv`).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Union

import numpy as np

from kernels.errors import ATCUserError

BLOCK_FIELDS: tuple[str, ...] = ("n", "s1", "s2", "s3", "s4")
"""Fields of axis 2 of a block-statistics array, in order."""

EULER_GAMMA = 0.5772156649015329
"""Euler-Mascheroni constant, in the expected maximum of N standard normals (DSR)."""

DEFAULT_MAX_SPLITS = 10_000
"""Above this many C(S, S/2) splits, `cscv` draws a seeded random subset of this size."""

_EPS = np.finfo(np.float64).eps
_NORMAL = NormalDist()

Aggregate = Union[str, Callable[[np.ndarray], np.ndarray], None]
Metric = Callable[[np.ndarray], np.ndarray]


class OverfitInputError(ATCUserError, ValueError):
    """Arguments the statistics cannot work with (shapes, block counts, TRAIN:TEST specs)."""


# ---------------------------------------------------------------------------------------------
# Sums, Sharpe ratio, moments


def block_stats_from_returns(returns, n_blocks: int) -> np.ndarray:
    """Block statistics `(n_blocks, 5)` of one return series, by the sweep's block rule.

    For callers that rank series the sweep does not keep (e.g. a portfolio per combination): time
    column c goes to block `c * n_blocks // len(returns)`, as in `kernels.sweep.fold_stats`. NaN
    marks a bar without a return and is skipped; drop a backtest's first bar (its return is a
    placeholder 0) before calling.
    """
    r = np.asarray(returns, np.float64)
    if r.ndim != 1:
        raise OverfitInputError(f"returns must be one series, got shape {r.shape}")
    if not 1 <= n_blocks <= max(len(r), 1):
        raise OverfitInputError(f"n_blocks must be between 1 and the series length ({len(r)}), got {n_blocks}")
    block = np.arange(len(r)) * n_blocks // max(len(r), 1)
    ok = ~np.isnan(r)
    out = np.zeros((n_blocks, 5))
    for k in range(5):
        np.add.at(out[:, k], block[ok], r[ok] ** k)
    return out


def _as_stats(stats, min_fields: int = 3) -> np.ndarray:
    a = np.asarray(stats, np.float64)
    if a.ndim < 3:
        raise OverfitInputError(
            f"block statistics must be (n_combinations, n_blocks, fields, ...), got shape {a.shape}")
    if a.shape[2] < min_fields:
        raise OverfitInputError(
            f"block statistics need {min_fields} fields ({', '.join(BLOCK_FIELDS[:min_fields])}) on axis 2, "
            f"got {a.shape[2]}")
    return a


def _block_mask(blocks, n_blocks: int) -> np.ndarray:
    if blocks is None:
        return np.ones(n_blocks, bool)
    b = np.asarray(blocks)
    if b.dtype == bool:
        if b.shape != (n_blocks,):
            raise OverfitInputError(f"a block mask must have {n_blocks} entries, got {b.shape}")
        return b.copy()
    idx = b.astype(np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= n_blocks):
        raise OverfitInputError(f"block indices must be in 0..{n_blocks - 1}, got {idx.tolist()}")
    mask = np.zeros(n_blocks, bool)
    mask[idx] = True
    return mask


def sum_blocks(stats, blocks=None) -> np.ndarray:
    """Statistics of the union of `blocks` (indices or a boolean mask over axis 1; None = all).

    Returns `(n_combinations, fields, *extra)`. Blocks are added in time order, one at a time, so
    identical inputs give bit-identical sums (ties between identical combinations stay ties).
    """
    a = _as_stats(stats, 1)
    mask = _block_mask(blocks, a.shape[1])
    out = np.zeros(a.shape[:1] + a.shape[2:])
    for b in np.flatnonzero(mask):
        out += a[:, b]
    return out


def _annual_factor(periods_per_year):
    if periods_per_year is None:
        return 1.0
    return np.sqrt(np.asarray(periods_per_year, np.float64))


def sharpe_from_sums(n, s1, s2, periods_per_year=None):
    """Sharpe ratio from a count and the sums of r and r^2 (degenerate rules in the module docstring).

    Kept separate from `sharpe_from_blocks` so that callers holding already-summed statistics (a
    walk-forward stitch, a portfolio) apply the very same rules.
    """
    n, s1, s2 = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (n, s1, s2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        ss = s2 - s1 * mean  # sum of squared deviations
        sr = mean / np.sqrt(ss / (n - 1.0))
        # degenerate entries (few in practice) are fixed afterwards; NaN fails the test and lands here
        bad = ~(ss > 4.0 * n * _EPS * np.abs(s2)) | (n < 2)
        if bad.any():
            mb = mean[bad]
            fix = np.where(mb == 0, np.nan, np.sign(mb) * np.inf)  # zero variance
            fix[(n[bad] < 2) | np.isnan(mb) | np.isnan(ss[bad])] = np.nan
            sr[bad] = fix
        sr = sr * _annual_factor(periods_per_year)
    return sr[()] if sr.ndim == 0 else sr


def sharpe(summed, periods_per_year=None):
    """Sharpe ratio of summed statistics `(n_combinations, fields, *extra)` (fields on axis 1).

    The default ranking metric of `cscv` and `walk_forward`; a custom metric takes the same input.
    """
    s = np.asarray(summed, np.float64)
    return sharpe_from_sums(s[:, 0], s[:, 1], s[:, 2], periods_per_year)


def sharpe_from_blocks(stats, blocks=None, periods_per_year=None):
    """Sharpe ratio of each series on the union of `blocks`: per bar, or annualised with
    `periods_per_year` (a number, or an array broadcasting against the trailing axes, e.g. one
    per symbol).

    `stats` is `(n_combinations, S, fields>=3, *extra)`, or `(S, fields)` for one series (a scalar
    comes back). Same definition as `kernels.metrics` (ddof=1, risk-free 0): over all blocks of a
    sweep's `fold_stats` this equals the sweep's `sharpe` metric up to rounding.
    """
    a = np.asarray(stats, np.float64)
    if a.ndim == 2:
        return float(sharpe_from_blocks(a[None], blocks, periods_per_year)[0])
    return sharpe(sum_blocks(_as_stats(a, 3), blocks), periods_per_year)


@dataclass(frozen=True)
class Moments:
    """Sample moments of the returns from their sums: `n`, `mean`, `std` (ddof=1, as the Sharpe
    ratio), `skew` = m3 / m2^1.5 and `kurt` = m4 / m2^2 (non-excess: 3 for a normal), with m_k the
    central moments with divisor n (the estimators the PSR/DSR papers use)."""

    n: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    skew: np.ndarray
    kurt: np.ndarray


def moments_from_sums(n, s1, s2, s3, s4) -> Moments:
    """Mean, std, skewness and kurtosis from power sums (NaN where n < 2 or the variance is 0).

    Central moments are expanded in raw moments about the mean; fine for returns (mean small next
    to the spread), inaccurate only for series whose spread is many orders below their mean.
    """
    n = np.asarray(n, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.asarray(s1, np.float64) / n
        e2 = np.asarray(s2, np.float64) / n
        e3 = np.asarray(s3, np.float64) / n
        e4 = np.asarray(s4, np.float64) / n
        m2 = e2 - mu * mu
        m3 = e3 - 3 * mu * e2 + 2 * mu ** 3
        m4 = e4 - 4 * mu * e3 + 6 * mu * mu * e2 - 3 * mu ** 4
        bad = (n < 2) | ~(m2 > 4.0 * n * _EPS * np.abs(e2))
        m2 = np.where(bad, np.nan, m2)
        std = np.sqrt(m2 * n / (n - 1))
        skew = m3 / m2 ** 1.5
        kurt = m4 / (m2 * m2)
    return Moments(n, mu, std, skew, kurt)


def moments_from_blocks(stats, blocks=None) -> Moments:
    """`Moments` of each series on the union of `blocks` (needs all 5 fields)."""
    s = sum_blocks(_as_stats(stats, 5), blocks)
    return moments_from_sums(s[:, 0], s[:, 1], s[:, 2], s[:, 3], s[:, 4])


# ---------------------------------------------------------------------------------------------
# Probabilistic and deflated Sharpe ratio


def _phi(z):
    return np.vectorize(_NORMAL.cdf, otypes=[np.float64])(z) if np.ndim(z) else _NORMAL.cdf(float(z))


def probabilistic_sharpe_ratio(sr, n_obs, skew=0.0, kurt=3.0, sr_benchmark=0.0):
    """PSR: probability that the true Sharpe ratio exceeds `sr_benchmark`, given the estimate `sr`.

    All Sharpe ratios per bar (not annualised), `n_obs` the number of returns, `skew` and `kurt`
    (non-excess) those of the same returns. PSR = Phi((sr - sr*) sqrt(n - 1) / sqrt(1 - skew sr +
    (kurt - 1) / 4 sr^2)) (Bailey and Lopez de Prado). NaN in, n_obs < 2, or a non-positive
    variance term (only at the two-point limit kurt = 1 + skew^2) give NaN. Broadcasts.
    """
    sr, n_obs, skew, kurt, bench = np.broadcast_arrays(*(np.asarray(v, np.float64)
                                                         for v in (sr, n_obs, skew, kurt, sr_benchmark)))
    with np.errstate(invalid="ignore", divide="ignore"):
        var_term = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr
        z = (sr - bench) * np.sqrt(n_obs - 1.0) / np.sqrt(var_term)
        bad = ~(var_term > 0) | ~(n_obs >= 2) | np.isnan(z)
        z = np.where(bad, 0.0, z)
    out = np.where(bad, np.nan, _phi(z))
    return float(out) if out.ndim == 0 else out


def expected_max_sharpe(n_trials, sr_variance):
    """SR*: expected maximum Sharpe ratio of `n_trials` independent trials whose true Sharpe ratio
    is 0 and whose estimates have variance `sr_variance` (same units as the estimates):
    sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))).

    One trial involves no selection: SR* = 0. Broadcasts over arrays.
    """
    N = np.asarray(n_trials, np.float64)
    V = np.asarray(sr_variance, np.float64)
    if np.any(N < 1):
        raise OverfitInputError(f"the number of trials must be >= 1, got {n_trials}")

    def one(nt, v):
        if nt == 1:
            return 0.0
        if not v >= 0:
            return math.nan
        z = ((1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / nt)
             + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (nt * math.e)))
        return math.sqrt(v) * z

    out = np.vectorize(one, otypes=[np.float64])(N, V)
    return float(out) if out.ndim == 0 else out


def deflated_sharpe_ratio(sr, n_obs, n_trials, sr_variance, skew=0.0, kurt=3.0):
    """DSR = PSR(SR*) with SR* = `expected_max_sharpe(n_trials, sr_variance)`.

    `sr`, `skew`, `kurt`, `n_obs`: the selected strategy's per-bar Sharpe ratio and its returns'
    moments; `n_trials`: the number of combinations tried; `sr_variance`: the variance of the
    trials' per-bar Sharpe ratios. The probability that the selected strategy's true Sharpe ratio
    beats the best that `n_trials` skill-less trials would show by luck.
    """
    return probabilistic_sharpe_ratio(sr, n_obs, skew, kurt, expected_max_sharpe(n_trials, sr_variance))


@dataclass(frozen=True)
class DeflatedSharpe:
    """`deflated_sharpe_from_blocks` per series (arrays over the trailing axes, or scalars).

    Sharpe ratios are per bar; `sharpe_annual` and `sr_star_annual` are those times sqrt(P) (NaN
    without periods per year).
    """

    selected: np.ndarray
    n_trials: int
    sharpe: np.ndarray
    sr_variance: np.ndarray
    sr_star: np.ndarray
    n_obs: np.ndarray
    skew: np.ndarray
    kurt: np.ndarray
    psr: np.ndarray
    dsr: np.ndarray
    sharpe_annual: np.ndarray
    sr_star_annual: np.ndarray


def deflated_sharpe_from_blocks(stats, blocks=None, selected=None, periods_per_year=None) -> DeflatedSharpe:
    """DSR of the best combination among all trials in `stats` (5 fields), per trailing series.

    The trials are the n_combinations rows; the selected one is the best per-bar Sharpe ratio on
    `blocks` (or the index `selected`, e.g. a choice made elsewhere), and every trial counts in N,
    even one with a NaN Sharpe ratio (it was tried). The variance of the trials' Sharpe ratios
    (ddof=1) uses the finite ones. PSR is also returned, against 0.
    """
    a = _as_stats(stats, 5)
    s = sum_blocks(a, blocks)
    sr_all = sharpe(s)  # (N, *extra), per bar
    n_trials = a.shape[0]
    if selected is None:
        selected = _argbest(sr_all)
    sel = np.asarray(selected, np.int64)
    pick = np.take_along_axis(s, np.broadcast_to(sel, s.shape[2:])[None, None], 0)[0]
    mom = moments_from_sums(*pick[:5])
    sr = sharpe_from_sums(pick[0], pick[1], pick[2])
    finite = np.where(np.isfinite(sr_all), sr_all, np.nan)
    cnt = np.sum(np.isfinite(finite), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(finite, axis=0) / cnt
        var = np.nansum((finite - mean) ** 2, axis=0) / (cnt - 1)
    var = np.where(cnt >= 2, var, np.nan)
    sr_star = expected_max_sharpe(n_trials, var)
    psr = probabilistic_sharpe_ratio(sr, mom.n, mom.skew, mom.kurt, 0.0)
    dsr = probabilistic_sharpe_ratio(sr, mom.n, mom.skew, mom.kurt, sr_star)
    ann = _annual_factor(periods_per_year) if periods_per_year is not None else np.nan
    return DeflatedSharpe(sel, n_trials, sr, var, sr_star, mom.n, mom.skew, mom.kurt, psr, dsr,
                          sr * ann, np.asarray(sr_star) * ann)


# ---------------------------------------------------------------------------------------------
# Ranking helpers


def _rank_key(perf):
    """NaN ranks below everything, -inf included (it becomes -inf and ties with it)."""
    return np.where(np.isnan(perf), -np.inf, perf)


def _argbest(perf):
    """Index of the best value along axis 0; the first of equal best values (deterministic)."""
    return np.argmax(_rank_key(perf), axis=0)


def _nanmedian_rows(x):
    """Median of each row over its non-NaN values (NaN for a row of NaN); sorting is several times
    faster than np.nanmedian on the (combinations x symbols) matrices of a sweep."""
    srt = np.sort(x, axis=1)  # NaN sort last
    k = np.sum(~np.isnan(x), axis=1)
    rows = np.arange(x.shape[0])
    lo = srt[rows, np.maximum((k - 1) // 2, 0)]
    hi = srt[rows, np.minimum(k // 2, x.shape[1] - 1)]
    with np.errstate(invalid="ignore"):
        med = np.where(k % 2 == 1, lo, 0.5 * (lo + hi))
    return np.where(k > 0, med, np.nan)


def _aggregate(perf, how: Aggregate):
    """Reduce `(N, *extra)` to `(N,)`: 'median' of the non-NaN values (robust to an infinite
    Sharpe ratio of a series that never varied), 'mean' of the finite ones, or a function."""
    if perf.ndim == 1:
        return perf
    if callable(how):
        out = np.asarray(how(perf), np.float64)
        if out.shape != (perf.shape[0],):
            raise OverfitInputError(f"aggregate must return one value per combination, got {out.shape}")
        return out
    flat = perf.reshape(perf.shape[0], -1)
    if how == "median":
        return _nanmedian_rows(flat)
    if how == "mean":
        ok = np.isfinite(flat)
        k = ok.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(k > 0, np.where(ok, flat, 0.0).sum(axis=1) / k, np.nan)
    raise OverfitInputError(f"aggregate must be 'median', 'mean', 'pooled' or a function, got {how!r}")


def _performance(summed, metric: Metric | None, aggregate: Aggregate, periods_per_year):
    """Ranking metric of summed statistics `(N, F, *extra)`, aggregated to `(N,)`.

    The default ranking of a sweep (per-bar Sharpe ratio, median across symbols) goes through one
    Numba pass and one partition (`kernels.overfit_kernel`, the same numbers); anything else
    through NumPy."""
    if (metric is None and isinstance(aggregate, str) and aggregate == "median" and periods_per_year is None
            and summed.ndim >= 3 and summed.shape[1] >= 3 and summed[0].size > 0):
        from kernels.overfit_kernel import median_of_padded, sharpe_padded_rows

        a = np.ascontiguousarray(summed, np.float64).reshape(summed.shape[0], summed.shape[1], -1)
        x = np.empty((a.shape[0], a.shape[2]))
        counts = np.empty(a.shape[0], np.int64)
        sharpe_padded_rows(a, x, counts)
        return median_of_padded(x, counts)
    if aggregate == "pooled" and summed.ndim > 2:
        summed = summed.reshape(summed.shape[:2] + (-1,)).sum(axis=2)
        periods_per_year = None if periods_per_year is None else float(np.nanmedian(periods_per_year))
    if metric is None:
        perf = sharpe(summed, periods_per_year)
    else:
        perf = np.asarray(metric(summed), np.float64)
    return _aggregate(perf, aggregate)


def relative_rank(values, index: int) -> float:
    """Relative rank omega = rank / (N + 1) of `values[index]` among N values, rank 1 = worst.

    Equal values get their mid-rank (1 + #lower + (#equal - 1) / 2), so N ties give omega = 1/2;
    NaN ranks lowest (ties with -inf). omega is in (0, 1), so its logit is finite.
    """
    key = _rank_key(np.asarray(values, np.float64))
    x = key[index]
    less = np.sum(key < x)
    eq = np.sum(key == x)
    return float((less + (eq + 1) / 2.0) / (len(key) + 1))


# ---------------------------------------------------------------------------------------------
# Combinatorially symmetric cross-validation (CSCV) and the probability of backtest overfitting


def cscv_splits(n_blocks: int, max_splits: int = DEFAULT_MAX_SPLITS, seed: int = 0):
    """In-sample block sets of CSCV, `(n_splits, n_blocks / 2)` int, and whether they are all.

    All C(S, S/2) halves in lexicographic order when there are at most `max_splits`; otherwise
    `max_splits` distinct halves drawn uniformly at random (numpy `default_rng(seed)`; each draw a
    uniform S/2-subset, repeats discarded), sorted, so that a seed always gives the same splits.
    A half and its complement are different splits (each is the other's out-of-sample).
    """
    S = int(n_blocks)
    if S < 2 or S % 2:
        raise OverfitInputError(f"CSCV needs an even number of blocks >= 2, got {n_blocks}")
    if max_splits < 1:
        raise OverfitInputError(f"max_splits must be >= 1, got {max_splits}")
    total = math.comb(S, S // 2)
    if total <= max_splits:
        return np.array(list(itertools.combinations(range(S), S // 2)), np.int64), True
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < max_splits:
        seen.add(tuple(sorted(rng.choice(S, S // 2, replace=False).tolist())))
    return np.array(sorted(seen), np.int64), False


@dataclass
class CSCVResult:
    """Result of `cscv`. Per split j (arrays of length n_splits, aligned with `splits`):
    `selected[j]` the best combination in-sample, `is_perf[j]` / `oos_perf[j]` its in-sample and
    out-of-sample performance (annualised Sharpe with periods per year), `omega[j]` its relative
    out-of-sample rank, `logit[j]` = ln(omega / (1 - omega)); `valid[j]` False where no combination
    could be measured in-sample (all NaN), such splits are left out of every summary figure.
    """

    pbo: float
    prob_loss: float
    slope: float
    intercept: float
    logit: np.ndarray
    omega: np.ndarray
    selected: np.ndarray
    is_perf: np.ndarray
    oos_perf: np.ndarray
    valid: np.ndarray
    splits: np.ndarray
    exhaustive: bool
    n_combinations: int
    n_blocks: int
    seed: int = field(default=0)

    @property
    def n_splits(self) -> int:
        return int(self.valid.sum())

    def logit_histogram(self, bins=None):
        """Counts and edges of the logits for plotting; default edges every 0.5 symmetric about 0,
        so the bars left of 0 add up to PBO (lambda = 0 lands in the bin starting at 0, and counts
        as overfit: add it when reading PBO off the plot)."""
        lam = self.logit[self.valid]
        if bins is None:
            top = max(0.5, math.ceil(float(np.max(np.abs(lam))) * 2) / 2) if lam.size else 0.5
            bins = np.arange(-top, top + 0.25, 0.5)
        counts, edges = np.histogram(lam, bins=bins)
        return counts, edges

    def summary(self) -> dict:
        """Figures for a table: PBO, probability of loss, degradation fit, logit quantiles."""
        lam = self.logit[self.valid]
        q = np.quantile(lam, [0.05, 0.25, 0.5, 0.75, 0.95]) if lam.size else np.full(5, np.nan)
        return {
            "pbo": self.pbo, "prob_loss": self.prob_loss, "n_splits": self.n_splits,
            "exhaustive": self.exhaustive, "n_combinations": self.n_combinations, "n_blocks": self.n_blocks,
            "degradation_slope": self.slope, "degradation_intercept": self.intercept,
            "logit_mean": float(lam.mean()) if lam.size else math.nan,
            **{k: float(v) for k, v in zip(("logit_q05", "logit_q25", "logit_median", "logit_q75", "logit_q95"), q)},
            "is_perf_median": float(np.nanmedian(self.is_perf[self.valid])) if lam.size else math.nan,
            "oos_perf_median": float(np.nanmedian(self.oos_perf[self.valid])) if lam.size else math.nan,
        }


def _split_sums(by_block, members):
    """Sums over the blocks listed in each row of `members`: `(n_rows, N, F, *extra)`, from the
    statistics with the block axis first (`by_block[b]` contiguous), blocks added in time order
    (identical combinations keep bit-identical sums, so they tie)."""
    out = np.empty((len(members),) + by_block.shape[1:])
    for j, blocks in enumerate(members):
        acc = out[j]
        np.copyto(acc, by_block[blocks[0]])
        for b in blocks[1:]:
            acc += by_block[b]
    return out


def _prefix_sums(by_block, members):
    """Yield, for each row of `members` in turn, the sum over its blocks, added in time order as
    `_split_sums` does (so the very same values), reusing the partial sums of the prefix a row
    shares with the row before: CSCV's halves in lexicographic order share most of theirs (S = 10:
    455 additions instead of 1,008). The array yielded is reused: use it before the next one."""
    k = members.shape[1] if len(members) else 0
    partial = [np.empty(by_block.shape[1:]) for _ in range(k)]
    prev = None
    for row in members:
        d = 0
        if prev is not None:
            while d < k and row[d] == prev[d]:
                d += 1
        for i in range(d, k):  # nothing to add for a repeated row
            if i == 0:
                np.copyto(partial[0], by_block[row[0]])
            else:
                np.add(partial[i - 1], by_block[row[i]], out=partial[i])
        prev = row
        yield partial[-1]


def cscv(stats, *, metric: Metric | None = None, aggregate: Aggregate = "median", periods_per_year=None,
         max_splits: int = DEFAULT_MAX_SPLITS, seed: int = 0) -> CSCVResult:
    """Probability of backtest overfitting by CSCV (Bailey, Borwein, Lopez de Prado, Zhu 2015).

    `stats`: block statistics `(N, S, F, *extra)` of the series being ranked, S even (10 is the
    usual choice: 252 splits). For each split of the S blocks into an in-sample half J and its
    out-of-sample complement: the combination with the best in-sample performance is selected,
    omega is its relative rank among the N out-of-sample performances (`relative_rank`), and
    lambda = logit(omega). PBO = share of splits with lambda <= 0 (the in-sample winner did no
    better than the median out of sample); probability of loss = share with its out-of-sample
    performance < 0; the degradation slope/intercept are the least-squares line of out-of-sample
    on in-sample performance over the splits (pairs in `is_perf`, `oos_perf`).

    Performance: `metric(summed)` on summed statistics `(N, F, *extra)`, default the Sharpe ratio
    (annualised with `periods_per_year`), then reduced over the trailing axes by `aggregate`:
    'median' or 'mean' across series of the finite values, 'pooled' (sum the statistics of all
    series first: the Sharpe ratio of all returns together, annualised with the median periods
    per year), or a function `(N, *extra) -> (N,)`.
    To rank a portfolio, pass the portfolio's block statistics (`block_stats_from_returns`) with
    no trailing axis; for one symbol, `stats[..., i]`.
    """
    a = _as_stats(stats, 3 if metric is None else 1)
    if metric is None:
        a = a[:, :, :3]
    N, S = a.shape[0], a.shape[1]
    if N < 2:
        raise OverfitInputError(f"CSCV needs at least 2 combinations to rank, got {N}")
    splits, exhaustive = cscv_splits(S, max_splits, seed)
    n_sp = len(splits)
    selected = np.zeros(n_sp, np.int64)
    omega = np.full(n_sp, np.nan)
    is_perf = np.full(n_sp, np.nan)
    oos_perf = np.full(n_sp, np.nan)
    valid = np.zeros(n_sp, bool)
    by_block = np.ascontiguousarray(np.moveaxis(a, 1, 0))
    total = _split_sums(by_block, [np.arange(S)])[0]
    outs = np.empty_like(total)
    for j, ins in enumerate(_prefix_sums(by_block, splits)):
        p_is = _performance(ins, metric, aggregate, periods_per_year)
        if np.all(np.isnan(p_is)):
            continue
        np.subtract(total, ins, out=outs)  # the complement; identical combinations still get identical sums
        p_oos = _performance(outs, metric, aggregate, periods_per_year)
        c = int(_argbest(p_is))
        valid[j] = True
        selected[j] = c
        is_perf[j] = p_is[c]
        oos_perf[j] = p_oos[c]
        omega[j] = relative_rank(p_oos, c)
    with np.errstate(divide="ignore"):
        logit = np.log(omega / (1.0 - omega))
    v = valid
    pbo = float(np.mean(logit[v] <= 0)) if v.any() else math.nan
    prob_loss = float(np.mean(oos_perf[v] < 0)) if v.any() else math.nan
    slope, intercept = _ols(is_perf[v], oos_perf[v])
    return CSCVResult(pbo, prob_loss, slope, intercept, logit, omega, selected, is_perf, oos_perf, valid,
                      splits, exhaustive, N, S, seed)


def _ols(x, y):
    """Least-squares slope and intercept of y on x over finite pairs; NaN if x does not vary."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return math.nan, math.nan
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if not sxx > 0:
        return math.nan, math.nan
    slope = float(dx @ (y - y.mean())) / sxx
    return slope, float(y.mean() - slope * x.mean())


def coarsen_blocks(stats, n_groups: int) -> np.ndarray:
    """Merge the S blocks of `stats` into `n_groups` contiguous groups (block b to group
    b * n_groups // S), so one fine grid kept for walk-forward also serves CSCV's S = 10."""
    a = _as_stats(stats, 1)
    S = a.shape[1]
    if not 1 <= n_groups <= S:
        raise OverfitInputError(f"n_groups must be between 1 and the number of blocks ({S}), got {n_groups}")
    group = np.arange(S) * n_groups // S
    out = np.zeros(a.shape[:1] + (n_groups,) + a.shape[2:])
    for b in range(S):
        out[:, group[b]] += a[:, b]
    return out


# ---------------------------------------------------------------------------------------------
# Walk-forward


_UNIT_YEARS = {"y": 1.0, "m": 1.0 / 12.0, "w": 7.0 / 365.25, "d": 1.0 / 365.25}
_PART = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_train_test(spec: str, periods_per_year=None) -> tuple[int, int]:
    """Bar counts of a "TRAIN:TEST" spec, each part a bar count ("500", "500b") or a duration
    ("2y", "6m" months, "13w", "90d" calendar days, decimals allowed) converted with
    `periods_per_year` and rounded to whole bars.

    Durations are calendar time so that one spec means the same span for daily equities (P about
    252: "6m" = 126 bars) and crypto (P about 365: 183 bars). Refuses, naming the part: a missing
    or extra ':', an unknown unit, a fractional bar count, a part of zero bars, or a duration
    without a finite positive `periods_per_year`.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise OverfitInputError(f"walk-forward spec {spec!r} must be TRAIN:TEST, e.g. '2y:6m' or '500:100'")
    out = []
    for name, part in zip(("TRAIN", "TEST"), spec.split(":")):
        m = _PART.match(part)
        if not m:
            raise OverfitInputError(
                f"walk-forward spec {spec!r}: {name} part {part!r} is not a number with an optional unit "
                f"(b bars, y years, m months, w weeks, d days)")
        value, unit = float(m.group(1)), m.group(2).lower()
        if unit in ("", "b", "bar", "bars"):
            if value != int(value):
                raise OverfitInputError(f"walk-forward spec {spec!r}: {name} bar count {m.group(1)} is not whole")
            bars = int(value)
        elif unit in _UNIT_YEARS:
            ppy = math.nan if periods_per_year is None else float(periods_per_year)
            if not (math.isfinite(ppy) and ppy > 0):
                raise OverfitInputError(
                    f"walk-forward spec {spec!r}: {name} {part.strip()!r} is a duration, which needs the "
                    f"periods per year (got {periods_per_year}); give bars instead or set periods per year")
            bars = int(round(value * _UNIT_YEARS[unit] * ppy))
        else:
            raise OverfitInputError(
                f"walk-forward spec {spec!r}: unknown unit {m.group(2)!r} in {name} (b, y, m, w or d)")
        if bars < 1:
            raise OverfitInputError(f"walk-forward spec {spec!r}: {name} {part.strip()!r} is less than one bar")
        out.append(bars)
    return out[0], out[1]


@dataclass(frozen=True)
class WalkForwardPlan:
    """Block grid for a walk-forward of `train_bars`/`test_bars`: run the sweep with
    `folds=folds`; then `walk_forward(stats, train_blocks, test_blocks)`."""

    folds: int
    block_bars: float
    train_blocks: int
    test_blocks: int


def plan_walk_forward(train_bars: int, test_bars: int, n_times: int) -> WalkForwardPlan:
    """Blocks of gcd(train, test) bars over an axis of `n_times` columns.

    The sweep cuts the axis into `folds` blocks of n_times / folds columns (rounded down or up
    by column), so windows are whole blocks and their lengths within one column per block of the
    requested bars. A symbol's own bars in a window may be fewer (holes, late listing).
    """
    if train_bars < 1 or test_bars < 1:
        raise OverfitInputError(f"train and test must be at least one bar, got {train_bars}:{test_bars}")
    if train_bars + test_bars > n_times:
        raise OverfitInputError(
            f"train + test = {train_bars + test_bars} bars does not fit in the {n_times} times of the axis")
    block = math.gcd(int(train_bars), int(test_bars))
    folds = max(1, int(round(n_times / block)))
    return WalkForwardPlan(folds, n_times / folds, train_bars // block, test_bars // block)


@dataclass
class WalkForwardResult:
    """Result of `walk_forward`. Per window w: `windows[w]` = (train_start, train_end, test_start,
    test_end) in blocks (end exclusive), `selected[w]` the combination chosen on the training
    window (-1 if none could be measured), `is_perf[w]` its training performance and
    `oos_perf[w]` its performance on the test window. `oos_stats` `(F, *extra)`: the selected
    combinations' statistics summed over all test windows, i.e. the stitched out-of-sample
    series; `oos_sharpe` its Sharpe ratio per series and `oos_sharpe_agg` aggregated as the
    ranking was. `hindsight_sharpe_agg`: over the same test span, the best single combination
    chosen knowing the whole span, the ceiling walk-forward is compared with.
    """

    windows: np.ndarray
    selected: np.ndarray
    is_perf: np.ndarray
    oos_perf: np.ndarray
    oos_stats: np.ndarray
    oos_sharpe: np.ndarray
    oos_sharpe_agg: float
    is_perf_mean: float
    hindsight_sharpe_agg: float
    hindsight_selected: int


def walk_forward(stats, train: int, test: int, *, step: int | None = None, anchored: bool = False,
                 metric: Metric | None = None, aggregate: Aggregate = "median",
                 periods_per_year=None) -> WalkForwardResult:
    """Rolling (or `anchored`, expanding) walk-forward selection on a block grid.

    `stats` `(N, B, F, *extra)` on a fine grid; `train`, `test`, `step` (default `test`) in
    blocks (`plan_walk_forward` turns bars into blocks). Window w trains on blocks
    [w step, w step + train) (anchored: [0, w step + train)) and tests on the `test` blocks after
    it; only full windows are used. On each training window the best combination by the ranking
    metric (as in `cscv`; ties to the lowest index) is kept for the test window that follows;
    the out-of-sample record is the concatenation of those test windows, never seen when choosing.
    """
    a = _as_stats(stats, 3 if metric is None else 1)
    B = a.shape[1]
    step = test if step is None else step
    for name, v in (("train", train), ("test", test), ("step", step)):
        if int(v) != v or v < 1:
            raise OverfitInputError(f"walk-forward {name} must be a whole number of blocks >= 1, got {v}")
    if train + test > B:
        raise OverfitInputError(f"walk-forward train + test = {train + test} blocks exceeds the {B} blocks given")
    starts = range(0, B - train - test + 1, step)
    windows = np.array([(0 if anchored else s, s + train, s + train, s + train + test) for s in starts], np.int64)
    W = len(windows)
    selected = np.full(W, -1, np.int64)
    is_perf = np.full(W, np.nan)
    oos_perf = np.full(W, np.nan)
    oos_stats = np.zeros(a.shape[2:])
    test_mask = np.zeros(B, bool)
    for w, (a0, a1, b0, b1) in enumerate(windows):
        p_is = _performance(sum_blocks(a, np.arange(a0, a1)), metric, aggregate, periods_per_year)
        if np.all(np.isnan(p_is)):
            continue
        c = int(_argbest(p_is))
        test_mask[b0:b1] = True
        selected[w] = c
        is_perf[w] = p_is[c]
        test_sum = sum_blocks(a[c:c + 1], np.arange(b0, b1))
        oos_perf[w] = _performance(test_sum, metric, aggregate, periods_per_year)[0]
        oos_stats += test_sum[0]
    stitched = sharpe(oos_stats[None], periods_per_year)[0] if metric is None else \
        np.asarray(metric(oos_stats[None]), np.float64)[0]
    agg = float(_performance(oos_stats[None], metric, aggregate, periods_per_year)[0])
    hind = _performance(sum_blocks(a, test_mask), metric, aggregate, periods_per_year)
    h = int(_argbest(hind)) if not np.all(np.isnan(hind)) else -1
    with np.errstate(all="ignore"):
        ism = float(np.nanmean(is_perf)) if np.isfinite(is_perf).any() else math.nan
    return WalkForwardResult(windows, selected, is_perf, oos_perf, oos_stats, stitched, agg, ism,
                             float(hind[h]) if h >= 0 else math.nan, h)
