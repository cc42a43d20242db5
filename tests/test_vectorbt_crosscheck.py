"""Cross-check of the backtest, trade records and equal-weight portfolio against vectorbt
(`Portfolio.from_orders`, target-percent orders at the close, fees only on bars where the position
changes), on S&P 500 and NASDAQ closes from `arch` and on random walks.

vectorbt's `init_cash` is 1e9 (results divided by it): with a cash of 1 and prices in the
thousands its absolute tolerance on order sizes (1e-12 shares) drops the small daily rebalancing of
a short and the equity drifts by ~1e-6.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq

vbt = pytest.importorskip("vectorbt")

from kernels import compute_atc  # noqa: E402
from kernels.backtest import BacktestParams, run_backtest  # noqa: E402
from kernels.portfolio import portfolio_equal  # noqa: E402
from kernels.trades import trade_records  # noqa: E402

CASH = 1e9


def _series():
    from arch.data import nasdaq, sp500
    out = {"sp500": sp500.load()["Adj Close"].to_numpy(np.float64),
           "nasdaq": nasdaq.load()["Adj Close"].to_numpy(np.float64)}
    rng = np.random.default_rng(42)
    out["walk"] = 50 * np.exp(np.cumsum(rng.normal(0.0002, 0.015, 3000)))
    return out


SERIES = _series()
AVG = {name: compute_atc(x)["Average_Signal"] for name, x in SERIES.items()}


def _vbt_equity(close, pos, f):
    """vectorbt's equity (normalised to 1) for positions traded at the close."""
    x = pd.Series(close)
    chg = np.r_[pos[0] != 0, pos[1:] != pos[:-1]]
    pf = vbt.Portfolio.from_orders(x, size=pos, size_type="targetpercent", price=x,
                                   fees=np.where(chg, f, 0.0), init_cash=CASH, freq="1D")
    return pf, pf.value().to_numpy() / CASH


def ledger(close, pos, f, short_on_pre_fee_value=False):
    """A shares-and-cash account trading at the close: E = V - f |p E - H| solved by brentq, or,
    with `short_on_pre_fee_value`, sells sized on the value before the fee (what vectorbt does)."""
    q, c, out = 0.0, 1.0, [1.0]
    for t in range(1, len(close)):
        P, p, p0 = close[t], pos[t], pos[t - 1]
        V = c + q * P
        if p == p0:
            if p != 0:  # kept at p of the equity, free of charge
                q = p * V / P
                c = V - q * P
        else:
            H = q * P
            if short_on_pre_fee_value and p * V < H:
                E = V - f * (H - p * V)
                q = p * V / P
            else:
                E = brentq(lambda e: e - V + f * abs(p * e - H), V * (1 - 3 * f) - 2 * f * abs(H), V + 1e-12,
                           xtol=1e-15, rtol=1e-15)
                q = p * E / P
            c = E - q * P
        out.append(c + q * P)
    return np.array(out)


@pytest.mark.parametrize("name", list(SERIES))
@pytest.mark.parametrize("fee_bps", [0.0, 10.0])
def test_long_only_matches_vectorbt(name, fee_bps):
    x, avg = SERIES[name], AVG[name]
    bt = run_backtest(x, avg, backtest_params=BacktestParams(fee_bps=fee_bps, long_only=True), periods_per_year=252)
    assert bt.metrics["n_trades"] > 20
    pf, veq = _vbt_equity(x, bt["position"], fee_bps / 1e4)
    np.testing.assert_allclose(bt["equity"], veq, rtol=1e-9)
    assert bt["equity"][-1] / veq[-1] - 1 == pytest.approx(0.0, abs=1e-12)
    assert bt.metrics["total_return"] == pytest.approx(pf.total_return(), rel=1e-9)
    assert bt.metrics["max_drawdown"] == pytest.approx(-pf.max_drawdown(), rel=1e-9)
    # trades: same count, entries, exits; our return is vectorbt's pnl over the capital incl. entry fee
    tr = trade_records(x, bt["position"], fee_bps=fee_bps)
    rec = pf.trades.records
    assert len(tr) == len(rec)
    np.testing.assert_array_equal(tr["entry"], rec["entry_idx"])
    closed = ~tr["is_open"]
    np.testing.assert_array_equal(tr["exit"][closed], rec["exit_idx"][closed])
    cap = rec["size"] * rec["entry_price"] + rec["entry_fees"]
    np.testing.assert_allclose(tr["ret"][closed], (rec["pnl"] / cap)[closed], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tr["fees"][closed], ((rec["entry_fees"] + rec["exit_fees"]) / cap)[closed],
                               rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", list(SERIES))
def test_long_short(name):
    x, avg = SERIES[name], AVG[name]
    zero = run_backtest(x, avg, periods_per_year=252)
    _, veq = _vbt_equity(x, zero["position"], 0.0)
    np.testing.assert_allclose(zero["equity"], veq, rtol=1e-11)
    f = 0.001
    bt = run_backtest(x, avg, backtest_params=BacktestParams(fee_bps=10), periods_per_year=252)
    pos = bt["position"]
    np.testing.assert_allclose(bt["equity"], ledger(x, pos, f), rtol=1e-9)
    _, veq = _vbt_equity(x, pos, f)
    # the remaining difference is vectorbt sizing a new short on the equity before the fee:
    np.testing.assert_allclose(veq, ledger(x, pos, f, short_on_pre_fee_value=True), rtol=1e-9)
    rel = bt["equity"][-1] / veq[-1] - 1
    assert 1e-6 < abs(rel) < 2e-2


def test_equal_portfolio_matches_vectorbt_cash_sharing():
    rng = np.random.default_rng(3)
    n_s, n_t = 5, 1500
    close = 100 * np.exp(np.cumsum(rng.normal(0.0002, 0.015, (n_s, n_t)), axis=1))
    avg = compute_atc(close)["Average_Signal"]
    for long_only in (False, True):
        bt = run_backtest(close, avg, backtest_params=BacktestParams(long_only=long_only))
        pos = bt["position"]
        ours = portfolio_equal(close, pos, rebalance_every=1).equity
        x = pd.DataFrame(close.T)
        pf = vbt.Portfolio.from_orders(x, size=pd.DataFrame(pos.T / n_s), size_type="targetpercent", price=x,
                                       group_by=True, cash_sharing=True, call_seq="auto", init_cash=CASH,
                                       freq="1D")
        np.testing.assert_allclose(ours, pf.value().to_numpy() / CASH, rtol=1e-11)
