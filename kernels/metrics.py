"""Per-symbol performance metrics of a backtest (Numba; series from `kernels.backtest.simulate`).

Notation for one symbol with n valid bars: `position_t`, `strategy_return_t` (`r_t`) and `equity_t`
(`E_t`) for t = 0..n-1 as defined in `kernels.backtest`; `x_t` the closes, `R_t = (x_t - x_{t-1}) /
x_{t-1}`; `m = n - 1` the number of bars that carry a return (t = 1..n-1; bar 0 has none); `P` the
periods (bars) per year; `f = fee_bps / 10_000`.

| metric | formula |
|---|---|
| `total_return` | `E_{n-1} - 1` |
| `cagr` | `E_{n-1} ** (P / m) - 1` (years = m / P); `-1` if `E_{n-1} <= 0` |
| `ann_volatility` | `std(r_1..r_m, ddof=1) * sqrt(P)` |
| `sharpe` | `mean(r) / std(r, ddof=1) * sqrt(P)` (risk-free rate 0) |
| `sortino` | `mean(r) / D * sqrt(P)`, downside deviation `D = sqrt(sum(min(r_t, 0)^2) / m)` (target 0) |
| `max_drawdown` | `max_t (1 - E_t / max_{u<=t} E_u)` over t = 0..n-1, a positive fraction (0.25 = 25%) |
| `calmar` | `cagr / max_drawdown` |
| `n_trades` | number of trades opened: bars with `position_t != 0` and `position_t != position_{t-1}` (a reversal closes one trade and opens another) |
| `win_rate` | share of *closed* trades with a trade return > 0. A trade entered at the close of bar a with position p (+1 or -1) and closed at the close of bar b returns `prod_{t=a+1..b-1} (1 + p R_t) * ((1 + p R_b) - f (1 + R_b)) / (1 + f) - 1`: the equity it ends with after its exit fee over the capital it started from before its entry fee (fee model in `kernels.backtest`; a reversal's fee is split into the closing and the opening leg). `kernels.trades` lists these trades. A trade still open at the last bar is counted in `n_trades` but not here |
| `exposure` | share of the m return bars spent in the market: `count(position_{t-1} != 0, t = 1..m) / m` |
| `buy_hold_return` | `x_{n-1} / x_0 - 1` over the same bars, for comparison |

Degenerate cases never raise; they follow these rules:

* A symbol that was not computed (ATC status not OK, no bars) gets NaN for every metric.
* `m == 0` (a single bar): `total_return = 0`, `max_drawdown = 0`, `n_trades = 0`,
  `buy_hold_return = 0`; every other metric is NaN.
* `m == 1`: `ann_volatility`, `sharpe` and `sortino` are NaN (a sample std needs two returns).
* `P` unknown (NaN, e.g. a time axis of one bar with no override): `cagr`, `ann_volatility`,
  `sharpe`, `sortino`, `calmar` are NaN.
* Ratios (`sharpe`, `sortino`, `calmar`) with a zero denominator: `+inf` if the numerator is > 0,
  `-inf` if < 0, NaN if it is 0 (e.g. no trades and no fees: every return is 0, Sharpe is NaN;
  a strategy that never lost: Sortino and Calmar are +inf). A NaN operand gives NaN.
* No closed trade: `win_rate` is NaN.
* Overflow (e.g. `cagr` of a huge return over a short span) gives inf, as IEEE arithmetic does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

METRIC_NAMES: tuple[str, ...] = (
    "total_return", "cagr", "ann_volatility", "sharpe", "sortino", "max_drawdown", "calmar",
    "n_trades", "win_rate", "exposure", "buy_hold_return",
)
"""Per-symbol metrics, in the order of the `metrics` axis of the kernels' outputs."""

N_METRICS = len(METRIC_NAMES)
METRIC_DESCRIPTIONS: dict[str, str] = {
    "total_return": "final equity - 1",
    "cagr": "compound annual growth rate of the equity",
    "ann_volatility": "standard deviation of bar returns (ddof=1) x sqrt(periods per year)",
    "sharpe": "mean / std (ddof=1) of bar returns x sqrt(periods per year), risk-free rate 0",
    "sortino": "mean bar return / downside deviation (target 0) x sqrt(periods per year)",
    "max_drawdown": "largest fall of equity from its running peak, as a fraction of the peak",
    "calmar": "cagr / max_drawdown",
    "n_trades": "number of trades opened (a reversal opens a new one)",
    "win_rate": "share of closed trades with a positive return net of fees",
    "exposure": "share of return bars spent in the market",
    "buy_hold_return": "last close / first close - 1 over the same bars",
}
"""One-line descriptions for stores (formulas and degenerate cases in the module docstring)."""
METRIC_INDEX = {name: i for i, name in enumerate(METRIC_NAMES)}

HIGHER_IS_BETTER: dict[str, bool] = {name: True for name in METRIC_NAMES}
HIGHER_IS_BETTER.update({"ann_volatility": False, "max_drawdown": False})
"""Direction of each metric for ranking sweep results."""

DAYS_PER_YEAR = 365.25


@njit(cache=True)
def safe_ratio(num, den):
    """num / den with the stated rule for den == 0: sign(num) * inf, or NaN for 0 / 0; NaN in -> NaN."""
    if num != num or den != den:
        return np.nan
    if den != 0.0:
        return num / den
    if num > 0.0:
        return np.inf
    if num < 0.0:
        return -np.inf
    return np.nan


@njit(cache=True)
def series_metrics(ret, eq, n, ppy, out):
    """Write the metrics that depend only on the returns and the equity (`total_return`, `cagr`,
    `ann_volatility`, `sharpe`, `sortino`, `max_drawdown`, `calmar`: indices 0-6 of `METRIC_NAMES`)
    for bars 0..n-1 into `out[0:7]`.

    Shared by `symbol_metrics` and the portfolio metrics (kernels/portfolio.py), so that a
    portfolio and a symbol are measured by the same formulas.
    """
    for i in range(7):
        out[i] = np.nan
    if n <= 0:
        return
    m = n - 1
    e_end = eq[n - 1]
    out[0] = e_end - 1.0  # total_return
    peak = eq[0]  # E_0 is the first peak
    mdd = 0.0
    s = 0.0
    dn = 0.0
    for t in range(n):
        e = eq[t]
        if e > peak:
            peak = e
        elif e < peak:
            dd = 1.0 - e / peak
            if dd > mdd:
                mdd = dd
        if t == 0:
            continue
        r = ret[t]
        s += r
        if r < 0.0:
            dn += r * r
    out[5] = mdd
    if m == 0:
        return
    if ppy == ppy:  # CAGR and Calmar
        if e_end > 0.0:
            out[1] = e_end ** (ppy / m) - 1.0
        else:
            out[1] = -1.0
        out[6] = safe_ratio(out[1], mdd)
    if m < 2:
        return
    mean = s / m
    ss = 0.0
    for t in range(1, n):
        d = ret[t] - mean
        ss += d * d
    std = math.sqrt(ss / (m - 1))
    down = math.sqrt(dn / m)
    root = math.sqrt(ppy)  # NaN if ppy is NaN
    out[2] = std * root
    out[3] = safe_ratio(mean, std) * root
    out[4] = safe_ratio(mean, down) * root


@njit(cache=True)
def symbol_metrics(pos, ret, eq, close, n, fee, ppy, out):
    """Write the metrics of `METRIC_NAMES` for one symbol into `out` (formulas in the module docstring).

    `pos`, `ret`, `eq`: the series of `kernels.backtest.simulate` over bars 0..n-1 (positions in
    {-1, 0, +1}); `close`: the symbol's closes over the same bars; `fee`: fee as a fraction; `ppy`:
    periods per year (NaN if unknown).
    """
    for i in range(N_METRICS):
        out[i] = np.nan
    if n <= 0:
        return
    series_metrics(ret, eq, n, ppy, out)
    m = n - 1
    n_trades = 0
    closed = 0
    wins = 0
    held = 0
    growth = 1.0
    if pos[0] != 0.0:
        n_trades += 1
        growth = 1.0 / (1.0 + fee * abs(pos[0]))
    for t in range(1, n):
        p_prev = pos[t - 1]
        p = pos[t]
        if p_prev != 0.0:
            held += 1
            x0 = np.float64(close[t - 1])
            R = (np.float64(close[t]) - x0) / x0
            if p != p_prev:  # the trade closes at this close and pays its exit fee
                growth = growth * ((1.0 + p_prev * R) - fee * abs(p_prev) * (1.0 + R))
                closed += 1
                if growth - 1.0 > 0.0:
                    wins += 1
            else:
                growth = growth * (1.0 + p_prev * R)
        if p != p_prev and p != 0.0:
            n_trades += 1
            growth = 1.0 / (1.0 + fee * abs(p))  # the entry fee
    out[7] = n_trades
    if closed > 0:
        out[8] = wins / closed
    out[10] = np.float64(close[n - 1]) / np.float64(close[0]) - 1.0  # buy_hold_return
    if m == 0:
        return
    out[9] = held / m  # exposure


def infer_periods_per_year(times) -> float:
    """Bars per year of a time axis: `(number of bars - 1) / (span in years of 365.25 days)`.

    Counting the bars that exist (rather than using the median spacing) gives about 252 for exchange
    trading days, 365 for crypto dailies and the right figure for intraday bars with overnight gaps.
    NaN when it cannot be inferred (fewer than 2 bars, a zero span, or a non-datetime axis).
    """
    t = np.asarray(times)
    if t.ndim != 1 or len(t) < 2 or not np.issubdtype(t.dtype, np.datetime64):
        return float("nan")
    span = (t[-1] - t[0]) / np.timedelta64(1, "s")
    if not span > 0:
        return float("nan")
    return float((len(t) - 1) / (span / (DAYS_PER_YEAR * 86400.0)))


def periods_per_year_by_symbol(times, close) -> np.ndarray:
    """Bars per year of every symbol from its own bars: `infer_periods_per_year` of the times at
    which its close is not NaN (a NaN close is a time without a bar of that symbol).

    A monthly symbol in a store whose time axis is the union with daily ones gets about 12, not the
    axis' figure. `close` is `(n_symbols, n_times)` on `times`.
    """
    t = np.asarray(times)
    panel = np.asarray(close)
    if panel.ndim == 1:
        panel = panel.reshape(1, -1)
    out = np.full(panel.shape[0], np.nan)
    for i in range(panel.shape[0]):
        out[i] = infer_periods_per_year(t[~np.isnan(panel[i])])
    return out


def per_symbol(ppy, n_symbols: int) -> np.ndarray:
    """Periods per year as one float64 per symbol: a scalar (or None = unknown, NaN) for every
    symbol, or an array with one value per symbol."""
    if ppy is None:
        return np.full(n_symbols, np.nan)
    arr = np.asarray(ppy, np.float64)
    if arr.ndim == 0:
        return np.full(n_symbols, float(arr))
    if arr.shape != (n_symbols,):
        raise ValueError(f"periods_per_year has shape {arr.shape}; expected a number or one per symbol ({n_symbols})")
    return np.ascontiguousarray(arr)
