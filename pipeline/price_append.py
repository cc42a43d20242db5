"""Appending newer bars and new symbols to a price store.

An append must never change a stored value, so overlapping bars are compared before anything is
written, and the whole new store is built beside the old one (via :func:`write_store`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.panel import Panel, check_fill, check_values, fill_gaps, panel_union
from pipeline.price_format import APPEND_RTOL, FORMAT_VERSION, PRICE_VARS, StoreError, format_time
from pipeline.price_store import (
    StoreSummary,
    auto_chunk_symbols,
    check_target,
    fingerprint_arrays,
    open_prices,
    summarise,
    to_frames,
    utc_now,
    write_store,
)
from pipeline.tables import frames_from

__all__ = ["append_prices"]


def append_prices(
    data: Any,
    path: str | os.PathLike,
    *,
    chunk_symbols: int | None = None,
    source: str = "python",
    fill: str | None = None,
) -> StoreSummary:
    """Add newer bars and new symbols to the price store at ``path``.

    Existing values never change. For a symbol already in the store, bars up to its last stored
    bar must be bars the store has and agree with them (relative tolerance ``APPEND_RTOL`` on
    every variable both sides have); later bars are added. New symbols come with their whole
    history. The time axis becomes the union of both. The store's ``fill`` attribute decides what
    happens to times another symbol's calendar brings into an existing symbol's span: "none"
    leaves them NaN (no bar), "ffill" fills and counts them. ``fill`` (default: the store's) must
    match the store, so one store never mixes the two meanings of a NaN close. The new store is
    built beside the old one and renamed into place: on any error the old store is unchanged.
    """
    path = check_target(path, append=True)
    old = open_prices(path).load()
    where = "append"
    store_fill = str(old.attrs["fill"])
    if fill is not None and check_fill(fill) != store_fill:
        raise StoreError(f"{path}: the store was written with fill {store_fill!r}; appending with fill {fill!r} "
                         f"would mix filled and unfilled gaps (omit the fill option, or rewrite the store)")
    if isinstance(data, xr.Dataset):
        frames = to_frames(data)
    else:
        frames = frames_from(data, where)

    old_syms = [str(s) for s in old["symbol"].values]
    old_pos = {s: i for i, s in enumerate(old_syms)}
    old_times = old["time"].values.astype("datetime64[ns]").astype(np.int64)
    old_vars = [v for v in PRICE_VARS if v in old.data_vars]
    old_arr = {v: np.asarray(old[v].transpose("symbol", "time").values, dtype=np.float64) for v in old_vars}
    old_close = old_arr["close"]

    new_only: dict[str, pd.DataFrame] = {}
    for sym, f in frames.items():
        t = f.index.asi8
        if sym not in old_pos:
            new_only[sym] = f
            continue
        i = old_pos[sym]
        valid = np.flatnonzero(~np.isnan(old_close[i]))
        t_first, t_last = old_times[valid[0]], old_times[valid[-1]]
        early = np.flatnonzero(t < t_first)
        if early.size:
            raise StoreError(f"{where}: bar {format_time(t[early[0]])} for symbol {sym!r} is before its first stored bar "
                             f"{format_time(t_first)}; an append only adds newer bars")
        ov = np.flatnonzero(t <= t_last)
        if ov.size:
            tov = t[ov]
            j = np.searchsorted(old_times, tov)
            j_clip = np.minimum(j, old_times.size - 1)
            # a time on the axis where this symbol has no bar is missing from its history too
            missing = np.flatnonzero((old_times[j_clip] != tov) | np.isnan(old_close[i, j_clip]))
            if missing.size:
                raise StoreError(f"{where}: bar {format_time(tov[missing[0]])} for symbol {sym!r} is not in the store but "
                                 f"inside its stored history (up to {format_time(t_last)}); an append cannot insert bars")
            for v in f.columns:
                if v not in old_arr:
                    continue
                a_old = old_arr[v][i, j]
                a_new = f[v].to_numpy()[ov]
                both = ~np.isnan(a_old) & ~np.isnan(a_new)
                diff = both & ~np.isclose(a_new, a_old, rtol=APPEND_RTOL, atol=0.0)
                if diff.any():
                    k = int(np.flatnonzero(diff)[0])
                    raise StoreError(f"{where}: overlapping bar disagrees for symbol {sym!r} at {format_time(tov[k])}: "
                                     f"{v} stored {float(a_old[k])!r}, new {float(a_new[k])!r}")
        newer = f.iloc[np.flatnonzero(t > t_last)]
        if len(newer):
            new_only[sym] = newer

    if not new_only:
        chunk = int(old.attrs.get("chunk_symbols", auto_chunk_symbols(len(old_syms), old_times.size)))
        return summarise(path, old, "unchanged", chunk)

    new_panel = panel_union(new_only)
    times = np.union1d(old_times, new_panel.times)
    symbols = old_syms + [s for s in new_only if s not in old_pos]
    variables = [v for v in PRICE_VARS if v in old_arr or v in new_panel.arrays]
    shape = (len(symbols), times.size)
    arrays = {v: np.full(shape, np.nan) for v in variables}
    old_cols = np.searchsorted(times, old_times)
    for v in old_vars:
        arrays[v][: len(old_syms), old_cols] = old_arr[v]
    new_cols = np.searchsorted(times, new_panel.times)
    row_of = {s: k for k, s in enumerate(symbols)}
    for r, sym in enumerate(new_panel.symbols):
        k = row_of[sym]
        for v, a in new_panel.arrays.items():
            vals = a[r]
            sel = ~np.isnan(vals)
            arrays[v][k, new_cols[sel]] = vals[sel]
    prev = np.zeros(len(symbols), np.int64)
    prev[: len(old_syms)] = np.asarray(old["filled_gaps"].values, dtype=np.int64)
    panel = Panel(symbols, times, arrays, prev)
    check_values(panel, where)
    if store_fill == "ffill":
        panel.filled = prev + fill_gaps(arrays)

    if chunk_symbols is None:
        chunk_symbols = int(old.attrs.get("chunk_symbols", auto_chunk_symbols(len(symbols), times.size)))
    if chunk_symbols < 1:
        raise StoreError(f"chunk_symbols must be >= 1, got {chunk_symbols}")
    chunk_symbols = min(chunk_symbols, max(1, len(symbols)))
    now = utc_now()
    history = list(old.attrs.get("history", []))
    added_symbols = len(symbols) - len(old_syms)
    added_bars = int(sum(np.count_nonzero(~np.isnan(new_panel.arrays["close"][r])) for r in range(len(new_panel.symbols))))
    history.append(f"{now} appended {added_bars} bars ({added_symbols} new symbols) from {source}")
    attrs = dict(old.attrs)
    attrs.update(
        atc_format_version=FORMAT_VERSION,  # a version 1 store is rewritten whole, so it becomes current
        fill=store_fill,
        modified=now,
        history=history,
        fingerprint=fingerprint_arrays(panel.symbols, panel.times, panel.arrays),
        filled_gaps_total=int(panel.filled.sum()),
        chunk_symbols=int(chunk_symbols),
    )
    ds = panel.to_dataset(attrs)
    old.close()
    write_store(ds, path, chunk_symbols, replace=True)
    return summarise(path, ds, "appended", chunk_symbols, added_symbols=added_symbols, added_bars=added_bars)
