"""Trade records of a backtested results store: the Zarr group `trades` and the per-symbol trade statistics.

Layout (see data/README.md):

* `trades/<field>` for every field of `kernels.trades.TRADE_DTYPE` (`symbol`, `entry`, `exit`,
  `direction`, `ret`, `bars`, `fees`, `is_open`): plain 1-D arrays, one row per trade, `symbol`
  the row of the store's `symbol` coordinate, `entry`/`exit` indices into its `time` coordinate
  (`exit` -1 while the trade is open).
* The rows are kept in Zarr chunks of `ROWS_PER_CHUNK` rows, and every symbol chunk of the store
  owns a whole number of them: `trades/chunk_start` and `trades/chunk_rows` (int64 on the store's
  chunks) give the first row and the rows reserved for each symbol chunk, `trades/chunk_count` the
  trades written there (-1: not written yet) and `trades/chunk_closed` how many of them are closed.
  A chunk's closed trades come first (in symbol and entry order as a run writes them, then in the
  order updates closed them), its open trades last, in symbol order: `atc update` rewrites only
  the rows from the first open one on (`update_trades`). The reserved rows after a chunk's trades
  are padding (`symbol` -1). So readers take `[start, start + count)` of every chunk and sort by
  symbol and entry (`read_trades`), or read the whole arrays and drop `symbol == -1`.
* Root variables on `symbol` (float64, NaN without a closed trade): `profit_factor`, `expectancy`,
  `avg_bars_held`, `best_trade`, `worst_trade` (`TRADE_STAT_DESCRIPTIONS`; `n_trades` and
  `win_rate` are already backtest metrics, and equal).

Why this layout: the tasks of `atc run` run concurrently and none knows in advance how many trades
the others have, and a Zarr chunk must never be written by two of them. So each task reserves, under
an `flock` on `trades/next_row/zarr.json` (a file Zarr writes only when the group is created), the
next free rows rounded up to whole Zarr chunks, grows the arrays if needed and writes only its own
chunks. A retried task reuses its symbol chunk's earlier reservation (the same chunk has the same
trades), so retries leave no duplicate rows. `chunk_count` is written after the rows and before the
results store's `chunk_done`, so a done chunk has its trades. Like the results lock, the `flock`
needs a local file system (or one with working `flock`).

`rebuild_trades` recomputes the whole group from a finished store (positions from the results,
closes from the price store, one symbol chunk at a time): what stores written before trades were
stored use. `update_trades` brings them up to date after `atc update` appended times.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kernels.errors import ATCUserError
from kernels.trades import TRADE_DTYPE, TRADE_STAT_DESCRIPTIONS, trade_records, trade_stats

GROUP = "trades"
#: Rows per Zarr chunk of the trade arrays: the unit a task reserves.
ROWS_PER_CHUNK = 4096
#: Trade statistics stored as root variables on `symbol` (n_trades and win_rate are backtest metrics).
STORED_STATS: tuple[str, ...] = ("profit_factor", "expectancy", "avg_bars_held", "best_trade", "worst_trade")
#: Value of every field in a padding row.
PADDING: dict[str, Any] = {"symbol": -1, "entry": -1, "exit": -1, "direction": 0, "ret": np.nan, "bars": 0,
                           "fees": np.nan, "is_open": False}
_INDEX = ("chunk_start", "chunk_rows", "chunk_count", "chunk_closed")


class TradesError(ATCUserError, ValueError):
    """The trades of a results store cannot be read or written as asked."""


def has_trades(path: str | os.PathLike) -> bool:
    return (Path(path) / GROUP / "zarr.json").exists()


def _group(path: str | os.PathLike, mode: str = "r"):
    import zarr

    return zarr.open_group(str(Path(path) / GROUP), mode=mode, zarr_format=3, use_consolidated=False)


def create_trades(path: str | os.PathLike, n_symbols: int, chunk_symbols: int) -> None:
    """Create (or replace) the empty `trades` group and the statistics variables of a results store
    before its tasks run (tasks only ever write into existing arrays). The group records the results
    fingerprint it belongs to, so a store whose outputs change (an update) can tell stale trades."""
    import dask.array as da
    import xarray as xr
    import zarr

    path = Path(path)
    k = max(1, int(chunk_symbols))
    n_chunks = max(1, -(-int(n_symbols) // k))
    root = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    missing = [n for n in STORED_STATS if n not in root]
    if missing:  # first (tasks write them only where the group exists); a template: unwritten reads NaN
        ds = xr.Dataset({n: (("symbol",), da.zeros(int(n_symbols), chunks=k), {"description": TRADE_STAT_DESCRIPTIONS[n]})
                         for n in missing})
        append_variables(path, ds, compute=False, encoding={n: {"chunks": (k,)} for n in missing})
        root = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    if (path / GROUP).is_dir():  # zarr's own overwrite deletes chunk by chunk: ~20x slower for 1M trades
        import shutil

        shutil.rmtree(path / GROUP)
    g = root.create_group(GROUP, overwrite=True)
    for name in TRADE_DTYPE.names:
        g.create_array(name, shape=(0,), dtype=TRADE_DTYPE[name], chunks=(ROWS_PER_CHUNK,),
                       fill_value=PADDING[name], dimension_names=["trade"])
    for name in _INDEX:
        g.create_array(name, shape=(n_chunks,), dtype=np.int64, chunks=(1,), fill_value=-1, compressors=None,
                       dimension_names=["chunk"])
    g.create_array("next_row", shape=(1,), dtype=np.int64, chunks=(1,), fill_value=0, compressors=None)
    g.attrs.update({"rows_per_chunk": ROWS_PER_CHUNK, "chunk_symbols": k,
                    "fingerprint": str(root.attrs.get("fingerprint", ""))})


def append_variables(path: str | os.PathLike, ds: Any, **kwargs: Any) -> None:
    """Add the variables of ``ds`` to a store with xarray, keeping the store's root attributes
    (xarray's append replaces them with the dataset's own)."""
    import zarr

    ds = ds.copy()
    ds.attrs = dict(zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False).attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        ds.to_zarr(str(path), mode="a", zarr_format=3, consolidated=False, **kwargs)


def chunk_trades(close: np.ndarray, position: np.ndarray, fee_bps: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Trades (symbol = row of the panel) and the stored statistics of a block of symbols."""
    rec = trade_records(close, position, fee_bps=fee_bps)
    stats = trade_stats(rec, np.asarray(close).shape[0])
    return rec, {n: stats[n] for n in STORED_STATS}


def task_trades(results: str | os.PathLike, close: np.ndarray, extra: dict | None, settings: Mapping | None
                ) -> np.ndarray | None:
    """A task's trades (local symbol rows), adding the statistics to its backtest variables
    ``extra``; None when the run stores no trades (no backtest, or a store created before trades
    were stored: the post-pass rebuilds those)."""
    if not settings or extra is None or not has_trades(results):
        return None
    rec, stats = chunk_trades(close, extra["position"][1], settings["fee_bps"])
    extra.update({n: (("symbol",), v) for n, v in stats.items()})
    return rec


class _Reservation:
    """An exclusive `flock` on the group's allocation counter (see the module docstring)."""

    def __init__(self, path: Path):
        self.file = Path(path) / GROUP / "next_row" / "zarr.json"

    def __enter__(self):
        self.fd = os.open(self.file, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _closed_first(part: np.ndarray) -> np.ndarray:
    """A chunk's rows in stored order: its closed trades, then its open ones (symbol order)."""
    return np.concatenate([part[~part["is_open"]], part[part["is_open"]]])


def write_trades_part(path: str | os.PathLike, chunk: int, lo: int, hi: int, offset: int, records: np.ndarray,
                      spare: int = 0) -> int:
    """Write the trades of symbols ``[lo, hi)`` of ``records`` (local rows, sorted by symbol and
    entry; ``offset`` makes them store rows) as store chunk ``chunk``, closed ones first; returns
    how many. A new reservation keeps room for ``spare`` more rows. Call before the chunk is
    marked done."""
    path = Path(path)
    sym = records["symbol"]
    part = _closed_first(records[np.searchsorted(sym, lo, "left"):np.searchsorted(sym, hi, "left")])
    part["symbol"] += offset
    n = len(part)
    c = ROWS_PER_CHUNK
    with _Reservation(path):
        g = _group(path, "r+")
        start, cap = int(g["chunk_start"][chunk]), int(g["chunk_rows"][chunk])
        old = None
        if start < 0 or cap < n:
            if start >= 0 and cap > 0:
                old = (start, cap)
            need = -(-(n + spare) // c) * c
            start = int(g["next_row"][0])
            cap = need
            g["next_row"][0] = start + cap
            if start + cap > g["symbol"].shape[0]:
                for name in TRADE_DTYPE.names:
                    g[name].resize((start + cap,))
            g["chunk_start"][chunk] = start
            g["chunk_rows"][chunk] = cap
        arrays = {name: g[name] for name in TRADE_DTYPE.names}  # opened here: after any resize
    if old is not None:  # an earlier, too small reservation of this chunk: blank it
        for name, arr in arrays.items():
            arr[old[0]:old[0] + old[1]] = np.full(old[1], PADDING[name], arr.dtype)
    if cap:
        for name, arr in arrays.items():
            col = np.full(cap, PADDING[name], arr.dtype)
            col[:n] = part[name]
            arr[start:start + cap] = col
    if "chunk_closed" in g:  # groups created before it lack it (an update then rewrites whole chunks)
        g["chunk_closed"][chunk] = int(np.count_nonzero(~part["is_open"]))
    g["chunk_count"][chunk] = n
    return n


def trades_current(path: str | os.PathLike, fingerprint: str) -> bool:
    """Whether the store's trades are complete and belong to results with ``fingerprint``."""
    if not has_trades(path):
        return False
    g = _group(path)
    return g.attrs.get("fingerprint") == fingerprint and bool((np.asarray(g["chunk_count"][:]) >= 0).all())


def rebuild_trades(results: str | os.PathLike, prices: str | os.PathLike, fingerprint: str) -> int:
    """Recompute every symbol's trades and statistics from a finished store, one symbol chunk at a
    time (memory: the close and position of one chunk), and record ``fingerprint`` as the results
    they belong to. Returns the number of trades."""
    import zarr

    from pipeline import results as rs
    from pipeline.store import open_prices

    results = Path(results)
    state = rs.read_state(results)
    settings = json.loads(state.attrs.get("backtest") or "null")
    if not settings:
        raise TradesError(f"{results} holds no backtest: trades need `atc run --backtest`")
    create_trades(results, state.n_symbols, state.chunk_symbols)
    root = zarr.open_group(str(results), mode="r+", zarr_format=3, use_consolidated=False)
    px = open_prices(prices)
    total = 0
    try:
        for c, (a, b) in enumerate(rs.chunk_bounds(state.n_symbols, state.chunk_symbols)):
            close = np.asarray(px["close"][a:b].values, np.float64)
            pos = np.asarray(root["position"][a:b], np.float64)
            rec, stats = chunk_trades(close, pos, settings["fee_bps"])
            for name, v in stats.items():
                root[name][a:b] = v
            total += write_trades_part(results, c, 0, b - a, a, rec)
    finally:
        px.close()
    _group(results, "r+").attrs["fingerprint"] = fingerprint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the Zarr v3 spec"
        zarr.consolidate_metadata(str(results), zarr_format=3)
    return total


def update_trades(results: str | os.PathLike, close: np.ndarray, position: np.ndarray, fee_bps: float, n_old: int,
                  recomputed: np.ndarray, old_fingerprint: str, fingerprint: str) -> int:
    """The trades and statistics after `atc update` appended times ``[n_old, n)``, from the whole
    ``close`` and ``position`` panels it holds in memory; returns the number of trades.

    The trade kernel runs over the whole panels (in memory, ~0.1 s for 2,000 x 5,000: the same
    trades and statistics a full run gives), but only what changed is written: a trade closed
    before ``n_old`` cannot change (positions depend only on the past), and each chunk keeps its
    closed trades first and its open ones last, so the rows from the chunk's first open one on are
    rewritten with the trades closed at the new times, then the open ones (a few Zarr chunks per
    symbol chunk, not the ~1M rows of a 2,000 x 5,000 store). Chunks holding a ``recomputed``
    symbol, and every chunk of trades that are incomplete or not of ``old_fingerprint`` (the
    results before the update; an update stopped while writing them clears it first), are
    rewritten whole."""
    import zarr

    results = Path(results)
    rec = trade_records(close, position, fee_bps=fee_bps)
    n_sym = np.asarray(close).shape[0]
    tail = trades_current(results, old_fingerprint) and "chunk_closed" in _group(results)
    if not has_trades(results):
        from pipeline import results as rs

        state = rs.read_state(results)
        create_trades(results, state.n_symbols, state.chunk_symbols)
    g = _group(results, "r+")
    g.attrs["fingerprint"] = ""
    if "chunk_closed" not in g:  # a group created before it
        g.create_array("chunk_closed", shape=g["chunk_count"].shape, dtype=np.int64, chunks=(1,), fill_value=-1,
                       compressors=None, dimension_names=["chunk"])
    root = zarr.open_group(str(results), mode="r+", zarr_format=3, use_consolidated=False)
    stats = trade_stats(rec, n_sym)
    for name in STORED_STATS:
        root[name][:] = stats[name]
    k = int(g.attrs["chunk_symbols"])
    start, rows, count, closed = (np.asarray(g[n][:]) for n in _INDEX)
    redo = set((np.asarray(recomputed, np.int64) // k).tolist())
    edges = np.searchsorted(rec["symbol"], np.minimum(np.arange(len(count) + 1) * k, n_sym))
    arrays = {name: g[name] for name in TRADE_DTYPE.names}
    for c in range(len(count)):
        part = rec[edges[c]:edges[c + 1]]
        base = int(closed[c])
        new = part[part["is_open"] | (part["exit"] >= n_old)]  # closed at a new time, or still open
        if (not tail or c in redo or base != len(part) - len(new) or count[c] < 0  # stored rows not the old ones
                or base + len(new) > rows[c]):
            write_trades_part(results, c, c * k, (c + 1) * k, 0, part, spare=max(ROWS_PER_CHUNK, len(part) // 4))
            continue
        new = _closed_first(new)
        end = max(base + len(new), int(count[c]))
        for name, arr in arrays.items():
            col = np.full(end - base, PADDING[name], arr.dtype)
            col[:len(new)] = new[name]
            arr[int(start[c]) + base:int(start[c]) + end] = col
        g["chunk_closed"][c] = base + int(np.count_nonzero(~new["is_open"]))
        g["chunk_count"][c] = base + len(new)
    g.attrs["fingerprint"] = fingerprint
    return len(rec)


def read_trades(path: str | os.PathLike, symbols: list[int] | np.ndarray | None = None) -> np.ndarray:
    """The trades of a results store (all, or of the symbol rows ``symbols``) as a `TRADE_DTYPE`
    array sorted by symbol and entry, with store rows and store time indices. Reads only the
    symbol chunks it needs."""
    path = Path(path)
    if not has_trades(path):
        raise TradesError(f"{path} holds no trades: run `atc run PRICES {path} --backtest` (trades are stored "
                          f"with backtests)")
    g = _group(path)
    k = int(g.attrs["chunk_symbols"])
    start, count = np.asarray(g["chunk_start"][:]), np.asarray(g["chunk_count"][:])
    chunks = range(len(count)) if symbols is None else sorted({int(s) // k for s in symbols})
    missing = [c for c in chunks if count[c] < 0]
    if missing:
        raise TradesError(f"{path}: the trades of {len(missing)} chunk(s) are not written yet (an unfinished run); "
                          f"rerun the same atc run command to finish it")
    arrays = {name: g[name] for name in TRADE_DTYPE.names}
    parts = []
    for c in chunks:
        n = int(count[c])
        if n == 0:
            continue
        rows = np.empty(n, TRADE_DTYPE)
        for name, arr in arrays.items():
            rows[name] = arr[int(start[c]):int(start[c]) + n]
        parts.append(rows)
    out = np.concatenate(parts) if parts else np.empty(0, TRADE_DTYPE)
    out = out[np.lexsort((out["entry"], out["symbol"]))]  # stored closed first, then open (see above)
    if symbols is not None:
        out = out[np.isin(out["symbol"], np.asarray(list(symbols), np.int64))]
    return out


def trades_frame(path: str | os.PathLike, symbols: list[str] | None = None):
    """The trades of a results store as a pandas DataFrame with symbol names and entry/exit times
    (NaT while open), in symbol and entry order; ``symbols`` (names) selects some."""
    import pandas as pd

    from pipeline.portfolio_store import store_times
    from pipeline.results import open_results

    path = Path(path)
    ds = open_results(path)
    try:
        names = np.array([str(s) for s in ds["symbol"].values], dtype=object)
    finally:
        ds.close()
    rows = None
    if symbols:
        where = {s: i for i, s in enumerate(names)}
        unknown = [s for s in symbols if s not in where]
        if unknown:
            raise TradesError(f"{path}: no symbol {', '.join(map(repr, unknown))} in this results store "
                              f"({len(names)} symbols, e.g. {', '.join(names[:3])})")
        rows = sorted({where[s] for s in symbols})
    rec = read_trades(path, rows)
    times = store_times(path)
    exit_t = np.full(len(rec), np.datetime64("NaT"), dtype=times.dtype)
    closed = rec["exit"] >= 0
    exit_t[closed] = times[rec["exit"][closed]]
    return pd.DataFrame({
        "symbol": names[rec["symbol"]] if len(rec) else np.array([], dtype=object),
        "direction": np.where(rec["direction"] > 0, "long", "short"),
        "entry_time": times[rec["entry"]],
        "exit_time": exit_t,
        "bars": rec["bars"],
        "ret": rec["ret"],
        "fees": rec["fees"],
        "is_open": rec["is_open"],
    })
