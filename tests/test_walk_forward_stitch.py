"""The stitched out-of-sample walk-forward (pipeline/walk_forward.py) against a recomputation by hand:
each window's combination run by `compute_atc` + `run_backtest` per symbol (not the sweep's code),
its test window's returns averaged over the symbols that have one, composed into an equity and
measured with plain numpy; the per-symbol sums against the sweep's per-block sums; noise against a
planted persistent trend; and the validation figures on one series per combination (a portfolio)
against literal implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_overfit import literal_best, literal_cscv, literal_stats, raw_sharpe, take

from kernels.api import compute_atc
from kernels.backtest import run_backtest
from kernels.overfit import deflated_sharpe_ratio, plan_walk_forward, walk_forward
from kernels.params import ATCParams
from kernels.sweep import make_grid, sweep_panel
from pipeline.validation import ValidationPlan, compute_validation, describe
from pipeline.walk_forward import WF_METRICS, stitch_panel, window_columns

BASE = ATCParams(ema_len=8, hma_len=8, wma_len=8, dema_len=8, lsma_len=8, kama_len=8)
GRID = {"ema_len": [8, 14], "De": [0.0, 3.0]}
SHARPE = WF_METRICS.index("sharpe")


def prices(seed, n_sym=6, T=300, drift=0.0, vol=0.01, holes=True):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(drift, vol, (n_sym, T)), axis=1))
    if holes:
        close[1, :40] = np.nan      # listed late
        close[2, 100:104] = np.nan  # a gap
        close[3, 250:] = np.nan     # delisted
    return close


def returns_by_hand(close, p, b):
    """(n_symbols, T) returns of one combination, NaN where a symbol has none: compute_atc per
    symbol, run_backtest, its first own bar dropped (a placeholder 0)."""
    out = np.full(close.shape, np.nan)
    for i, row in enumerate(close):
        res = compute_atc(row, p, on_bad="status", parallel=False)
        if int(res.status) != 0:
            continue
        r = run_backtest(row, res["Average_Signal"], p, b)["strategy_return"]
        own = np.flatnonzero(~np.isnan(row))
        r[own[0]] = np.nan
        out[i] = r
    return out


def stitched_by_hand(close, combos, columns, selected):
    """Equal-weight average at each test time of the symbols with a return, and its equity."""
    T = close.shape[1]
    avg = np.full(T, np.nan)
    per_symbol = np.full(close.shape, np.nan)
    cache = {}
    for (a0, a1, b0, b1), c in zip(columns, selected):
        if c not in cache:
            cache[c] = returns_by_hand(close, *combos[c])
        R = cache[c]
        per_symbol[:, b0:b1] = R[:, b0:b1]
        for t in range(b0, b1):
            vals = [v for v in R[:, t] if not math.isnan(v)]
            if vals:
                avg[t] = sum(vals) / len(vals)
    return avg, per_symbol, cache


def setup(close, folds_train_test=(60, 30)):
    grid = make_grid(GRID, BASE)
    combos = grid.all_params()
    T = close.shape[1]
    plan = plan_walk_forward(*folds_train_test, T)
    fs = sweep_panel(close, combos, folds=plan.folds, parallel=False).fold_stats
    wf = walk_forward(fs, plan.train_blocks, plan.test_blocks)
    columns = window_columns(wf.windows, T, plan.folds)
    return grid, combos, plan, wf, columns


def test_stitched_equity_equals_a_recomputation_by_hand():
    close = prices(3)
    close[5, 150] = -1.0  # bad data: the symbol is not computed under any combination
    _, combos, _, wf, columns = setup(close)
    assert len(wf.windows) == 8 and (wf.selected >= 0).all()
    sw = stitch_panel(close, dict(enumerate(combos)), columns, wf.selected, periods_per_year=252.0, parallel=False)
    avg, per_symbol, cache = stitched_by_hand(close, combos, columns, wf.selected)
    np.testing.assert_array_equal(np.isnan(sw.oos_return), np.isnan(avg))
    np.testing.assert_allclose(sw.oos_return, avg, rtol=1e-12, atol=1e-15)
    # equity: 1 before the first test bar, NaN outside the stitched span
    b_first, b_last = columns[0, 2], columns[-1, 3]
    eq = np.cumprod(1 + np.nan_to_num(avg[b_first:b_last]))
    np.testing.assert_allclose(sw.oos_equity[b_first:b_last], eq, rtol=1e-12)
    assert np.isnan(sw.oos_equity[:b_first]).all() and np.isnan(sw.oos_equity[b_last:]).all()
    np.testing.assert_array_equal(sw.oos_symbols, (~np.isnan(per_symbol)).sum(axis=0))
    # metrics of the stitched series by plain numpy
    r = avg[~np.isnan(avg)]
    assert sw.oos_metrics[SHARPE] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252), rel=1e-10)
    curve = np.concatenate([[1.0], np.cumprod(1 + r)])
    mdd = np.max(1 - curve / np.maximum.accumulate(curve))
    assert sw.oos_metrics[WF_METRICS.index("max_drawdown")] == pytest.approx(mdd, rel=1e-12)
    assert sw.oos_metrics[WF_METRICS.index("total_return")] == pytest.approx(curve[-1] - 1, rel=1e-12)
    # in-sample: window 2's choice averaged over its own training window
    a0, a1 = columns[2, :2]
    R = cache[int(wf.selected[2])]
    ins = np.array([np.nanmean(R[:, t]) if (~np.isnan(R[:, t])).any() else np.nan for t in range(a0, a1)])
    np.testing.assert_allclose(sw.is_equity[2, a0:a1], np.cumprod(1 + np.nan_to_num(ins)), rtol=1e-12)
    assert np.isnan(sw.is_equity[2, :a0]).all() and np.isnan(sw.is_equity[2, a1:]).all()
    x = ins[~np.isnan(ins)]
    assert sw.window_metrics[2, 0, SHARPE] == pytest.approx(x.mean() / x.std(ddof=1) * math.sqrt(252), rel=1e-10)
    # per symbol: the stitched returns' sums are the walk-forward's sums from the sweep's blocks
    np.testing.assert_allclose(sw.symbol_oos_sums, wf.oos_stats, rtol=1e-10, atol=1e-15)
    assert np.isnan(sw.symbol_oos_metrics[5]).all()  # bad data: never computed, no metric
    for i in range(close.shape[0] - 1):
        ri = per_symbol[i][~np.isnan(per_symbol[i])]
        assert sw.symbol_oos_metrics[i, SHARPE] == pytest.approx(ri.mean() / ri.std(ddof=1) * math.sqrt(252),
                                                                 rel=1e-10)
    fig = sw.figures()
    assert fig["oos"]["sharpe"] == pytest.approx(sw.oos_metrics[SHARPE]) and fig["bars"] == len(r)


def test_noise_has_no_out_of_sample_edge_and_a_planted_trend_has_one():
    """Random walks: the stitched out-of-sample Sharpe ratio scatters around 0 (in-sample choices
    look better than they do afterwards); a persistent up-trend in every symbol is found on each
    training window and carries over: the stitched equity rises with a high Sharpe ratio."""
    noise, gaps = [], []
    for seed in range(4):
        close = prices(100 + seed, n_sym=8, T=600, holes=False)
        _, combos, _, wf, columns = setup(close, (120, 60))
        sw = stitch_panel(close, dict(enumerate(combos)), columns, wf.selected, periods_per_year=252.0,
                          parallel=False)
        noise.append(sw.oos_metrics[SHARPE])
        gaps.append(np.nanmean(sw.window_metrics[:, 0, SHARPE]) - sw.oos_metrics[SHARPE])
    print("noise: stitched OOS Sharpe", np.round(noise, 2), "in-sample minus OOS", np.round(gaps, 2))
    assert abs(np.mean(noise)) < 1.5, noise
    close = prices(7, n_sym=8, T=600, drift=0.002, vol=0.01, holes=False)
    _, combos, _, wf, columns = setup(close, (120, 60))
    sw = stitch_panel(close, dict(enumerate(combos)), columns, wf.selected, periods_per_year=252.0, parallel=False)
    trend = sw.oos_metrics[SHARPE]
    print("trend: stitched OOS Sharpe", round(trend, 2), "total", sw.oos_metrics[0])
    assert trend > 1.5 and trend > max(noise) + 1.0, (trend, noise)
    assert sw.oos_metrics[WF_METRICS.index("total_return")] > 0.2
    assert np.nanmean(sw.window_metrics[:, 1, SHARPE]) > 1.5


# ------------------------------------------------------------------------------------------------
# validation of one series per combination (a portfolio)


def literal_walk_forward(R, S, train, test):
    sel, oos = [], []
    for s0 in range(0, S - train - test + 1, test):
        c = literal_best([raw_sharpe(take(r, range(s0, s0 + train), S)) for r in R])
        sel.append(c)
        oos.append(take(R[c], range(s0 + train, s0 + train + test), S))
    return sel, raw_sharpe(np.concatenate(oos))


def test_validation_of_one_series_per_combination_against_literal():
    rng = np.random.default_rng(21)
    N, S, T = 6, 6, 600
    R = rng.normal(0, 0.01, (N, T))
    R[3] += 0.0012
    R[4] += 0.0004
    st = literal_stats(R, S)
    plan = ValidationPlan(blocks=S, folds=S, walk_forward="200:100", train_blocks=2, test_blocks=1,
                          train_bars=200, test_bars=100)
    v = compute_validation(st, plan)
    assert v["series"] == "one"
    full = [raw_sharpe(r) for r in R]
    assert v["selected"] == literal_best(full) == 3
    _, pbo, loss, slope = literal_cscv(R, S)
    assert v["cscv"]["pbo"] == pbo and v["cscv"]["prob_loss"] == loss and v["cscv"]["n_splits"] == 20
    assert v["cscv"]["degradation_slope"] == pytest.approx(slope, rel=1e-8)
    sel, oos = literal_walk_forward(R, S, 2, 1)
    assert v["walk_forward"]["selected"] == sel
    assert v["walk_forward"]["oos_sharpe"] == pytest.approx(oos, rel=1e-10)
    x = R[3]
    d = x - x.mean()
    m2 = np.mean(d ** 2)
    want = deflated_sharpe_ratio(full[3], T, N, np.var(full, ddof=1), np.mean(d ** 3) / m2 ** 1.5,
                                 np.mean(d ** 4) / m2 ** 2)
    assert v["deflated_sharpe"]["dsr_median"] == pytest.approx(want, rel=1e-8)
    assert v["deflated_sharpe"]["n_trials"] == N and v["deflated_sharpe"]["symbols"] == 1
    # one series per combination = per-symbol statistics of a single symbol
    v1 = compute_validation(st[..., None], plan)
    for key in ("cscv", "deflated_sharpe"):
        assert v1[key] == v[key]
    assert v1["walk_forward"] == v["walk_forward"] and v1["selected"] == v["selected"]
    # the store's portfolio_fold_stats beside the symbols' statistics
    sym = np.stack([literal_stats(R + rng.normal(0, 0.01, R.shape), S) for _ in range(3)], axis=-1)
    both = compute_validation(sym, plan, portfolio_stats=st)
    assert both["series"] == "symbols" and both["portfolio"] == v
    text = describe(both, lambda c: f"combo {c}")
    assert "portfolio per combination (portfolio_fold_stats)" in text and text.count("CSCV") == 2
    bad = compute_validation(sym, plan, portfolio_stats=st[:, :5])
    assert "not used" in bad["portfolio"]["error"] and "not used" in describe(bad, str)
