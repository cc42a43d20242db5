"""Positions, strategy returns and equity (kernels/backtest.py) against straightforward NumPy/pandas
computations of the rules in its docstring, on hand-made and random series."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ATCParams, compute_atc
from kernels.backtest import BacktestParams, run_backtest, split_params
from kernels.params import ATCParamError


def naive_positions(avg, long_thr=0.1, short_thr=-0.1, long_only=False):
    """The direction state machine, one bar at a time in plain Python."""
    d, out = 0.0, []
    for t in range(len(avg)):
        if t > 0:
            if avg[t] > long_thr and avg[t - 1] <= long_thr:
                d = 1.0
            elif avg[t] < short_thr and avg[t - 1] >= short_thr:
                d = -1.0
        out.append(max(d, 0.0) if long_only else d)
    return np.array(out)


def solve_equity(V, H, p, f):
    """The post-trade equity E of `E = V - f * |p * E - H|` (fee on the value traded, sized after the
    fee), by fixed-point iteration: a contraction with factor f * |p| < 1, independent of the
    closed form in kernels/backtest.py."""
    E = V
    for _ in range(200):
        E = V - f * abs(p * E - H)
    return E


def naive_backtest(close, avg, fee_bps=0.0, long_only=False, long_thr=0.1, short_thr=-0.1):
    """Equity bar by bar from the defining equation: holdings p * E after each close, a position
    that does not change is not traded."""
    pos = naive_positions(avg, long_thr, short_thr, long_only)
    f = fee_bps / 1e4
    eq = [1.0]
    for t in range(1, len(close)):
        R = close[t] / close[t - 1] - 1
        E0, p0, p = eq[-1], pos[t - 1], pos[t]
        V = E0 * (1 + p0 * R)
        eq.append(V if p == p0 else solve_equity(V, p0 * E0 * (1 + R), p, f))
    eq = np.array(eq)
    ret = np.concatenate([[0.0], eq[1:] / eq[:-1] - 1])
    return pos, ret, eq


def test_hand_made_positions_and_returns():
    avg = np.array([0.0, 0.05, 0.2, 0.3, 0.0, -0.2, -0.5, 0.15, 0.15, 0.1])
    close = np.array([100, 101, 102, 100, 99, 98, 97, 99, 100, 101], float)
    # crosses: up at 2, down at 5, up at 7; 0.15 -> 0.15 is no new cross
    expect_pos = [0, 0, 1, 1, 1, -1, -1, 1, 1, 1]
    res = run_backtest(close, avg)
    np.testing.assert_array_equal(res["position"], expect_pos)
    R = close[1:] / close[:-1] - 1
    expect_ret = np.concatenate([[0.0], np.array(expect_pos[:-1]) * R])
    np.testing.assert_allclose(res["strategy_return"], expect_ret, rtol=0, atol=1e-15)
    np.testing.assert_allclose(res["equity"], np.cumprod(1 + expect_ret), rtol=1e-14)
    # position decided at bar t earns R_{t+1}: bar 3's return belongs to the long taken at bar 2
    assert res["strategy_return"][3] == pytest.approx(100 / 102 - 1)

    lo = run_backtest(close, avg, backtest_params=BacktestParams(long_only=True))
    np.testing.assert_array_equal(lo["position"], [0, 0, 1, 1, 1, 0, 0, 1, 1, 1])


def test_fees_on_the_value_traded():
    avg = np.array([0.0, 0.2, -0.2, -0.2, 0.0, 0.2, 0.2])
    close = np.full(7, 50.0)  # flat prices: only fees move equity
    res = run_backtest(close, avg, backtest_params=BacktestParams(fee_bps=10))
    np.testing.assert_array_equal(res["position"], [0, 1, -1, -1, -1, 1, 1])
    f = 10 / 1e4
    # entry from cash: buy E with E + f E = 1; reversal: sell the long (V) and short E',
    # E' = V - f (V + E'); unchanged positions trade nothing
    entry = 1 / (1 + f) - 1
    rev = (1 - f) / (1 + f) - 1
    np.testing.assert_allclose(res["strategy_return"], [0, entry, rev, 0, 0, rev, 0], rtol=1e-12, atol=0)
    assert res["equity"][-1] == pytest.approx((1 - f) ** 2 / (1 + f) ** 3, rel=1e-14)


def test_fee_on_a_moving_bar():
    """The fee is on the value traded at the close, after the bar's move: a long of 1 that gains
    10% and exits sells 1.1; a short of 1 that loses 10% and exits buys back 1.1 and keeps 0.9."""
    f = 0.01  # 100 bps, to make the difference visible
    close = np.array([100.0, 100.0, 110.0, 110.0, 121.0])
    long_exit = run_backtest(close, np.array([0, 0.5, -0.5, -0.5, -0.5]),
                             backtest_params=BacktestParams(fee_bps=100, long_only=True))
    np.testing.assert_array_equal(long_exit["position"], [0, 1, 0, 0, 0])
    assert long_exit["equity"][2] == pytest.approx(1.1 * (1 - f) / (1 + f), rel=1e-14)
    short_exit = run_backtest(close, np.array([0, -0.5, 0.5, 0.5, 0.5]), backtest_params=BacktestParams(fee_bps=100))
    np.testing.assert_array_equal(short_exit["position"], [0, -1, 1, 1, 1])
    E1 = 1 / (1 + f)
    # close 2: the short lost 10% (V = 0.9 E1) and reverses: it buys back 1.1 E1 of stock and buys
    # E2 of the long, E2 = 0.9 E1 - f (1.1 E1 + E2)
    E2 = (0.9 * E1 - f * 1.1 * E1) / (1 + f)
    np.testing.assert_allclose(short_exit["equity"], [1, E1, E2, E2, E2 * 1.1], rtol=1e-14)


def test_thresholds_come_from_the_atc_params():
    avg = np.array([0.0, 0.2, 0.4, 0.2, -0.05, -0.3])
    close = np.linspace(10, 11, 6)
    res = run_backtest(close, avg, ATCParams(long_threshold=0.3, short_threshold=0.0))
    np.testing.assert_array_equal(res["position"], [0, 0, 1, 1, -1, -1])


@pytest.mark.parametrize("fee_bps,long_only", [(0.0, False), (5.0, False), (25.0, True)])
def test_random_series_against_naive(fee_bps, long_only):
    rng = np.random.default_rng(int(fee_bps) + long_only)
    n = 400
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    avg = np.round(np.clip(np.sin(np.arange(n) / 9) + rng.normal(0, 0.3, n), -1, 1), 2)
    pos, ret, eq = naive_backtest(close, avg, fee_bps, long_only)
    res = run_backtest(close, avg, backtest_params=BacktestParams(fee_bps=fee_bps, long_only=long_only))
    np.testing.assert_array_equal(res["position"], pos)
    np.testing.assert_allclose(res["strategy_return"], ret, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res["equity"], eq, rtol=1e-10)
    assert len(np.unique(pos)) == (2 if long_only else 3)  # the series really trades


def test_panel_spans_and_not_ok_symbols():
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (4, 300)), axis=1))
    close[1, :40] = np.nan  # late listing
    close[2, 250:] = np.nan  # delisting
    res_atc = compute_atc(close, ATCParams(ema_len=10, hma_len=10, wma_len=10, dema_len=10, lsma_len=10,
                                           kama_len=10), parallel=False)
    ok = res_atc.status == 0
    ok[3] = False  # pretend symbol 3 failed
    bt = run_backtest(close, res_atc["Average_Signal"], ok=ok, periods_per_year=252)
    for name in ("position", "strategy_return", "equity"):
        a = bt[name]
        assert np.isnan(a[1, :40]).all() and np.isfinite(a[1, 40:]).all()
        assert np.isnan(a[2, 250:]).all() and np.isfinite(a[2, :250]).all()
        assert np.isnan(a[3]).all()
    for i in range(3):
        lo, hi = (40, 300) if i == 1 else (0, 250 if i == 2 else 300)
        alone = run_backtest(close[i, lo:hi], res_atc["Average_Signal"][i, lo:hi], periods_per_year=252)
        np.testing.assert_array_equal(bt["equity"][i, lo:hi], alone["equity"])
        for m, v in bt.metrics.items():
            assert v[i] == alone.metrics[m] or (np.isnan(v[i]) and np.isnan(alone.metrics[m])), m
    assert all(np.isnan(v[3]) for v in bt.metrics.values())


def test_all_flat_prices():
    close = np.full(200, 20.0)
    res = compute_atc(close)
    bt = run_backtest(close, res["Average_Signal"], periods_per_year=252)
    assert (bt["strategy_return"] == 0).all() and (bt["equity"] == 1).all()
    m = bt.metrics
    assert m["total_return"] == 0 and m["buy_hold_return"] == 0 and m["max_drawdown"] == 0
    assert m["ann_volatility"] == 0 and np.isnan(m["sharpe"]) and np.isnan(m["sortino"])


def test_params_validation_and_coercion():
    assert BacktestParams.from_mapping({"fee_bps": "7.5", "long_only": "yes"}) == BacktestParams(7.5, True)
    assert BacktestParams.from_mapping({"periods_per_year": "auto"}).periods_per_year is None
    assert BacktestParams.from_mapping({"fee_bps": 3}).fee_bps == 3.0
    for bad, word in [({"fee_bps": -1}, "fee_bps"), ({"fee_bps": float("nan")}, "fee_bps"),
                      ({"fee_bps": 10_000}, "fee_bps"), ({"fee_bps": "cheap"}, "fee_bps"),
                      ({"long_only": "maybe"}, "long_only"), ({"long_only": 1}, "long_only"),
                      ({"periods_per_year": 0}, "periods_per_year"), ({"fees": 1}, "unknown")]:
        with pytest.raises(ATCParamError, match=word):
            BacktestParams.from_mapping(bad)


def test_split_params():
    atc, bt = split_params({"ema_len": "30", "fee_bps": "2", "long_only": "true", "La": 0.05})
    assert (atc.ema_len, atc.La, bt.fee_bps, bt.long_only) == (30, 0.05, 2.0, True)
    with pytest.raises(ATCParamError, match="unknown parameter.*fee_bp"):
        split_params({"fee_bp": 2})
    with pytest.raises(ATCParamError, match="long_threshold"):
        split_params({"long_threshold": -1.0})
    atc2, bt2 = split_params({"De": 1.0}, base_atc=atc, base_backtest=bt)
    assert (atc2.ema_len, atc2.De, bt2.fee_bps) == (30, 1.0, 2.0)
