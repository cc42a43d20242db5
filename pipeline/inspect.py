"""Reading stores for display: what a store holds, one symbol's series, sweep surfaces and rankings.

`atc show`, `atc plot` and the notebooks need the same few views of a store, and they must stay
cheap on big stores: one symbol of a results store is read without touching the others' chunks
beyond the one it lives in, and a sweep ranking reads one block of combinations at a time (as
`pipeline.sweep.summarize_sweep` does). Everything here returns numbers (numpy, pandas, xarray);
drawing and printing stay in `flows/`.

Statistics across symbols ignore NaN (a symbol that could not be computed has NaN metrics) and
keep infinities (a Sharpe ratio of +inf is a real, if degenerate, outcome; see kernels/metrics.py).
"""

from __future__ import annotations

import difflib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kernels.errors import ATCUserError
from kernels.metrics import HIGHER_IS_BETTER, METRIC_NAMES
from kernels.params import OUTPUT_NAMES
from pipeline.atomic import store_format

__all__ = [
    "AGGREGATIONS", "BACKTEST_SERIES", "InspectError", "KINDS", "SymbolView", "SweepSurface", "UnknownNameError",
    "backtest_stats", "beats_buy_hold", "minmax_decimate", "open_store", "parse_sel", "read_symbol",
    "check_rank_metric", "store_info", "store_kind", "sweep_curve", "sweep_portfolio", "sweep_ranking", "sweep_setup",
    "sweep_surface",
]

KINDS = {"price-store": "price store", "atc-results": "results store", "atc-sweep": "sweep store"}
BACKTEST_SERIES = ("position", "strategy_return", "equity")
AGGREGATIONS = ("median", "mean", "q25", "q75")


class InspectError(ATCUserError, ValueError):
    """A store, symbol, time range or option that cannot be shown as asked."""


class UnknownNameError(InspectError):
    """A symbol, metric or parameter that the store does not have (the message suggests close ones)."""


def unknown(what: str, name: str, choices: Iterable[str], *, extra: str = "") -> UnknownNameError:
    """Build the one-line error for an unknown name, with the closest choices (or the first few)."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    if not close:  # case-insensitive second chance (symbols are often typed in lower case)
        low = {c.lower(): c for c in choices}
        close = [low[c] for c in difflib.get_close_matches(str(name).lower(), list(low), n=3, cutoff=0.5)]
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        shown = ", ".join(choices[:8]) + (f", ... ({len(choices)} in all)" if len(choices) > 8 else "")
        hint = f"choose from {shown}"
    return UnknownNameError(f"unknown {what} {name!r}{extra}; {hint}")


# --------------------------------------------------------------------------------------------
# Any store
# --------------------------------------------------------------------------------------------

def store_kind(path: str | Path) -> str:
    """`atc_format` of the store at `path` ("price-store", "atc-results" or "atc-sweep")."""
    path = Path(path)
    if not path.exists():
        raise InspectError(f"{path}: no such store")
    kind = store_format(path)
    if kind not in KINDS:
        raise InspectError(f"{path} is not an atc store (no atc_format attribute of a price, results or "
                           f"sweep store)")
    return kind


def open_store(path: str | Path, kind: str | None = None):
    """Open any atc store lazily with plain numpy-backed variables (no dask: display reads small
    slices, and dask's graph overhead would dominate them)."""
    import xarray as xr

    kind = kind or store_kind(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # price stores are not consolidated
        return xr.open_zarr(str(path), chunks=None, consolidated=None if kind != "price-store" else False)


def _json(attrs: Mapping[str, Any], key: str, default: Any = None) -> Any:
    v = attrs.get(key)
    if v is None:
        return default
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _time_text(t: Any) -> str:
    """ISO time, without a midnight time of day (daily bars read as dates)."""
    s = str(np.datetime64(t, "s"))
    return s[:10] if s.endswith("T00:00:00") else s


def status_names(attrs: Mapping[str, Any]) -> dict[int, str]:
    from kernels.status import STATUS_NAMES

    names = {-1: "not computed", **STATUS_NAMES}
    names.update({int(k): v for k, v in (_json(attrs, "status_codes", {}) or {}).items()})
    return names


def store_info(path: str | Path) -> dict[str, Any]:
    """What a store holds, as plain values: kind, sizes, variables, parameters, status counts (from
    the stored `status`, so an unfinished run is counted too), fingerprints, times and history."""
    path = Path(path)
    kind = store_kind(path)
    ds = open_store(path, kind)
    a = dict(ds.attrs)
    info: dict[str, Any] = {
        "kind": kind, "path": str(path.resolve()), "sizes": {str(k): int(v) for k, v in ds.sizes.items()},
        "variables": {str(n): (tuple(str(d) for d in v.dims), str(v.dtype)) for n, v in ds.data_vars.items()},
        "fingerprint": a.get("fingerprint"), "history": list(a.get("history") or []),
    }
    for key in ("created", "modified", "completed", "source", "prices_path", "prices_fingerprint", "dtype",
                "code_version", "backend", "timezone", "filled_gaps_total"):
        if key in a:
            info[key] = a[key]
    if "time" in ds.coords and ds.sizes.get("time", 0):
        t = ds["time"].values
        info["time_range"] = (_time_text(t[0]), _time_text(t[-1]))
    if kind == "price-store":
        return info
    info["params"] = _json(a, "params", {})
    if a.get("backtest"):
        info["backtest"] = _json(a, "backtest", {})
    names = status_names(a)
    if "status" in ds:
        st = np.asarray(ds["status"].values)
        st = np.where(np.isnan(st), -1, st).astype(np.int64) if st.dtype.kind == "f" else st.astype(np.int64)
        codes, counts = np.unique(st, return_counts=True)
        info["status_counts"] = {names.get(int(c), str(c)): int(n) for c, n in zip(codes, counts)}
    if kind == "atc-results":
        done = np.asarray(ds["chunk_done"].values)
        info["chunks_done"] = (int((done == 1).sum()), int(done.size))
        info["backtested"] = all(v in ds for v in BACKTEST_SERIES)
    else:
        done = np.asarray(ds["task_done"].values)
        info["tasks_done"] = (int((done == 1).sum()), int(done.size))
        info["grid"] = _json(a, "grid", {})
        info["save_signals"] = bool(a.get("save_signals"))
    return info


# --------------------------------------------------------------------------------------------
# One symbol of a results store
# --------------------------------------------------------------------------------------------

@dataclass
class SymbolView:
    """One symbol's bars (its own bars only: where its close is not NaN) and series, ready to draw."""

    symbol: str
    time: np.ndarray  # datetime64[ns]
    close: np.ndarray
    series: dict[str, np.ndarray]  # outputs and, when backtested, position/strategy_return/equity
    params: dict[str, Any]
    backtest: dict[str, Any] | None
    status: str
    reason: str
    prices_path: str
    notes: list[str] = field(default_factory=list)

    @property
    def backtested(self) -> bool:
        return all(v in self.series for v in BACKTEST_SERIES)


def _parse_time(text: Any, option: str) -> np.datetime64 | None:
    import pandas as pd

    if text is None or text == "":
        return None
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise InspectError(f"{option} {text!r} is not a time (e.g. 2021-03-01 or 2021-03-01T14:30)") from None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.datetime64(ts.to_datetime64(), "ns")


def _symbol_index(symbols: np.ndarray, symbol: str, where: str) -> int:
    names = [str(s) for s in symbols.tolist()]  # StringDType/object coordinates alike
    try:
        return names.index(str(symbol))
    except ValueError:
        raise unknown("symbol", symbol, names, extra=f" in {where}") from None


def resolve_prices(results_attrs: Mapping[str, Any], results_path: Path, prices: str | Path | None) -> tuple[Path, list[str]]:
    """The price store a results (or sweep) store was computed from, and notes about it.

    The path comes from `--prices` or the `prices_path` attribute. A fingerprint different from
    the recorded one is reported, not refused: an appended price store still holds the same bars."""
    notes: list[str] = []
    p = Path(prices) if prices is not None else Path(results_attrs.get("prices_path") or "")
    if not str(p) or str(p) == ".":
        raise InspectError(f"{results_path} does not record its price store; give it with --prices PATH")
    if not p.exists():
        raise InspectError(f"price store {p} (recorded in {results_path}) does not exist; give it with --prices PATH")
    if store_format(p) != "price-store":
        raise InspectError(f"{p} is not an atc price store; give the price store with --prices PATH")
    meta = json.loads((p / "zarr.json").read_text()).get("attributes", {})
    want = results_attrs.get("prices_fingerprint")
    if want and meta.get("fingerprint") != want:
        notes.append(f"note: price store {p} changed since the run (fingerprint {str(meta.get('fingerprint'))[:19]}..., "
                     f"run used {str(want)[:19]}...); its closes are matched by time")
    return p, notes


def read_symbol(results: str | Path, symbol: str, start: Any = None, end: Any = None,
                prices: str | Path | None = None) -> SymbolView:
    """Read `symbol` from a results store and its closes from the price store, between `start`
    and `end` (inclusive), keeping only the symbol's own bars: the time axis is the union of all
    calendars, and drawing a symbol across bars it does not have would invent flat stretches."""
    results = Path(results)
    if store_kind(results) != "atc-results":
        raise InspectError(f"{results} is a {KINDS[store_kind(results)]}, not a results store")
    ds = open_store(results, "atc-results")
    i = _symbol_index(ds["symbol"].values, symbol, str(results))
    t_all = ds["time"].values
    t0, t1 = _parse_time(start, "--start"), _parse_time(end, "--end")
    if t0 is not None and t1 is not None and t1 < t0:
        raise InspectError(f"--end {end} is before --start {start}")
    lo = 0 if t0 is None else int(np.searchsorted(t_all, t0, side="left"))
    hi = t_all.size if t1 is None else int(np.searchsorted(t_all, t1, side="right"))
    if hi <= lo:
        raise InspectError(f"no bars between {start or 'the start'} and {end or 'the end'} in {results} "
                           f"({_time_text(t_all[0])} .. {_time_text(t_all[-1])})")
    ppath, notes = resolve_prices(ds.attrs, results, prices)
    px = open_store(ppath, "price-store")
    j = _symbol_index(px["symbol"].values, symbol, str(ppath))
    times = t_all[lo:hi]
    pt = px["time"].values
    if pt.size >= t_all.size and np.array_equal(pt[:t_all.size], t_all):
        close = np.asarray(px["close"][j, lo:hi].values, dtype=np.float64)
    else:  # another calendar (the price store was appended to): match by time
        pos = np.searchsorted(pt, times)
        ok = (pos < pt.size) & (pt[np.minimum(pos, pt.size - 1)] == times)
        row = np.asarray(px["close"][j, :].values, dtype=np.float64)
        close = np.full(times.size, np.nan)
        close[ok] = row[pos[ok]]
    own = np.isfinite(close)
    names = list(OUTPUT_NAMES) + [v for v in BACKTEST_SERIES if v in ds]
    series = {n: np.asarray(ds[n][i, lo:hi].values, dtype=np.float64)[own] if n in ds
              else np.full(int(own.sum()), np.nan) for n in names}  # NaN: not stored (atc run --outputs)
    names_st = status_names(ds.attrs)
    status = names_st.get(int(ds["status"][i].values), "?")
    reason = str(ds["reason"][i].values) if "reason" in ds else ""
    bt = _json(ds.attrs, "backtest") if ds.attrs.get("backtest") else None
    if not own.any():
        notes.append(f"note: {symbol} has no bar of its own in this time range")
    return SymbolView(str(symbol), times[own], close[own], series, _json(ds.attrs, "params", {}), bt, status,
                      reason, str(ppath), notes)


def minmax_decimate(y: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values that draw like every point of `y` at `n_buckets` pixels: the minimum
    and the maximum of each bucket of consecutive points, in time order.

    A line through 2 points per pixel column covers exactly the pixels that all the points would,
    so spikes survive (a mean or a stride would drop them) while the work stays ~2 x the width.
    Buckets with only NaN give one NaN (a gap in the line). Short series come back unchanged.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    n_buckets = max(1, int(n_buckets))
    if n <= 2 * n_buckets:
        return np.arange(n), y
    size = -(-n // n_buckets)
    nb = -(-n // size)
    pad = nb * size - n
    yy = np.concatenate([y, np.full(pad, np.nan)]).reshape(nb, size)
    nan = np.isnan(yy)
    lo = np.argmin(np.where(nan, np.inf, yy), axis=1)
    hi = np.argmax(np.where(nan, -np.inf, yy), axis=1)
    base = np.arange(nb) * size
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    idx = np.stack([base + first, base + second], axis=1).reshape(-1)
    empty = nan.all(axis=1)
    keep = np.ones(idx.size, bool)
    keep[1::2] = (second != first) & ~empty  # one point when min and max are the same bar, or all NaN
    idx = np.minimum(idx[keep], n - 1)
    vals = y[idx]
    vals[np.repeat(empty, 2)[keep]] = np.nan
    return idx, vals


def bucket_mean(y: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Start index and NaN-mean of each bucket (for colour bands, where min/max pairs make no sense)."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    if n <= n_buckets:
        return np.arange(n), y
    size = -(-n // n_buckets)
    nb = -(-n // size)
    yy = np.concatenate([y, np.full(nb * size - n, np.nan)]).reshape(nb, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.arange(nb) * size, np.nanmean(yy, axis=1)


# --------------------------------------------------------------------------------------------
# Backtest metrics across symbols
# --------------------------------------------------------------------------------------------

def _quantiles(a: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN slices
        q = np.nanquantile(a, [0.25, 0.5, 0.75], axis=axis)
    return q[1], q[0], q[2]


def beats_buy_hold(total_return: np.ndarray, buy_hold: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Symbols whose strategy total return exceeds buy-and-hold over the same bars, and the symbols
    where both are known (the denominator of the share)."""
    both = np.isfinite(total_return) & np.isfinite(buy_hold)
    return (both & (total_return > buy_hold)).sum(axis=axis), both.sum(axis=axis)


def backtest_stats(results: str | Path):
    """Each backtest metric's distribution across the symbols of a results store (median, IQR,
    symbols with a value) and how many symbols beat buy-and-hold: a pandas DataFrame indexed by
    metric, plus the beat count and its denominator."""
    import pandas as pd

    results = Path(results)
    ds = open_store(results)
    missing = [m for m in METRIC_NAMES if m not in ds]
    if missing:
        raise InspectError(f"{results} holds no backtest (run atc run --backtest)")
    rows = {}
    vals = {m: np.asarray(ds[m].values, dtype=np.float64) for m in METRIC_NAMES}
    for m in METRIC_NAMES:
        med, q25, q75 = _quantiles(vals[m])
        rows[m] = {"median": float(med), "q25": float(q25), "q75": float(q75), "symbols": int(np.isfinite(vals[m]).sum())}
    beat, known = beats_buy_hold(vals["total_return"], vals["buy_hold_return"])
    return pd.DataFrame.from_dict(rows, orient="index"), int(beat), int(known)


# --------------------------------------------------------------------------------------------
# Sweep stores
# --------------------------------------------------------------------------------------------

def sweep_setup(path: str | Path) -> tuple[list[str], list[list[Any]], dict[str, Any]]:
    """Swept dims, their values, and the fixed (not swept) parameters: base ATC parameters and
    backtest settings (with the periods per year used) minus the swept ones."""
    ds = open_store(path, "atc-sweep")
    grid = _json(ds.attrs, "grid", {})
    dims, values = list(grid.get("dims", [])), list(grid.get("values", []))
    fixed = {**(_json(ds.attrs, "params", {}) or {}), **(_json(ds.attrs, "backtest", {}) or {})}
    if "periods_per_year" in fixed and fixed["periods_per_year"] is None:
        fixed["periods_per_year"] = "each symbol's own bars"  # inferred per symbol (not given)
    return dims, values, {k: v for k, v in sorted(fixed.items()) if k not in dims}


def check_metric(metric: str) -> str:
    if metric not in METRIC_NAMES:
        raise unknown("metric", metric, METRIC_NAMES)
    return metric


def _check_dim(name: str, dims: Sequence[str], fixed: Mapping[str, Any], option: str) -> str:
    if name in dims:
        return name
    if name in fixed:
        raise InspectError(f"{option} {name}: {name} is not swept in this store (fixed at {fixed[name]!r}); "
                           f"swept: {', '.join(dims)}")
    raise unknown("parameter", name, dims, extra=f" ({option})")


def _coerce_value(text: str, values: Sequence[Any], dim: str) -> Any:
    """The grid value that `text` names (numbers compare with a relative tolerance of 1e-9)."""
    for v in values:
        if isinstance(v, bool):
            if text.strip().lower() in (("true", "1", "yes") if v else ("false", "0", "no")):
                return v
        elif isinstance(v, (int, float)):
            try:
                if np.isclose(float(text), float(v), rtol=1e-9, atol=0.0):
                    return v
            except ValueError:
                pass
        elif str(v) == text:
            return v
    raise InspectError(f"--sel {dim}={text}: {text!r} is not a swept value of {dim} "
                       f"({', '.join(str(v) for v in values)})")


def parse_sel(items: Iterable[str] | None, path: str | Path) -> dict[str, Any]:
    """`["La=0.02", "fee_bps=10"]` -> `{"La": 0.02, "fee_bps": 10.0}`, checked against the grid."""
    dims, values, fixed = sweep_setup(path)
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InspectError(f"--sel wants key=value, got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        _check_dim(k, dims, fixed, "--sel")
        out[k] = _coerce_value(v, values[dims.index(k)], k)
    return out


def _agg(a: np.ndarray, agg: str, axis: int = -1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        if agg == "median":
            return np.nanmedian(a, axis=axis)
        if agg == "mean":
            return np.nanmean(a, axis=axis)
        if agg in ("q25", "q75"):
            return np.nanquantile(a, 0.25 if agg == "q25" else 0.75, axis=axis)
    raise InspectError(f"--agg must be one of {', '.join(AGGREGATIONS)}, got {agg!r}")


def _metric_view(path: Path, metric: str, keep: Sequence[str], sel: Mapping[str, Any]):
    """The metric with `sel` applied, as an array of shape (*keep, samples): every symbol x every
    remaining swept value is one sample (the other parameters are pooled with the symbols)."""
    ds = open_store(path, "atc-sweep")
    da = ds[metric]
    if sel:
        da = da.sel({k: v for k, v in sel.items()})
    pooled = [d for d in da.dims if d not in keep]
    da = da.transpose(*keep, *pooled)
    arr = np.asarray(da.values, dtype=np.float64)
    arr = arr.reshape(tuple(da.sizes[d] for d in keep) + (-1,))
    return arr, [d for d in pooled if d != "symbol"], {d: list(da[d].values.tolist()) for d in keep}


@dataclass
class SweepSurface:
    """A metric over two swept parameters (rows `y`, columns `x`), aggregated over the pooled samples."""

    metric: str
    agg: str
    x: str
    y: str
    x_values: list[Any]
    y_values: list[Any]
    values: np.ndarray  # (len(y_values), len(x_values))
    samples: np.ndarray  # finite samples per cell
    pooled: list[str]  # swept dims pooled with the symbols
    sel: dict[str, Any]
    best: tuple[int, int] | None  # (row, column) of the best cell, None if every cell is NaN
    higher_is_better: bool

    @property
    def best_values(self) -> dict[str, Any] | None:
        if self.best is None:
            return None
        return {self.y: self.y_values[self.best[0]], self.x: self.x_values[self.best[1]]}


def _check_xy(path: Path, x: str, y: str | None, sel: Mapping[str, Any]) -> None:
    dims, _, fixed = sweep_setup(path)
    _check_dim(x, dims, fixed, "--x")
    if y is not None:
        _check_dim(y, dims, fixed, "--y")
        if y == x:
            raise InspectError(f"--x and --y are both {x}; choose two different swept parameters")
    for k in sel:
        if k in (x, y):
            raise InspectError(f"--sel {k}=... fixes a parameter that is also on an axis; drop one of them")


def sweep_surface(path: str | Path, metric: str, x: str, y: str, agg: str = "median",
                  sel: Mapping[str, Any] | None = None) -> SweepSurface:
    """`metric` over the `y` x `x` grid; each cell aggregates (`agg`) every symbol and every value
    of the swept parameters not on an axis nor fixed by `sel`. The best cell follows the metric's
    direction (lowest for volatility and drawdown)."""
    path = Path(path)
    check_metric(metric)
    sel = dict(sel or {})
    _check_xy(path, x, y, sel)
    if agg not in AGGREGATIONS:
        raise InspectError(f"--agg must be one of {', '.join(AGGREGATIONS)}, got {agg!r}")
    arr, pooled, coords = _metric_view(path, metric, [y, x], sel)
    vals = _agg(arr, agg)
    hib = HIGHER_IS_BETTER[metric]
    finite = ~np.isnan(vals)
    best = None
    if finite.any():
        key = np.where(finite, vals if hib else -vals, -np.inf)
        flat = int(np.argmax(key))
        best = tuple(int(v) for v in np.unravel_index(flat, vals.shape))
    return SweepSurface(metric, agg, x, y, coords[x], coords[y], vals, np.isfinite(arr).sum(-1), pooled, sel,
                        best, hib)


def sweep_curve(path: str | Path, metric: str, x: str, sel: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`metric` against one swept parameter: median and interquartile range over the symbols (and
    the pooled values of the other swept parameters) at each value of `x`."""
    path = Path(path)
    check_metric(metric)
    sel = dict(sel or {})
    _check_xy(path, x, None, sel)
    arr, pooled, coords = _metric_view(path, metric, [x], sel)
    med, q25, q75 = _quantiles(arr)
    return {"metric": metric, "x": x, "x_values": coords[x], "median": med, "q25": q25, "q75": q75,
            "samples": np.isfinite(arr).sum(-1), "pooled": pooled, "sel": sel,
            "higher_is_better": HIGHER_IS_BETTER[metric]}


RANK_COLUMNS = ("total_return", "max_drawdown", "n_trades")
PORTFOLIO_RANK_COLUMNS = ("total_return", "max_drawdown", "turnover", "fees_paid")


def sweep_portfolio(path: str | Path) -> dict[str, Any] | None:
    """The portfolio settings of a sweep store computed with `atc sweep --portfolio` (`kind`,
    `rebalance_every`), or None: without, its combinations are ranked across symbols."""
    ds = open_store(path, "atc-sweep")
    return _json(ds.attrs, "portfolio") or None


def check_rank_metric(path: str | Path, metric: str) -> str:
    """`metric` if a sweep store can be ranked by it: a portfolio metric (the 11, turnover,
    fees_paid) when the store holds portfolios, else a per-symbol one."""
    from pipeline.sweep import rank_metric_names

    names = rank_metric_names(portfolio=bool(sweep_portfolio(path)))
    if metric not in names:
        raise unknown("metric", metric, names)
    return metric


def sweep_ranking(path: str | Path, rank_by: str = "sharpe", top: int = 10):
    """The best `top` combinations by the median of `rank_by` across symbols, with its IQR, the
    median total return/drawdown/trades, the share of symbols beating buy-and-hold and the
    symbols computed; plus the buy-and-hold baseline (median and IQR of buy_hold_return over
    symbols, which is the same for every combination). Reads one block of combinations at a
    time (memory: a block x the symbols), like `summarize_sweep`.

    A store with portfolios (`atc sweep --portfolio`) is ranked by each combination's portfolio
    `rank_by` instead, as `atc sweep`'s own summary does, since that is what the portfolio run
    optimises: the table adds ``portfolio <metric>`` columns (`rank_by`, total return, max
    drawdown, turnover, fees_paid) and keeps the across-symbol columns beside them (`rank_by`'s
    median and IQR only when it is a per-symbol metric). ``df.attrs["ranked_by"]`` says which."""
    import pandas as pd

    from kernels.status import OK
    from pipeline.sweep import higher_is_better, plan_blocks, portfolio_ranking_label, rank_order

    path = Path(path)
    check_rank_metric(path, rank_by)
    pf = sweep_portfolio(path)
    ds = open_store(path, "atc-sweep")
    dims, values, _ = sweep_setup(path)
    shape = tuple(len(v) for v in values)
    pcols: list[str] = []
    pvals: dict[str, np.ndarray] = {}
    if pf:
        from kernels.portfolio import PORTFOLIO_METRIC_NAMES
        from pipeline.sweep_portfolio import METRIC_DIM, METRICS_VAR

        pcols = [rank_by] + [m for m in PORTFOLIO_RANK_COLUMNS if m != rank_by]
        pm = ds[METRICS_VAR].transpose(*dims, METRIC_DIM)
        names = [str(n) for n in pm[METRIC_DIM].values] if METRIC_DIM in pm.coords else list(PORTFOLIO_METRIC_NAMES)
        pm = np.asarray(pm.values, dtype=np.float64)
        pvals = {m: pm[..., names.index(m)] for m in pcols}
        ranked_by = portfolio_ranking_label(pf, rank_by)
    else:
        ranked_by = f"median {rank_by} across symbols"
    per_symbol = rank_by in METRIC_NAMES
    lead = rank_by if per_symbol else "sharpe"  # the across-symbol column with an IQR
    bshape = tuple(json.loads(ds.attrs.get("block_shape", "null")) or shape)
    cols = [lead] + [m for m in RANK_COLUMNS if m != lead]
    med = {m: np.full(shape, np.nan) for m in cols}
    q25 = np.full(shape, np.nan)
    q75 = np.full(shape, np.nan)
    beat = np.zeros(shape, np.int64)
    known = np.zeros(shape, np.int64)
    n_ok = np.zeros(shape, np.int64)
    bh = None
    for block in plan_blocks(shape, bshape):
        isel = {d: slice(lo, hi) for d, (lo, hi) in zip(dims, block)}
        region = tuple(slice(lo, hi) for lo, hi in block)
        sub = ds.isel(isel)
        load = lambda m: np.asarray(sub[m].transpose(*dims, "symbol").values, dtype=np.float64)  # noqa: E731
        m_, lo_, hi_ = _quantiles(load(lead))
        med[lead][region], q25[region], q75[region] = m_, lo_, hi_
        for m in cols[1:]:
            med[m][region] = _quantiles(load(m))[0]
        tr, bhr = load("total_return"), load("buy_hold_return")
        beat[region], known[region] = beats_buy_hold(tr, bhr)
        st = np.asarray(sub["status"].transpose(*dims, "symbol").values)
        n_ok[region] = (st == OK).sum(axis=-1)
        if bh is None:  # the same bars for every combination: one block's first combination suffices
            bh = bhr.reshape(-1, bhr.shape[-1])[0]
    key = (pvals if pf else med)[rank_by].reshape(-1)
    rows = []
    for flat in rank_order(key, higher_is_better(rank_by), top):
        idx = np.unravel_index(int(flat), shape)
        row = {d: values[i][j] for i, (d, j) in enumerate(zip(dims, idx))}
        for m in pcols:
            row[f"portfolio {m}"] = pvals[m][idx]
        row[f"{lead} median"] = med[lead][idx]
        row[f"{lead} q25"] = q25[idx]
        row[f"{lead} q75"] = q75[idx]
        for m in cols[1:]:
            row[f"{m} median"] = med[m][idx]
        row["beats B&H"] = beat[idx] / known[idx] if known[idx] else np.nan
        row["symbols ok"] = int(n_ok[idx])
        rows.append(row)
    df = pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="rank"))
    df.attrs["ranked_by"] = ranked_by
    baseline = _quantiles(bh if bh is not None else np.array([np.nan]))
    return df, {"median": float(baseline[0]), "q25": float(baseline[1]), "q75": float(baseline[2]),
                "symbols": int(np.isfinite(bh).sum()) if bh is not None else 0}
