"""Column spellings of user tables and the checks of a table's parsed rows, without pandas.

Both readers of bars share this: :func:`pipeline.tables.split_table` (pandas, any table) and
:mod:`pipeline.csv_simple` (plain CSV files, the daily append's path, which must not pay pandas'
import). Each parses its table into the same arrays (int64 ns times, float64 columns, symbols)
and hands them to :func:`split_rows`, so both give the same bars and the same errors, word for word.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pipeline.price_format import POSITIVE_VARS, PRICE_VARS, StoreError, format_time

__all__ = ["CLOSE_SPELLINGS", "CanonicalColumns", "EMPTY_CLOSE", "EPOCH_UNITS", "SPELLINGS", "SYMBOL_SPELLINGS", "TIME_SPELLINGS",
           "column_key", "map_columns", "row_label", "split_rows"]


def column_key(name: Any) -> str:
    """A column name as matched against the spellings: lower case, without " _-."."""
    return re.sub(r"[\s_\-.]", "", str(name).lower())


# canonical name -> accepted spellings, in order of preference ("Close" wins over "Adj Close" when
# both are present). Written as users write them so that error messages and help can list them
# from this one table; matching ignores case and " _-." (see column_key).
SPELLINGS: dict[str, tuple[str, ...]] = {
    "time": ("Date", "Datetime", "Timestamp", "Time", "TS", "DT", "T", "Datetime UTC", "Time UTC"),
    "symbol": ("Symbol", "Ticker", "Sym", "Asset", "Instrument"),
    "open": ("Open", "O", "Open Price"),
    "high": ("High", "H", "High Price"),
    "low": ("Low", "L", "Low Price"),
    "close": ("Close", "C", "Close Price", "Last", "Price", "Adj Close", "Adjusted Close"),
    "volume": ("Volume", "Vol", "V"),
}
ALIASES: dict[str, tuple[str, ...]] = {k: tuple(column_key(s) for s in v) for k, v in SPELLINGS.items()}
TIME_SPELLINGS = ", ".join(SPELLINGS["time"])
CLOSE_SPELLINGS = ", ".join(SPELLINGS["close"])
SYMBOL_SPELLINGS = ", ".join(SPELLINGS["symbol"])
#: Numeric timestamps: the unit is told from the magnitude (see tables._parse_numeric_times); for help texts.
EPOCH_UNITS = ("YYYYMMDD integers (e.g. 20240131), or epoch seconds, milliseconds, microseconds or nanoseconds "
               "since 1970-01-01 UTC (told apart by magnitude)")
#: What to do with a row that has a time but no close: "error" (name the row) or "drop" (skip it).
EMPTY_CLOSE = ("error", "drop")


def map_columns(columns: list[Any], where: str) -> dict[str, Any]:
    """canonical name -> original column name, for the recognised columns."""
    keys: dict[str, list[Any]] = {}
    for col in columns:
        keys.setdefault(column_key(col), []).append(col)
    out: dict[str, Any] = {}
    for canon, spellings in ALIASES.items():
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


def row_label(rows: np.ndarray, i: int, line_base: int | None) -> str:
    r = int(rows[i])
    return f"line {r + line_base}" if line_base is not None else f"row {r + 1}"


def split_rows(
    times: np.ndarray,
    data: dict[str, np.ndarray],
    where: str,
    *,
    symbol: str | None,
    syms: np.ndarray | None,
    factorized: tuple[np.ndarray, np.ndarray] | None,
    rows: np.ndarray,
    line_base: int | None,
    empty_close: str,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The checks of :func:`pipeline.tables.split_table` after parsing, and its split by symbol.

    ``times``: int64 ns per row; ``data``: float64 per price variable (NaN: empty); either
    ``symbol`` (every row is that symbol's) or ``syms`` (per row) with ``factorized`` = (codes,
    sorted unique symbols). Returns ``{symbol: row positions of its bars}`` (symbols sorted, each
    symbol's rows by time; rows without a close left out) and ``{symbol: rows dropped}``.
    """
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
            raise StoreError(f"{where}: {v} {rel} ({float(a[i])!r}) for symbol {who!r} at {format_time(times[i])} "
                             f"({row_label(rows, i, line_base)})")

    no_close = np.isnan(data["close"])
    if no_close.any() and empty_close == "error":
        i = int(np.flatnonzero(no_close)[0])
        who = symbol if syms is None else syms[i]
        raise StoreError(f"{where}: empty close for symbol {who!r} at {format_time(times[i])} "
                         f"({row_label(rows, i, line_base)}); --drop-empty-close skips rows without a close")

    if syms is None:
        groups = {symbol: np.argsort(times, kind="stable")}
    else:
        codes, uniques = factorized
        order = np.lexsort((times, codes))
        sc = codes[order]
        bounds = np.flatnonzero(np.diff(sc)) + 1
        groups = {str(uniques[codes[part[0]]]): part for part in np.split(order, bounds) if part.size}

    dropped: dict[str, int] = {}
    kept: dict[str, np.ndarray] = {}
    for sym, idx in groups.items():
        t = times[idx]
        dup = np.flatnonzero(t[1:] == t[:-1])
        if dup.size:
            j = int(dup[0])
            raise StoreError(
                f"{where}: duplicate timestamp {format_time(t[j])} for symbol {sym!r} "
                f"({row_label(rows, int(idx[j]), line_base)} and {row_label(rows, int(idx[j + 1]), line_base)})"
            )
        keep = idx[~no_close[idx]]
        if keep.size == 0:
            raise StoreError(f"{where}: symbol {sym!r} has no close values")
        dropped[sym] = int(idx.size - keep.size)
        kept[sym] = keep
    return kept, dropped


class CanonicalColumns(dict):
    """``{symbol: (int64 ns times, {variable: float64 values})}`` already checked like
    :class:`pipeline.tables.CanonicalFrames` (each symbol's times sorted and unique, every row a
    bar), with the rows dropped for lack of a close per source; what the cheap append takes
    without pandas."""

    def __init__(self, *args: Any, dropped_empty_close: dict[str, int] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.dropped_empty_close: dict[str, int] = dict(dropped_empty_close or {})
