"""Per-symbol metrics (kernels/metrics.py) against straightforward NumPy/pandas computations of the
formulas in its docstring, and the stated rules for degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kernels.backtest import BacktestParams, run_backtest
from kernels.metrics import METRIC_NAMES, infer_periods_per_year


def naive_metrics(close, pos, ret, eq, fee_bps, ppy):
    """The documented formulas, written the obvious way."""
    r = pd.Series(ret[1:])
    m = len(r)
    out = {"total_return": eq[-1] - 1.0, "buy_hold_return": close[-1] / close[0] - 1.0}
    years = m / ppy
    out["cagr"] = eq[-1] ** (1 / years) - 1 if eq[-1] > 0 else -1.0
    std = r.std(ddof=1)
    out["ann_volatility"] = std * math.sqrt(ppy)
    out["sharpe"] = r.mean() / std * math.sqrt(ppy)
    down = math.sqrt((np.minimum(r, 0) ** 2).sum() / m)
    out["sortino"] = r.mean() / down * math.sqrt(ppy)
    e = pd.Series(eq)
    out["max_drawdown"] = float((1 - e / e.cummax()).max())
    out["calmar"] = out["cagr"] / out["max_drawdown"]
    # trades: walk the positions, keep a list of (direction, entry bar, exit bar)
    trades, open_ = [], None
    for t in range(1, len(pos)):
        if pos[t] != pos[t - 1]:
            if open_ is not None:
                trades.append((open_[0], open_[1], t))
                open_ = None
            if pos[t] != 0:
                open_ = (pos[t], t)
    out["n_trades"] = len(trades) + (open_ is not None)
    # a trade's return: its equity after the exit fee over its capital before the entry fee,
    # the capital bought with E + f E = C, each bar p * R, the exit fee on the position's value
    # at the exit close (the short buys back what it owes)
    f = fee_bps / 1e4
    R = close[1:] / close[:-1] - 1
    wins = []
    for p, a, b in trades:
        E = 1 / (1 + f)
        for t in range(a + 1, b + 1):
            value = E * (1 + R[t - 1])  # the position's size at close t
            E = E * (1 + p * R[t - 1]) - (f * value if t == b else 0.0)
        wins.append(E - 1 > 0)
    out["win_rate"] = np.mean(wins) if wins else np.nan
    out["exposure"] = np.count_nonzero(pos[:-1]) / m
    return out


def _series(seed, n=500, vol=0.015):
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0.0003, vol, n)))
    avg = np.round(np.clip(np.sin(np.arange(n) / 11) + rng.normal(0, 0.3, n), -1, 1), 2)
    return close, avg


@pytest.mark.parametrize("seed,fee_bps,long_only", [(0, 0.0, False), (1, 10.0, False), (2, 3.0, True)])
def test_random_series_against_naive(seed, fee_bps, long_only):
    close, avg = _series(seed)
    bt = run_backtest(close, avg, backtest_params=BacktestParams(fee_bps, long_only), periods_per_year=252)
    exp = naive_metrics(close, bt["position"], bt["strategy_return"], bt["equity"], fee_bps, 252)
    assert exp["n_trades"] > 5 and 0 < exp["win_rate"] < 1
    for name in METRIC_NAMES:
        assert bt.metrics[name] == pytest.approx(exp[name], rel=1e-9, abs=1e-13), name


def test_periods_per_year_override_wins():
    close, avg = _series(4)
    a = run_backtest(close, avg, backtest_params=BacktestParams(periods_per_year=12), periods_per_year=252)
    b = run_backtest(close, avg, periods_per_year=12)
    assert a.periods_per_year == 12 and a.metrics["sharpe"] == b.metrics["sharpe"]


def test_no_trades():
    close, _ = _series(5, n=100)
    bt = run_backtest(close, np.zeros(100), periods_per_year=252)
    m = bt.metrics
    assert m["total_return"] == 0 and m["cagr"] == 0 and m["ann_volatility"] == 0
    assert m["n_trades"] == 0 and m["exposure"] == 0 and m["max_drawdown"] == 0
    assert np.isnan(m["sharpe"]) and np.isnan(m["sortino"]) and np.isnan(m["calmar"]) and np.isnan(m["win_rate"])
    assert m["buy_hold_return"] == pytest.approx(close[-1] / close[0] - 1)


def test_open_trade_only_and_never_losing():
    close = np.array([10, 10, 11, 12, 12.5, 13.0])
    avg = np.array([0, 0.5, 0.5, 0.5, 0.5, 0.5])  # long from bar 1, never closed, prices never fall
    m = run_backtest(close, avg, periods_per_year=252).metrics
    assert m["n_trades"] == 1 and np.isnan(m["win_rate"])  # nothing closed
    assert m["sortino"] == math.inf and m["calmar"] == math.inf and m["max_drawdown"] == 0
    assert m["exposure"] == 0.8 and m["total_return"] == pytest.approx(0.3)  # in the market over 4 of 5 bars


def test_zero_denominators():
    long_from_1 = np.array([0, 0.5, 0.5, 0.5, 0.5, 0.5])
    flat = np.full(6, 7.0)
    m = run_backtest(flat, long_from_1, periods_per_year=1).metrics
    assert np.isnan(m["sharpe"]) and np.isnan(m["sortino"])  # every return exactly 0: 0 / 0
    # one fee and nothing else (buying 1 / 1.001 with all the cash): mean < 0 and std > 0, finite
    # negative Sharpe; no gain: max drawdown = the fee
    m = run_backtest(flat, long_from_1, backtest_params=BacktestParams(fee_bps=10), periods_per_year=1).metrics
    assert m["sharpe"] < 0 and m["total_return"] == pytest.approx(1 / 1.001 - 1, rel=1e-12)
    assert m["max_drawdown"] == pytest.approx(1 - 1 / 1.001, rel=1e-12) and m["calmar"] < 0


def test_short_histories():
    one = run_backtest(np.array([5.0]), np.array([0.0]), periods_per_year=252).metrics
    assert one["total_return"] == 0 and one["max_drawdown"] == 0 and one["n_trades"] == 0
    assert one["buy_hold_return"] == 0
    for name in ("cagr", "ann_volatility", "sharpe", "sortino", "calmar", "win_rate", "exposure"):
        assert np.isnan(one[name]), name
    two = run_backtest(np.array([5.0, 6.0]), np.array([0.0, 0.5]), periods_per_year=252).metrics
    assert np.isnan(two["sharpe"]) and np.isnan(two["ann_volatility"]) and np.isnan(two["sortino"])
    assert two["exposure"] == 0 and two["n_trades"] == 1 and two["cagr"] == 0


def test_unknown_periods_per_year():
    close, avg = _series(6, n=50)
    m = run_backtest(close, avg).metrics  # no override, nothing inferred
    for name in ("cagr", "ann_volatility", "sharpe", "sortino", "calmar"):
        assert np.isnan(m[name]), name
    assert np.isfinite(m["total_return"]) and np.isfinite(m["max_drawdown"])


def test_ruin_gives_cagr_minus_one():
    close = np.array([10.0, 10.0, 25.0, 26.0])  # a short through a +150% bar
    m = run_backtest(close, np.array([0, -0.5, -0.5, -0.5]), periods_per_year=252).metrics
    assert m["total_return"] < -1 and m["cagr"] == -1.0 and m["max_drawdown"] > 1


def test_infer_periods_per_year():
    days = pd.date_range("2001-01-01", periods=3653, freq="D").values
    assert infer_periods_per_year(days) == pytest.approx(365.25, rel=1e-3)
    bdays = pd.bdate_range("2001-01-01", "2010-12-31").values
    assert infer_periods_per_year(bdays) == pytest.approx(261, abs=1)
    hours = pd.date_range("2020-01-01", periods=24 * 366, freq="h").values
    assert infer_periods_per_year(hours) == pytest.approx(24 * 365.25, rel=1e-3)
    assert np.isnan(infer_periods_per_year(days[:1]))
    assert np.isnan(infer_periods_per_year(np.arange(10)))
    assert np.isnan(infer_periods_per_year(np.array([days[0], days[0]])))
