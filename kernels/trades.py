"""Trade records and trade statistics of per-symbol backtests (Numba kernel, NumPy summaries).

A *trade* is a stretch of one symbol's own bars with the same non-zero position (+1 or -1, as
`kernels.backtest.simulate` produces): it opens at the close of the bar where the position becomes
non-zero (entry) and closes at the close of the bar where it changes again (exit); a reversal
closes one trade and opens the next at the same close. Everything runs on the symbol's own bars
(ATC_SPEC.md section 7: a NaN close is a time without a bar), so `bars` counts own bars and a
time without a bar neither ends nor extends a trade.

Return and fees of a trade use the fee model of `kernels.backtest` with `f = fee_bps / 10_000`:
the trade starts from its capital `C` before the entry fee, buys (or shorts) `C / (1 + f)`,
earns `p * R_t` each bar and at the exit close pays `f` on the position's value then
(`E_{b-1} * (1 + R_b)`, for a short what it buys back). So, for a trade with direction p entered
at bar a and exited at bar b,

    return = prod_{t=a+1..b-1} (1 + p R_t) * ((1 + p R_b) - f (1 + R_b)) / (1 + f) - 1
    fees   = f / (1 + f) + f * (1 + R_b) * prod_{t=a+1..b-1} (1 + p R_t) / (1 + f)

both as fractions of `C`. It is the same trade return whose sign `win_rate` counts in
`kernels.metrics`, and, long-only, vectorbt's `pnl / (size * entry_price + entry_fees)`. A trade
still open at the symbol's last own bar has `exit = -1`, `is_open = True`, its return marked at
that close without an exit fee, and is left out of every statistic of `trade_stats` except
`n_trades`.

Entry points: `trade_records(close, position, fee_bps)` -> one structured array of all trades
(`TRADE_DTYPE`, plain fields: write it to Parquet/Zarr/CSV column by column), and
`trade_stats(trades, n_symbols)` -> a dict of per-symbol arrays (`TRADE_STAT_NAMES`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.errors import ATCUserError

TRADE_DTYPE = np.dtype([
    ("symbol", np.int64),     # row of the panel
    ("entry", np.int64),      # time index (column of the panel) of the entry close
    ("exit", np.int64),       # time index of the exit close; -1 while open
    ("direction", np.int8),   # +1 long, -1 short
    ("ret", np.float64),      # trade return net of both fees (marked, without exit fee, if open)
    ("bars", np.int64),       # own bars held: return bars from entry to exit (or to the last bar)
    ("fees", np.float64),     # fees paid, as a fraction of the trade's capital before its entry fee
    ("is_open", np.bool_),
])
"""One record per trade; fields documented inline and in the module docstring."""

TRADE_STAT_NAMES: tuple[str, ...] = (
    "n_trades", "n_closed", "win_rate", "profit_factor", "expectancy", "avg_bars_held",
    "best_trade", "worst_trade",
)
TRADE_STAT_DESCRIPTIONS: dict[str, str] = {
    "n_trades": "trades opened, including one still open at the last bar",
    "n_closed": "closed trades (the ones every other statistic is computed on)",
    "win_rate": "share of closed trades with a return > 0",
    "profit_factor": "sum of positive trade returns / -(sum of negative trade returns); +inf with gains and no "
                     "losses, NaN if every closed trade returned exactly 0",
    "expectancy": "mean return of a closed trade",
    "avg_bars_held": "mean own bars held by a closed trade",
    "best_trade": "largest closed-trade return",
    "worst_trade": "smallest closed-trade return",
}
"""Per-symbol trade statistics; NaN for a symbol without closed trades (n_trades, n_closed: 0)."""


@njit(cache=True)
def _scan(close, pos, fee, fill, sym, entry, exit_, dirn, ret, bars, fees, is_open):
    """Walk every symbol's own bars (close and position both finite) and count its trades; with
    `fill`, also write them, in symbol then entry order, into the output arrays."""
    n_sym, n_t = close.shape
    k_out = 0
    for i in range(n_sym):
        prev_t = -1
        p_prev = 0.0
        k = -1          # own bar index
        active = False
        e_t = 0
        e_k = 0
        growth = 1.0
        paid = 0.0
        for t in range(n_t):
            x = close[i, t]
            p = pos[i, t]
            if np.isnan(x) or np.isnan(p):
                continue
            k += 1
            if active:
                x0 = np.float64(close[i, prev_t])
                R = (np.float64(x) - x0) / x0
                if p != p_prev:  # exit at this close: fee on the position's value now
                    paid += fee * abs(p_prev) * (1.0 + R) * growth
                    growth = growth * ((1.0 + p_prev * R) - fee * abs(p_prev) * (1.0 + R))
                    if fill:
                        sym[k_out] = i
                        entry[k_out] = e_t
                        exit_[k_out] = t
                        dirn[k_out] = 1 if p_prev > 0.0 else -1
                        ret[k_out] = growth - 1.0
                        bars[k_out] = k - e_k
                        fees[k_out] = paid
                        is_open[k_out] = False
                    k_out += 1
                    active = False
                else:
                    growth = growth * (1.0 + p_prev * R)
            if p != p_prev and p != 0.0:
                active = True
                e_t = t
                e_k = k
                growth = 1.0 / (1.0 + fee * abs(p))
                paid = fee * abs(p) / (1.0 + fee * abs(p))
            p_prev = p
            prev_t = t
        if active:
            if fill:
                sym[k_out] = i
                entry[k_out] = e_t
                exit_[k_out] = -1
                dirn[k_out] = 1 if p_prev > 0.0 else -1
                ret[k_out] = growth - 1.0
                bars[k_out] = k - e_k
                fees[k_out] = paid
                is_open[k_out] = True
            k_out += 1
    return k_out


def trade_records(close, position, fee_bps: float = 0.0) -> np.ndarray:
    """Every trade of every symbol, as a structured array of `TRADE_DTYPE` sorted by symbol and entry.

    `close` and `position` are `(n_symbols, n_times)` (or 1-D for one symbol) on the same time axis,
    `position` as `run_backtest` returns it (NaN where the symbol has no bar or was not computed);
    `fee_bps` must be the one the backtest ran with. Times are column indices of the panel: map
    them to timestamps with the store's time coordinate.
    """
    c = np.asarray(close, np.float64)
    p = np.asarray(position, np.float64)
    if c.shape != p.shape or c.ndim not in (1, 2):
        raise ATCUserError(f"close {c.shape} and position {p.shape} must be the same 1-D or 2-D shape")
    c = np.ascontiguousarray(c.reshape(1, -1) if c.ndim == 1 else c)
    p = np.ascontiguousarray(p.reshape(c.shape))
    fee = float(fee_bps) / 10_000.0
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0)
    n = _scan(c, p, fee, False, empty_i, empty_i, empty_i, np.empty(0, np.int8), empty_f, empty_i,
              empty_f, np.empty(0, np.bool_))
    cols = {name: np.empty(n, TRADE_DTYPE[name]) for name in TRADE_DTYPE.names}
    _scan(c, p, fee, True, cols["symbol"], cols["entry"], cols["exit"], cols["direction"], cols["ret"],
          cols["bars"], cols["fees"], cols["is_open"])
    out = np.empty(n, TRADE_DTYPE)
    for name, col in cols.items():
        out[name] = col
    return out


def trade_stats(trades: np.ndarray, n_symbols: int) -> dict[str, np.ndarray]:
    """Per-symbol statistics of `trade_records` output (`TRADE_STAT_NAMES`, one value per symbol).

    Profit factor and expectancy are on trade *returns* (each trade's result relative to its own
    capital), so a symbol's statistics do not depend on how its equity grew before the trade.
    """
    sym = trades["symbol"]
    closed = ~trades["is_open"]
    r = trades["ret"][closed]
    s = sym[closed]
    n_trades = np.bincount(sym, minlength=n_symbols).astype(np.float64)
    n_closed = np.bincount(s, minlength=n_symbols).astype(np.float64)
    wins = np.bincount(s, weights=(r > 0).astype(np.float64), minlength=n_symbols)
    gain = np.bincount(s, weights=np.where(r > 0, r, 0.0), minlength=n_symbols)
    loss = -np.bincount(s, weights=np.where(r < 0, r, 0.0), minlength=n_symbols)
    total = np.bincount(s, weights=r, minlength=n_symbols)
    held = np.bincount(s, weights=trades["bars"][closed].astype(np.float64), minlength=n_symbols)
    best = np.full(n_symbols, -np.inf)
    worst = np.full(n_symbols, np.inf)
    np.maximum.at(best, s, r)
    np.minimum.at(worst, s, r)
    has = n_closed > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pf = np.where(loss > 0, gain / loss, np.where(gain > 0, np.inf, np.nan))
        out = {
            "n_trades": n_trades,
            "n_closed": n_closed,
            "win_rate": np.where(has, wins / n_closed, np.nan),
            "profit_factor": np.where(has, pf, np.nan),
            "expectancy": np.where(has, total / n_closed, np.nan),
            "avg_bars_held": np.where(has, held / n_closed, np.nan),
            "best_trade": np.where(has, best, np.nan),
            "worst_trade": np.where(has, worst, np.nan),
        }
    return out
