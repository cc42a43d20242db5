"""Appending newer bars and new symbols to a price store.

An append must never change a stored value, so overlapping bars are compared before anything is
written. On a time-chunked store (format version 3) it reads and rewrites only the time chunks
from the first one it changes (usually the last) and, with new symbols, their symbol chunks:
the new store is built beside the old one with every other chunk file hard-linked (never
written to: each rewritten chunk is a new file), then renamed into place, so a failure leaves the
old store as it was (:mod:`pipeline.price_append_chunks`). Anything else (a version 1 or 2 store, a new time
inside the axis, a new variable, another chunk size) rebuilds the whole store beside the old one
(:func:`write_store`).

Plain columns (:class:`pipeline.table_rows.CanonicalColumns`, what `atc ingest --append` reads
from plain CSV files) go to that cheap path as they are, so a fresh `atc ingest --append` imports
neither pandas, xarray nor zarr (~1.5 s of a fresh process, 2026-11-29).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.panel import Panel, frame_columns, check_fill, check_values, fill_gaps, is_dataset, panel_union
from pipeline.price_format import (
    TIME_CHUNK,
    FORMAT_VERSION,
    PRICE_VARS,
    StoreError,
)
from pipeline.price_store import (
    StoreSummary,
    auto_chunk_symbols,
    block_fingerprint,
    check_target,
    open_prices,
    summarise,
    to_frames,
    utc_now,
    write_store,
)
from pipeline.table_rows import CanonicalColumns
from pipeline.price_append_chunks import StoreMeta, append_chunks, check_overlap, early_bar, inserted_bar, time_chunked

if TYPE_CHECKING:
    import xarray as xr

# pandas and xarray are imported only where the data or the store needs them (frames, a Dataset,
# a whole rewrite): the cheap append of plain columns (`atc ingest --append` of CSV files) runs
# without them

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
    meta = StoreMeta.read(path)
    where = "append"
    store_fill = str(meta.attrs["fill"])
    if fill is not None and check_fill(fill) != store_fill:
        raise StoreError(f"{path}: the store was written with fill {store_fill!r}; appending with fill {fill!r} "
                         f"would mix filled and unfilled gaps (omit the fill option, or rewrite the store)")
    is_ds = is_dataset(data)
    is_cols = isinstance(data, CanonicalColumns)
    frames = None if is_ds or is_cols else _frames_from(data, where)
    store_k = int(meta.attrs.get("chunk_symbols", auto_chunk_symbols(len(meta.symbols), meta.times.size)))
    if chunk_symbols is not None and chunk_symbols < 1:
        raise StoreError(f"chunk_symbols must be >= 1, got {chunk_symbols}")
    if time_chunked(meta.attrs) and chunk_symbols in (None, store_k):
        if is_ds:
            cols = _dataset_columns(data)
            cols_of = (lambda syms: frame_columns(to_frames(data, syms)))
        else:
            cols = data if is_cols else frame_columns(frames)
            cols_of = (lambda syms: {x: cols[x] for x in syms})
        got = append_chunks(cols, cols_of, path, meta, store_k, store_fill, source)
        if got is not None:
            return got
    old = open_prices(path)
    if frames is None:
        frames = _columns_frames(data) if is_cols else to_frames(data)
    old_syms = [str(s) for s in old["symbol"].values]
    old_times = old["time"].values.astype("datetime64[ns]").astype(np.int64)
    old_vars = [v for v in PRICE_VARS if v in old.data_vars]
    old = old.load()
    old_pos = {s: i for i, s in enumerate(old_syms)}
    old_arr = {v: np.asarray(old[v].transpose("symbol", "time").values, dtype=np.float64) for v in old_vars}
    old_close = old_arr["close"]

    new_only: dict[str, Any] = {}
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
            raise early_bar(where, sym, t[early[0]], t_first)
        ov = np.flatnonzero(t <= t_last)
        if ov.size:
            tov = t[ov]
            j = np.searchsorted(old_times, tov)
            j_clip = np.minimum(j, old_times.size - 1)
            # a time on the axis where this symbol has no bar is missing from its history too
            missing = np.flatnonzero((old_times[j_clip] != tov) | np.isnan(old_close[i, j_clip]))
            if missing.size:
                raise inserted_bar(where, sym, tov[missing[0]], t_last)
            for v in f.columns:
                if v in old_arr:
                    check_overlap(where, sym, v, old_arr[v][i, j], f[v].to_numpy()[ov], tov)
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
    fp, blocks = block_fingerprint(panel.symbols, panel.times, panel.arrays)
    attrs.update(
        atc_format_version=FORMAT_VERSION,  # an older store is rewritten whole, so it becomes current
        fill=store_fill,
        modified=now,
        history=history,
        fingerprint=fp,
        fingerprint_blocks=blocks,
        filled_gaps_total=int(panel.filled.sum()),
        own_bars=int(np.count_nonzero(~np.isnan(panel.arrays["close"]))),
        chunk_symbols=int(chunk_symbols),
        time_chunk=TIME_CHUNK,
    )
    ds = panel.to_dataset(attrs)
    old.close()
    write_store(ds, path, chunk_symbols, replace=True)
    return summarise(path, ds, "appended", chunk_symbols, added_symbols=added_symbols, added_bars=added_bars)


def _frames_from(data: Any, where: str) -> dict:
    from pipeline.tables import frames_from

    return frames_from(data, where)


def _columns_frames(cols: CanonicalColumns) -> dict:
    """The frames :func:`pipeline.tables.split_table` makes of the same bars (the full path's input)."""
    import pandas as pd

    return {s: pd.DataFrame(c, index=pd.DatetimeIndex(t.view("datetime64[ns]"), name="time"))
            for s, (t, c) in cols.items()}


def _dataset_columns(ds: xr.Dataset) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """:func:`to_frames` of a price Dataset as the cheap append's columns (symbol -> (int64 ns
    times of its own bars, variable -> values)), without a DataFrame per symbol (~0.4 ms each)."""
    names = [str(x) for x in ds["symbol"].values]
    times = ds["time"].values.astype("datetime64[ns]").astype(np.int64)
    variables = [v for v in PRICE_VARS if v in ds.data_vars]
    arrays = {v: np.asarray(ds[v].transpose("symbol", "time").values, dtype=np.float64) for v in variables}
    out = {}
    for k, sym in enumerate(names):
        sl = np.flatnonzero(~np.isnan(arrays["close"][k]))
        cols = {}
        for v in variables:
            a = arrays[v][k, sl]
            if v == "close" or not np.isnan(a).all():
                cols[v] = a
        out[sym] = (times[sl], cols)
    return out
