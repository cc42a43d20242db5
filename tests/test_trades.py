"""Trade records and statistics (kernels/trades.py) against hand-made series and an independent
recomputation from the backtest's equity (the trade's equity after its exit fee over its capital
before its entry fee)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.backtest import BacktestParams, run_backtest
from kernels.trades import TRADE_DTYPE, trade_records, trade_stats


def test_hand_made_trades():
    close = np.array([100.0, 100, 110, 110, 99, 94.05, 108.9, 120])
    avg = np.array([0, 0.5, 0.5, -0.5, -0.5, 0.5, 0.5, 0.5])
    f = 0.001
    bt = run_backtest(close, avg, backtest_params=BacktestParams(fee_bps=10))
    np.testing.assert_array_equal(bt["position"], [0, 1, 1, -1, -1, 1, 1, 1])
    tr = trade_records(close, bt["position"], fee_bps=10)
    assert tr.dtype == TRADE_DTYPE and len(tr) == 3
    np.testing.assert_array_equal(tr["entry"], [1, 3, 5])
    np.testing.assert_array_equal(tr["exit"], [3, 5, -1])
    np.testing.assert_array_equal(tr["direction"], [1, -1, 1])
    np.testing.assert_array_equal(tr["bars"], [2, 2, 2])
    np.testing.assert_array_equal(tr["is_open"], [False, False, True])
    # long 100 -> 110 (+10%), exits at 110: capital 1 buys 1/(1+f), sells 1.1/(1+f), pays f of that
    r0 = 1.1 / (1 + f) * (1 - f) - 1
    # short from 110: earns 10% on the bar to 99, is kept at -100% of its equity (now 1.1 / (1+f))
    # and exits on the bar to 94.05 (-5%): earns 5% more and buys back 0.95 of that size
    r1 = 1.1 * (1.05 - 0.95 * f) / (1 + f) - 1
    # long 94.05 -> 120, still open: marked at the last close, no exit fee
    r2 = (120 / 94.05) / (1 + f) - 1
    np.testing.assert_allclose(tr["ret"], [r0, r1, r2], rtol=1e-12)
    np.testing.assert_allclose(tr["fees"], [f / (1 + f) + f * 1.1 / (1 + f), f / (1 + f) + f * 0.95 * 1.1 / (1 + f),
                                            f / (1 + f)], rtol=1e-12)
    st = trade_stats(tr, 1)
    assert st["n_trades"][0] == 3 and st["n_closed"][0] == 2 and st["win_rate"][0] == 1.0
    assert st["profit_factor"][0] == np.inf and st["avg_bars_held"][0] == 2.0
    assert st["best_trade"][0] == pytest.approx(max(r0, r1)) and st["worst_trade"][0] == pytest.approx(min(r0, r1))
    assert st["expectancy"][0] == pytest.approx((r0 + r1) / 2)
    assert bt.metrics["n_trades"] == 3 and bt.metrics["win_rate"] == 1.0


def independent_trades(close, pos, eq, f):
    """Trades from the positions, returns from the backtest's equity: the capital before the entry
    fee is what the previous close left after closing the previous trade (its exit fee paid)."""
    out = []
    cur = None
    for t in range(1, len(close)):
        p0, p = pos[t - 1], pos[t]
        if p == p0:
            continue
        R = close[t] / close[t - 1] - 1
        # equity at close t after the bar's move and the closing leg's fee, before the opening leg
        after_close = eq[t - 1] * ((1 + p0 * R) - f * abs(p0) * (1 + R))
        if cur is not None:
            out.append((cur[0], t, cur[1], after_close / cur[2] - 1))
            cur = None
        if p != 0:
            cur = (t, p, after_close)
    if cur is not None:
        out.append((cur[0], -1, cur[1], eq[-1] / cur[2] - 1))
    return out


@pytest.mark.parametrize("fee_bps,long_only", [(0.0, False), (10.0, False), (25.0, True)])
def test_random_panel_with_holes_against_independent(fee_bps, long_only):
    rng = np.random.default_rng(11)
    n_sym, n = 4, 600
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (n_sym, n)), axis=1))
    avg = np.round(np.clip(np.sin(np.arange(n) / 13)[None] + rng.normal(0, 0.4, (n_sym, n)), -1, 1), 2)
    close[rng.random(close.shape) < 0.1] = np.nan
    close[1, :100] = np.nan
    close[2, 500:] = np.nan
    bt = run_backtest(close, avg, backtest_params=BacktestParams(fee_bps=fee_bps, long_only=long_only),
                      periods_per_year=252)
    tr = trade_records(close, bt["position"], fee_bps=fee_bps)
    st = trade_stats(tr, n_sym)
    f = fee_bps / 1e4
    for i in range(n_sym):
        own = ~np.isnan(close[i])
        times = np.flatnonzero(own)
        exp = independent_trades(close[i, own], bt["position"][i, own], bt["equity"][i, own], f)
        got = tr[tr["symbol"] == i]
        assert len(got) == len(exp) > 10
        np.testing.assert_array_equal(got["entry"], times[[e[0] for e in exp]])
        np.testing.assert_array_equal(got["exit"], [times[e[1]] if e[1] >= 0 else -1 for e in exp])
        np.testing.assert_array_equal(got["direction"], [e[2] for e in exp])
        np.testing.assert_allclose(got["ret"], [e[3] for e in exp], rtol=1e-10, atol=1e-13)
        own_idx = {t: k for k, t in enumerate(times)}
        last = own_idx[times[-1]]
        np.testing.assert_array_equal(got["bars"], [(e[1] if e[1] >= 0 else last) - e[0] for e in exp])
        # the same trades as the per-symbol metrics count
        assert st["n_trades"][i] == bt.metrics["n_trades"][i]
        assert st["win_rate"][i] == bt.metrics["win_rate"][i]
        closed = [e[3] for e in exp if e[1] >= 0]
        gains = sum(r for r in closed if r > 0)
        losses = -sum(r for r in closed if r < 0)
        assert st["profit_factor"][i] == pytest.approx(gains / losses, rel=1e-9)
        assert st["expectancy"][i] == pytest.approx(np.mean(closed), rel=1e-9)
        assert st["best_trade"][i] == pytest.approx(max(closed)) and st["worst_trade"][i] == pytest.approx(min(closed))
    if long_only:
        assert (tr["direction"] == 1).all()
    else:
        assert set(tr["direction"]) == {-1, 1}


def test_no_trades_and_not_computed_symbols():
    close = np.vstack([np.linspace(10, 12, 50), np.linspace(10, 12, 50)])
    pos = np.zeros_like(close)
    pos[1] = np.nan  # a symbol that was not computed
    tr = trade_records(close, pos)
    assert len(tr) == 0
    st = trade_stats(tr, 2)
    assert (st["n_trades"] == 0).all() and (st["n_closed"] == 0).all()
    for name in ("win_rate", "profit_factor", "expectancy", "avg_bars_held", "best_trade", "worst_trade"):
        assert np.isnan(st[name]).all(), name
