"""Out-of-sample statistics (kernels/overfit.py) against literal implementations written here:
Sharpe ratios and moments straight from the raw returns (never from the sums), CSCV by looping over
the splits with explicit ranks, walk-forward windows enumerated by hand; the DSR paper's worked
example; and behaviour on noise (no edge) and on a planted edge."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from kernels.metrics import series_metrics
from kernels.overfit import (
    OverfitInputError, block_stats_from_returns, coarsen_blocks, cscv, cscv_splits, deflated_sharpe_from_blocks,
    deflated_sharpe_ratio, expected_max_sharpe, moments_from_blocks, parse_train_test, plan_walk_forward,
    probabilistic_sharpe_ratio, relative_rank, sharpe_from_blocks, walk_forward,
)

GAMMA = 0.5772156649015329


def blocks_of(n_bars, n_blocks):
    """The sweep's block rule (kernels.sweep.fold_stats), written out."""
    return [[t for t in range(n_bars) if t * n_blocks // n_bars == b] for b in range(n_blocks)]


def literal_stats(returns, n_blocks):
    """(N, S, 5) by plain loops, for feeding the code under test."""
    R = np.atleast_2d(returns)
    out = np.zeros((R.shape[0], n_blocks, 5))
    for i, r in enumerate(R):
        for b, ts in enumerate(blocks_of(len(r), n_blocks)):
            for t in ts:
                out[i, b] += [r[t] ** k for k in range(5)]
    return out


def raw_sharpe(r):
    r = np.asarray(r, float)
    return float(np.mean(r) / np.std(r, ddof=1))


def take(r, blocks, n_blocks):
    idx = blocks_of(len(r), n_blocks)
    return np.concatenate([r[idx[b]] for b in sorted(blocks)])


def literal_rank(values, i):
    """rank/(N+1) with mid-ranks for ties, NaN lowest; by explicit comparisons."""
    key = [-math.inf if math.isnan(v) else v for v in values]
    below = sum(1 for v in key if v < key[i])
    same = sum(1 for v in key if v == key[i])
    return (below + (same + 1) / 2) / (len(key) + 1)


def literal_best(values):
    best = None
    for i, v in enumerate(values):
        if math.isnan(v):
            continue
        if best is None or v > values[best]:
            best = i
    return best


# ------------------------------------------------------------------------------------------------
# block statistics, Sharpe ratio, moments


def test_block_stats_follow_the_sweep_block_rule_and_skip_nan():
    r = np.random.default_rng(1).normal(0, 0.01, 103)
    r[[5, 40]] = np.nan
    got = block_stats_from_returns(r, 7)
    want = np.zeros((7, 5))
    for b, ts in enumerate(blocks_of(len(r), 7)):
        for t in ts:
            if not math.isnan(r[t]):
                want[b] += [1, r[t], r[t] ** 2, r[t] ** 3, r[t] ** 4]
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)
    assert got[:, 0].sum() == 101


def test_sharpe_from_blocks_equals_raw_returns_and_metrics_on_any_union():
    rng = np.random.default_rng(2)
    R = rng.normal(0.0003, 0.01, (4, 500))
    st = literal_stats(R, 10)
    for blocks in ([0], [1, 5, 9], list(range(10)), [2, 3, 4, 5, 6]):
        got = sharpe_from_blocks(st, blocks)
        want = [raw_sharpe(take(r, blocks, 10)) for r in R]
        np.testing.assert_allclose(got, want, rtol=1e-10)
        np.testing.assert_allclose(sharpe_from_blocks(st, blocks, 252.0), np.array(want) * math.sqrt(252), rtol=1e-10)
    # boolean mask, one series, and per-symbol periods per year on a trailing axis
    mask = np.zeros(10, bool)
    mask[[1, 2]] = True
    assert sharpe_from_blocks(st[1], mask) == pytest.approx(raw_sharpe(take(R[1], [1, 2], 10)), rel=1e-10)
    st_sym = np.stack([st, st], axis=-1)
    got = sharpe_from_blocks(st_sym, None, np.array([252.0, 365.0]))
    np.testing.assert_allclose(got[:, 1] / got[:, 0], math.sqrt(365 / 252), rtol=1e-12)
    # the same number as kernels.metrics' sharpe on a backtest-like series (bar 0 carries no return)
    ret = np.concatenate([[0.0], R[0]])
    eq = np.cumprod(1 + ret)
    out = np.empty(7)
    series_metrics(ret, eq, len(ret), 252.0, out)
    assert sharpe_from_blocks(literal_stats(R[0], 10), None, 252.0)[0] == pytest.approx(out[3], rel=1e-10)


def test_sharpe_degenerate_cases_follow_the_metrics_rules():
    def st(r):
        return literal_stats(np.asarray(r, float), 1)

    assert math.isnan(sharpe_from_blocks(st([0.01]))[0])           # n < 2
    assert math.isnan(sharpe_from_blocks(np.zeros((1, 3, 5)))[0])  # no returns at all
    assert math.isnan(sharpe_from_blocks(st([0.0] * 50))[0])       # never in the market: 0 / 0
    # constant returns: zero variance whatever the rounding of s2 - s1^2 / n
    assert sharpe_from_blocks(st([0.001] * 997))[0] == math.inf
    assert sharpe_from_blocks(st([-0.0037] * 251))[0] == -math.inf
    assert sharpe_from_blocks(st([0.01, 0.01, 0.02]))[0] == pytest.approx(raw_sharpe([0.01, 0.01, 0.02]))


def test_moments_from_sums_equal_direct_moments():
    rng = np.random.default_rng(3)
    R = np.stack([rng.standard_t(4, 800) * 0.01 + 0.0005, rng.exponential(0.01, 800) - 0.01])
    st = literal_stats(R, 8)
    mom = moments_from_blocks(st, [0, 3, 4, 7])
    for i, r in enumerate(R):
        x = take(r, [0, 3, 4, 7], 8)
        d = x - x.mean()
        m2 = np.mean(d ** 2)
        assert mom.n[i] == len(x)
        assert mom.mean[i] == pytest.approx(x.mean(), rel=1e-10)
        assert mom.std[i] == pytest.approx(np.std(x, ddof=1), rel=1e-10)
        assert mom.skew[i] == pytest.approx(np.mean(d ** 3) / m2 ** 1.5, rel=1e-7)
        assert mom.kurt[i] == pytest.approx(np.mean(d ** 4) / m2 ** 2, rel=1e-7)
    assert mom.skew[1] > 1.0 and mom.kurt[0] > 3.5  # exponential right tail, t(4) fat tails


# ------------------------------------------------------------------------------------------------
# PSR, DSR


def literal_psr(sr, n, skew, kurt, bench):
    z = (sr - bench) * math.sqrt(n - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr ** 2)
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_psr_matches_the_formula_and_its_limits():
    for sr, n, sk, ku, b in [(0.1, 250, 0.0, 3.0, 0.0), (0.05, 1000, -1.2, 7.0, 0.02), (-0.03, 60, 0.5, 4.0, 0.0)]:
        assert probabilistic_sharpe_ratio(sr, n, sk, ku, b) == pytest.approx(literal_psr(sr, n, sk, ku, b), abs=1e-12)
    got = probabilistic_sharpe_ratio(np.array([0.1, 0.2]), 500, 0.0, 3.0)
    assert got.shape == (2,) and got[1] > got[0]
    assert probabilistic_sharpe_ratio(0.05, 500, 0, 3, 0.05) == pytest.approx(0.5)
    assert math.isnan(probabilistic_sharpe_ratio(0.1, 1, 0, 3))
    assert math.isnan(probabilistic_sharpe_ratio(math.nan, 100, 0, 3))
    # negative skew and fat tails widen the estimate's spread: a lower PSR for the same positive SR
    assert probabilistic_sharpe_ratio(0.1, 250, -3, 10) < probabilistic_sharpe_ratio(0.1, 250, 0, 3)


def test_expected_max_sharpe_formula_and_monte_carlo():
    nd = statistics.NormalDist()
    for n, v in [(10, 1.0), (100, 0.5), (1000, 0.01)]:
        want = math.sqrt(v) * ((1 - GAMMA) * nd.inv_cdf(1 - 1 / n) + GAMMA * nd.inv_cdf(1 - 1 / (n * math.e)))
        assert expected_max_sharpe(n, v) == pytest.approx(want, rel=1e-12)
    assert expected_max_sharpe(1, 0.3) == 0.0
    # the formula approximates E[max of N standard normals] (2.508 for N = 100) to a few percent
    mc = np.random.default_rng(4).standard_normal((20000, 100)).max(axis=1).mean()
    assert expected_max_sharpe(100, 1.0) == pytest.approx(mc, rel=0.03)
    with pytest.raises(OverfitInputError):
        expected_max_sharpe(0, 1.0)


def test_dsr_paper_numerical_example():
    """Bailey and Lopez de Prado (2014), "The deflated Sharpe ratio", section "A numerical example":
    N = 100 trials, variance of their annualised Sharpe ratios 1/2, best annualised SR 2.5 over
    T = 1250 daily returns (250 a year), skewness -3, kurtosis 10. The paper states SR* = 0.1132
    (non-annualised) and DSR = 0.9004."""
    ppy = 250
    sr_star = expected_max_sharpe(100, 0.5 / ppy)
    assert sr_star == pytest.approx(0.1132, abs=5e-5)
    dsr = deflated_sharpe_ratio(2.5 / math.sqrt(ppy), 1250, 100, 0.5 / ppy, skew=-3, kurt=10)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_deflated_sharpe_from_blocks_against_literal():
    rng = np.random.default_rng(5)
    R = rng.normal(0, 0.01, (15, 600))
    R[7] += 0.002
    st = literal_stats(R, 6)
    blocks = [0, 1, 2, 3]
    d = deflated_sharpe_from_blocks(st, blocks, periods_per_year=252)
    srs = [raw_sharpe(take(r, blocks, 6)) for r in R]
    best = int(np.argmax(srs))
    x = take(R[best], blocks, 6)
    dd = x - x.mean()
    m2 = np.mean(dd ** 2)
    skew, kurt = np.mean(dd ** 3) / m2 ** 1.5, np.mean(dd ** 4) / m2 ** 2
    v = statistics.variance(srs)
    nd = statistics.NormalDist()
    star = math.sqrt(v) * ((1 - GAMMA) * nd.inv_cdf(1 - 1 / 15) + GAMMA * nd.inv_cdf(1 - 1 / (15 * math.e)))
    assert int(d.selected) == best == 7 and d.n_trials == 15 and d.n_obs == len(x)
    assert d.sharpe == pytest.approx(srs[best], rel=1e-10)
    assert d.sr_variance == pytest.approx(v, rel=1e-8)
    assert d.dsr == pytest.approx(literal_psr(srs[best], len(x), skew, kurt, star), abs=1e-9)
    assert d.psr == pytest.approx(literal_psr(srs[best], len(x), skew, kurt, 0.0), abs=1e-9)
    assert d.sharpe_annual == pytest.approx(srs[best] * math.sqrt(252), rel=1e-10)
    # per symbol on a trailing axis: each symbol its own selection
    two = np.stack([st, st[::-1]], axis=-1)
    dd2 = deflated_sharpe_from_blocks(two, blocks)
    assert dd2.selected.tolist() == [7, 7] and np.allclose(dd2.dsr, d.dsr)


# ------------------------------------------------------------------------------------------------
# CSCV


def literal_cscv(R, S):
    """PBO etc. by looping over every split; Sharpe ratios from the raw returns."""
    lam, loss, pairs = [], [], []
    for J in itertools.combinations(range(S), S // 2):
        Jc = [b for b in range(S) if b not in J]
        ins = [raw_sharpe(take(r, J, S)) for r in R]
        oos = [raw_sharpe(take(r, Jc, S)) for r in R]
        c = literal_best(ins)
        w = literal_rank(oos, c)
        lam.append(math.log(w / (1 - w)))
        loss.append(oos[c] < 0)
        pairs.append((ins[c], oos[c]))
    x, y = np.array(pairs).T
    slope = np.polyfit(x, y, 1)[0]
    return np.array(lam), float(np.mean(np.array(lam) <= 0)), float(np.mean(loss)), slope


def test_cscv_equals_a_literal_loop_over_the_splits():
    rng = np.random.default_rng(6)
    R = rng.normal(0, 0.01, (9, 240))
    R[2] += 0.0008
    lam, pbo, loss, slope = literal_cscv(R, 6)
    res = cscv(literal_stats(R, 6))
    assert res.exhaustive and len(res.splits) == math.comb(6, 3) == res.n_splits
    np.testing.assert_allclose(res.logit, lam, rtol=1e-12, atol=1e-12)
    assert res.pbo == pbo and res.prob_loss == loss
    assert res.slope == pytest.approx(slope, rel=1e-8)
    omega = res.omega
    assert np.all((omega > 0) & (omega < 1))
    counts, edges = res.logit_histogram()
    assert counts.sum() == res.n_splits and edges[0] < res.logit.min() and edges[-1] > res.logit.max()
    s = res.summary()
    assert s["pbo"] == pbo and s["n_splits"] == 20 and s["logit_median"] == pytest.approx(np.median(lam))


def test_cscv_median_across_symbols_equals_literal():
    rng = np.random.default_rng(7)
    N, n_sym, S, T = 5, 3, 4, 120
    R = rng.normal(0, 0.01, (N, n_sym, T))
    st = np.stack([literal_stats(R[:, i], S) for i in range(n_sym)], axis=-1)
    res = cscv(st, aggregate="median")
    for j, J in enumerate(itertools.combinations(range(S), S // 2)):
        Jc = [b for b in range(S) if b not in J]
        ins = [statistics.median(raw_sharpe(take(R[c, i], J, S)) for i in range(n_sym)) for c in range(N)]
        oos = [statistics.median(raw_sharpe(take(R[c, i], Jc, S)) for i in range(n_sym)) for c in range(N)]
        c = literal_best(ins)
        assert res.selected[j] == c
        assert res.omega[j] == pytest.approx(literal_rank(oos, c), abs=1e-12)
    pooled = cscv(st, aggregate="pooled")
    for j, J in enumerate(itertools.combinations(range(S), S // 2)):
        ins = [raw_sharpe(np.concatenate([take(R[c, i], J, S) for i in range(n_sym)])) for c in range(N)]
        assert pooled.selected[j] == literal_best(ins)


def test_ranks_and_ties():
    assert relative_rank([1.0, 2.0, 3.0], 2) == 3 / 4
    assert relative_rank([1.0, 2.0, 3.0], 0) == 1 / 4
    assert relative_rank([5.0, 5.0, 5.0, 5.0], 1) == 0.5        # all tied: the median, logit 0
    assert relative_rank([1.0, 2.0, 2.0, 3.0], 1) == 2.5 / 5      # mid-rank of the two 2.0
    assert relative_rank([math.nan, 1.0, -math.inf], 0) == 1.5 / 4  # NaN ties with -inf, lowest
    # identical combinations: the lowest index is selected, and ranks tie out of sample
    r = np.random.default_rng(8).normal(0, 0.01, 200)
    st = literal_stats(np.stack([r, r, r]), 4)
    res = cscv(st)
    assert res.selected.tolist() == [0] * 6
    np.testing.assert_array_equal(res.logit, 0.0)
    assert res.pbo == 1.0  # lambda <= 0: no evidence the selection adds anything


def test_cscv_random_subset_of_splits_is_seeded_and_distinct():
    sp, full = cscv_splits(18, max_splits=300, seed=3)
    assert not full and sp.shape == (300, 9)
    assert len({tuple(x) for x in sp}) == 300 and all(list(x) == sorted(set(x)) for x in sp)
    np.testing.assert_array_equal(sp, cscv_splits(18, max_splits=300, seed=3)[0])
    assert not np.array_equal(sp, cscv_splits(18, max_splits=300, seed=4)[0])
    assert cscv_splits(10)[0].shape == (252, 5) and cscv_splits(10)[1]
    R = np.random.default_rng(9).normal(0, 0.01, (4, 360))
    res = cscv(literal_stats(R, 18), max_splits=50, seed=1)
    assert res.n_splits == 50 and not res.exhaustive
    with pytest.raises(OverfitInputError, match="even"):
        cscv_splits(7)
    with pytest.raises(OverfitInputError, match="2 combinations"):
        cscv(literal_stats(R[:1], 4))


def ma_strategies(close, lengths):
    """Trend-following on a price path: long above the moving average, short below, position
    decided at the close and earning the next bar's return. No edge on a random walk."""
    R = np.diff(close) / close[:-1]
    out = []
    for L in lengths:
        ma = np.convolve(close, np.ones(L) / L, mode="full")[:len(close)]
        pos = np.where(np.arange(len(close)) >= L - 1, np.sign(close - ma), 0.0)
        out.append(pos[:-1] * R)
    return np.array(out)


def test_noise_pbo_near_half_and_dsr_not_significant():
    """Without an edge the in-sample winner is a random draw out of sample: omega is about uniform,
    so PBO averages 1/2 (one seed alone scatters widely, hence the averages); DSR stays low."""
    pbos, dsrs = [], []
    for seed in range(32):  # independent noise strategies
        R = np.random.default_rng(200 + seed).normal(0, 0.01, (20, 1000))
        st = np.stack([block_stats_from_returns(r, 10) for r in R])
        pbos.append(cscv(st).pbo)
        dsrs.append(float(deflated_sharpe_from_blocks(st).dsr))
    assert 0.35 < np.mean(pbos) < 0.65, np.mean(pbos)  # about 3 standard errors
    # DSR > 0.95 is a 5%-level false positive: rare, and on typical noise DSR is near 1/2
    assert np.mean(np.array(dsrs) > 0.95) <= 0.1 and np.median(dsrs) < 0.8, dsrs
    lengths = [3, 5, 8, 12, 17, 25, 35, 50, 70, 100]
    pbos, dsrs = [], []
    for seed in range(8):  # correlated trials: moving-average rules on random walks
        rng = np.random.default_rng(100 + seed)
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 2001)))
        st = np.stack([block_stats_from_returns(r, 10) for r in ma_strategies(close, lengths)])
        pbos.append(cscv(st).pbo)
        dsrs.append(float(deflated_sharpe_from_blocks(st).dsr))
    assert 0.25 < np.mean(pbos) < 0.75, pbos
    assert max(dsrs) < 0.95, dsrs


def test_planted_edge_low_pbo_high_dsr_and_walk_forward_finds_it():
    rng = np.random.default_rng(11)
    R = rng.normal(0, 0.01, (20, 2000))
    R[13] += 0.0015  # persistent edge: Sharpe 0.15 a bar, about 2.4 a year
    st = np.stack([block_stats_from_returns(r, 10) for r in R])
    res = cscv(st)
    assert res.pbo < 0.05 and res.prob_loss < 0.05
    assert np.mean(res.selected == 13) > 0.9
    d = deflated_sharpe_from_blocks(st)
    assert int(d.selected) == 13 and d.dsr > 0.95
    wf = walk_forward(st, 3, 1)
    assert np.mean(wf.selected == 13) > 0.8 and wf.oos_sharpe_agg > 0.08


# ------------------------------------------------------------------------------------------------
# walk-forward


@pytest.mark.parametrize("anchored", [False, True])
def test_walk_forward_equals_literal_windows(anchored):
    rng = np.random.default_rng(12)
    B, T = 12, 600
    R = rng.normal(0, 0.01, (6, T))
    R[4, : T // 2] += 0.002  # an edge that fades: selections should change
    st = literal_stats(R, B)
    wf = walk_forward(st, 4, 2, anchored=anchored, periods_per_year=252.0)
    want_windows, sel, oos_parts, is_sr, oos_sr = [], [], [], [], []
    s = 0
    while s + 4 + 2 <= B:
        a0 = 0 if anchored else s
        want_windows.append((a0, s + 4, s + 4, s + 6))
        ins = [raw_sharpe(take(r, range(a0, s + 4), B)) for r in R]
        c = literal_best(ins)
        sel.append(c)
        is_sr.append(ins[c] * math.sqrt(252))
        part = take(R[c], range(s + 4, s + 6), B)
        oos_parts.append(part)
        oos_sr.append(raw_sharpe(part) * math.sqrt(252))
        s += 2
    assert wf.windows.tolist() == [list(w) for w in want_windows]
    assert wf.selected.tolist() == sel
    np.testing.assert_allclose(wf.is_perf, is_sr, rtol=1e-10)
    np.testing.assert_allclose(wf.oos_perf, oos_sr, rtol=1e-10)
    stitched = np.concatenate(oos_parts)
    assert wf.oos_sharpe_agg == pytest.approx(raw_sharpe(stitched) * math.sqrt(252), rel=1e-10)
    assert wf.oos_stats[0] == len(stitched)
    span = np.concatenate([take(r, range(4, B), B) for r in R[:1]])
    assert len(span) == wf.oos_stats[0]
    hind = [raw_sharpe(take(r, range(4, B), B)) * math.sqrt(252) for r in R]
    assert wf.hindsight_sharpe_agg == pytest.approx(max(hind), rel=1e-10)
    with pytest.raises(OverfitInputError, match="exceeds"):
        walk_forward(st, 10, 3)


def test_parse_train_test_and_plan():
    assert parse_train_test("500:100") == (500, 100)
    assert parse_train_test(" 500b : 100 ") == (500, 100)
    assert parse_train_test("2y:6m", 252) == (504, 126)
    assert parse_train_test("2y:6m", 365.25) == (730, 183)
    assert parse_train_test("1.5y:13w", 252) == (378, round(13 * 7 / 365.25 * 252))
    assert parse_train_test("365d:30d", 365.25) == (365, 30)
    assert parse_train_test("1y:50", 252) == (252, 50)
    for bad, msg in [("500", "TRAIN:TEST"), ("1:2:3", "TRAIN:TEST"), ("2x:6m", "unknown unit"),
                     ("2y:6m", "periods per year"), ("abc:10", "not a number"), ("0:10", "less than one bar"),
                     ("10.5:3", "not whole"), ("0.4d:10", "less than one bar")]:
        with pytest.raises(OverfitInputError, match=msg):
            parse_train_test(bad, 252 if msg not in ("periods per year",) else None)
    with pytest.raises(OverfitInputError, match="periods per year"):
        parse_train_test("2y:6m", float("nan"))
    p = plan_walk_forward(500, 100, 2500)
    assert (p.folds, p.train_blocks, p.test_blocks, p.block_bars) == (25, 5, 1, 100.0)
    p = plan_walk_forward(504, 126, 2520)
    assert (p.folds, p.train_blocks, p.test_blocks) == (20, 4, 1)
    with pytest.raises(OverfitInputError, match="does not fit"):
        plan_walk_forward(2000, 600, 2500)


def test_coarsen_blocks_merges_contiguous_groups():
    R = np.random.default_rng(13).normal(0, 0.01, (3, 400))
    fine = literal_stats(R, 20)
    coarse = coarsen_blocks(fine, 10)
    np.testing.assert_allclose(coarse, literal_stats(R, 10), rtol=1e-12, atol=1e-300)


def test_cscv_fast_median_path_equals_the_numpy_path():
    """The default ranking (per-bar Sharpe, median across symbols) runs in kernels/overfit_kernel.py;
    any other aggregate runs in NumPy. Same figures to the bit, degenerate entries included: no
    returns, one return, a constant series (+/-inf), a symbol missing for some combinations, ties."""
    from kernels.overfit import _nanmedian_rows

    rng = np.random.default_rng(31)
    N, S, M, T = 7, 6, 9, 240
    R = rng.normal(0.0002, 0.01, (N, M, T))
    R[:, 0] = 0.001            # constant: zero variance, +inf Sharpe
    R[:, 1] = -0.002           # -inf
    R[2:4, 2] = np.nan         # not computed for two combinations
    R[:, 3, :200] = np.nan     # listed late: blocks without returns
    R[:, 4, :-1] = np.nan      # a single return
    R[5] = R[6]                # identical combinations tie
    st = np.stack([np.stack([block_stats_from_returns(R[c, i], S) for i in range(M)], axis=-1) for c in range(N)])
    fast = cscv(st)
    slow = cscv(st, aggregate=lambda p: _nanmedian_rows(p.reshape(p.shape[0], -1)))
    for f in ("logit", "omega", "selected", "is_perf", "oos_perf", "valid"):
        np.testing.assert_array_equal(getattr(fast, f), getattr(slow, f), err_msg=f)
    assert (fast.pbo, fast.prob_loss) == (slow.pbo, slow.prob_loss)
    wf_fast, wf_slow = walk_forward(st, 2, 1), walk_forward(st, 2, 1, aggregate=lambda p: _nanmedian_rows(p))
    np.testing.assert_array_equal(wf_fast.selected, wf_slow.selected)
    np.testing.assert_array_equal(wf_fast.is_perf, wf_slow.is_perf)


def test_median_of_padded_rows_equals_the_median_of_the_real_values():
    """The kernel's trick: NaN written as -inf, +inf in turn leaves the median of the k real values
    at the middle of the row, for every row length and k (reals include +/-inf and ties)."""
    from kernels.overfit_kernel import median_of_padded

    rng = np.random.default_rng(41)
    for M in range(1, 10):
        for k in range(M + 1):
            for rep in range(6):
                v = rng.choice([-np.inf, np.inf, -1.0, 0.5, 0.5, 2.0], k) if rep % 2 else rng.normal(size=k)
                row = np.concatenate([v, [-np.inf if q % 2 == 0 else np.inf for q in range(M - k)]])
                rng.shuffle(row)
                got = median_of_padded(row[None], np.array([k]))[0]
                if k == 0:
                    assert math.isnan(got)
                    continue
                srt = sorted(v)
                with np.errstate(invalid="ignore"):
                    want = srt[k // 2] if k % 2 else 0.5 * (srt[k // 2 - 1] + srt[k // 2])
                assert got == want or (math.isnan(got) and math.isnan(want)), (M, k, v)
