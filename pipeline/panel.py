"""Per-symbol frames or datasets -> one ``(symbol, time)`` panel on the union calendar, its
validation and gap filling.

The store writers (create and append) build the same panel and must check it the same way, so
the panel and its checks live here, apart from how a store is laid out on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.price_format import FILL_MODES, POSITIVE_VARS, PRICE_VARS, StoreError, format_time

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

# pandas and xarray are imported where used: the cheap append (a fresh `atc ingest --append`)
# builds panels from plain arrays and must not pay their ~1 s of imports

__all__ = ["Panel", "check_fill", "check_values", "columns_union", "fill_gaps", "frame_columns", "is_dataset",
           "panel_from_dataset", "panel_from_frames", "panel_union", "to_panel", "validate_prices"]


@dataclass
class Panel:
    """Arrays on ``(symbol, time)`` plus the per-symbol count of forward-filled bars."""

    symbols: list[str]
    times: np.ndarray  # int64 ns
    arrays: dict[str, np.ndarray]  # var -> (n_symbols, n_times) float64
    filled: np.ndarray  # int64 per symbol

    def to_dataset(self, attrs: dict[str, Any] | None = None) -> xr.Dataset:
        coords = {
            "symbol": np.array(self.symbols, dtype=object),
            "time": self.times.view("datetime64[ns]"),
        }
        data_vars: dict[str, Any] = {
            v: (("symbol", "time"), self.arrays[v]) for v in PRICE_VARS if v in self.arrays
        }
        data_vars["filled_gaps"] = (("symbol",), self.filled.astype(np.int64))
        import xarray as xr

        return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))


def check_fill(fill: str) -> str:
    """``fill`` if it is a known fill mode; a user error naming the modes otherwise."""
    if fill not in FILL_MODES:
        raise StoreError(f"fill must be one of {', '.join(FILL_MODES)}, got {fill!r}")
    return fill


def panel_from_frames(frames: Mapping[str, pd.DataFrame], fill: str = "none") -> Panel:
    """The union-calendar panel of ``frames``; with ``fill="ffill"`` gaps inside each symbol's
    span are forward-filled and counted (the user asked for invented bars)."""
    panel = panel_union(frames)
    if check_fill(fill) == "ffill":
        panel.filled = fill_gaps(panel.arrays)
    return panel


def panel_union(frames: Mapping[str, pd.DataFrame]) -> Panel:
    """Each symbol's own bars placed on the union of all calendars; NaN where it has no bar."""
    return columns_union(frame_columns(frames))


def frame_columns(frames: Mapping[str, pd.DataFrame]) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per-symbol frames as canonical columns ``{symbol: (int64 ns times, {variable: float64
    values})}``, each frame converted once (pandas access costs ~20 us a call)."""
    return {s: (f.index.asi8, dict(zip(f.columns, f.to_numpy(dtype=np.float64).T))) for s, f in frames.items()}


def columns_union(cols: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]]) -> Panel:
    """:func:`panel_union` of ``{symbol: (int64 ns times, {variable: values})}`` (canonical
    columns: sorted unique times), without pandas."""
    symbols = list(cols)
    present = [v for v in PRICE_VARS if any(v in c for _, c in cols.values())]
    if cols:
        times = np.unique(np.concatenate([t for t, _ in cols.values()]))
    else:
        times = np.empty(0, np.int64)
    arrays = {v: np.full((len(symbols), times.size), np.nan) for v in present}
    for i, (t, c) in enumerate(cols.values()):
        pos = np.searchsorted(times, t)
        for v, a in c.items():
            arrays[v][i, pos] = a
    return Panel(symbols, times, arrays, np.zeros(len(symbols), np.int64))


def fill_gaps(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Forward-fill interior gaps of each row in place; return the number filled per row.

    A gap is a bar without a close strictly between a symbol's first and last close. Its close is
    the previous close; open/high/low become that close and volume 0 (a bar without trades).
    Every variable is NaN outside each row's span.
    """
    close = arrays["close"]
    n, m = close.shape
    if m == 0:
        return np.zeros(n, np.int64)
    valid = ~np.isnan(close)
    has = valid.any(axis=1)
    first = np.where(has, valid.argmax(axis=1), m)
    last = np.where(has, m - 1 - valid[:, ::-1].argmax(axis=1), -1)
    cols = np.arange(m)
    span = (cols >= first[:, None]) & (cols <= last[:, None])
    gaps = span & ~valid
    counts = gaps.sum(axis=1).astype(np.int64)
    if counts.any():
        idx = np.where(valid, cols, 0)
        np.maximum.accumulate(idx, axis=1, out=idx)
        rows = np.flatnonzero(counts)
        sub = close[rows]
        filled_close = np.take_along_axis(sub, idx[rows], axis=1)
        g = gaps[rows]
        sub[g] = filled_close[g]
        close[rows] = sub
        for v in ("open", "high", "low", "volume"):
            if v not in arrays:
                continue
            a = arrays[v][rows]
            # only symbols that have this variable at all get it on their filled bars
            g_v = g & ~np.isnan(a).all(axis=1)[:, None]
            a[g_v] = 0.0 if v == "volume" else filled_close[g_v]
            arrays[v][rows] = a
    outside = ~span
    if outside.any():
        for a in arrays.values():
            a[outside] = np.nan
    return counts


def panel_from_dataset(ds: xr.Dataset, where: str = "dataset", fill: str = "none") -> Panel:
    """A dataset laid out like a store, checked; its ``filled_gaps`` counts carry over, and
    ``fill="ffill"`` fills (and counts) what is still missing inside each symbol's span.

    A bar is defined by its close: other variables are dropped where the close is NaN."""
    check_fill(fill)
    if "close" not in ds.data_vars:
        raise StoreError(f"{where}: no 'close' variable (variables: {list(ds.data_vars)})")
    unknown = [v for v in ds.data_vars if v not in PRICE_VARS and v != "filled_gaps"]
    if unknown:
        raise StoreError(f"{where}: unknown variables {unknown}; a price store holds {list(PRICE_VARS)}")
    for v in PRICE_VARS:
        if v in ds.data_vars and set(ds[v].dims) != {"symbol", "time"}:
            raise StoreError(f"{where}: variable {v!r} has dims {ds[v].dims}, expected ('symbol', 'time')")
    ds = ds.transpose("symbol", "time", ...)
    symbols = [str(s) for s in ds["symbol"].values]
    t = ds["time"].values
    if not np.issubdtype(t.dtype, np.datetime64):
        raise StoreError(f"{where}: time coordinate must be datetime64, got {t.dtype}")
    times = t.astype("datetime64[ns]").astype(np.int64)
    arrays = {}
    for v in PRICE_VARS:
        if v in ds.data_vars:
            arr = np.asarray(ds[v].values)
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise StoreError(f"{where}: variable {v!r} is not numeric ({arr.dtype})")
            arrays[v] = np.array(arr, dtype=np.float64, copy=True)
    prev = np.zeros(len(symbols), np.int64)
    if "filled_gaps" in ds.data_vars:
        prev = np.asarray(ds["filled_gaps"].values, dtype=np.int64).copy()
    order = np.argsort(times, kind="stable")
    if times.size and np.any(np.diff(times[order]) == 0):
        j = int(np.flatnonzero(np.diff(times[order]) == 0)[0])
        raise StoreError(f"{where}: duplicate time {format_time(times[order][j])}")
    if np.any(order != np.arange(times.size)):
        times = times[order]
        arrays = {v: a[:, order] for v, a in arrays.items()}
    no_bar = np.isnan(arrays["close"])
    for v, a in arrays.items():
        if v != "close":
            a[no_bar] = np.nan
    panel = Panel(symbols, times, arrays, prev)
    check_values(panel, where)
    if fill == "ffill":
        panel.filled = prev + fill_gaps(arrays)
    return panel


def check_values(p: Panel, where: str) -> None:
    """Bad data is an error naming symbol and time; a NaN close is not (it means "no bar",
    ATC_SPEC.md section 7), but a symbol without a single close is."""
    if len(set(p.symbols)) != len(p.symbols):
        seen: set[str] = set()
        dup = next(s for s in p.symbols if s in seen or seen.add(s))
        raise StoreError(f"{where}: symbol {dup!r} appears twice")
    empty = [s for s in p.symbols if s == ""]
    if empty:
        raise StoreError(f"{where}: empty symbol name")
    if p.times.size > 1 and np.any(np.diff(p.times) <= 0):
        raise StoreError(f"{where}: time coordinate is not strictly increasing")
    for v, a in p.arrays.items():
        if np.isinf(a).any():
            i, j = np.argwhere(np.isinf(a))[0]
            raise StoreError(f"{where}: infinite {v} for symbol {p.symbols[i]!r} at {format_time(p.times[j])}")
        bad = (a <= 0) if v in POSITIVE_VARS else (a < 0)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise StoreError(f"{where}: {v} {'<= 0' if v in POSITIVE_VARS else '< 0'} ({float(a[i, j])!r}) for symbol "
                             f"{p.symbols[i]!r} at {format_time(p.times[j])}")
    close = p.arrays["close"]
    valid = ~np.isnan(close)
    none = np.flatnonzero(~valid.any(axis=1))
    if none.size:
        raise StoreError(f"{where}: symbol {p.symbols[none[0]]!r} has no close values")


def validate_prices(ds: xr.Dataset, where: str = "price store") -> None:
    """Raise :class:`StoreError` unless ``ds`` is a well-formed price dataset: ``close`` present,
    dims ``(symbol, time)``, unique non-empty symbols, strictly increasing times, prices > 0,
    volume >= 0, no infinities, every symbol with at least one close. A NaN close anywhere is
    valid: the symbol has no bar at that time. Loads the data."""
    check_values(panel_as_is(ds, where), where)


def panel_as_is(ds: xr.Dataset, where: str) -> Panel:
    """The dataset's arrays without reordering or masking, so validation sees what is stored."""
    if "close" not in ds.data_vars:
        raise StoreError(f"{where}: no 'close' variable")
    for v in PRICE_VARS:
        if v in ds.data_vars and set(ds[v].dims) != {"symbol", "time"}:
            raise StoreError(f"{where}: variable {v!r} has dims {ds[v].dims}, expected ('symbol', 'time')")
    symbols = [str(s) for s in ds["symbol"].values]
    times = ds["time"].values.astype("datetime64[ns]").astype(np.int64)
    arrays = {
        v: np.asarray(ds[v].transpose("symbol", "time").values, dtype=np.float64)
        for v in PRICE_VARS if v in ds.data_vars
    }
    return Panel(symbols, times, arrays, np.zeros(len(symbols), np.int64))


def to_panel(data: Any, where: str, fill: str = "none") -> Panel:
    """Whatever :func:`pipeline.store.write_prices` accepts, as a checked panel."""
    if isinstance(data, Panel):
        return data
    if is_dataset(data):
        return panel_from_dataset(data, where, fill)
    from pipeline.tables import frames_from

    return panel_from_frames(frames_from(data, where), fill)


def is_dataset(data: Any) -> bool:
    """Whether ``data`` is an xarray Dataset, without importing xarray (if it is not imported,
    nothing can be one)."""
    import sys

    xr = sys.modules.get("xarray")
    return xr is not None and isinstance(data, xr.Dataset)

