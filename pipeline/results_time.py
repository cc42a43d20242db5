"""Growing a results store by new time steps, and reading each symbol's newest bars.

Split from :mod:`pipeline.results` (the store's format, identity and creation): used by
`atc update` and the readers of the newest bars, which should not import xarray for it.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.results import ResultsError, _consolidate, is_results_store

if TYPE_CHECKING:
    import xarray as xr


def time_values(g: Any) -> np.ndarray:
    """The decoded ``time`` coordinate of an open Zarr group, as int64 ns (see
    :func:`pipeline.time_coord.read_time_coord`: numpy for xarray's usual encodings, so store
    readers such as `atc scan` need not import xarray)."""
    from pipeline.time_coord import read_time_coord

    return read_time_coord(g)


def extend_time(path: str | os.PathLike, new_times: Any) -> int:
    """Append ``new_times`` (after the store's last time, increasing) to the results store at
    ``path``; returns the new number of times.

    Every ``(symbol, time)`` variable grows and its new region reads NaN: only the time chunk that
    held the old last time is rewritten (the part past the old end set to NaN); later chunks are
    not written at all (they read as the fill value, NaN). The ``time`` coordinate is rewritten
    (small) and the consolidated metadata refreshed last. Not atomic, but repeatable: the old
    length is taken from the ``time`` coordinate, written after the variables, so running it again
    after an interruption finishes the job. Per-symbol variables, ``chunk_done`` and any subgroup
    (``stream``) are left alone.
    """
    import zarr

    from pipeline.time_coord import write_time_coord

    path = Path(path)
    if not is_results_store(path):
        raise ResultsError(f"{path}: not an atc results store")
    new = np.asarray(new_times)
    new = (new.astype("datetime64[ns]") if new.dtype.kind in "MO" else new.astype("datetime64[ns]")).astype(np.int64)
    g = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    old = time_values(g)
    n_old = int(old.size)
    if new.size == 0:
        return n_old
    if np.any(np.diff(new) <= 0) or (n_old and new[0] <= old[-1]):
        raise ResultsError(f"{path}: new times must be increasing and after the store's last time")
    times = np.concatenate([old, new])
    n = int(times.size)
    for _, arr in g.arrays():
        if tuple(arr.metadata.dimension_names or ()) != ("symbol", "time"):
            continue
        arr.resize((arr.shape[0], n))
        tail = min(n, -(-n_old // arr.chunks[1]) * arr.chunks[1])  # end of the old last chunk
        if tail > n_old:
            fill = np.nan if arr.dtype.kind == "f" else arr.fill_value
            arr[:, n_old:tail] = fill
    write_time_coord(g["time"], times)
    _consolidate(path)
    return n


def grow_time(path: str | os.PathLike, times: Any, n_old: int, values: dict[str, np.ndarray], *,
              rows: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
              blocks: dict[str, list[np.ndarray]] | None = None, consolidate: bool = True) -> None:
    """Grow the results store at ``path`` to the time axis ``times`` and write the new times'
    values in the same pass: each chunk is written once (:func:`extend_time` followed by writes of
    the new region wrote the old last time chunk twice, each a read-modify-write).

    ``times``: the whole new axis; its first ``n_old`` times are the store's (the caller checked).
    ``values``: name -> (symbols, len(times) - n_old) array of a ``(symbol, time)`` variable's new
    times; such variables not named grow with NaN. ``rows``: (symbol indices, name -> whole rows
    over the new axis) of symbols recomputed from their history, written over everything else.

    Per variable, the old last time chunk's stored part ``[c0, n_old)`` is read and written back
    together with the new times as one region ending at the array's end, so every chunk of it is
    complete (Zarr writes it without reading it first; Zarr's local store replaces each chunk file
    atomically). Crash safety, as for :func:`extend_time`: not atomic, but repeatable. The ``time``
    coordinate is written after every variable and consolidation comes last; until the coordinate
    says otherwise, the old length is ``n_old`` and a chunk holds, before ``n_old``, exactly the
    values it held before (each write puts back what it read), so running the same update again
    reads the same old values and finishes the job. (The update takes ``n_old`` from its saved
    state, so a coordinate already grown by a stopped update is fine too: it is left as it is.)

    ``blocks``: :func:`read_tail_blocks`' output for this ``n_old`` and axis, read before (on a
    thread, while the stream kernels loaded); the new values are written into them.
    ``consolidate=False``: the caller refreshes the consolidated metadata itself, later (`atc
    update` does once it is done: until then readers of the consolidated metadata see the old
    axis, whose values have not changed).
    """
    import zarr

    from pipeline.time_coord import write_time_coord

    path = Path(path)
    t_new = np.asarray(times).astype("datetime64[ns]").astype(np.int64)
    n = int(t_new.size)
    g = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    idx, full = rows if rows is not None else (np.zeros(0, np.int64), {})
    jobs = []
    for name, arr in g.arrays():
        if tuple(arr.metadata.dimension_names or ()) != ("symbol", "time"):
            continue
        if arr.shape[1] != n:
            arr.resize((arr.shape[0], n))
        jobs.append((arr, values.get(name), (idx, full[name]) if idx.size and name in full else None,
                     (blocks or {}).get(name)))
    # the arrays' chunks are encoded and stored on threads (numcodecs releases the GIL, and so does
    # the file system, whose replace-by-rename of a chunk file waits on it too): 4 threads even on
    # two cores, 13 outputs' last chunks for 2,000 symbols in 0.28-0.33 s wall, 0.40-0.46 s with 2
    # (same CPU; alternated in one process, load 4.5, 2026-11-29)
    with ThreadPoolExecutor(max(1, min(4, len(jobs)))) as pool:
        fast = list(pool.map(lambda job: _grow_chunks(arr=job[0], n_old=n_old, n=n, new=job[1], rec=job[2],
                                                      blocks=job[3]), jobs))
    for (arr, new, rec, _), done in zip(jobs, fast):
        c0 = n_old // arr.chunks[1] * arr.chunks[1]  # start of the old last chunk
        if not done:
            fill = np.nan if arr.dtype.kind == "f" else arr.fill_value
            block = np.empty((arr.shape[0], n - c0), arr.dtype)
            if n_old > c0:
                block[:, :n_old - c0] = arr[:, c0:n_old]
            block[:, n_old - c0:] = fill if new is None else new
            if rec is not None:
                block[rec[0]] = rec[1][:, c0:]
            arr[:, c0:] = block
        if rec is not None and c0:  # recomputed symbols' history before the old last chunk
            arr.oindex[rec[0], :c0] = rec[1][:, :c0]
    stored = time_values(g)
    if stored.size != n or not np.array_equal(stored, t_new):
        write_time_coord(g["time"], t_new)
    if consolidate:
        _consolidate(path)


def read_tail_blocks(path: str | os.PathLike, n_old: int, n: int) -> dict[str, list[np.ndarray]]:
    """Per ``(symbol, time)`` variable that :func:`grow_time` writes chunk by chunk, per symbol
    chunk, the block it will write when the axis grows from ``n_old`` to ``n`` times: the old last
    time chunk's stored values, fill values after them. Reading and decoding them release the GIL,
    so `atc update` does it on a thread while Numba loads (~0.2 CPU s for 13 outputs of 2,000
    symbols, 2026-11-29); the blocks' memory is touched there too."""
    import zarr

    from pipeline.chunk_io import direct

    g = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    out = {}
    for name, arr in g.arrays():
        if tuple(arr.metadata.dimension_names or ()) != ("symbol", "time"):
            continue
        d = direct(arr) if arr.ndim == 2 else None
        if d is not None:
            out[name] = [_tail_block(d, arr, i, n_old, n) for i in range(-(-arr.shape[0] // d.chunk_shape[0]))]
    return out


def _tail_block(d: Any, arr: Any, i: int, n_old: int, n: int) -> np.ndarray:
    """Symbol chunk i's block from the old last time chunk to the end of the chunk holding time n - 1."""
    ks, kt = d.chunk_shape
    j0, j1 = n_old // kt, -(-n // kt)
    c0 = j0 * kt
    rows = min(ks, arr.shape[0] - i * ks)
    block = np.full((ks, (j1 - j0) * kt), d.fill, dtype=arr.dtype)
    if n_old > c0:
        old = d.get((i, j0))
        if old is not None:
            block[:rows, :n_old - c0] = old[:rows, :n_old - c0]
    return block


def _grow_chunks(arr: Any, n_old: int, n: int, new: np.ndarray | None,
                 rec: tuple[np.ndarray, np.ndarray] | None, blocks: list[np.ndarray] | None = None) -> bool:
    """:func:`grow_time`'s write of one array, chunk by chunk in this thread: the old last time
    chunk of each symbol chunk decoded with numcodecs (``store.get_sync``), the new times put in,
    and the chunks from there on encoded and stored with ``store.set_sync`` (atomic per chunk),
    byte for byte what Zarr stores for ``arr[:, c0:] = block`` (edge chunks padded with the fill
    value, a chunk of fill values only not stored). Zarr 3.1's asyncio pipeline took two thread
    hops per chunk and about twice the CPU (see `results_write._write_rows`, the same path for a
    run's whole symbol chunks). Writes the times from the old last chunk on only (the caller
    writes the recomputed rows' history before ``c0`` after it). Returns False, having written nothing, where it does not
    apply (other codecs, another store): the caller writes with Zarr."""
    from pipeline.chunk_io import direct

    d = direct(arr) if arr.ndim == 2 else None
    if d is None:
        return False
    ks, kt = d.chunk_shape
    j0, j1 = n_old // kt, -(-n // kt)
    c0 = j0 * kt
    n_sym = arr.shape[0]
    for i in range(-(-n_sym // ks)):
        r0, r1 = i * ks, min((i + 1) * ks, n_sym)
        block = blocks[i] if blocks is not None else _tail_block(d, arr, i, n_old, n)
        if new is not None:
            block[:r1 - r0, n_old - c0:n - c0] = new[r0:r1]
        if rec is not None:
            sel = np.flatnonzero((rec[0] >= r0) & (rec[0] < r1))
            block[rec[0][sel] - r0, :n - c0] = rec[1][sel, c0:]
        for j in range(j0, j1):
            d.put((i, j), block[:, (j - j0) * kt:(j - j0 + 1) * kt])
    return True


def read_last_bars(path: str | os.PathLike, variables: Any = ("Average_Signal",), *,
                   max_chunks_back: int | None = None) -> xr.Dataset:
    """Per symbol, the ``variables`` at its own last bar and that bar's ``time``.

    A symbol's last bar is the last time where the first of ``variables`` is not NaN (NaT and NaN
    when it has none: not computed, no data). Reads the store's last time chunk of every symbol
    and goes back one time chunk at a time only for the symbols not found yet (a delisted or
    stale symbol), reading only the symbol chunks that hold them: the cost is one time chunk per
    variable when every symbol has a recent bar, whatever the history length, and grows with how
    far back the stalest symbols' last bars lie. ``max_chunks_back`` bounds that (0: the last
    time chunk only): a symbol without a bar in the chunks read gets NaT, as if it had none.
    """
    import zarr

    from pipeline.price_append_chunks import last_valid_index

    path = Path(path)
    if not is_results_store(path):
        raise ResultsError(f"{path}: not an atc results store")
    names = [variables] if isinstance(variables, str) else list(variables)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(str(path), mode="r", zarr_format=3)
    missing = [v for v in names if v not in g or tuple(g[v].metadata.dimension_names or ()) != ("symbol", "time")]
    if not names or missing:
        raise ResultsError(f"{path}: no (symbol, time) variable {missing[0] if missing else ''!r} in this results store")
    key = g[names[0]]
    n_sym, n_time = key.shape
    rows = np.arange(n_sym)
    first = np.full(n_sym, np.nan, dtype=key.dtype if key.dtype.kind == "f" else np.float64)
    idx = last_valid_index(key, rows, n_time, int(key.chunks[1]), max_steps=None if max_chunks_back is None
                           else max_chunks_back + 1, values=first)
    found = idx >= 0
    times = time_values(g)
    t_out = np.full(n_sym, np.iinfo(np.int64).min, np.int64)  # NaT
    t_out[found] = times[idx[found]]
    data = {}
    data[names[0]] = (("symbol",), first)
    for v in names[1:]:
        out = np.full(n_sym, np.nan, dtype=g[v].dtype if g[v].dtype.kind == "f" else np.float64)
        if found.any():
            out[found] = np.asarray(g[v].get_coordinate_selection((rows[found], idx[found])))
        data[v] = (("symbol",), out)
    data["time"] = (("symbol",), t_out.view("datetime64[ns]"))
    symbols = np.asarray(g["symbol"][:], dtype=object)
    import xarray as xr

    return xr.Dataset(data, coords={"symbol": symbols})
