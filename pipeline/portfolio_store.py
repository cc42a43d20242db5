"""The portfolio post-pass of `atc run --backtest --portfolio equal|signal` (and of `atc update`).

A portfolio needs every symbol at every time (its sleeves share one cash account), so it cannot be
computed per symbol chunk by the tasks; it runs once on the client after every chunk is done,
reading the results store (`position`, or `Average_Signal` and `status`) and the price store
(`close`) one symbol chunk at a time into time-major panels, and calling
`kernels.portfolio.portfolio_equal` / `portfolio_signal` (rules in that module).

Stored (see data/README.md): `portfolio_equity`, `portfolio_returns`, `portfolio_turnover`,
`portfolio_fees`, `portfolio_gross_exposure` (float64 on `time`) and `portfolio_metrics` (float64
on `portfolio_metric`, whose coordinate holds `kernels.portfolio.PORTFOLIO_METRIC_NAMES`: the 11
backtest metrics, `turnover`, `fees_paid`), and the root attribute `portfolio` (JSON: `kind`,
`rebalance_every`, `periods_per_year` as given or null, `periods_per_year_used`, and `fingerprint`,
the results fingerprint it was computed from). Periods per year: the union time axis' own figure
(`infer_periods_per_year`) unless `--periods-per-year` is given.

Rerun and interruption: the attribute is removed before the variables are rewritten and set last,
so a store whose attribute does not match the requested settings and its own fingerprint is simply
recomputed (only the post-pass: the per-symbol results do not depend on it). A rerun without
`--portfolio` removes a stored portfolio, so a store always holds what its last command asked for.

Memory (client): two float64 panels `(n_times, n_symbols)` (close and position or signal), plus
what the kernel adds: a bool panel (`bar`) and one float64 panel for the fee-free benchmark, so
about `3.2 * 8 * n_symbols * n_times` bytes, 256 MB for 2,000 x 5,000 (the panels are filled
time-major so the kernel's transposes are free).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kernels.errors import ATCUserError

PORTFOLIO_KINDS = ("equal", "signal")
SERIES_VARS = {"equity": "portfolio_equity", "returns": "portfolio_returns", "turnover": "portfolio_turnover",
               "fees": "portfolio_fees", "gross_exposure": "portfolio_gross_exposure"}
METRICS_VAR = "portfolio_metrics"
METRIC_DIM = "portfolio_metric"
ATTR = "portfolio"
_DESCRIPTIONS = {
    "equity": "portfolio equity (cash + holdings), 1 before the first time",
    "returns": "portfolio return over the time: equity_t / equity_(t-1) - 1",
    "turnover": "value traded at that close / equity before the trade",
    "fees": "fees paid at that close, in units of the initial capital",
    "gross_exposure": "sum of |holdings| / equity after the trade",
}


class PortfolioError(ATCUserError, ValueError):
    """A portfolio that cannot be computed as asked."""


def portfolio_settings(kind: str | None, rebalance_every: int | None = None) -> dict[str, Any] | None:
    """Checked settings of `--portfolio KIND --rebalance N` (None: no portfolio)."""
    if kind is None:
        if rebalance_every is not None:
            raise PortfolioError("--rebalance applies to portfolios: add --portfolio equal or --portfolio signal")
        return None
    if kind not in PORTFOLIO_KINDS:
        raise PortfolioError(f"--portfolio must be one of {', '.join(PORTFOLIO_KINDS)}, got {kind!r}")
    n = 1 if rebalance_every is None else rebalance_every
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise PortfolioError(f"--rebalance must be an integer >= 1 (times between rebalancings), got {n!r}")
    return {"kind": kind, "rebalance_every": int(n)}


def _root(path: Path, mode: str = "r"):
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)


def _consolidate(path: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the Zarr v3 spec"
        zarr.consolidate_metadata(str(path), zarr_format=3)


def store_times(path: str | os.PathLike) -> np.ndarray:
    """The results store's time coordinate as datetime64 (read with zarr, so it works while other
    variables are being rewritten)."""
    from xarray.coding.times import decode_cf_datetime

    tarr = _root(Path(path))["time"]
    raw = np.asarray(tarr[:])
    units = tarr.attrs.get("units")
    if not units:
        return raw
    return np.asarray(decode_cf_datetime(raw, units, tarr.attrs.get("calendar", "proleptic_gregorian")))


def stored_portfolio(path: str | os.PathLike, *, complete: bool = False) -> dict[str, Any] | None:
    """The `portfolio` attribute of a results store (None: no portfolio asked for); with
    ``complete``, only if it was computed from the store's current results (its fingerprint)."""
    attrs = _root(Path(path)).attrs
    raw = attrs.get(ATTR)
    rec = json.loads(raw) if raw else None
    if complete and rec and rec.get("fingerprint") != attrs.get("fingerprint"):
        return None
    return rec


def _panels(results: Path, prices: str, kind: str, n_sym: int, n_time: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    from kernels.status import OK
    from pipeline import results as rs
    from pipeline.store import open_prices

    root = _root(results)
    closeT = np.empty((n_time, n_sym))
    otherT = np.empty((n_time, n_sym))
    px = open_prices(prices)
    try:
        for a, b in rs.chunk_bounds(n_sym, k):
            closeT[:, a:b] = np.asarray(px["close"][a:b].values, np.float64).T
            if kind == "equal":
                otherT[:, a:b] = np.asarray(root["position"][a:b], np.float64).T
            else:  # symbols that were not computed hold nothing (the kernel's `ok`)
                block = np.asarray(root["Average_Signal"][a:b], np.float64)
                block[np.asarray(root["status"][a:b]) != OK] = np.nan
                otherT[:, a:b] = block.T
    finally:
        px.close()
    return closeT, otherT


def compute_portfolio(results: str | os.PathLike, prices: str | os.PathLike, settings: Mapping[str, Any]):
    """The portfolio of a finished results store (a `kernels.portfolio.PortfolioResult`)."""
    from kernels.metrics import infer_periods_per_year
    from kernels.portfolio import portfolio_equal, portfolio_signal
    from pipeline import results as rs

    results = Path(results)
    state = rs.read_state(results)
    bt = json.loads(state.attrs.get("backtest") or "null")
    if not bt:
        raise PortfolioError(f"{results} holds no backtest: a portfolio needs `atc run --backtest`")
    ppy = bt.get("periods_per_year")
    if ppy is None:
        ppy = infer_periods_per_year(store_times(results))
    closeT, otherT = _panels(results, str(prices), settings["kind"], state.n_symbols, state.n_time,
                             state.chunk_symbols)
    every = int(settings["rebalance_every"])
    if settings["kind"] == "equal":
        return portfolio_equal(closeT.T, otherT.T, fee_bps=bt["fee_bps"], rebalance_every=every, periods_per_year=ppy)
    return portfolio_signal(closeT.T, otherT.T, fee_bps=bt["fee_bps"], rebalance_every=every,
                            long_only=bool(bt["long_only"]), periods_per_year=ppy)


def drop_portfolio(results: str | os.PathLike, *, keep_settings: bool = False) -> bool:
    """Remove a stored portfolio (attribute first, then the variables); True if there was one.
    With ``keep_settings`` the attribute stays, marked not computed (empty fingerprint), so that the
    settings survive until the portfolio is recomputed. `atc update` does that before growing the
    time axis, which the portfolio's series (on `time` alone) would not follow."""
    results = Path(results)
    root = _root(results, "r+")
    names = [n for n in (*SERIES_VARS.values(), METRICS_VAR, METRIC_DIM) if n in root]
    raw = root.attrs.get(ATTR)
    if raw and keep_settings:
        root.attrs[ATTR] = json.dumps({**json.loads(raw), "fingerprint": ""}, sort_keys=True)
    elif raw:
        del root.attrs[ATTR]
    for n in names:
        del root[n]
    if raw or names:
        _consolidate(results)
    return bool(raw or names)


def write_portfolio(results: str | os.PathLike, pf: Any, settings: Mapping[str, Any], fingerprint: str) -> None:
    """Store a portfolio's series and metrics, then its attribute (last: it marks the post-pass done)."""
    import xarray as xr

    from kernels.portfolio import PORTFOLIO_METRIC_NAMES
    from pipeline.trades_store import append_variables

    results = Path(results)
    drop_portfolio(results, keep_settings=True)
    ds = xr.Dataset({var: (("time",), np.asarray(getattr(pf, name), np.float64), {"description": _DESCRIPTIONS[name]})
                     for name, var in SERIES_VARS.items()})
    ds[METRICS_VAR] = ((METRIC_DIM,), np.array([pf.metrics[m] for m in PORTFOLIO_METRIC_NAMES], np.float64),
                       {"description": f"metrics of the {settings['kind']} portfolio (docs/BACKTEST.md)",
                        "periods_per_year": float(pf.periods_per_year)})
    ds = ds.assign_coords({METRIC_DIM: np.array(PORTFOLIO_METRIC_NAMES, dtype=object)})
    append_variables(results, ds)
    bt = json.loads(_root(results).attrs.get("backtest") or "{}")
    record = {"kind": settings["kind"], "rebalance_every": int(settings["rebalance_every"]),
              "periods_per_year": bt.get("periods_per_year"), "periods_per_year_used": float(pf.periods_per_year),
              "fingerprint": fingerprint}
    _root(results, "r+").attrs[ATTR] = json.dumps(record, sort_keys=True)
    _consolidate(results)


def _matches(stored: Mapping[str, Any] | None, settings: Mapping[str, Any], fingerprint: str) -> bool:
    return bool(stored) and stored.get("kind") == settings["kind"] and \
        stored.get("rebalance_every") == settings["rebalance_every"] and stored.get("fingerprint") == fingerprint


def finish_backtest(results: str | os.PathLike, prices: str | os.PathLike, portfolio: Mapping[str, Any] | None,
                    *, on_notice: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`atc run`'s post-pass on a complete backtested store (under its lock): trades rebuilt if they
    are missing or stale (a store written before trades were stored), then the portfolio brought to
    ``portfolio`` (computed, kept, or removed with None). Idempotent: a rerun redoes what an
    interruption left undone, and nothing else. Returns what it did (and the seconds it took)."""
    from pipeline import results as rs
    from pipeline.trades_store import rebuild_trades, trades_current

    results = Path(results)
    notice = on_notice or (lambda m: None)
    t0 = time.perf_counter()
    fp = str(rs.read_state(results).attrs.get("fingerprint"))
    done: dict[str, Any] = {"trades": "current", "portfolio": None}
    if not trades_current(results, fp):
        rebuild_trades(results, prices, fp)
        done["trades"] = "rebuilt"
    t1 = time.perf_counter()
    stored = stored_portfolio(results)
    if portfolio is None:
        if drop_portfolio(results):
            done["portfolio"] = "removed"
            notice(f"removed the {stored['kind'] if stored else 'unfinished'} portfolio from {results} "
                   f"(rerun with --portfolio to compute one)")
    elif _matches(stored, portfolio, fp):
        done["portfolio"] = "current"
    else:
        if stored:
            notice(f"portfolio settings changed ({stored['kind']}, rebalance every {stored['rebalance_every']} -> "
                   f"{portfolio['kind']}, every {portfolio['rebalance_every']}): recomputing only the portfolio")
        write_portfolio(results, compute_portfolio(results, prices, portfolio), portfolio, fp)
        done["portfolio"] = "computed"
    done["trades_s"], done["portfolio_s"] = t1 - t0, time.perf_counter() - t1
    return done


def refresh_after_update(results: str | os.PathLike, prices: str | os.PathLike, fingerprint: str) -> dict[str, Any]:
    """`atc update`'s post-pass, before it records the new fingerprint: the stored portfolio (same
    settings) recomputed from the grown store, and every symbol's trades unless the update already
    brought them to ``fingerprint`` (`pipeline.trades_store.update_trades`, from the new bars).
    Recomputing from the store is simple and exact; it costs a read of close and position and the
    two kernels (see docs/BACKTEST.md), small beside the update's own read of the whole close panel."""
    from pipeline.trades_store import rebuild_trades, trades_current

    results = Path(results)
    settings = stored_portfolio(results)
    rebuilt = not trades_current(results, fingerprint)
    if rebuilt:
        rebuild_trades(results, prices, fingerprint)
    if settings:
        write_portfolio(results, compute_portfolio(results, prices, settings), settings, fingerprint)
    return {"trades": "rebuilt" if rebuilt else "current", "portfolio": settings["kind"] if settings else None}


def portfolio_summary(results: str | os.PathLike) -> str | None:
    """The stored portfolio's metrics in a few lines (None without one), printed after `atc run`."""
    import xarray as xr

    stored = stored_portfolio(results, complete=True)
    if not stored:
        return None
    ds = xr.open_zarr(str(results))
    try:
        m = ds[METRICS_VAR].to_series()
    finally:
        ds.close()
    every = stored["rebalance_every"]
    lines = [f"Portfolio ({stored['kind']}, rebalanced every {every} time{'s' if every != 1 else ''}, "
             f"{stored['periods_per_year_used']:.4g} periods per year):"]
    names = list(m.index)
    for i in range(0, len(names), 4):
        lines.append("  " + "   ".join(f"{n} {m[n]:.4g}" for n in names[i:i + 4]))
    return "\n".join(lines)
