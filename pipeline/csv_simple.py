"""Plain CSV files of bars read without pandas: the daily append's path.

A fresh `atc ingest --append` of one bar per symbol spent most of its time importing pandas and
building a frame per file (2,000 one-line files: ~10 CPU s). Files as exports usually write them
(comma separated, a header, ISO dates or times, plain decimal numbers) are read here with the
standard library and numpy into exactly the arrays pandas gives, then checked by the same
:func:`pipeline.table_rows.split_rows`. Anything else returns None and the caller reads the file
with pandas as before: quotes, other separators, a byte-order mark, blank lines, time zones,
numeric or non-ISO timestamps, exponents, signs, values pandas would read differently (see
:func:`_number`), symbols pandas could read as numbers or missing values, short or long rows.
So whether a file takes this path changes neither the bars nor the error messages.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np

from pipeline.price_format import PRICE_VARS
from pipeline.table_rows import ALIASES, column_key, map_columns, split_rows

__all__ = ["MAX_BYTES", "SUFFIXES", "read_simple"]

#: Files this reader takes (uncompressed CSV); others go to pandas.
SUFFIXES = (".csv", ".txt")
#: Larger files go to pandas, whose C parser is faster per row (this path is for small daily files).
MAX_BYTES = 1 << 20

# ISO 8601 dates and naive times that numpy parses exactly as pandas' format="ISO8601" (checked
# by tests), years inside the datetime64[ns] range; anything else (time zones, other spellings,
# out-of-range fields) goes to pandas
# (ASCII digits only: Python's float() also reads other scripts' digits, pandas does not)
_ISO = re.compile(r"(17|18|19|20|21)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
                  r"([T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,9})?)?)?", re.ASCII)
_NUMBER = re.compile(r"(\d+)(?:\.(\d+))?", re.ASCII)
_SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9._\-^=/:]*")
# words pandas reads as missing values, booleans or infinities (any case, to be safe)
_NOT_SYMBOLS = {"na", "nan", "n/a", "null", "none", "nat", "true", "false", "inf", "infinity"}
_EXACT = 2**53


@functools.lru_cache(maxsize=1)
def _pandas_rounds_correctly() -> bool:
    """Whether the installed pandas' CSV parser rounds every decimal number correctly (it does
    since pandas 3.1, which parses with fast_float; pandas 3.0 had its own parser). Read from the
    name of its ``.dist-info`` directory beside it: neither pandas nor importlib.metadata (which
    imports the email package, ~0.1 s) is imported."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("pandas")
        where = Path(next(iter(spec.submodule_search_locations))).parent
        found = [m for e in os.listdir(where) if (m := re.fullmatch(r"pandas-(\d+)\.(\d+)\.(\d+)\.dist-info", e))]
    except (ImportError, AttributeError, TypeError, StopIteration, OSError, ValueError):
        return False
    return len(found) == 1 and (int(found[0].group(1)), int(found[0].group(2))) >= (3, 1)


def _number(text: str) -> float | None:
    """``float(text)`` where that is what pandas' C parser reads, else None.

    Since pandas 3.1 its parser rounds correctly, as ``float`` does. Before, it accumulated the
    digits (at most 17) into a double and scaled that once by a power of ten: exact, hence
    correctly rounded too, when the digits form an integer below 2**53 and the power is at most
    10**22 (both exact doubles); other numbers (17 significant digits, say) may differ in the
    last bit, so they go to pandas. An integer (no decimal point) below 2**53 is exact either
    way; larger ones go to pandas (an int64 or object column)."""
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    whole, frac = m.group(1), m.group(2)
    if frac is None:
        return float(text) if int(whole) < _EXACT else None
    if not _pandas_rounds_correctly() and (len(whole) + len(frac) > 17 or len(frac) > 22
                                           or int(whole + frac) >= _EXACT):
        return None
    return float(text)


@functools.lru_cache(maxsize=64)
def _header(line: str) -> tuple[int, dict[str, int], bool] | None:
    """(fields, {canonical column: position}, has a symbol column) of a plain header line, or None
    (the daily files of a directory share one header: worked out once)."""
    header = line.split(",")
    n = len(header)
    if n < 2 or len(set(header)) != n or any(h == "" or h != h.strip() for h in header):
        return None
    long = any(column_key(h) in ALIASES["symbol"] for h in header)
    try:
        cols = map_columns(header, "header")
    except Exception:  # noqa: BLE001 - pandas' path words the error
        return None
    if "time" not in cols or "close" not in cols or (long and "symbol" not in cols):
        return None
    return n, {c: header.index(name) for c, name in cols.items()}, long


def _plain_bars(times: np.ndarray, data: dict[str, np.ndarray]) -> bool:
    """Whether one symbol's rows pass every check of :func:`split_rows` as they are: times
    increasing, a close on every row, prices > 0, volume >= 0. Then the bars are the rows in
    file order, which split_rows would return; anything else goes through it (its errors, its
    drops). A daily file of one or a few rows takes this shortcut (~60 us less per file)."""
    if times.size > 1 and not bool((times[1:] > times[:-1]).all()):
        return False
    for v, a in data.items():
        if a.size == 1:  # plain floats: a numpy reduction per one-row file costs more than the file
            x = float(a[0])
            if not (x >= 0 if v == "volume" else x > 0) and not (v != "close" and x != x):
                return False
        elif v == "close":
            if not bool((a > 0).all()):
                return False
        elif not bool((((a >= 0) if v == "volume" else (a > 0)) | np.isnan(a)).all()):
            return False
    return True


def _read(path: Path) -> bytes | None:
    """The file's bytes (None if unreadable or over ``MAX_BYTES``) with the fewest system calls:
    a directory of one small file per symbol spends most of its reading time in them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        parts = []
        size = 0
        while size <= MAX_BYTES:
            got = os.read(fd, MAX_BYTES + 1 - size)
            if not got:
                break
            parts.append(got)
            size += len(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_simple(path: Path, where: str, symbol: str | None, empty_close: str
                ) -> tuple[dict[str, tuple[np.ndarray, dict[str, np.ndarray]]], dict[str, int]] | None:
    """``({symbol: (int64 ns times, {variable: float64 values})}, {symbol: rows dropped})`` of a
    plain CSV file, exactly what :func:`pipeline.tables.split_table` makes of pandas' reading of it
    (symbols sorted, each one's bars by time), or None where the file is not plain (see the
    module's docstring). ``symbol``: the file's symbol unless it has a symbol column. Errors
    about the data are the ones :func:`split_table` raises."""
    if not path.name.lower().endswith(SUFFIXES):
        return None
    raw = _read(path)
    if not raw or len(raw) > MAX_BYTES or b'"' in raw or (b"\r" in raw and b"\r" in raw.replace(b"\r\n", b"\n")):
        return None
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        return None
    if text.startswith("\ufeff"):
        return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if len(lines) < 2:
        return None
    got = _header(lines[0])
    if got is None:
        return None
    n, at, long = got
    fields = [line.split(",") for line in lines[1:]]
    if any(len(f) != n for f in fields):
        return None
    t_text = [f[at["time"]] for f in fields]
    if not all(_ISO.fullmatch(t) for t in t_text):
        return None
    try:
        times = np.array(t_text, dtype="datetime64[ns]").view(np.int64)
    except ValueError:
        return None
    data = {}
    for v in PRICE_VARS:
        if v not in at:
            continue
        j = at[v]
        vals = np.empty(len(fields))
        for i, f in enumerate(fields):
            s = f[j]
            x = np.nan if s == "" else _number(s)
            if x is None:
                return None
            vals[i] = x
        data[v] = vals
    syms = factorized = None
    if long:
        s_text = [f[at["symbol"]] for f in fields]
        if not all(_SYMBOL.fullmatch(s) and s.lower() not in _NOT_SYMBOLS for s in s_text):
            return None
        syms = np.array(s_text, dtype=object)
        uniques, codes = np.unique(syms, return_inverse=True)
        factorized = (codes.astype(np.intp), uniques)
        symbol = None
    if syms is None and _plain_bars(times, data):
        return {symbol: (times, data)}, {symbol: 0}
    rows = np.arange(len(fields))
    groups, dropped = split_rows(times, data, where, symbol=symbol, syms=syms, factorized=factorized, rows=rows,
                                 line_base=2, empty_close=empty_close)
    out = {sym: (times[k], {v: a[k] for v, a in data.items()}) for sym, k in groups.items()}
    return out, dropped
