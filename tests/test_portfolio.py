"""Portfolio kernels (kernels/portfolio.py) against straightforward per-time Python implementations
of the rules in its docstring (sleeves as dicts, every trade equation solved by bracketing with
scipy's brentq), on random-walk panels with holes, late listings and delistings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from kernels.backtest import BacktestParams, run_backtest
from kernels.metrics import METRIC_NAMES
from kernels.portfolio import PORTFOLIO_METRIC_NAMES, portfolio_equal, portfolio_signal


def _solve(a, targets, H, W, f):
    """X with a X + f sum |t_i X - H_i| = W, bracketed (W > 0 and small fees here)."""
    F = lambda X: a * X + f * sum(abs(t * X - h) for t, h in zip(targets, H)) - W
    lo = (W - f * sum(abs(h) for h in H)) / (a * (1 + f)) - 1e-9
    return brentq(F, lo, W / a + 1e-12, xtol=1e-16, rtol=1e-15, maxiter=500)


def naive_equal(close, pos, f, every):
    n_s, n_t = close.shape
    bar = ~np.isnan(close) & ~np.isnan(pos)
    last = [max(np.flatnonzero(bar[i]), default=-1) for i in range(n_s)]
    sl = {}
    cash, eq, fees = 1.0, [], []
    for t in range(n_t):
        paid = 0.0
        pre = {}
        for i in np.flatnonzero(bar[:, t]):
            s = sl.setdefault(i, {"value": 0.0, "pos": 0.0, "x": None})
            R = 0.0 if s["x"] is None else close[i, t] / s["x"] - 1
            s["x"] = close[i, t]
            p = 0.0 if (t == last[i] and t < n_t - 1) else pos[i, t]
            v = s["value"] * (1 + s["pos"] * R)
            h = s["pos"] * s["value"] * (1 + R) if p != s["pos"] else p * v
            pre[i] = (v, h, p)
        for i, (v, h, p) in list(pre.items()):
            if t == last[i] and t < n_t - 1:  # delisted: sold at its last close
                cash += v - f * abs(h)
                paid += f * abs(h)
                sl[i]["value"] = 0.0
                del pre[i]
        if t % every == 0 and pre:
            W = cash + sum(v for v, _, _ in pre.values())
            X = _solve(len(pre), [p for _, _, p in pre.values()], [h for _, h, _ in pre.values()], W, f)
            for i, (v, h, p) in pre.items():
                paid += f * abs(p * X - h)
                sl[i]["value"], sl[i]["pos"] = X, p
            cash = 0.0
        else:
            for i, (v, h, p) in pre.items():
                if p != sl[i]["pos"]:
                    E = _solve(1.0, [p], [h], v, f) if v > 0 else v
                    paid += v - E
                    v = E
                sl[i]["value"], sl[i]["pos"] = v, p
        eq.append(cash + sum(s["value"] for s in sl.values()))
        fees.append(paid)
    return np.array(eq), np.array(fees)


def naive_signal(close, avg, f, every, long_only=False):
    n_s, n_t = close.shape
    bar = ~np.isnan(close) & ~np.isnan(avg)
    last = [max(np.flatnonzero(bar[i]), default=-1) for i in range(n_s)]
    h = np.zeros(n_s)
    xl = np.full(n_s, np.nan)
    cash, eq, gross = 1.0, [], []
    for t in range(n_t):
        act = []
        for i in np.flatnonzero(bar[:, t]):
            if not np.isnan(xl[i]):
                h[i] *= close[i, t] / xl[i]
            xl[i] = close[i, t]
            if t == last[i] and t < n_t - 1:
                cash += h[i] - f * abs(h[i])
                h[i] = 0.0
            else:
                act.append(i)
        if t % every == 0 and act:
            a = np.array([max(avg[i, t], 0.0) if long_only else avg[i, t] for i in act])
            w = a / np.abs(a).sum() if np.abs(a).sum() > 0 else np.zeros(len(act))
            W = cash + h[act].sum()
            E = _solve(1.0, w, h[act], W, f)
            h[act] = w * E
            cash = E - h[act].sum()
        e = cash + h.sum()
        eq.append(e)
        gross.append(np.abs(h).sum() / e)
    return np.array(eq), np.array(gross)


def holed_panel(seed, n_s=6, n_t=400):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.0002, 0.02, (n_s, n_t)), axis=1))
    avg = np.round(np.clip(np.sin(np.arange(n_t) / 9 + np.arange(n_s)[:, None]) + rng.normal(0, 0.3, (n_s, n_t)),
                           -1, 1), 2)
    close[rng.random(close.shape) < 0.05] = np.nan
    close[1, :90] = np.nan        # late listing
    close[2, 300:] = np.nan       # delisting
    close[3, 150:170] = np.nan    # a halt
    close[:, 200] = np.nan        # a time where no symbol has a bar
    return close, avg


@pytest.mark.parametrize("fee_bps,every,long_only", [(0.0, 1, False), (10.0, 1, False), (10.0, 5, False),
                                                     (25.0, 3, True)])
def test_equal_against_naive(fee_bps, every, long_only):
    close, avg = holed_panel(int(fee_bps) + every)
    bt = run_backtest(close, avg, backtest_params=BacktestParams(fee_bps=fee_bps, long_only=long_only))
    pf = portfolio_equal(close, bt["position"], fee_bps=fee_bps, rebalance_every=every, periods_per_year=252,
                         weights=True)
    eq, fees = naive_equal(close, bt["position"], fee_bps / 1e4, every)
    np.testing.assert_allclose(pf.equity, eq, rtol=1e-9)
    np.testing.assert_allclose(pf.fees, fees, rtol=1e-9, atol=1e-15)
    assert pf.metrics["fees_paid"] == pytest.approx(fees.sum(), rel=1e-9, abs=1e-15)
    assert (fees.sum() > 0) == (fee_bps > 0)
    np.testing.assert_allclose(pf.returns, np.diff(np.concatenate([[1.0], eq])) / np.concatenate([[1.0], eq[:-1]]),
                               rtol=1e-7, atol=1e-12)
    assert pf.returns[200] == 0.0  # nobody has a bar: nothing moves
    # weights: a symbol's exposure; nothing before its listing or after its delisting
    assert (pf.weights[1, :90] == 0).all() and (pf.weights[2, 300:] == 0).all()
    np.testing.assert_allclose(np.abs(pf.weights).sum(axis=0), pf.gross_exposure, rtol=1e-12)
    assert pf.metrics["n_trades"] == pytest.approx(np.nansum(bt.metrics["n_trades"]), abs=3)  # + forced exits


@pytest.mark.parametrize("fee_bps,every,long_only", [(0.0, 1, False), (10.0, 1, False), (10.0, 4, True)])
def test_signal_against_naive(fee_bps, every, long_only):
    close, avg = holed_panel(7 + every)
    pf = portfolio_signal(close, avg, fee_bps=fee_bps, rebalance_every=every, long_only=long_only, weights=True)
    eq, gross = naive_signal(close, avg, fee_bps / 1e4, every, long_only)
    np.testing.assert_allclose(pf.equity, eq, rtol=1e-9)
    np.testing.assert_allclose(pf.gross_exposure, gross, rtol=1e-9, atol=1e-12)
    if every == 1:
        # rebalanced to gross exposure 1 at every time where no live symbol lacks a bar (otherwise
        # its frozen holdings come on top) and some signal is non-zero
        bar = ~np.isnan(close)
        t = np.arange(close.shape[1])
        first = np.array([np.flatnonzero(b)[0] for b in bar])
        last = np.array([np.flatnonzero(b)[-1] for b in bar])
        live = (t >= first[:, None]) & (t <= last[:, None])
        full = (bar | ~live).all(axis=0) & bar.any(axis=0)
        sig = np.abs(np.where(bar, np.maximum(avg, 0) if long_only else avg, 0)).sum(axis=0) > 0
        sel = full & sig
        assert sel.sum() > 100
        np.testing.assert_allclose(pf.gross_exposure[sel], 1.0, atol=1e-12)
    if long_only:
        assert (pf.weights >= 0).all()
    else:
        assert (pf.weights < 0).any() and (pf.weights > 0).any()


def test_one_symbol_portfolio_is_the_symbol_alone():
    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (1, 500)), axis=1))
    avg = np.round(np.clip(np.sin(np.arange(500) / 9) + rng.normal(0, 0.3, (1, 500)), -1, 1), 2)
    close[rng.random(close.shape) < 0.1] = np.nan
    close[0, -1] = 100.0
    for every in (1, 7):
        bt = run_backtest(close, avg, backtest_params=BacktestParams(fee_bps=10), periods_per_year=252)
        own = ~np.isnan(close[0])
        pf = portfolio_equal(close[:, own], bt["position"][:, own], fee_bps=10, rebalance_every=every,
                             periods_per_year=252)
        np.testing.assert_allclose(pf.equity, bt["equity"][0, own], rtol=1e-12)
        for name in METRIC_NAMES:
            if name == "exposure":  # mean gross exposure = share of bars in the market for +-1 positions
                assert pf.metrics[name] == pytest.approx(bt.metrics[name][0], rel=1e-12)
            else:
                assert pf.metrics[name] == pytest.approx(bt.metrics[name][0], rel=1e-9, abs=1e-12), name


def test_metrics_names_and_validation():
    close, avg = holed_panel(1)
    pf = portfolio_signal(close, avg, periods_per_year=252)
    assert set(pf.metrics) == set(PORTFOLIO_METRIC_NAMES)
    assert np.isnan(pf.metrics["n_trades"]) and np.isnan(pf.metrics["win_rate"])
    assert pf.metrics["turnover"] > 1 and pf.weights is None
    with pytest.raises(Exception, match="rebalance_every"):
        portfolio_equal(close, avg, rebalance_every=0)
    with pytest.raises(Exception, match="shape|n_symbols"):
        portfolio_equal(close, avg[:, :-1])
