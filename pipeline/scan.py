"""The newest signal of every symbol, read from a results store without reading its history.

What a daily user asks each morning: which symbols are strongest long or short right now. For each
symbol the answer is at its own last bar (a symbol's last bar may be older than the store's last
time: it is then marked stale). Reading goes backwards one time chunk at a time and stops as soon
as every symbol's last bar and its last direction change are found, so on a time-chunked store the
newest bars cost one chunk, not the whole history.

Definitions (one row per computed symbol):

* `signal`: `Average_Signal` at the symbol's last bar;
* `trend`: +1 if `signal > long_threshold`, -1 if `signal < short_threshold`, else 0 (the spec's
  Cut, with the store's thresholds);
* `families_long` / `families_short`: how many of the 6 Layer-1 family signals are above
  `long_threshold` / below `short_threshold` at that bar;
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


def _cut(v: np.ndarray, short: float, long: float) -> np.ndarray:
    return np.where(v > long, 1, np.where(v < short, -1, 0)).astype(np.int8)


def newest_signals(results: str | os.PathLike, prices: str | os.PathLike | None = None):
    """A pandas DataFrame with one row per computed symbol (columns in the module docstring)."""
    import zarr

    path = Path(results)
    if not rs.is_results_store(path):
        raise ScanError(f"{results}: not an atc results store (make one with `atc run PRICES RESULTS`)")
    g = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    attrs = dict(g.attrs)
    avg = g["Average_Signal"]
    close = None
    prices = prices or attrs.get("prices_path")
    if prices and Path(prices).exists():
        pg = zarr.open_group(str(prices), mode="r", zarr_format=3, use_consolidated=False)
        if pg["close"].shape == avg.shape:  # the same times (an update may be pending otherwise)
            close = pg["close"]
    return signals_table(avg, {f: g[f"{f}_Signal"] for f in FAMILIES if f"{f}_Signal" in g}, close,
                         np.array([str(v) for v in g["symbol"][:]], dtype=object),
                         rs._time_values(g).astype("datetime64[ns]"),
                         ATCParams(**json.loads(attrs["params"])), int(avg.chunks[1]))


def signals_from_arrays(outputs, close: np.ndarray, symbols, times, params: ATCParams, step: int = 4096):
    """The same table from in-memory outputs of `compute_atc` (`atc scan PRICES`)."""
    class _Arr:  # the two zarr access patterns, on a numpy array
        def __init__(self, a):
            self.a = np.asarray(a)
            self.shape = self.a.shape
            self.oindex = self
            self.vindex = _Points(self.a)

        def __getitem__(self, key):
            rows, cols = key
            return self.a[rows][:, cols]

    class _Points:
        def __init__(self, a):
            self.a = a

        def __getitem__(self, key):
            return self.a[key]

    return signals_table(_Arr(outputs["Average_Signal"]), {f: _Arr(outputs[f"{f}_Signal"]) for f in FAMILIES},
                         _Arr(close), np.array([str(v) for v in symbols], dtype=object), np.asarray(times), params,
                         step)


def signals_table(avg, families: dict, close, symbols: np.ndarray, times: np.ndarray, params: ATCParams, step: int):
    """The table of the module docstring from arrays read as zarr reads them (`oindex`, `vindex`)."""
    import pandas as pd

    lo_thr, hi_thr = float(params.short_threshold), float(params.long_threshold)
    n_sym, n_time = avg.shape
    last = np.full(n_sym, -1, np.int64)       # column of the own last bar
    trend = np.zeros(n_sym, np.int8)
    own_after = np.zeros(n_sym, np.int64)    # own bars in the current run of the trend
    open_ = np.ones(n_sym, bool)             # still walking back
    hi = n_time
    while hi > 0 and open_.any():
        lo = max(0, (hi - 1) // step * step)
        rows = np.flatnonzero(open_)
        block = np.asarray(avg.oindex[rows, lo:hi], np.float64)
        for r, i in enumerate(rows):
            vals = block[r]
            own = np.flatnonzero(~np.isnan(vals))
            if not own.size:
                continue
            if last[i] < 0:
                last[i] = lo + own[-1]
                trend[i] = _cut(vals[own[-1:]], lo_thr, hi_thr)[0]
            other = np.flatnonzero(_cut(vals[own], lo_thr, hi_thr) != trend[i])
            if other.size:
                own_after[i] += own.size - other[-1] - 1
                open_[i] = False
            else:
                own_after[i] += own.size
        hi = lo
    idx = np.flatnonzero(last >= 0)

    def at_last(arr) -> np.ndarray:
        """arr[i, last[i]] for the symbols in idx: one block read of the last time chunk for those
        whose last bar is in it (almost all), point reads for the rest."""
        out = np.full(idx.size, np.nan)
        lo = max(0, (n_time - 1) // step * step)
        recent = last[idx] >= lo
        if recent.any():
            block = np.asarray(arr.oindex[idx[recent], lo:n_time], np.float64)
            out[recent] = block[np.arange(block.shape[0]), last[idx[recent]] - lo]
        if (~recent).any():
            out[~recent] = np.asarray(arr.vindex[idx[~recent], last[idx[~recent]]], np.float64)
        return out

    fam = np.stack([at_last(families[f]) if f in families else np.full(idx.size, np.nan)
                    for f in FAMILIES]) if idx.size else np.zeros((6, 0))  # NaN: not stored (--outputs average)
    return pd.DataFrame({
        "symbol": symbols[idx],
        "signal": at_last(avg) if idx.size else np.zeros(0),
        "trend": trend[idx].astype(int),
        "families_long": (fam > hi_thr).sum(axis=0).astype(int),
        "families_short": (fam < lo_thr).sum(axis=0).astype(int),
        "close": at_last(close) if close is not None and idx.size else np.nan,
        "time": pd.to_datetime(times[last[idx]]),
        "bars_since_change": own_after[idx].astype(int) - 1,  # 0: the trend changed at the last bar
        "stale": last[idx] < n_time - 1,
    })


def rank(df, top: int, min_signal: float = 0.0):
    """(long, short) tables: strongest first, at most `top` rows each, |signal| >= `min_signal`.
    Stale symbols (no bar at the store's last time, e.g. delisted) come after the current ones."""
    strong = df[df["signal"].abs() >= min_signal]
    long = strong[strong["signal"] > 0].sort_values(["stale", "signal", "symbol"],
                                                    ascending=[True, False, True]).head(top)
    short = strong[strong["signal"] < 0].sort_values(["stale", "signal", "symbol"],
                                                     ascending=[True, True, True]).head(top)
    return long.reset_index(drop=True), short.reset_index(drop=True)
