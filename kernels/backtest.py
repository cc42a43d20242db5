"""Backtests of ATC's `Average_Signal`: positions, strategy returns and equity (Numba).

Conventions (one symbol, its own bar index t = 0..n-1 over its own bars, as in ATC_SPEC.md):

* **Direction** (the state machine of the original indicator): `d_0 = 0`; for t >= 1
  `d_t = +1` if `avg_t > long_threshold and avg_{t-1} <= long_threshold` (crosses above),
  `d_t = -1` if `avg_t < short_threshold and avg_{t-1} >= short_threshold` (crosses below),
  otherwise `d_t = d_{t-1}`. The thresholds are the ATC parameters `long_threshold` and
  `short_threshold` (the ones `Cut` uses), compared in float64.
* **Position** `position_t = d_t`, or `max(d_t, 0)` with `long_only` (short -> flat). It is decided
  at the close of bar t.
* **Time alignment.** `strategy_return_t` is the return *realised over bar t* (from close t-1 to
  close t), net of the fee of the trade made at the close of bar t:

      strategy_return_0 = 0
      strategy_return_t = position_{t-1} * R_t - fee * T_t                      (t >= 1)

  with `R_t = (x_t - x_{t-1}) / x_{t-1}` (spec section 4) and `fee = fee_bps / 10_000`. So the
  position decided at the close of bar t earns `position_t * R_{t+1}`, booked at bar t+1.
* **Fees: a fraction of the value traded at the close.** Write `E_t` for the equity and `p_t` for
  the position. Position `p` means holdings worth `p * E_t` after the close of bar t. Before the
  trade at the close of bar t, the equity is `V_t = E_{t-1} * (1 + p_{t-1} * R_t)` and the holdings
  are worth `H_t = p_{t-1} * E_{t-1} * (1 + R_t)`. The trade takes the holdings to `p_t * E_t` and
  pays `fee` times the value it trades, out of the equity:

      E_t = V_t - fee * |p_t * E_t - H_t|

  so the fee is paid on what is actually bought or sold, the fee included in what the new position
  is sized on. Solving this for `E_t`, in units of `E_{t-1}` (`v = 1 + p_{t-1} R_t`,
  `h = p_{t-1} (1 + R_t)`, `d = p_t v - h`, the trade it would take without a fee):

      T_t = d / (1 + fee * p_t)    if d >= 0 (a buy)
      T_t = -d / (1 - fee * p_t)   if d < 0  (a sell)

  and `T_t = 0` when `p_t == p_{t-1}`: a position that does not change is not traded (a short of
  `-1` is kept at -100% of equity bar to bar, as in the return formula above, without paying for
  that drift). Cases: entering from flat costs `E_t = V_t / (1 + fee)`; leaving to flat
  `E_t = V_t - fee * |H_t|` (for a long `V_t * (1 - fee)`; a short buys back its value at the close,
  `E_{t-1} (1 + R_t)`); a reversal pays on both legs, `T_t = |H_t| / E_{t-1} + E_t / E_{t-1}`.
  With `long_only` this is exactly what a cash account that buys with all its cash (fee included)
  and sells all its shares at the close ends with (vectorbt's `from_orders` with target-percent
  orders agrees to 1e-12, tests/test_vectorbt_crosscheck.py). `position_0` is always 0, so nothing
  is paid at bar 0. Earlier versions charged `fee * |p_t - p_{t-1}| * E_{t-1}`, which ignored the
  bar's move and the fee itself (final equity 0.3-1.2% off over many trades at 10 bps).
* **Equity** `equity_t = prod_{u <= t} (1 + strategy_return_u)`, so `equity_0 = 1`. It is not
  floored: a short that loses more than 100% in one bar takes equity to or below zero (the
  metrics then report a CAGR of -1, see `kernels.metrics`).

A NaN close is a time at which the symbol has no bar (ATC_SPEC.md section 7): t counts only the
symbol's own bars, a position is held from one own bar to the next, and returns run between
consecutive own bars. At times without a bar, and for symbols whose ATC status is not OK, every
series and metric is NaN. `simulate` is the one implementation of these rules; `atc run --backtest` and every
combination of `atc sweep` call it, so the two agree bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
from numba import njit

from kernels.errors import ATCUserError
from kernels.metrics import METRIC_NAMES, per_symbol, symbol_metrics
from kernels.params import ATCParamError, ATCParams

BACKTEST_SERIES: tuple[str, ...] = ("position", "strategy_return", "equity")
"""The time series a backtest adds to a results store, on (symbol, time)."""

BACKTEST_DESCRIPTIONS: dict[str, str] = {
    "position": "position decided at the close of the bar: +1 long, -1 short, 0 flat",
    "strategy_return": "return over the bar: previous position x close-to-close return - fee on the value traded at its close",
    "equity": "equity of the strategy, 1 at the symbol's first bar",
}


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class BacktestParams:
    """How `Average_Signal` is traded. Invalid values raise `ATCParamError` naming the parameter.

    - `fee_bps`: cost of a trade, in basis points of the value traded at the close (the exact
      model is in the module docstring; 0 <= fee_bps < 10000; default 0).
    - `long_only`: never short (a short direction becomes flat); default False.
    - `periods_per_year`: bars per year for annualised metrics; None (default) infers it from the
      time coordinate (see `kernels.metrics.infer_periods_per_year`).
    """

    fee_bps: float = 0.0
    long_only: bool = False
    periods_per_year: float | None = None

    def __post_init__(self) -> None:
        f = self.fee_bps
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0 <= f < 10_000:
            raise ATCParamError(f"fee_bps must be a number in [0, 10000) basis points, got {f!r}")
        if not isinstance(self.long_only, bool):
            raise ATCParamError(f"long_only must be true or false, got {self.long_only!r}")
        p = self.periods_per_year
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))
                              or not math.isfinite(p) or p <= 0):
            raise ATCParamError(f"periods_per_year must be a finite number > 0 (or unset), got {p!r}")

    @property
    def fee(self) -> float:
        """The fee as a fraction of the value traded."""
        return self.fee_bps / 10_000.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, **overrides: Any) -> "BacktestParams":
        """Build from a config mapping (strings from the CLI are converted); unknown keys raise."""
        merged = dict(values or {})
        merged.update(overrides)
        unknown = sorted(set(merged) - set(BACKTEST_FIELDS))
        if unknown:
            raise ATCParamError(f"unknown backtest parameter(s): {', '.join(unknown)}; "
                                f"known: {', '.join(BACKTEST_FIELDS)}")
        return cls(**{k: _coerce(k, v) for k, v in merged.items()})

    def replace(self, **changes: Any) -> "BacktestParams":
        return dataclasses.replace(self, **changes)


BACKTEST_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(BacktestParams))


def _coerce(name: str, value: Any) -> Any:
    if name == "periods_per_year" and (value is None or (isinstance(value, str) and value.strip().lower()
                                                         in ("", "none", "null", "auto"))):
        return None
    if not isinstance(value, str):
        if name != "long_only" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    if name == "long_only":
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ATCParamError(f"long_only must be true or false, got {value!r}")
    try:
        return float(text)
    except ValueError:
        raise ATCParamError(f"{name} must be a number, got {value!r}") from None


def split_params(values: Mapping[str, Any] | None = None, base_atc: ATCParams | None = None,
                 base_backtest: BacktestParams | None = None) -> tuple[ATCParams, BacktestParams]:
    """Split one mapping (config file, `--set` pairs, a grid point) into ATC and backtest parameters.

    Keys of `BacktestParams` go there, every other key must be an ATCParams field; an unknown key
    raises `ATCParamError` listing both sets of names.
    """
    values = dict(values or {})
    atc_known = {f.name for f in fields(ATCParams)}
    unknown = sorted(set(values) - atc_known - set(BACKTEST_FIELDS))
    if unknown:
        raise ATCParamError(
            f"unknown parameter(s): {', '.join(unknown)}; ATC parameters: {', '.join(sorted(atc_known))}; "
            f"backtest parameters: {', '.join(BACKTEST_FIELDS)}")
    bt_vals = {k: values.pop(k) for k in list(values) if k in BACKTEST_FIELDS}
    atc = ATCParams.from_mapping({**(base_atc.to_dict() if base_atc else {}), **values})
    bt = BacktestParams.from_mapping({**(base_backtest.to_dict() if base_backtest else {}), **bt_vals})
    return atc, bt


# --------------------------------------------------------------------------- the simulation


@njit(cache=True)
def traded_value(p_prev, p, R, fee):
    """Value traded at a close where the position goes from `p_prev` to `p`, in units of the
    equity at the previous close (`T_t` of the module docstring).

    Shared by `simulate` and the portfolio sleeves (kernels/portfolio.py) so that a sleeve trades
    exactly like the symbol alone. Callers skip it when `p == p_prev` (not traded).
    """
    v = 1.0 + p_prev * R
    h = p_prev * (1.0 + R)
    d = p * v - h
    if d >= 0.0:
        return d / (1.0 + fee * p)
    return -d / (1.0 - fee * p)


@njit(cache=True)
def simulate(avg, close, n, long_thr, short_thr, long_only, fee, pos, ret, eq):
    """Direction, position, strategy return and equity of one symbol over its bars 0..n-1.

    `avg` and `close` are the symbol's `Average_Signal` and closes from its first valid bar (any
    float type, may be strided views); `pos`, `ret`, `eq` (float64, length >= n) receive the series.
    The rules are in the module docstring. With `fee == 0` the return is `p_{t-1} * R_t` exactly
    (the fee term subtracts 0.0), so zero-fee results do not depend on the fee model.
    """
    d = 0.0
    prev = 0.0
    e = 1.0
    for t in range(n):
        r = 0.0
        if t > 0:
            a = np.float64(avg[t])
            ap = np.float64(avg[t - 1])
            if a > long_thr and ap <= long_thr:
                d = 1.0
            elif a < short_thr and ap >= short_thr:
                d = -1.0
        p = d
        if long_only and p < 0.0:
            p = 0.0
        if t > 0:
            x0 = np.float64(close[t - 1])
            R = (np.float64(close[t]) - x0) / x0
            r = prev * R
            if p != prev:
                r = r - fee * traded_value(prev, p, R, fee)
        e = e * (1.0 + r)
        pos[t] = p
        ret[t] = r
        eq[t] = e
        prev = p


@njit(cache=True)
def backtest_panel(avg, close, starts, ends, ok, long_thr, short_thr, long_only, fee, ppy,
                   pos_out, ret_out, eq_out, metrics_out):
    """`simulate` + `symbol_metrics` for every symbol of a panel `(n_symbols, n_bars)`.

    Symbol i's own bars are its non-NaN closes in `[starts[i], ends[i])` (a NaN close is a time
    without a bar of that symbol): they are compacted, simulated and measured as one series, so a
    position is held from one own bar to the next and returns run between consecutive own bars;
    the series are placed back at the symbol's own times. Symbols with `ok[i] == False` and every
    time without a bar get NaN; `ppy[i]` is symbol i's periods per year. `metrics_out` is
    `(n_metrics, n_symbols)`.
    """
    n_sym, n_bars = close.shape
    a = np.empty(n_bars)
    x = np.empty(n_bars)
    p = np.empty(n_bars)
    r = np.empty(n_bars)
    e = np.empty(n_bars)
    for i in range(n_sym):
        for t in range(n_bars):
            pos_out[i, t] = np.nan
            ret_out[i, t] = np.nan
            eq_out[i, t] = np.nan
        for m in range(metrics_out.shape[0]):
            metrics_out[m, i] = np.nan
        if not ok[i]:
            continue
        n = 0
        for t in range(starts[i], ends[i]):
            if not np.isnan(close[i, t]):
                a[n] = avg[i, t]
                x[n] = close[i, t]
                n += 1
        if n == 0:
            continue
        simulate(a, x, n, long_thr, short_thr, long_only, fee, p, r, e)
        symbol_metrics(p, r, e, x, n, fee, ppy[i], metrics_out[:, i])
        n = 0
        for t in range(starts[i], ends[i]):
            if not np.isnan(close[i, t]):
                pos_out[i, t] = p[n]
                ret_out[i, t] = r[n]
                eq_out[i, t] = e[n]
                n += 1


class BacktestResult(dict):
    """`position`, `strategy_return`, `equity` (each shaped like the input) and `metrics`
    (a dict of metric name -> per-symbol array, names as in `kernels.metrics.METRIC_NAMES`)."""

    def __init__(self, series: dict, metrics: dict, periods_per_year: float):
        super().__init__(series)
        self.metrics = metrics
        self.periods_per_year = periods_per_year


def run_backtest(close, average_signal, atc_params: ATCParams | None = None,
                 backtest_params: BacktestParams | None = None, *, periods_per_year: float | None = None,
                 ok=None) -> BacktestResult:
    """Backtest `average_signal` (from `compute_atc`) on `close`, both `(n_bars,)` or `(n_symbols, n_bars)`.

    A NaN close is a time without a bar of that symbol: each symbol trades on its own bars only.
    Thresholds come from `atc_params` (the ones the signal was computed with). Periods per year:
    `backtest_params.periods_per_year`, else `periods_per_year` (a number, or one per symbol as
    `kernels.metrics.periods_per_year_by_symbol` gives), else NaN (annualised metrics NaN); the
    result's `periods_per_year` is one value per symbol. `ok` (bool per symbol, e.g.
    `result.status == 0`) marks the symbols to trade; by default every symbol whose
    `average_signal` is finite at all its own bars.
    """
    from kernels.api import _as_panel
    from kernels.cpu import scan_bars

    atc_params = ATCParams() if atc_params is None else atc_params
    bt = BacktestParams() if backtest_params is None else backtest_params
    one_d = np.ndim(close) == 1
    panel = _as_panel(close, "close")
    avg = _as_panel(average_signal, "average_signal")
    if avg.shape != panel.shape:
        raise ATCUserError(f"average_signal has shape {np.shape(average_signal)}, close {np.shape(close)}")
    starts, ends, lens, bad = scan_bars(panel)
    own = ~np.isnan(panel)
    if ok is None:
        ok = np.array([bad[i] < 0 and lens[i] > 0 and np.isfinite(avg[i][own[i]]).all()
                       for i in range(panel.shape[0])], bool)
    else:
        ok = np.asarray(ok, bool).reshape(-1) & (bad < 0)
    ppy = bt.periods_per_year if bt.periods_per_year is not None else periods_per_year
    try:
        ppy = per_symbol(ppy, panel.shape[0])
    except ValueError as exc:
        raise ATCUserError(str(exc)) from None
    shape = panel.shape
    pos, ret, eq = (np.empty(shape) for _ in range(3))
    metrics = np.empty((len(METRIC_NAMES), shape[0]))
    backtest_panel(avg, panel, starts, ends, ok, float(atc_params.long_threshold),
                   float(atc_params.short_threshold), bt.long_only, bt.fee, ppy, pos, ret, eq, metrics)
    series = {"position": pos, "strategy_return": ret, "equity": eq}
    if one_d:
        series = {k: v[0] for k, v in series.items()}
        mets = {name: metrics[m, 0] for m, name in enumerate(METRIC_NAMES)}
        ppy = ppy[0]
    else:
        mets = {name: metrics[m] for m, name in enumerate(METRIC_NAMES)}
    return BacktestResult(series, mets, ppy)
