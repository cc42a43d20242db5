"""Portfolio backtests over a universe of symbols (Numba kernels; arrays in, arrays out, no I/O).

Inputs are panels `(n_symbols, n_times)` on the store's union time axis; a NaN close (or a NaN
position / signal) is a time at which that symbol has no bar (ATC_SPEC.md section 7). Fees follow
the one model of `kernels.backtest`: `f = fee_bps / 10_000` of the value traded at the close, the
traded amounts sized on the equity *after* the fee (every trade at a close is solved together:
`E = V - f * sum_i |target_i(E) - H_i|`, H the holdings before the trade). The portfolio starts
with equity 1 in cash, before the first time.

**Symbols without a bar.** At a time where symbol i has no bar, nothing of it can be valued or
traded: its holdings (or sleeve) keep the value they had at its previous own close, take no part in
that time's rebalancing, and at its next own bar earn the return from that previous own close (the
return over the gap, as the per-symbol backtest books it). Before its first own bar a symbol holds
nothing. At its last own bar, if the time axis goes on after it (a delisting, or a calendar that
ends earlier), its holdings are sold at that close (with the fee) and the proceeds join the cash
that the next rebalancing distributes; knowing that the bar is the last one is the only look-ahead,
the same one a delisting notice gives. A symbol that was not computed (NaN positions / signals
everywhere) never holds anything.

`portfolio_equal` (`--portfolio equal`): one *sleeve* per symbol. Sleeve i follows symbol i's own
position `p_i` (+1/0/-1 from `run_backtest`), exactly as the symbol alone does (holdings `p_i *
S_i`, a short kept at -100% of the sleeve bar to bar, a change of position trading at the close
with the fee model), so between rebalancings the sleeve's value grows by the symbol's own strategy
return. At a rebalancing time (time index t with `t % rebalance_every == 0`) the value of the
sleeves whose symbols have a bar then, plus the cash, is split equally among those symbols: each
gets the same sleeve value X, holds `p_i * X`, and X solves
`k X + f sum_i |p_i X - H_i| = W` (k symbols, W their sleeves' value and the cash before the
trade). `H_i` are the holdings before the trade: `p_{i,prev} * S_i(t-1) * (1 + R_i)` where the
symbol's position changes at this close (its own trade is part of the same trade, netted, paid
once), else `p_i * S_i(t-1) * (1 + p_i R_i)`: an unchanged position is at p of the sleeve's value,
as for the symbol alone (a short's drift is not charged), so only the transfer of value between
sleeves is traded, `|p_i| * |X - S_i|`. A portfolio of one symbol is thus that symbol's backtest. A symbol whose first bar falls between
rebalancings gets capital at the next one.

`portfolio_signal` (`--portfolio signal`): at each rebalancing time the symbols with a bar hold
`w_i * E` with `w_i = a_i / sum_j |a_j|` (a = `Average_Signal` at that close, `max(a, 0)` with
`long_only`), so the gross exposure is 1 (0, all cash, if every signal is 0); E, the value they and
the cash share after the fee, solves `E + f sum_i |w_i E - H_i| = W`. Between rebalancings the
holdings drift with the prices (held in shares, nothing traded).

Outputs per time (`PortfolioResult`): `equity` (cash + holdings, 1 before the first time),
`returns` (`equity_t / equity_{t-1} - 1`, `equity_{-1} = 1`), `turnover` (value traded at that
close / the equity before the trade), `fees` (fees paid at that close, in units of the initial
capital), `gross_exposure` (sum of |holdings| / equity after the trade), optionally `weights`
(holdings / equity per symbol and time). Metrics (`PORTFOLIO_METRIC_NAMES`): the seven
return-based metrics of `kernels.metrics` on the portfolio's returns and equity over the time axis
(same formulas, `series_metrics`); `n_trades`/`win_rate` (equal only; NaN for signal, whose
weights have no discrete trades) pooled over the sleeves' trades with the per-symbol trade
return; `exposure` the mean gross exposure held over a return bar; `buy_hold_return` the final
equity - 1 of an equal-weight always-long portfolio of the same symbols, same rebalancing, no fee;
`turnover` the sum of the per-time turnovers (1 = the equity traded once; multiply by P / m for a
yearly figure); `fees_paid` the sum of the fees, in units of the initial capital.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from kernels.backtest import traded_value
from kernels.errors import ATCUserError
from kernels.metrics import METRIC_NAMES, series_metrics

PORTFOLIO_METRIC_NAMES: tuple[str, ...] = METRIC_NAMES + ("turnover", "fees_paid")
"""Portfolio metrics: the per-symbol ones (meaning adapted as in the module docstring), then these."""

PORTFOLIO_SERIES: tuple[str, ...] = ("equity", "returns", "turnover", "fees", "gross_exposure")

_NEWTON_MAX = 100


@njit(cache=True)
def solve_rebalance(a, c, H, idx, k, W, fee):
    """X with `a X + fee * sum_{j<k} |c[idx[j]] X - H[idx[j]]| = W`.

    The left side is convex, piecewise linear and increasing in X: its slope is at least
    `a - fee * sum |c|`, i.e. `k (1 - fee)` for equal sleeves (|p| <= 1, a = k) and `1 - fee` for
    signal weights (sum |w| <= 1, a = 1). So Newton's method from the fee-free solution W / a, which
    lies right of the root, walks down the pieces monotonically and stops on the root's piece:
    exact up to rounding, usually in 2-3 steps of O(k).
    """
    X = W / a
    if fee == 0.0:
        return X
    for _ in range(_NEWTON_MAX):
        F = a * X - W
        dF = a
        for j in range(k):
            i = idx[j]
            d = c[i] * X - H[i]
            F += fee * abs(d)
            if d > 0.0:
                dF += fee * c[i]
            elif d < 0.0:
                dF -= fee * c[i]
            else:  # at a kink: the slope on the left, where the iteration goes
                dF -= fee * abs(c[i])
        if F <= 0.0:
            break
        step = F / dF
        if not step > 0.0:
            break
        Xn = X - step
        if Xn == X:
            break
        X = Xn
    return X


@njit(cache=True)
def _trade_step(p_prev, p, R, fee, growth, counts):
    """Per-symbol trade bookkeeping (as `symbol_metrics`): counts = [opened, closed, wins]."""
    if p_prev != 0.0:
        if p != p_prev:
            growth = growth * ((1.0 + p_prev * R) - fee * abs(p_prev) * (1.0 + R))
            counts[1] += 1
            if growth - 1.0 > 0.0:
                counts[2] += 1
        else:
            growth = growth * (1.0 + p_prev * R)
    if p != p_prev and p != 0.0:
        counts[0] += 1
        growth = 1.0 / (1.0 + fee * abs(p))
    return growth


@njit(cache=True)
def equal_kernel(xT, pT, last, every, fee, eq, ret, turn, fees, gross, w, want_w, counts):
    """The equal-weight sleeves portfolio on time-major panels `xT`, `pT` `(n_times, n_symbols)`;
    `last[i]` is symbol i's last own time (-1 if none). Rules in the module docstring."""
    n_t, n_s = xT.shape
    S = np.zeros(n_s)       # sleeve values (marked at the symbol's last own close)
    P = np.zeros(n_s)       # sleeve positions
    x_last = np.full(n_s, np.nan)
    H = np.zeros(n_s)
    c = np.zeros(n_s)
    g = np.ones(n_s)        # running trade growth per symbol (trade statistics)
    idx = np.empty(n_s, np.int64)
    C = 1.0
    e_prev = 1.0
    for t in range(n_t):
        reb = t % every == 0
        k = 0
        W = 0.0
        traded = 0.0
        paid = 0.0
        moved = 0.0  # change of value from the prices, for the pre-trade equity
        for i in range(n_s):
            x = xT[t, i]
            p = pT[t, i]
            if np.isnan(x) or np.isnan(p):
                continue
            R = 0.0
            if x_last[i] == x_last[i]:
                R = (np.float64(x) - x_last[i]) / x_last[i]
            x_last[i] = x
            ending = t == last[i] and t < n_t - 1
            if ending:
                p = 0.0
            g[i] = _trade_step(P[i], p, R, fee, g[i], counts)
            s_old = S[i]
            moved += s_old * P[i] * R
            if reb and not ending:
                if p != P[i]:
                    H[i] = P[i] * s_old * (1.0 + R)
                else:  # not traded by its own rule: at p of its value, as the symbol alone
                    H[i] = p * (s_old * (1.0 + P[i] * R))
                c[i] = p
                W += s_old * (1.0 + P[i] * R)
                idx[k] = i
                k += 1
                S[i] = 0.0
                P[i] = p
                continue
            r = P[i] * R
            if p != P[i]:
                tv = traded_value(P[i], p, R, fee)
                r = r - fee * tv
                traded += s_old * tv
                paid += s_old * fee * tv
            S[i] = s_old * (1.0 + r)
            P[i] = p
            if ending:
                C += S[i]
                S[i] = 0.0
        if reb and k > 0:
            W += C
            X = solve_rebalance(float(k), c, H, idx, k, W, fee)
            for j in range(k):
                i = idx[j]
                d = abs(c[i] * X - H[i])
                traded += d
                paid += fee * d
                S[i] = X
            C = 0.0
        v_pre = e_prev + moved
        e = C
        gexp = 0.0
        for i in range(n_s):
            e += S[i]
            gexp += abs(P[i] * S[i])
        eq[t] = e
        ret[t] = e / e_prev - 1.0
        turn[t] = traded / v_pre if traded != 0.0 else 0.0
        fees[t] = paid
        gross[t] = gexp / e
        if want_w:
            for i in range(n_s):
                w[t, i] = P[i] * S[i] / e
        e_prev = e


@njit(cache=True)
def signal_kernel(xT, aT, last, every, fee, long_only, eq, ret, turn, fees, gross, w, want_w):
    """The signal-weighted portfolio on time-major panels `xT`, `aT` `(n_times, n_symbols)`;
    `last[i]` is symbol i's last own time (-1 if none). Rules in the module docstring."""
    n_t, n_s = xT.shape
    h = np.zeros(n_s)       # holdings (signed value, marked at the symbol's last own close)
    x_last = np.full(n_s, np.nan)
    c = np.zeros(n_s)
    idx = np.empty(n_s, np.int64)
    C = 1.0
    e_prev = 1.0
    for t in range(n_t):
        reb = t % every == 0
        k = 0
        traded = 0.0
        paid = 0.0
        gsum = 0.0
        for i in range(n_s):
            x = xT[t, i]
            a = aT[t, i]
            if np.isnan(x) or np.isnan(a):
                continue
            if x_last[i] == x_last[i]:
                h[i] = h[i] * (1.0 + (np.float64(x) - x_last[i]) / x_last[i])
            x_last[i] = x
            if t == last[i] and t < n_t - 1:  # sold at its last close
                d = abs(h[i])
                traded += d
                paid += fee * d
                C += h[i] - fee * d
                h[i] = 0.0
                continue
            if long_only and a < 0.0:
                a = 0.0
            c[i] = a
            gsum += abs(a)
            idx[k] = i
            k += 1
        v_pre = C + paid
        for i in range(n_s):
            v_pre += h[i]
        if reb and k > 0:
            W = C
            for j in range(k):
                i = idx[j]
                W += h[i]
                if gsum > 0.0:
                    c[i] = c[i] / gsum
                else:
                    c[i] = 0.0
            E = solve_rebalance(1.0, c, h, idx, k, W, fee)
            invested = 0.0
            for j in range(k):
                i = idx[j]
                d = abs(c[i] * E - h[i])
                traded += d
                paid += fee * d
                h[i] = c[i] * E
                invested += h[i]
            C = E - invested
        e = C
        gexp = 0.0
        for i in range(n_s):
            e += h[i]
            gexp += abs(h[i])
        eq[t] = e
        ret[t] = e / e_prev - 1.0
        turn[t] = traded / v_pre if traded != 0.0 else 0.0
        fees[t] = paid
        gross[t] = gexp / e
        if want_w:
            for i in range(n_s):
                w[t, i] = h[i] / e
        e_prev = e


# --------------------------------------------------------------------------- Python entry points


@dataclass
class PortfolioResult:
    """Per-time series (1-D over the time axis), optional weights `(n_symbols, n_times)`, the
    metrics (`PORTFOLIO_METRIC_NAMES` -> float) and the periods per year they used."""

    equity: np.ndarray
    returns: np.ndarray
    turnover: np.ndarray
    fees: np.ndarray
    gross_exposure: np.ndarray
    weights: np.ndarray | None
    metrics: dict
    periods_per_year: float


def _prepare(close, other, other_name, fee_bps, rebalance_every, ok):
    c = np.asarray(close, np.float64)
    o = np.asarray(other, np.float64)
    if c.ndim != 2 or c.shape != o.shape:
        raise ATCUserError(f"close {c.shape} and {other_name} {o.shape} must both be (n_symbols, n_times)")
    if isinstance(rebalance_every, bool) or not isinstance(rebalance_every, (int, np.integer)) or rebalance_every < 1:
        raise ATCUserError(f"rebalance_every must be an integer >= 1, got {rebalance_every!r}")
    if not (0 <= float(fee_bps) < 10_000):
        raise ATCUserError(f"fee_bps must be in [0, 10000), got {fee_bps!r}")
    if ok is not None:
        ok = np.asarray(ok, bool).reshape(-1)
        if ok.shape != (c.shape[0],):
            raise ATCUserError(f"ok has shape {ok.shape}; expected one per symbol ({c.shape[0]})")
        o = np.where(ok[:, None], o, np.nan)
    bar = ~np.isnan(c) & ~np.isnan(o)
    n_t = c.shape[1]
    last = np.where(bar.any(axis=1), n_t - 1 - np.argmax(bar[:, ::-1], axis=1), -1).astype(np.int64)
    return np.ascontiguousarray(c.T), np.ascontiguousarray(o.T), bar, last, float(fee_bps) / 10_000.0


def _outputs(n_t, n_s, want_w):
    return (np.empty(n_t), np.empty(n_t), np.empty(n_t), np.empty(n_t), np.empty(n_t),
            np.empty((n_t, n_s) if want_w else (0, 0)))


def _finish(series, w, want_w, ppy, n_trades, win_rate, bh):
    eq, ret, turn, fees, gross = series
    n = len(eq)
    out = np.full(len(PORTFOLIO_METRIC_NAMES), np.nan)
    ppy = np.nan if ppy is None else float(ppy)
    series_metrics(ret, eq, n, ppy, out)
    m = dict(zip(PORTFOLIO_METRIC_NAMES, out.tolist()))
    m["n_trades"] = n_trades
    m["win_rate"] = win_rate
    m["exposure"] = float(np.mean(gross[:-1])) if n > 1 else np.nan
    m["buy_hold_return"] = bh
    m["turnover"] = float(np.sum(turn))
    m["fees_paid"] = float(np.sum(fees))
    return PortfolioResult(eq, ret, turn, fees, gross, np.ascontiguousarray(w.T) if want_w else None, m, ppy)


def _benchmark(xT, bar, last, every):
    """Final equity - 1 of the equal-weight always-long portfolio of the same bars, without fees."""
    ones = np.where(bar.T, 1.0, np.nan)
    n_t, n_s = xT.shape
    o = _outputs(n_t, n_s, False)
    equal_kernel(xT, ones, last, every, 0.0, *o[:5], o[5], False, np.zeros(3, np.int64))
    return float(o[0][-1] - 1.0) if n_t else np.nan


def portfolio_equal(close, position, *, fee_bps: float = 0.0, rebalance_every: int = 1,
                    periods_per_year: float | None = None, weights: bool = False) -> PortfolioResult:
    """Equal-weight portfolio of per-symbol strategies (`--portfolio equal`; rules in the module docstring).

    `close`, `position`: `(n_symbols, n_times)` on the union time axis, `position` from
    `run_backtest` (NaN where a symbol has no bar or was not computed); `fee_bps` as the backtest's;
    `periods_per_year` of the time axis (`infer_periods_per_year(times)`), None -> annualised
    metrics NaN; `weights=True` also returns the holdings / equity panel (memory: one float64 panel).
    """
    xT, pT, bar, last, fee = _prepare(close, position, "position", fee_bps, rebalance_every, None)
    n_t, n_s = xT.shape
    o = _outputs(n_t, n_s, weights)
    counts = np.zeros(3, np.int64)
    equal_kernel(xT, pT, last, int(rebalance_every), fee, *o[:5], o[5], weights, counts)
    win = counts[2] / counts[1] if counts[1] else np.nan
    bh = _benchmark(xT, bar, last, int(rebalance_every))
    return _finish(o[:5], o[5], weights, periods_per_year, float(counts[0]), win, bh)


def portfolio_signal(close, average_signal, *, fee_bps: float = 0.0, rebalance_every: int = 1,
                     long_only: bool = False, periods_per_year: float | None = None, ok=None,
                     weights: bool = False) -> PortfolioResult:
    """Signal-weighted portfolio (`--portfolio signal`; rules in the module docstring): weights
    proportional to `Average_Signal` across the symbols with a bar, gross exposure 1.

    `ok` (bool per symbol, e.g. `status == 0`) excludes the symbols that were not computed; other
    arguments as `portfolio_equal`.
    """
    xT, aT, bar, last, fee = _prepare(close, average_signal, "average_signal", fee_bps, rebalance_every, ok)
    n_t, n_s = xT.shape
    o = _outputs(n_t, n_s, weights)
    signal_kernel(xT, aT, last, int(rebalance_every), fee, bool(long_only), *o[:5], o[5], weights)
    bh = _benchmark(xT, bar, last, int(rebalance_every))
    return _finish(o[:5], o[5], weights, periods_per_year, np.nan, np.nan, bh)


def portfolio_time_major(kind: str, closeT, otherT, *, fee_bps: float = 0.0, rebalance_every: int = 1,
                         long_only: bool = False, periods_per_year: float | None = None,
                         benchmarks: dict | None = None) -> PortfolioResult:
    """`portfolio_equal` (`kind="equal"`, `otherT` the positions) or `portfolio_signal`
    (`kind="signal"`, `otherT` the signals, NaN for symbols not computed) on time-major panels
    `(n_times, n_symbols)`, with the same numbers, for callers that compute many portfolios over one
    close panel (a sweep: one per combination).

    `benchmarks`, a dict the caller keeps across calls, holds the fee-free benchmark pass
    (`buy_hold_return`) by what it depends on, which symbols have a bar when and the rebalancing,
    so combinations that share it (the same statuses) run it once: a third of the work otherwise.
    """
    import hashlib

    if kind not in ("equal", "signal"):
        raise ATCUserError(f"kind must be 'equal' or 'signal', got {kind!r}")
    closeT = np.asarray(closeT, np.float64)
    otherT = np.asarray(otherT, np.float64)
    xT, oT, bar, last, fee = _prepare(closeT.T, otherT.T, "position" if kind == "equal" else "average_signal",
                                      fee_bps, rebalance_every, None)
    every = int(rebalance_every)
    n_t, n_s = xT.shape
    bh = None
    if benchmarks is not None:
        key = (hashlib.blake2b(np.packbits(bar).tobytes(), digest_size=16).hexdigest(), bar.shape, every)
        bh = benchmarks.get(key)
    if bh is None:
        bh = _benchmark(xT, bar, last, every)
        if benchmarks is not None:
            benchmarks[key] = bh
    o = _outputs(n_t, n_s, False)
    if kind == "equal":
        counts = np.zeros(3, np.int64)
        equal_kernel(xT, oT, last, every, fee, *o[:5], o[5], False, counts)
        win = counts[2] / counts[1] if counts[1] else np.nan
        return _finish(o[:5], o[5], False, periods_per_year, float(counts[0]), win, bh)
    signal_kernel(xT, oT, last, every, fee, bool(long_only), *o[:5], o[5], False)
    return _finish(o[:5], o[5], False, periods_per_year, np.nan, np.nan, bh)
