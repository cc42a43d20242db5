"""Read price files (CSV or Parquet) into a price store.

SRC is either a directory of files, one per symbol (the symbol is the file name without its
extension) or long-format files with a symbol column, or a single such file. Column spellings,
timestamps and validation are handled by :func:`pipeline.tables.split_table`; an append reads
plain CSV files without pandas (:mod:`pipeline.csv_simple`: the same bars and errors).

Each symbol's stored bars are exactly its file's rows: nothing is filled unless asked
(``fill="ffill"``), and a row without a close is an error unless ``drop_empty_close`` (then it is
skipped and counted per file, so the user sees what was left out).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from pipeline.panel import check_fill, frame_columns
from pipeline.price_append import append_prices
from pipeline.price_format import StoreError
from pipeline.price_store import StoreSummary, check_target, write_prices
from pipeline.table_rows import CanonicalColumns

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.tables import CanonicalFrames, Table

# pandas (and pipeline.tables, built on it) is imported where a file is read with it: an append
# of plain CSV files (pipeline.csv_simple) runs without it, ~1 s less of a fresh process

__all__ = ["DATA_SUFFIXES", "ingest", "list_sources", "read_columns", "read_sources"]

#: Recognised file suffixes (lower case) and their reader.
DATA_SUFFIXES: dict[str, str] = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".csv.bz2": "csv",
    ".csv.zst": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
#: Show a progress bar from this many files on (and only on a terminal).
PROGRESS_MIN_FILES = 20
#: From this many files on, a new store is written in batches of symbols (see
#: :func:`_ingest_batched`): memory then holds one symbol chunk, not the whole panel.
BATCH_MIN_FILES = 64
#: Raw bytes of the panel (symbols x union times x variables x 8) up to which the batched ingest
#: keeps the frames it read instead of reading the files a second time (measured on 2000 files x
#: 5000 bars: 32 s in one pass, about twice that in two).
INGEST_MEMORY_BUDGET = 512 * 2**20


_LONGEST_FIRST = tuple(sorted(DATA_SUFFIXES, key=len, reverse=True))


def _suffix(path: Path) -> str | None:
    return _name_suffix(path.name)


def _name_suffix(name: str) -> str | None:
    name = name.lower()
    for suf in _LONGEST_FIRST:
        if name.endswith(suf) and len(name) > len(suf):
            return suf
    return None


def symbol_from_filename(path: Path) -> str:
    suf = _suffix(path)
    return path.name[: len(path.name) - len(suf)] if suf else path.stem


def list_sources(src: str | os.PathLike) -> list[Path]:
    """The data files of SRC (a file or a directory, not recursive), sorted by name."""
    src = Path(src)
    if not src.exists():
        raise StoreError(f"{src}: no such file or directory")
    if src.is_file():
        if _suffix(src) is None:
            raise StoreError(f"{src}: not a CSV or Parquet file (expected one of {', '.join(DATA_SUFFIXES)})")
        return [src]
    if not src.is_dir():
        raise StoreError(f"{src}: not a file or directory")
    with os.scandir(src) as it:  # a directory entry knows whether it is a file (no stat per file)
        names = sorted(e.name for e in it if _name_suffix(e.name) is not None and e.is_file())
    files = [src / n for n in names]
    if not files:
        raise StoreError(f"{src}: no CSV or Parquet files in this directory")
    return files


def _read_file(path: Path) -> pd.DataFrame:
    import pandas as pd

    kind = DATA_SUFFIXES[_suffix(path)]  # type: ignore[index]
    try:
        if path.stat().st_size == 0:
            raise StoreError(f"{path}: empty file")
        if kind == "parquet":
            return pd.read_parquet(path)
        df = pd.read_csv(path)
        if df.shape[1] == 1:
            header = str(df.columns[0])
            for sep in (";", "\t", "|"):
                if sep in header:
                    return pd.read_csv(path, sep=sep)
        return df
    except StoreError:
        raise
    except pd.errors.EmptyDataError:
        raise StoreError(f"{path}: empty file") from None
    except (OSError, ValueError, pd.errors.ParserError, ImportError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"{path}: cannot read ({msg})") from None
    except Exception as exc:  # pyarrow raises its own error types for corrupt Parquet files
        if type(exc).__module__.startswith("pyarrow"):
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"{path}: cannot read ({msg})") from None
        raise


def _load(path: Path, dayfirst: bool = False, empty_close: str = "error") -> Table:
    """One file -> its symbols' frames: long format if it has a symbol column, else one symbol
    named after the file."""
    from pipeline.tables import has_symbol_column, split_table

    df = _read_file(path)
    line_base = 2 if DATA_SUFFIXES[_suffix(path)] == "csv" else None  # type: ignore[index]
    symbol = None if has_symbol_column(df) else symbol_from_filename(path)
    return split_table(df, str(path), symbol=symbol, line_base=line_base, dayfirst=dayfirst,
                       empty_close=empty_close)


def read_sources(
    files: Iterable[Path],
    *,
    progress: bool | None = None,
    threads: int | None = None,
    dayfirst: bool = False,
    drop_empty_close: bool = False,
) -> CanonicalFrames:
    """Read and validate every file; ``{symbol: canonical frame}`` sorted by symbol, with the
    rows dropped for lack of a close per file in ``.dropped_empty_close`` (only with
    ``drop_empty_close``; otherwise such a row is an error naming file and line).

    A symbol found in two files is an error naming both. ``progress=None`` shows a bar on a
    terminal when there are many files.
    """
    from pipeline.tables import CanonicalFrames

    empty_close = "drop" if drop_empty_close else "error"
    files = list(files)
    if threads is None:
        threads = 1  # measured: threads only slow the pandas CSV reader down here
    frames, dropped = _read_all(files, progress, threads, lambda p: _load(p, dayfirst, empty_close))
    return CanonicalFrames(((s, frames[s]) for s in sorted(frames)), dropped_empty_close=dropped)


def read_columns(
    files: Iterable[Path],
    *,
    progress: bool | None = None,
    dayfirst: bool = False,
    drop_empty_close: bool = False,
) -> CanonicalColumns:
    """:func:`read_sources` as plain arrays (``{symbol: (int64 ns times, {variable: values})}``),
    the same bars and errors: plain CSV files are read without pandas (:mod:`pipeline.csv_simple`),
    any other file with pandas as :func:`read_sources` reads it."""
    from pipeline.csv_simple import read_simple

    empty_close = "drop" if drop_empty_close else "error"
    files = list(files)

    def one(path: Path) -> tuple[dict, dict[str, int]]:
        got = read_simple(path, str(path), symbol_from_filename(path), empty_close)
        if got is not None:
            return got
        t = _load(path, dayfirst, empty_close)
        return (frame_columns(t.frames),
                t.dropped_empty_close)

    cols, dropped = _read_all(files, progress, 1, one)
    return CanonicalColumns(((s, cols[s]) for s in sorted(cols)), dropped_empty_close=dropped)


def _read_all(files: list[Path], progress: bool | None, threads: int, load) -> tuple[dict, dict[str, int]]:
    """``load(path) -> ({symbol: bars}, {symbol: dropped rows})`` over ``files`` in order: the
    symbols' bars, and the rows dropped per file (a symbol in two files is an error naming both)."""
    bar = _bar(len(files), progress, "reading")
    out: dict[str, object] = {}
    origin: dict[str, Path] = {}
    dropped: dict[str, int] = {}
    try:
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                # map keeps the file order, so the first error reported is deterministic
                _collect(files, pool.map(load, files), out, origin, dropped, bar)
        else:
            _collect(files, (load(p) for p in files), out, origin, dropped, bar)
    finally:
        if bar is not None:
            bar.close()
    return out, dropped


def _collect(files, results, out, origin, dropped, bar) -> None:
    for path, (got, dropped_rows) in zip(files, results):
        n = sum(dropped_rows.values())
        if n:
            dropped[str(path)] = n
        for sym, bars in got.items():
            if sym in out:
                raise StoreError(f"symbol {sym!r} appears in two files: {origin[sym]} and {path}")
            out[sym] = bars
            origin[sym] = path
        if bar is not None:
            bar.update(1)


def ingest(
    src: str | os.PathLike,
    store: str | os.PathLike,
    *,
    append: bool = False,
    overwrite: bool = False,
    chunk_symbols: int | None = None,
    progress: bool | None = None,
    fill: str | None = None,
    drop_empty_close: bool = False,
    dayfirst: bool = False,
) -> StoreSummary:
    """Ingest SRC (file or directory) into the price store STORE (create, overwrite or append).

    ``fill``: "none" (default for a new store: a symbol has exactly its file's rows) or "ffill"
    (gaps inside a symbol's span are forward-filled and counted); on append, the store's own
    choice (see :func:`pipeline.store.append_prices`). ``drop_empty_close`` skips rows without a
    close (counted per file in the summary) instead of stopping at the first. ``dayfirst`` reads
    dates such as 03/04/2020 as D/M/Y.
    """
    if fill is not None:
        check_fill(fill)
    store = check_target(store, overwrite=overwrite, append=append)
    files = list_sources(src)
    source = f"ingest {Path(src).resolve()}"
    if not append and len(files) >= BATCH_MIN_FILES:
        return _ingest_batched(files, store, overwrite=overwrite, chunk_symbols=chunk_symbols, progress=progress,
                               fill=fill or "none", drop_empty_close=drop_empty_close, dayfirst=dayfirst,
                               source=source)
    if append:
        frames = read_columns(files, progress=progress, dayfirst=dayfirst, drop_empty_close=drop_empty_close)
        summary = append_prices(frames, store, chunk_symbols=chunk_symbols, source=source, fill=fill)
    else:
        frames = read_sources(files, progress=progress, dayfirst=dayfirst, drop_empty_close=drop_empty_close)
        summary = write_prices(frames, store, chunk_symbols=chunk_symbols, overwrite=overwrite, source=source,
                               fill=fill or "none")
    if drop_empty_close:
        dropped = tuple((str(f), frames.dropped_empty_close.get(str(f), 0)) for f in files)
        summary = dataclasses.replace(summary, dropped_empty_close=dropped)
    return summary


def _bar(n: int, progress: bool | None, desc: str):
    if not (n >= PROGRESS_MIN_FILES if progress is None else progress):
        return None
    isatty = getattr(sys.stderr, "isatty", None)
    if progress is None and isatty is not None and not isatty():
        return None  # what tqdm's disable=None does, without importing tqdm (~0.05 s)
    from tqdm import tqdm

    return tqdm(total=n, desc=desc, unit="file", file=sys.stderr, disable=None if progress is None else False)


def _ingest_batched(files: list[Path], store: Path, *, overwrite: bool, chunk_symbols: int | None,
                    progress: bool | None, fill: str, drop_empty_close: bool, dayfirst: bool,
                    source: str) -> StoreSummary:
    """A new store from many files in bounded memory: the same store as :func:`write_prices` on
    :func:`read_sources` (same symbols, union calendar, values, fill and errors), built in two passes.

    Pass 1 reads and checks every file in name order (so the first error is the one the one-pass
    path reports) and keeps which file holds each symbol, the union of all times and the
    variables present, and the frames themselves while the panel stays under
    ``INGEST_MEMORY_BUDGET``. Then, one symbol chunk at a time in symbol order, the rows are built
    from the kept frames or, past the budget, from the files read again, and streamed to
    :func:`write_prices_chunked`; a file holding symbols of several chunks (long format) stays
    cached until its last chunk is written.
    """
    from pipeline.panel import panel_union
    from pipeline.price_format import PRICE_VARS
    from pipeline.price_store import auto_chunk_symbols, write_prices_chunked

    empty_close = "drop" if drop_empty_close else "error"
    origin: dict[str, Path] = {}
    dropped: dict[str, int] = {}
    times = np.empty(0, np.int64)
    present: set[str] = set()
    kept: dict[Path, dict] | None = {}
    bar = _bar(len(files), progress, "checking")
    try:
        for path in files:
            got = _load(path, dayfirst, empty_close)
            n = sum(got.dropped_empty_close.values())
            if n:
                dropped[str(path)] = n
            for sym, frame in got.frames.items():
                if sym in origin:
                    raise StoreError(f"symbol {sym!r} appears in two files: {origin[sym]} and {path}")
                origin[sym] = path
                present.update(frame.columns)
            if got.frames:
                times = np.union1d(times, np.concatenate([f.index.asi8 for f in got.frames.values()]))
            if kept is not None:
                kept[path] = got.frames
                if len(origin) * times.size * max(1, len(present)) * 8 > INGEST_MEMORY_BUDGET:
                    kept = None  # read them again, one chunk at a time
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    symbols = sorted(origin)
    if not symbols:
        raise StoreError("input: no symbols")
    variables = [v for v in PRICE_VARS if v in present]
    k = auto_chunk_symbols(len(symbols), times.size) if chunk_symbols is None else int(chunk_symbols)
    k = max(1, min(k, len(symbols))) if k >= 1 else k
    batches = [symbols[i: i + k] for i in range(0, len(symbols), max(k, 1))]
    last_use = {}
    for b, syms in enumerate(batches):
        for sym in syms:
            last_use[origin[sym]] = b

    def rows():
        cache: dict[Path, dict] = {}
        bar2 = _bar(len(files), progress, "writing") if kept is None else None
        try:
            for b, syms in enumerate(batches):
                frames = {}
                for sym in syms:
                    path = origin[sym]
                    if path not in cache:
                        cache[path] = kept.pop(path) if kept is not None else _load(path, dayfirst, empty_close).frames
                        if bar2 is not None:
                            bar2.update(1)
                    frames[sym] = cache[path][sym]
                for path in [p for p in cache if last_use[p] == b]:
                    del cache[path]
                panel = panel_union(frames)
                pos = np.searchsorted(times, panel.times)
                out = {}
                for v in variables:
                    a = np.full((len(syms), times.size), np.nan)
                    if v in panel.arrays:
                        a[:, pos] = panel.arrays[v]
                    out[v] = a
                yield out
        finally:
            if bar2 is not None:
                bar2.close()

    summary = write_prices_chunked(store, symbols, times, variables, rows(), chunk_symbols=k, overwrite=overwrite,
                                   source=source, fill=fill)
    if drop_empty_close:
        summary = dataclasses.replace(summary, dropped_empty_close=tuple((str(f), dropped.get(str(f), 0))
                                                                          for f in files))
    return summary
