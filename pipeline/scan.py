"""The newest signal of every symbol, read from a results store without reading its history.

What a daily user asks each morning: which symbols are strongest long or short right now. For each
symbol the answer is at its own last bar (a symbol's last bar may be older than the store's last
time: it is then marked stale). `atc run` and `atc update` keep each symbol's newest values (the
marks of pipeline/stream_store.py: last bar, trend, bars in the trend's run, signal, family
signals and close at that bar) in the results store's `stream` group, so a scan reads those small
per-symbol arrays and no output chunk at all, whatever the store's size and however long ago a
delisted symbol's last bar was. Symbols without marks (a store written before them, GPU-computed
chunks, an update that stopped before writing the state) are found by the walk of older versions:
backwards one time chunk at a time until each one's last bar and last change of trend are found.

Definitions (one row per computed symbol):

* `signal`: `Average_Signal` at the symbol's last bar;
* `trend`: +1 if `signal > long_threshold`, -1 if `signal < short_threshold`, else 0 (the spec's
  Cut, with the store's thresholds);
* `families_long` / `families_short`: how many of the 6 Layer-1 family signals are above
  `long_threshold` / below `short_threshold` at that bar (0 when the store keeps no family
  signals: `atc run --outputs average`);
* `bars_since_change`: own bars since the bar at which `trend` took its current value (0: it
  changed at the last bar; counted from the symbol's first bar if it never changed);
* `close`, `time`: the symbol's close and time at that bar; `stale`: that time is before the
  store's last time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kernels.params import FAMILIES, ATCParams
from pipeline import results as rs


class ScanError(rs.ResultsError):
    """A store that cannot be scanned."""


def newest_signals(results: str | os.PathLike, prices: str | os.PathLike | None = None):
    """A pandas DataFrame with one row per computed symbol (columns in the module docstring).
    ``prices``: read each close from this price store instead (NaN where its times differ)."""
    return _frame(newest_columns(results, prices))


def newest_columns(results: str | os.PathLike, prices: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """:func:`newest_signals` as numpy columns (name -> array, one row per computed symbol): what
    `atc scan` ranks and prints without importing pandas (~0.4 s of a fresh process's second)."""
    import zarr

    from pipeline.stream_store import read_marks

    path = Path(results)
    if not rs.is_results_store(path):
        raise ScanError(f"{results}: not an atc results store (make one with `atc run PRICES RESULTS`)")
    g = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    attrs = dict(g.attrs)
    params = ATCParams(**json.loads(attrs["params"]))
    n_sym, n_time = g["Average_Signal"].shape
    marks = read_marks(path, n_time) or _unknown(n_sym)
    unknown = np.flatnonzero(marks["last_bar"] == -2)
    close = None
    source = prices or attrs.get("prices_path")
    if (prices or unknown.size) and source and Path(source).exists():
        pg = zarr.open_group(str(source), mode="r", zarr_format=3, use_consolidated=False)
        if pg["close"].shape == (n_sym, n_time):  # the same times (an update may be pending otherwise)
            close = pg["close"]
    if unknown.size:
        got = store_marks(g, unknown, params, close)
        for m in marks:
            marks[m][unknown] = got[m]
    if prices:
        known = np.flatnonzero(marks["last_bar"] >= 0)
        marks["last_close"][:] = np.nan
        if close is not None:
            marks["last_close"][known] = _values_at(close, known, marks["last_bar"][known], n_time)
    stored = np.array([f"{f}_Signal" in g for f in FAMILIES])
    marks["last_families"][:, ~stored] = np.nan  # not stored (--outputs average): counted as neither side
    return marks_columns(marks, np.array([str(v) for v in g["symbol"][:]], dtype=object),
                         rs.time_values(g).astype("datetime64[ns]"), params)


def signals_from_arrays(outputs, close: np.ndarray, symbols, times, params: ATCParams):
    """The same table from in-memory outputs of `compute_atc` (`atc scan PRICES`)."""
    return _frame(columns_from_arrays(outputs, close, symbols, times, params))


def columns_from_arrays(outputs, close: np.ndarray, symbols, times, params: ATCParams) -> dict[str, np.ndarray]:
    """:func:`signals_from_arrays` as numpy columns."""
    from pipeline.stream_store import newest_marks

    marks = newest_marks(outputs["Average_Signal"], [outputs[f"{f}_Signal"] for f in FAMILIES], close, params)
    return marks_columns(marks, np.array([str(v) for v in symbols], dtype=object),
                         np.asarray(times).astype("datetime64[ns]"), params)


def marks_table(marks: dict, symbols: np.ndarray, times: np.ndarray, params: ATCParams):
    """The table of the module docstring from the marks of every symbol (`stream_store.MARKS`)."""
    return _frame(marks_columns(marks, symbols, np.asarray(times).astype("datetime64[ns]"), params))


def marks_columns(marks: dict, symbols: np.ndarray, times: np.ndarray, params: ATCParams) -> dict[str, np.ndarray]:
    """:func:`marks_table` as numpy columns (``times``: datetime64[ns])."""
    lo_thr, hi_thr = float(params.short_threshold), float(params.long_threshold)
    last = np.asarray(marks["last_bar"])
    idx = np.flatnonzero(last >= 0)
    fam = np.asarray(marks["last_families"], np.float64)[idx]
    return {
        "symbol": np.asarray(symbols, dtype=object)[idx],
        "signal": np.asarray(marks["last_signal"], np.float64)[idx],
        "trend": np.asarray(marks["last_trend"])[idx].astype(np.int64),
        "families_long": (fam > hi_thr).sum(axis=1).astype(np.int64),
        "families_short": (fam < lo_thr).sum(axis=1).astype(np.int64),
        "close": np.asarray(marks["last_close"], np.float64)[idx],
        "time": np.asarray(times, dtype="datetime64[ns]")[last[idx]],
        "bars_since_change": np.asarray(marks["trend_bars"])[idx].astype(np.int64) - 1,  # 0: changed at the last bar
        "stale": last[idx] < len(times) - 1,
    }


def _frame(columns: dict[str, np.ndarray]):
    import pandas as pd

    return pd.DataFrame(columns)


def _unknown(n: int) -> dict[str, np.ndarray]:
    from pipeline.stream_store import MARKS

    return {m: np.full((n,) + shape, fill, dt) for m, (dt, fill, shape) in MARKS.items()}


def _values_at(arr, rows: np.ndarray, last: np.ndarray, n_time: int) -> np.ndarray:
    """arr[rows[i], last[i]] from a Zarr array: one block read of the last time chunk for the rows
    whose last bar is in it, point reads for the rest."""
    out = np.full(rows.size, np.nan)
    if not rows.size:
        return out
    lo = max(0, (n_time - 1) // int(arr.chunks[1]) * int(arr.chunks[1]))
    recent = last >= lo
    if recent.any():
        block = np.asarray(arr.oindex[rows[recent], lo:n_time], np.float64)
        out[recent] = block[np.arange(block.shape[0]), last[recent] - lo]
    if (~recent).any():
        out[~recent] = np.asarray(arr.vindex[rows[~recent], last[~recent]], np.float64)
    return out


def store_marks(g, rows: np.ndarray, params: ATCParams, close=None) -> dict[str, np.ndarray]:
    """The marks of symbol ``rows`` of the results store group ``g``, found from its outputs: a walk
    back one time chunk at a time from the last, for each row until its last bar and the last bar
    of another trend are found (``close``: the price store's close array, or None for NaN)."""
    from pipeline.stream_store import cut

    avg = g["Average_Signal"]
    lo_thr, hi_thr = float(params.short_threshold), float(params.long_threshold)
    n_time = avg.shape[1]
    step = int(avg.chunks[1])
    rows = np.asarray(rows, np.int64)
    out = _unknown(rows.size)
    last = np.full(rows.size, -1, np.int64)       # column of the own last bar
    trend = np.zeros(rows.size, np.int8)
    own_after = np.zeros(rows.size, np.int64)    # own bars in the current run of the trend
    open_ = np.ones(rows.size, bool)             # still walking back
    hi = n_time
    while hi > 0 and open_.any():
        lo = max(0, (hi - 1) // step * step)
        walking = np.flatnonzero(open_)
        block = np.asarray(avg.oindex[rows[walking], lo:hi], np.float64)
        for r, i in enumerate(walking):
            vals = block[r]
            own = np.flatnonzero(~np.isnan(vals))
            if not own.size:
                continue
            if last[i] < 0:
                last[i] = lo + own[-1]
                trend[i] = cut(vals[own[-1:]], lo_thr, hi_thr)[0]
            other = np.flatnonzero(cut(vals[own], lo_thr, hi_thr) != trend[i])
            if other.size:
                own_after[i] += own.size - other[-1] - 1
                open_[i] = False
            else:
                own_after[i] += own.size
        hi = lo
    found = np.flatnonzero(last >= 0)
    out["last_bar"][:] = last
    out["last_trend"][:] = trend
    out["trend_bars"][:] = own_after
    if found.size:
        out["last_signal"][found] = _values_at(avg, rows[found], last[found], n_time)
        for c, f in enumerate(FAMILIES):
            if f"{f}_Signal" in g:
                out["last_families"][found, c] = _values_at(g[f"{f}_Signal"], rows[found], last[found], n_time)
        if close is not None:
            out["last_close"][found] = _values_at(close, rows[found], last[found], n_time)
    return out


def rank(df, top: int, min_signal: float = 0.0):
    """(long, short) tables: strongest first, at most `top` rows each, |signal| >= `min_signal`.
    Stale symbols (no bar at the store's last time, e.g. delisted) come after the current ones.
    The rule is :func:`rank_columns`'s (pandas tables in, pandas tables out)."""
    import pandas as pd

    long, short = rank_columns({c: df[c].to_numpy() for c in df.columns}, top, min_signal)
    return pd.DataFrame(long, columns=df.columns), pd.DataFrame(short, columns=df.columns)


def rank_columns(columns: dict[str, np.ndarray], top: int, min_signal: float = 0.0
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`rank` on numpy columns: rows ordered by (stale, strongest signal first, symbol)."""
    signal = np.asarray(columns["signal"], np.float64)
    strong = np.abs(signal) >= min_signal  # NaN: never
    stale = np.asarray(columns["stale"], bool)
    symbol = np.asarray(columns["symbol"]).astype(str)
    out = []
    for side, key in ((signal > 0, -signal), (signal < 0, signal)):
        rows = np.flatnonzero(strong & side)
        order = rows[np.lexsort((symbol[rows], key[rows], stale[rows]))][:max(0, top)]
        out.append({c: np.asarray(v)[order] for c, v in columns.items()})
    return out[0], out[1]
