"""The price store: an xarray Dataset on ``(symbol, time)`` in a Blosc-compressed Zarr v3 directory.

Format (see ``data/README.md``):

* variables ``close`` (required), ``open``, ``high``, ``low``, ``volume`` (optional), all float64
  on ``(symbol, time)``, NaN outside each symbol's valid span;
* ``filled_gaps`` (int64 on ``symbol``): how many interior bars were forward-filled at ingest;
* coordinates ``symbol`` (strings, any characters: only values, never paths) and ``time``
  (datetime64[ns], UTC, strictly increasing; the union of every symbol's calendar);
* codec ``BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")``, chunked along ``symbol``
  only (each chunk holds whole histories);
* root attributes: ``atc_format``, ``atc_format_version``, ``source``, ``created``,
  ``modified``, ``history``, ``fingerprint`` (sha256 of coordinates and data, see
  :func:`fingerprint_prices`), ``filled_gaps_total``, ``chunk_symbols``, ``timezone``.

Every write builds a complete store in a temporary sibling directory and renames it into place,
so a failure (bad data, full disk, Ctrl-C) leaves the previous store, or nothing, behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from kernels.errors import ATCUserError
from pipeline.atomic import atomic_directory, store_format

__all__ = [
    "PRICE_VARS",
    "StoreError",
    "StoreSummary",
    "CanonicalFrames",
    "append_prices",
    "fingerprint_prices",
    "has_symbol_column",
    "normalise_table",
    "open_prices",
    "store_nbytes",
    "to_frames",
    "validate_prices",
    "write_prices",
]

FORMAT_NAME = "price-store"
FORMAT_VERSION = 1
#: Price variables in their canonical order; only ``close`` is required.
PRICE_VARS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
POSITIVE_VARS = ("open", "high", "low", "close")
#: Raw values per chunk the automatic chunk size aims at (2**20 float64 = 8 MiB uncompressed).
TARGET_CHUNK_VALUES = 2**20
#: Overlapping bars of an append agree when they match to this relative tolerance.
APPEND_RTOL = 1e-12


class StoreError(ATCUserError, ValueError):
    """A price store or price data the user supplied cannot be written, read or appended."""


def blosc_codec():
    """The one compressor of every price-store array."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


# --------------------------------------------------------------------------------------------
# Column spellings and timestamp parsing
# --------------------------------------------------------------------------------------------

def _key(name: Any) -> str:
    return re.sub(r"[\s_\-.]", "", str(name).lower())


# canonical name -> accepted spellings (compared after lower-casing and removing " _-."),
# in order of preference: "Close" wins over "Adj Close" when both are present.
_ALIASES: dict[str, tuple[str, ...]] = {
    "time": ("date", "datetime", "timestamp", "time", "ts", "dt", "t", "datetimeutc", "timeutc"),
    "symbol": ("symbol", "ticker", "sym", "asset", "instrument"),
    "open": ("open", "o", "openprice"),
    "high": ("high", "h", "highprice"),
    "low": ("low", "l", "lowprice"),
    "close": ("close", "c", "closeprice", "last", "price", "adjclose", "adjustedclose"),
    "volume": ("volume", "vol", "v"),
}
TIME_SPELLINGS = "Date, Datetime, timestamp, time"


def _map_columns(columns: list[Any], where: str) -> dict[str, Any]:
    """canonical name -> original column name, for the recognised columns."""
    keys: dict[str, list[Any]] = {}
    for col in columns:
        keys.setdefault(_key(col), []).append(col)
    out: dict[str, Any] = {}
    for canon, spellings in _ALIASES.items():
        for sp in spellings:
            found = keys.get(sp)
            if not found:
                continue
            if len(found) > 1:
                raise StoreError(f"{where}: ambiguous columns {[str(c) for c in found]} (all read as {canon!r})")
            if found[0] not in out.values():
                out[canon] = found[0]
                break
    return out


def has_symbol_column(df: pd.DataFrame) -> bool:
    """Whether ``df`` has a column (or index level) spelled like a symbol column."""
    names = list(df.columns) + [n for n in df.index.names if n is not None]
    return any(_key(c) in _ALIASES["symbol"] for c in names)


def _row_label(rows: np.ndarray, i: int, line_base: int | None) -> str:
    r = int(rows[i])
    return f"line {r + line_base}" if line_base is not None else f"row {r + 1}"


def _parse_times(values: pd.Series, where: str, col: str, rows: np.ndarray, line_base: int | None) -> np.ndarray:
    """Any supported timestamp spelling -> int64 nanoseconds since the epoch, UTC."""
    s = values
    if s.isna().any():
        i = int(np.flatnonzero(s.isna().to_numpy())[0])
        raise StoreError(f"{where}: missing timestamp in column {col!r} ({_row_label(rows, i, line_base)})")
    try:
        if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype):
            parsed = pd.to_datetime(s, utc=True)
        elif pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
            parsed = _parse_numeric_times(s.to_numpy(dtype=np.float64), where, col)
        else:
            parsed = _parse_string_times(s, where, col, rows, line_base)
        idx = pd.DatetimeIndex(parsed).tz_convert("UTC").tz_localize(None).as_unit("ns")
    except StoreError:
        raise
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{where}: unparseable timestamps in column {col!r}: {msg}") from None
    return idx.asi8.copy()


def _parse_numeric_times(v: np.ndarray, where: str, col: str) -> pd.DatetimeIndex:
    if not np.isfinite(v).all():
        raise StoreError(f"{where}: non-finite timestamp in column {col!r}")
    integral = bool(np.all(v == np.round(v)))
    if integral and v.size and v.min() >= 1_800_01_01 and v.max() <= 2_200_12_31:
        # 8-digit YYYYMMDD dates (as seconds these would all fall in 1970)
        try:
            return pd.to_datetime(v.astype(np.int64).astype(str), format="%Y%m%d", utc=True)
        except ValueError:
            pass
    mag = float(np.max(np.abs(v))) if v.size else 0.0
    unit = "s" if mag < 1e11 else "ms" if mag < 1e14 else "us" if mag < 1e17 else "ns"
    if integral:
        return pd.to_datetime(v.astype(np.int64), unit=unit, utc=True)
    return pd.to_datetime(v, unit=unit, utc=True)


def _parse_string_times(s: pd.Series, where: str, col: str, rows: np.ndarray, line_base: int | None):
    s = s.astype(str)
    try:
        return pd.to_datetime(s, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pd.to_datetime(s, utc=True)
        except (ValueError, TypeError, OverflowError):
            pass
        coerced = pd.to_datetime(s, utc=True, errors="coerce", format="mixed")
    bad = np.flatnonzero(coerced.isna().to_numpy())
    i = int(bad[0]) if bad.size else 0
    raise StoreError(
        f"{where}: unparseable timestamp {s.iloc[i]!r} in column {col!r} ({_row_label(rows, i, line_base)})"
    )


def _to_float(values: pd.Series, where: str, col: str, rows: np.ndarray, line_base: int | None) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values.dtype):
        raise StoreError(f"{where}: column {col!r} holds booleans, not numbers")
    if pd.api.types.is_numeric_dtype(values.dtype):
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        num = pd.to_numeric(values, errors="coerce")
        out = num.to_numpy(dtype=np.float64, na_value=np.nan)
        orig_na = values.isna().to_numpy()
        str_vals = values.astype(str).str.strip()
        blank = (str_vals == "").to_numpy()
        bad = np.flatnonzero(np.isnan(out) & ~orig_na & ~blank)
        if bad.size:
            i = int(bad[0])
            raise StoreError(
                f"{where}: non-numeric value {values.iloc[i]!r} in column {col!r} ({_row_label(rows, i, line_base)})"
            )
    inf = np.flatnonzero(np.isinf(out))
    if inf.size:
        i = int(inf[0])
        raise StoreError(f"{where}: infinite value in column {col!r} ({_row_label(rows, i, line_base)})")
    return out


def _ts(ns: int | np.integer | np.datetime64) -> str:
    t = pd.Timestamp(np.datetime64(int(ns), "ns")) if not isinstance(ns, np.datetime64) else pd.Timestamp(ns)
    return t.isoformat() if (t.hour or t.minute or t.second or t.microsecond or t.nanosecond) else t.strftime("%Y-%m-%d")


def normalise_table(
    df: pd.DataFrame,
    where: str,
    *,
    symbol: str | None = None,
    line_base: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Validate one table of bars and split it into canonical per-symbol frames.

    ``df`` has a time column (or a DatetimeIndex) under any usual spelling, a close column and
    optionally open/high/low/volume. With ``symbol=None`` it must have a symbol column (long
    format); otherwise every row belongs to ``symbol``. ``where`` names the table in error
    messages; ``line_base`` turns row positions into file line numbers (2 for a CSV with a header).

    Returns ``{symbol: frame}``: index ``time`` (datetime64[ns], UTC, sorted, unique), float64
    columns in :data:`PRICE_VARS` order, trimmed to the first..last bar with a close (interior
    rows without a close are kept as NaN: they are gaps).
    """
    if not isinstance(df, pd.DataFrame):
        raise StoreError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    if isinstance(df.index, pd.MultiIndex) or isinstance(df.index, pd.DatetimeIndex) or (
        df.index.name is not None and _key(df.index.name) in _ALIASES["time"] + _ALIASES["symbol"]
    ):
        df = df.reset_index()
    if len(df) == 0:
        raise StoreError(f"{where}: empty (no data rows)")
    cols = _map_columns(list(df.columns), where)
    if "time" not in cols:
        unnamed = [c for c in df.columns if str(c).startswith("Unnamed") or str(c) in ("", "index")]
        if unnamed:
            cols["time"] = unnamed[0]
        else:
            raise StoreError(
                f"{where}: no date/time column (looked for {TIME_SPELLINGS}, any case); "
                f"columns: {[str(c) for c in df.columns]}"
            )
    if "close" not in cols:
        raise StoreError(f"{where}: no close column (looked for Close, Price, Adj Close, any case); "
                         f"columns: {[str(c) for c in df.columns]}")
    rows = np.arange(len(df))
    times = _parse_times(df[cols["time"]], where, str(cols["time"]), rows, line_base)
    data = {v: _to_float(df[cols[v]], where, str(cols[v]), rows, line_base) for v in PRICE_VARS if v in cols}

    if symbol is not None:
        syms = None
    elif "symbol" in cols:
        sraw = df[cols["symbol"]]
        if sraw.isna().any():
            i = int(np.flatnonzero(sraw.isna().to_numpy())[0])
            raise StoreError(f"{where}: missing symbol in column {cols['symbol']!r} ({_row_label(rows, i, line_base)})")
        syms = np.asarray(sraw.astype(str).to_numpy(), dtype=object)
        empty = np.flatnonzero(syms == "")
        if empty.size:
            raise StoreError(f"{where}: empty symbol ({_row_label(rows, int(empty[0]), line_base)})")
    else:
        raise StoreError(f"{where}: no symbol column (looked for symbol, ticker); pass one file per "
                         "symbol or a {symbol: frame} mapping instead")

    # positivity (per row, before any reordering, so the line numbers are the file's)
    for v in PRICE_VARS:
        if v not in data:
            continue
        a = data[v]
        bad = np.flatnonzero(a <= 0) if v in POSITIVE_VARS else np.flatnonzero(a < 0)
        if bad.size:
            i = int(bad[0])
            who = symbol if syms is None else syms[i]
            rel = "<= 0" if v in POSITIVE_VARS else "< 0"
            raise StoreError(f"{where}: {v} {rel} ({float(a[i])!r}) for symbol {who!r} at {_ts(times[i])} "
                             f"({_row_label(rows, i, line_base)})")

    if syms is None:
        groups = {symbol: np.argsort(times, kind="stable")}
    else:
        codes, uniques = pd.factorize(syms, sort=True)
        order = np.lexsort((times, codes))
        sc = codes[order]
        bounds = np.flatnonzero(np.diff(sc)) + 1
        groups = {str(uniques[codes[part[0]]]): part for part in np.split(order, bounds) if part.size}

    out: dict[str, pd.DataFrame] = {}
    for sym, idx in groups.items():
        t = times[idx]
        dup = np.flatnonzero(t[1:] == t[:-1])
        if dup.size:
            j = int(dup[0])
            raise StoreError(
                f"{where}: duplicate timestamp {_ts(t[j])} for symbol {sym!r} "
                f"({_row_label(rows, int(idx[j]), line_base)} and {_row_label(rows, int(idx[j + 1]), line_base)})"
            )
        close = data["close"][idx]
        valid = np.flatnonzero(~np.isnan(close))
        if valid.size == 0:
            raise StoreError(f"{where}: symbol {sym!r} has no close values")
        keep = idx[valid[0]: valid[-1] + 1]
        frame = pd.DataFrame(
            {v: data[v][keep] for v in PRICE_VARS if v in data},
            index=pd.DatetimeIndex(times[keep].view("datetime64[ns]"), name="time"),
        )
        out[sym] = frame
    return out


# --------------------------------------------------------------------------------------------
# Panels: per-symbol frames -> (symbol, time) arrays, gap filling, validation, fingerprint
# --------------------------------------------------------------------------------------------

@dataclass
class _Panel:
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
        return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))


def _panel_from_frames(frames: Mapping[str, pd.DataFrame]) -> _Panel:
    panel = _panel_from_frames_nofill(frames)
    panel.filled = fill_gaps(panel.arrays)
    return panel


def _panel_from_frames_nofill(frames: Mapping[str, pd.DataFrame]) -> _Panel:
    symbols = list(frames)
    present = [v for v in PRICE_VARS if any(v in f.columns for f in frames.values())]
    if frames:
        times = np.unique(np.concatenate([f.index.asi8 for f in frames.values()]))
    else:
        times = np.empty(0, np.int64)
    arrays = {v: np.full((len(symbols), times.size), np.nan) for v in present}
    for i, f in enumerate(frames.values()):
        pos = np.searchsorted(times, f.index.asi8)
        for v in f.columns:
            arrays[v][i, pos] = f[v].to_numpy()
    return _Panel(symbols, times, arrays, np.zeros(len(symbols), np.int64))


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


def _panel_from_dataset(ds: xr.Dataset, where: str = "dataset") -> _Panel:
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
        raise StoreError(f"{where}: duplicate time {_ts(times[order][j])}")
    if np.any(order != np.arange(times.size)):
        times = times[order]
        arrays = {v: a[:, order] for v, a in arrays.items()}
    panel = _Panel(symbols, times, arrays, prev)
    _check_values(panel, where, allow_gaps=True)
    panel.filled = prev + fill_gaps(arrays)
    return panel


def _check_values(p: _Panel, where: str, *, allow_gaps: bool = False) -> None:
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
            raise StoreError(f"{where}: infinite {v} for symbol {p.symbols[i]!r} at {_ts(p.times[j])}")
        bad = (a <= 0) if v in POSITIVE_VARS else (a < 0)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise StoreError(f"{where}: {v} {'<= 0' if v in POSITIVE_VARS else '< 0'} ({float(a[i, j])!r}) for symbol "
                             f"{p.symbols[i]!r} at {_ts(p.times[j])}")
    close = p.arrays["close"]
    valid = ~np.isnan(close)
    none = np.flatnonzero(~valid.any(axis=1))
    if none.size:
        raise StoreError(f"{where}: symbol {p.symbols[none[0]]!r} has no close values")
    if not allow_gaps and close.shape[1]:
        m = close.shape[1]
        first = valid.argmax(axis=1)
        last = m - 1 - valid[:, ::-1].argmax(axis=1)
        cols = np.arange(m)
        gap = (cols >= first[:, None]) & (cols <= last[:, None]) & ~valid
        if gap.any():
            i, j = np.argwhere(gap)[0]
            raise StoreError(f"{where}: interior gap (NaN close) for symbol {p.symbols[i]!r} at {_ts(p.times[j])}")


def _fingerprint(symbols: list[str], times: np.ndarray, arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256(b"atc-price-store/1\n")
    h.update(b"symbol\n" + len(symbols).to_bytes(8, "little"))
    for s in symbols:
        b = s.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    h.update(b"time\n" + np.ascontiguousarray(times, dtype="<i8").tobytes())
    for v in sorted(arrays):
        a = arrays[v]
        h.update(f"{v}\n".encode() + np.asarray(a.shape, dtype="<i8").tobytes())
        step = max(1, TARGET_CHUNK_VALUES // max(1, a.shape[1]))
        for r in range(0, a.shape[0], step):
            block = np.asarray(a[r: r + step], dtype="<f8") + 0.0  # -0.0 -> 0.0
            block[np.isnan(block)] = np.nan  # one NaN bit pattern
            h.update(np.ascontiguousarray(block).tobytes())
    return "sha256:" + h.hexdigest()


def fingerprint_prices(ds: xr.Dataset) -> str:
    """Content fingerprint of a price dataset: sha256 over the symbol and time coordinates and
    every price variable (values as little-endian float64, NaN canonical). ``filled_gaps`` and
    attributes do not enter. Equal data gives an equal fingerprint, whatever the chunking."""
    symbols = [str(s) for s in ds["symbol"].values]
    times = ds["time"].values.astype("datetime64[ns]").astype(np.int64)
    arrays = {v: np.asarray(ds[v].transpose("symbol", "time").values) for v in PRICE_VARS if v in ds.data_vars}
    return _fingerprint(symbols, times, arrays)


def validate_prices(ds: xr.Dataset, where: str = "price store") -> None:
    """Raise :class:`StoreError` unless ``ds`` is a well-formed price dataset: ``close`` present,
    dims ``(symbol, time)``, unique non-empty symbols, strictly increasing times, prices > 0,
    volume >= 0, no infinities, and no interior gap in ``close``. Loads the data."""
    p = _panel_from_dataset_strict(ds, where)
    _check_values(p, where, allow_gaps=False)


def _panel_from_dataset_strict(ds: xr.Dataset, where: str) -> _Panel:
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
    return _Panel(symbols, times, arrays, np.zeros(len(symbols), np.int64))


# --------------------------------------------------------------------------------------------
# Writing, opening, appending
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoreSummary:
    """What a write or append did, for the CLI's closing line."""

    path: Path
    action: str  # "created", "overwritten", "appended", "unchanged"
    n_symbols: int
    n_bars: int
    variables: tuple[str, ...]
    filled_gaps: int
    nbytes: int
    raw_nbytes: int
    fingerprint: str
    chunk_symbols: int
    added_symbols: int = 0
    added_bars: int = 0

    @property
    def ratio(self) -> float:
        return self.raw_nbytes / self.nbytes if self.nbytes else float("nan")

    def describe(self) -> str:
        lines = [
            f"{self.action} {self.path}",
            f"  {self.n_symbols} symbols x {self.n_bars} bars ({', '.join(self.variables)}), "
            f"{self.filled_gaps} gaps forward-filled",
        ]
        if self.action == "appended":
            lines.append(f"  added {self.added_symbols} new symbols and {self.added_bars} new bars")
        lines.append(
            f"  {_human(self.nbytes)} on disk (raw {_human(self.raw_nbytes)}, ratio {self.ratio:.2f}x), "
            f"{self.chunk_symbols} symbols per chunk"
        )
        lines.append(f"  fingerprint {self.fingerprint}")
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def store_nbytes(path: str | os.PathLike) -> int:
    """Bytes on disk of all files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def auto_chunk_symbols(n_symbols: int, n_bars: int) -> int:
    """Symbols per chunk aiming at ~8 MiB raw per chunk, between 16 and 512 (never above n)."""
    k = TARGET_CHUNK_VALUES // max(1, n_bars)
    return int(max(1, min(max(n_symbols, 1), max(16, min(512, k)))))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _is_price_store(path: Path) -> bool:
    return store_format(path) == FORMAT_NAME


def check_target(path: str | os.PathLike, *, overwrite: bool = False, append: bool = False) -> Path:
    """Check, before any work, that ``path`` may be created (or overwritten / appended to)."""
    path = Path(path)
    if overwrite and append:
        raise StoreError("--overwrite and --append exclude each other")
    if append:
        if not path.exists():
            raise StoreError(f"{path}: no price store to append to")
        if not _is_price_store(path):
            raise StoreError(f"{path}: not a price store (no atc_format attribute); refusing to append")
        return path
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise StoreError(f"{path} already exists (use --overwrite to replace it or --append to add to it)")
        if not path.is_dir() or not _is_price_store(path):
            raise StoreError(f"{path} exists and is not a price store; refusing to overwrite it")
    return path


def _write_atomic(ds: xr.Dataset, path: Path, chunk_symbols: int, *, replace: bool) -> None:
    """Write ``ds`` into a temporary sibling of ``path`` and rename it into place."""
    n_time = ds.sizes["time"]
    encoding: dict[str, dict[str, Any]] = {}
    for v in ds.data_vars:
        chunks = (chunk_symbols, max(1, n_time)) if ds[v].ndim == 2 else (chunk_symbols,)
        encoding[v] = {"compressors": [blosc_codec()], "chunks": chunks}
    with atomic_directory(path, error=StoreError, what="store", replace=replace) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)


def _summary(path: Path, ds: xr.Dataset, action: str, chunk_symbols: int, **kw: Any) -> StoreSummary:
    variables = tuple(v for v in PRICE_VARS if v in ds.data_vars)
    raw = sum(ds[v].size * 8 for v in variables)
    return StoreSummary(
        path=path,
        action=action,
        n_symbols=ds.sizes["symbol"],
        n_bars=ds.sizes["time"],
        variables=variables,
        filled_gaps=int(ds["filled_gaps"].values.sum()),
        nbytes=store_nbytes(path),
        raw_nbytes=int(raw),
        fingerprint=str(ds.attrs["fingerprint"]),
        chunk_symbols=chunk_symbols,
        **kw,
    )


def _to_panel(data: Any, where: str) -> _Panel:
    if isinstance(data, _Panel):
        return data
    if isinstance(data, xr.Dataset):
        return _panel_from_dataset(data, where)
    return _panel_from_frames(frames_from(data, where))


class CanonicalFrames(dict):
    """``{symbol: frame}`` already checked by :func:`normalise_table` (not checked again)."""


def frames_from(data: Any, where: str = "input") -> CanonicalFrames:
    """Canonical per-symbol frames from a ``{symbol: DataFrame | Series}`` mapping or a
    long-format DataFrame with a symbol column (or a ``(symbol, time)`` MultiIndex)."""
    if isinstance(data, CanonicalFrames):
        return data
    if isinstance(data, Mapping):
        if not data:
            raise StoreError(f"{where}: no symbols")
        out = CanonicalFrames()
        for sym, frame in data.items():
            if not isinstance(sym, str):
                raise StoreError(f"{where}: symbol names must be strings, got {sym!r}")
            if isinstance(frame, pd.Series):
                frame = frame.rename("close").to_frame()
            got = normalise_table(frame, f"{where}: symbol {sym!r}", symbol=sym)
            out[sym] = got[sym]
        return out
    if isinstance(data, pd.DataFrame):
        return CanonicalFrames(normalise_table(data, where))
    raise StoreError(f"{where}: expected a mapping of DataFrames, a long DataFrame or an xarray Dataset, "
                     f"got {type(data).__name__}")


def write_prices(
    data: Any,
    path: str | os.PathLike,
    *,
    chunk_symbols: int | None = None,
    overwrite: bool = False,
    source: str = "python",
) -> StoreSummary:
    """Create a price store at ``path`` from ``data``.

    ``data`` is a ``{symbol: DataFrame | Series}`` mapping (a Series is the close), a long-format
    DataFrame with a symbol column, or an xarray Dataset laid out like a store. Frames take the
    usual column spellings (see :func:`normalise_table`). Symbols keep the mapping's order (a
    long table is sorted by symbol); the time axis is the union of all calendars; interior gaps
    are forward-filled and counted. Raises :class:`StoreError` if ``path`` exists and
    ``overwrite`` is false, or on bad data; in both cases nothing on disk changes.
    """
    path = check_target(path, overwrite=overwrite)
    existed = path.exists()
    panel = _to_panel(data, "input")
    _check_values(panel, "input")
    if chunk_symbols is None:
        chunk_symbols = auto_chunk_symbols(len(panel.symbols), panel.times.size)
    if chunk_symbols < 1:
        raise StoreError(f"chunk_symbols must be >= 1, got {chunk_symbols}")
    chunk_symbols = min(chunk_symbols, max(1, len(panel.symbols)))
    now = _now()
    attrs = {
        "atc_format": FORMAT_NAME,
        "atc_format_version": FORMAT_VERSION,
        "source": str(source),
        "created": now,
        "modified": now,
        "history": [f"{now} created from {source}"],
        "fingerprint": _fingerprint(panel.symbols, panel.times, panel.arrays),
        "filled_gaps_total": int(panel.filled.sum()),
        "chunk_symbols": int(chunk_symbols),
        "timezone": "UTC",
    }
    ds = panel.to_dataset(attrs)
    _write_atomic(ds, path, chunk_symbols, replace=overwrite)
    return _summary(path, ds, "overwritten" if existed else "created", chunk_symbols)


def open_prices(path: str | os.PathLike, *, chunks: Any = None, verify: bool = False) -> xr.Dataset:
    """Open a price store as an xarray Dataset (lazy: values are read when used).

    ``chunks`` is passed to xarray (``None``: lazy numpy-backed arrays; ``{}``: dask arrays on
    the store's chunks). ``verify=True`` loads everything, validates it and checks the stored
    fingerprint.
    """
    p = Path(path) if not (isinstance(path, str) and "://" in path) else None
    if p is not None and not p.exists():
        raise StoreError(f"{path}: no such price store")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            ds = xr.open_dataset(path, engine="zarr", consolidated=False, chunks=chunks, zarr_format=3)
    except (OSError, ValueError, KeyError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{path}: not a readable Zarr v3 store ({msg})") from None
    if ds.attrs.get("atc_format") != FORMAT_NAME:
        raise StoreError(f"{path}: not a price store (attribute atc_format is {ds.attrs.get('atc_format')!r})")
    version = ds.attrs.get("atc_format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{path}: price-store format version {version!r}, this code reads {FORMAT_VERSION}")
    order = [v for v in PRICE_VARS if v in ds.data_vars]
    ds = ds[order + [v for v in ds.data_vars if v not in order]]
    if verify:
        validate_prices(ds, str(path))
        fp = fingerprint_prices(ds)
        if fp != ds.attrs.get("fingerprint"):
            raise StoreError(f"{path}: fingerprint mismatch (stored {ds.attrs.get('fingerprint')}, data {fp})")
    return ds


def to_frames(
    ds: xr.Dataset, symbols: list[str] | None = None, *, time_unit: str = "ns"
) -> dict[str, pd.DataFrame]:
    """Per-symbol DataFrames of a price dataset: each symbol's span (first..last close), index
    ``time`` (naive UTC, ``datetime64[time_unit]``; pandas 3 itself defaults to ``"us"``), the
    price variables it has data for (all-NaN optional columns dropped)."""
    names = [str(s) for s in ds["symbol"].values]
    wanted = names if symbols is None else list(symbols)
    pos = {s: i for i, s in enumerate(names)}
    missing = [s for s in wanted if s not in pos]
    if missing:
        raise StoreError(f"symbols not in the store: {missing[:5]}")
    times = ds["time"].values.astype("datetime64[ns]")
    variables = [v for v in PRICE_VARS if v in ds.data_vars]
    rows = [pos[s] for s in wanted]
    arrays = {v: np.asarray(ds[v].transpose("symbol", "time").values[rows], dtype=np.float64) for v in variables}
    out = {}
    for k, sym in enumerate(wanted):
        c = arrays["close"][k]
        valid = np.flatnonzero(~np.isnan(c))
        sl = slice(valid[0], valid[-1] + 1) if valid.size else slice(0, 0)
        cols = {}
        for v in variables:
            a = arrays[v][k, sl]
            if v == "close" or not np.isnan(a).all():
                cols[v] = a
        out[sym] = pd.DataFrame(cols, index=pd.DatetimeIndex(times[sl], name="time").as_unit(time_unit))
    return out


def append_prices(
    data: Any,
    path: str | os.PathLike,
    *,
    chunk_symbols: int | None = None,
    source: str = "python",
) -> StoreSummary:
    """Add newer bars and new symbols to the price store at ``path``.

    Existing values never change. For a symbol already in the store, bars up to its last stored
    bar must be bars the store has and agree with them (relative tolerance ``APPEND_RTOL`` on
    every variable both sides have); later bars are added. New symbols come with their whole
    history. The time axis becomes the union of both; bars inserted into an existing symbol's
    span by another symbol's calendar are forward-filled and counted like any gap. The new store
    is built beside the old one and renamed into place: on any error the old store is unchanged.
    """
    path = check_target(path, append=True)
    old = open_prices(path).load()
    where = "append"
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
            raise StoreError(f"{where}: bar {_ts(t[early[0]])} for symbol {sym!r} is before its first stored bar "
                             f"{_ts(t_first)}; an append only adds newer bars")
        ov = np.flatnonzero(t <= t_last)
        if ov.size:
            tov = t[ov]
            j = np.searchsorted(old_times, tov)
            j_clip = np.minimum(j, old_times.size - 1)
            missing = np.flatnonzero(old_times[j_clip] != tov)
            if missing.size:
                raise StoreError(f"{where}: bar {_ts(tov[missing[0]])} for symbol {sym!r} is not in the store but "
                                 f"inside its stored history (up to {_ts(t_last)}); an append cannot insert bars")
            for v in f.columns:
                if v not in old_arr:
                    continue
                a_old = old_arr[v][i, j]
                a_new = f[v].to_numpy()[ov]
                both = ~np.isnan(a_old) & ~np.isnan(a_new)
                diff = both & ~np.isclose(a_new, a_old, rtol=APPEND_RTOL, atol=0.0)
                if diff.any():
                    k = int(np.flatnonzero(diff)[0])
                    raise StoreError(f"{where}: overlapping bar disagrees for symbol {sym!r} at {_ts(tov[k])}: "
                                     f"{v} stored {float(a_old[k])!r}, new {float(a_new[k])!r}")
        newer = f.iloc[np.flatnonzero(t > t_last)]
        if len(newer):
            new_only[sym] = newer

    if not new_only:
        chunk = int(old.attrs.get("chunk_symbols", auto_chunk_symbols(len(old_syms), old_times.size)))
        return _summary(path, old, "unchanged", chunk)

    new_panel = _panel_from_frames_nofill(new_only)
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
    panel = _Panel(symbols, times, arrays, prev)
    _check_values(panel, where, allow_gaps=True)
    panel.filled = prev + fill_gaps(arrays)
    _check_values(panel, where)

    if chunk_symbols is None:
        chunk_symbols = int(old.attrs.get("chunk_symbols", auto_chunk_symbols(len(symbols), times.size)))
    if chunk_symbols < 1:
        raise StoreError(f"chunk_symbols must be >= 1, got {chunk_symbols}")
    chunk_symbols = min(chunk_symbols, max(1, len(symbols)))
    now = _now()
    history = list(old.attrs.get("history", []))
    added_symbols = len(symbols) - len(old_syms)
    added_bars = int(sum(np.count_nonzero(~np.isnan(new_panel.arrays["close"][r])) for r in range(len(new_panel.symbols))))
    history.append(f"{now} appended {added_bars} bars ({added_symbols} new symbols) from {source}")
    attrs = dict(old.attrs)
    attrs.update(
        modified=now,
        history=history,
        fingerprint=_fingerprint(panel.symbols, panel.times, panel.arrays),
        filled_gaps_total=int(panel.filled.sum()),
        chunk_symbols=int(chunk_symbols),
    )
    ds = panel.to_dataset(attrs)
    old.close()
    _write_atomic(ds, path, chunk_symbols, replace=True)
    return _summary(path, ds, "appended", chunk_symbols, added_symbols=added_symbols, added_bars=added_bars)
