"""A price-store append that rewrites only what changes: the time chunks from the first changed
bar on and, with new symbols, their symbol chunks (format version 3 stores).

The new store is built beside the old one with every other chunk file hard-linked (never written
to: each rewritten chunk is a new file), then renamed into place, so a failure leaves the old store
as it was. It takes plain columns (symbol -> (int64 ns times, variable -> values)) and reads and
writes the store with :mod:`pipeline.zarr_direct` where that handles the store's layout, so a fresh
`atc ingest --append` of plain CSV files imports neither pandas, xarray nor zarr. Whatever it
cannot do this way (:func:`append_chunks` returns None) :mod:`pipeline.price_append` rebuilds.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.panel import Panel, check_values, columns_union, fill_gaps
from pipeline.atomic import atomic_directory
from pipeline.price_format import (
    APPEND_RTOL,
    FINGERPRINT_BLOCK,
    FORMAT_VERSION,
    PRICE_VARS,
    StoreError,
    format_time,
)
from pipeline.price_store import (
    BlockHasher,
    StoreSummary,
    _consolidate,
    combine_fingerprint,
    store_nbytes,
    utc_now,
)
from pipeline.time_coord import write_time_coord

__all__ = ["StoreMeta", "append_chunks", "check_overlap", "early_bar", "inserted_bar", "last_valid_index", "time_chunked"]


def time_chunked(attrs: dict) -> bool:
    """A version 3 store, chunked along time with the block fingerprint: the cheap append applies."""
    return (attrs.get("atc_format_version") == FORMAT_VERSION and "fingerprint_blocks" in attrs
            and int(attrs.get("time_chunk", 0)) > 0)


class StoreMeta:
    """What the cheap append needs of a price store, read without an xarray Dataset (opening one
    cost ~0.4 s per append, twice): root attributes, symbols, times (int64 ns), variables,
    per-symbol filled-gap counts, and the open group they were read from (reused)."""

    def __init__(self, attrs: dict, symbols: list[str], times: np.ndarray, variables: list[str],
                 filled: np.ndarray, group: Any = None) -> None:
        self.attrs, self.symbols, self.times, self.variables, self.filled = attrs, symbols, times, variables, filled
        self.group = group

    @classmethod
    def read(cls, path: Path) -> "StoreMeta":
        from pipeline.price_format import FORMAT_NAME, READABLE_VERSIONS
        from pipeline.time_coord import read_time_coord

        try:
            g = _open_group(path, "r")
            attrs = dict(g.attrs)
        except Exception as exc:  # noqa: BLE001 - as open_prices words it
            raise StoreError(f"{path}: not a readable Zarr v3 store ({type(exc).__name__})") from None
        if attrs.get("atc_format") != FORMAT_NAME:
            raise StoreError(f"{path}: not a price store (attribute atc_format is {attrs.get('atc_format')!r})")
        if attrs.get("atc_format_version") not in READABLE_VERSIONS:
            raise StoreError(f"{path}: price-store format version {attrs.get('atc_format_version')!r}, this code "
                             f"reads {', '.join(map(str, READABLE_VERSIONS))}")
        attrs.setdefault("fill", "ffill")  # only version 1 lacks it, and it always filled
        names = set(g.array_keys())
        symbols = [str(s) for s in g["symbol"][:]]
        filled = (np.asarray(g["filled_gaps"][:], dtype=np.int64) if "filled_gaps" in names
                  else np.zeros(len(symbols), np.int64))
        return cls(attrs, symbols, read_time_coord(g), [v for v in PRICE_VARS if v in names], filled, g)


def _open_group(path: Path, mode: str) -> Any:
    """The store's group: read and written without zarr where :mod:`pipeline.zarr_direct` handles
    its layout (every store these versions write; no zarr import, no asyncio per chunk), else zarr's."""
    from pipeline.zarr_direct import open_store

    g = open_store(path)
    if g is not None:
        return g
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)


def _link_copy(src: Path, dst: Path, rewritten) -> None:
    """``dst`` = ``src`` with chunk files hard-linked and metadata copied, except the chunk files
    ``rewritten(var, symbol_chunk, time_chunk)`` says will be rewritten (left out: the writer
    creates them as new files, so a linked file is never written through)."""
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        parts = rel.parts
        for f in files:
            s, d = Path(root) / f, dst / rel / f
            # 2-D chunk files live at <var>/c/<symbol chunk>/<time chunk>
            if len(parts) == 3 and parts[1] == "c" and f.isdigit() and parts[2].isdigit():
                if rewritten(parts[0], int(parts[2]), int(f)):
                    continue
                try:
                    os.link(s, d)
                    continue
                except OSError:  # no hard links here (another file system): copy instead
                    pass
            shutil.copy2(s, d)


def last_valid_index(close, rows: np.ndarray, n_time: int, step: int, max_steps: int | None = None,
                     values: np.ndarray | None = None) -> np.ndarray:
    """Index of each row's last non-NaN close, reading back ``step`` bars at a time only for the
    rows not yet found (most symbols have a bar in the last chunk); -1 if none. ``values``, if
    given, receives the value found there (so a caller need not read it again)."""
    out = np.full(rows.size, -1, np.int64)
    todo = np.arange(rows.size)
    hi = n_time
    steps = 0
    while todo.size and hi > 0 and (max_steps is None or steps < max_steps):
        steps += 1
        lo = max(0, (hi - 1) // step * step)
        want = rows[todo]
        r0, r1 = int(want.min()), int(want.max()) + 1
        if (r1 - r0) <= 4 * want.size:  # dense: one slice (orthogonal selection is slow per row)
            block = np.asarray(close[r0:r1, lo:hi])[want - r0]
        else:
            block = np.asarray(close.get_orthogonal_selection((want, slice(lo, hi))))
        valid = ~np.isnan(block)
        has = valid.any(axis=1)
        j = block.shape[1] - 1 - valid[has][:, ::-1].argmax(axis=1)
        out[todo[has]] = lo + j
        if values is not None:
            values[todo[has]] = block[np.flatnonzero(has), j]
        todo = todo[~has]
        hi = lo
    return out


def early_bar(where: str, sym: str, t: int, first: int) -> StoreError:
    """The error for a new bar before a symbol's first stored bar."""
    return StoreError(f"{where}: bar {format_time(t)} for symbol {sym!r} is before its first stored bar "
                      f"{format_time(first)}; an append only adds newer bars")


def inserted_bar(where: str, sym: str, t: int, last: int) -> StoreError:
    """The error for a new bar inside a symbol's stored history that the store does not have."""
    return StoreError(f"{where}: bar {format_time(t)} for symbol {sym!r} is not in the store but inside its stored "
                      f"history (up to {format_time(last)}); an append cannot insert bars")


def check_overlap(where: str, sym: str, var: str, stored: np.ndarray, new: np.ndarray, times: np.ndarray) -> None:
    """Bars an append sends again must agree with the stored ones (relative tolerance
    ``APPEND_RTOL`` where both have a value): an append never changes a stored value."""
    both = ~np.isnan(stored) & ~np.isnan(new)
    diff = both & ~np.isclose(new, stored, rtol=APPEND_RTOL, atol=0.0)
    if diff.any():
        q = int(np.flatnonzero(diff)[0])
        raise StoreError(f"{where}: overlapping bar disagrees for symbol {sym!r} at {format_time(times[q])}: "
                         f"{var} stored {float(stored[q])!r}, new {float(new[q])!r}")


def append_chunks(cols, cols_of, path: Path, meta: StoreMeta, k: int, store_fill: str,
                  source: str) -> StoreSummary | None:
    """Append by rewriting only the time chunks from the first changed bar on, and the symbol
    chunks of new symbols; None when the change needs the whole store rebuilt (a new time inside
    the axis, a variable the store lacks). Same checks and errors as the full path. ``cols``:
    symbol -> (times, variable -> values) of the bars to add; ``cols_of(symbols)``: the same of
    new symbols (their whole history goes through the full path's union)."""
    where = "append"
    old_syms, old_times, old_vars = meta.symbols, meta.times, meta.variables
    g_old = meta.group if meta.group is not None else _open_group(path, "r")
    T = int(meta.attrs["time_chunk"])
    if tuple(g_old["close"].chunks) != (k, T):
        return None
    n_old, m_old = len(old_syms), int(old_times.size)
    old_pos = {s: i for i, s in enumerate(old_syms)}
    cols = {s: c for s, c in cols.items() if len(c[0])}  # no new bar for a symbol (e.g. delisted): nothing to add
    incoming = set().union(*(c.keys() for _, c in cols.values()))
    if any(v not in old_vars for v in incoming):
        return None
    all_new_t = _unique(np.concatenate([t for t, _ in cols.values()])) if cols else np.empty(0, np.int64)
    inside = all_new_t[all_new_t <= old_times[-1]]
    if inside.size and not np.isin(inside, old_times).all():
        return None  # a time inside the axis: every later column moves, rebuild
    times = _unique(np.concatenate([old_times, all_new_t]))
    m_new = int(times.size)

    ex = [s for s in cols if s in old_pos]
    rows = np.array([old_pos[s] for s in ex], dtype=np.int64)
    # the existing symbols' new bars end to end (one numpy pass instead of ~10 calls per symbol:
    # 2,000 symbols of one bar each took ~0.15 s symbol by symbol); each symbol's times ascend
    lens = np.array([cols[s][0].size for s in ex], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    flat_t = np.concatenate([cols[s][0] for s in ex]).astype(np.int64) if ex else np.empty(0, np.int64)
    owner = np.repeat(np.arange(len(ex)), lens)
    close_z = g_old["close"]
    step = math.lcm(T, FINGERPRINT_BLOCK)
    # the last chunk of every variable is read once: it finds most last bars and is the usual window
    tail_lo = (m_old - 1) // step * step
    tail = {v: np.asarray(g_old[v][:, tail_lo:m_old], dtype=np.float64) for v in old_vars}
    # a symbol's last stored bar matters only if its new rows reach back into the axis (overlap
    # checks) or gaps before its new bars are filled; bars after the axis are newer for everyone
    last = np.full(rows.size, -1, np.int64)
    wanted = (np.ones(len(ex), dtype=bool) if store_fill == "ffill"
              else flat_t[starts] <= old_times[-1] if ex else np.zeros(0, dtype=bool))
    if wanted.any():
        sel = np.flatnonzero(wanted)
        valid = ~np.isnan(tail["close"][rows[sel]])
        has = valid.any(axis=1)
        last[sel[has]] = m_old - 1 - valid[has][:, ::-1].argmax(axis=1)
        if not has.all():
            last[sel[~has]] = last_valid_index(close_z, rows[sel[~has]], tail_lo, T)
    # bars up to a symbol's last stored bar overlap (checked), later ones are newer (added)
    last_t = np.where(last >= 0, old_times[np.maximum(last, 0)], np.iinfo(np.int64).min)
    flat_ov = flat_t <= last_t[owner]
    flat_newer = ~flat_ov
    # first column the checks or changes need: the earliest overlapping bar, and the earliest
    # newer bar (with ffill: the last stored bar, from which gaps are filled)
    need = m_old
    if flat_ov.any():
        need = min(need, int(np.searchsorted(old_times, flat_t[flat_ov].min())))
    if flat_newer.any():
        if store_fill == "ffill":
            need = min(need, int(last[owner[flat_newer]].min()))
        else:
            need = min(need, int(np.searchsorted(times, flat_t[flat_newer].min())))
    overlapping = _unique(owner[flat_ov])  # symbols (positions in ex) with bars to check
    new_syms = [s for s in cols if s not in old_pos]
    w0 = min(need // step * step, tail_lo)
    win = tail if w0 == tail_lo else {
        v: np.concatenate([np.asarray(g_old[v][:, w0:tail_lo], dtype=np.float64), tail[v]], axis=1) for v in old_vars}
    # checks of the overlapping bars, exactly as the full path words them
    for e in overlapping:
        sym, r, li = ex[e], int(rows[e]), int(last[e])
        t, c = cols[sym]
        ov = t <= old_times[li]
        tov = t[ov]
        j = np.searchsorted(old_times, tov)
        j_clip = np.minimum(j, m_old - 1)
        missing = np.flatnonzero((old_times[j_clip] != tov) | np.isnan(win["close"][r, np.maximum(j_clip - w0, 0)])
                                 | (j_clip < w0))
        if missing.size:
            first = int(np.flatnonzero(~np.isnan(np.asarray(close_z[r, :])))[0])
            if tov[0] < old_times[first]:
                raise early_bar(where, sym, tov[0], old_times[first])
            raise inserted_bar(where, sym, tov[missing[0]], old_times[li])
        for v in c:
            if v in win:
                check_overlap(where, sym, v, win[v][r, j - w0], c[v][ov], tov)
    flat = {v: np.concatenate([cols[s][1][v] if v in cols[s][1] else np.full(cols[s][0].size, np.nan) for s in ex])
            if ex else np.empty(0) for v in old_vars}
    has = {v: np.repeat(np.array([v in cols[s][1] for s in ex], dtype=bool), lens) for v in old_vars}
    added_bars = int(np.count_nonzero(~np.isnan(flat["close"][flat_newer])))
    added_bars += sum(int(np.count_nonzero(~np.isnan(cols[s][1]["close"]))) for s in new_syms)
    if added_bars == 0:
        return _summary(path, meta, "unchanged", k)

    # the new window of the existing rows, and the new symbols' whole rows
    w = m_new - w0
    neww = {v: np.full((n_old, w), np.nan) for v in old_vars}
    for v in old_vars:
        neww[v][:, : m_old - w0] = win[v]
    at = np.searchsorted(times, flat_t[flat_newer]) - w0
    at_row = rows[owner[flat_newer]]
    no_bar = np.isnan(flat["close"][flat_newer])
    for v in old_vars:  # each symbol's own variables; without a close, no bar: NaN
        m = has[v][flat_newer]
        vals = flat[v][flat_newer] if v == "close" else np.where(no_bar, np.nan, flat[v][flat_newer])
        neww[v][at_row[m], at[m]] = vals[m]
    syms = old_syms + new_syms
    new_panel = columns_union(cols_of(new_syms)) if new_syms else None
    new_rows = {v: np.full((len(new_syms), m_new), np.nan) for v in old_vars}
    if new_panel is not None:
        c = np.searchsorted(times, new_panel.times)
        for v, a in new_panel.arrays.items():
            new_rows[v][:, c] = a
        no_bar = np.isnan(new_rows["close"])
        for v in old_vars:
            if v != "close":
                new_rows[v][no_bar] = np.nan
    filled_old = meta.filled
    filled = np.concatenate([filled_old, np.zeros(len(new_syms), np.int64)])
    _check_window(Panel(old_syms, times[w0:], neww, filled_old), where)
    if new_syms:
        check_values(Panel(new_syms, times, new_rows, np.zeros(len(new_syms), np.int64)), where)
    if store_fill == "ffill":
        filled[:n_old] += fill_gaps(neww)
        if new_syms:
            filled[n_old:] = fill_gaps(new_rows)

    # fingerprint: blocks before w0 keep their digest unless new symbols add rows to them
    b0 = w0 // FINGERPRINT_BLOCK
    old_blocks = list(meta.attrs["fingerprint_blocks"])
    blocks = old_blocks[:b0]
    if new_syms:
        blocks = []
        for b in range(b0):
            lo, hi = b * FINGERPRINT_BLOCK, (b + 1) * FINGERPRINT_BLOCK
            h = BlockHasher(hi - lo, old_vars)
            h.update({v: np.asarray(g_old[v][:, lo:hi]) for v in old_vars})
            h.update({v: new_rows[v][:, lo:hi] for v in old_vars})
            blocks += h.blocks()
    h = BlockHasher(w, old_vars, first_block=b0, offset=w0)
    h.update(neww)
    if new_syms:
        h.update({v: new_rows[v][:, w0:] for v in old_vars})
    blocks += h.blocks()
    fp = combine_fingerprint(syms, times, old_vars, blocks)

    # build the new store beside the old one: links for kept chunks, new files for the rest
    s0 = n_old // k * k if new_syms else None  # first symbol chunk the new symbols rewrite
    tc0 = w0 // T
    now = utc_now()
    history = list(meta.attrs.get("history", []))
    history.append(f"{now} appended {added_bars} bars ({len(new_syms)} new symbols) from {source}")
    with atomic_directory(path, error=StoreError, what="store", replace=True) as tmp:
        _link_copy(path, tmp, lambda v, i, j: v in old_vars and (j >= tc0 or (s0 is not None and i >= s0 // k)))
        g = _open_group(tmp, "r+")
        if new_syms and hasattr(g, "flush"):  # the direct group writes no symbol names: zarr does
            import zarr

            g = zarr.open_group(str(tmp), mode="r+", zarr_format=3, use_consolidated=False)
        for v in old_vars:
            a = g[v]
            a.resize((len(syms), m_new))
            if new_syms:
                head = np.concatenate([np.asarray(g_old[v][s0:n_old, :w0]), new_rows[v][:, :w0]])
                a[s0:, :w0] = head
                a[:, w0:] = np.concatenate([neww[v], new_rows[v][:, w0:]])
            else:
                a[:, w0:] = neww[v]
        _write_coords(g, syms, times, filled, n_old != len(syms))
        attrs = {"modified": now, "history": history, "fingerprint": fp, "fingerprint_blocks": blocks,
                 "filled_gaps_total": int(filled.sum())}
        if "own_bars" in meta.attrs:  # filled bars are bars too (as in the summary of a full write)
            attrs["own_bars"] = int(meta.attrs["own_bars"]) + added_bars + int(filled.sum() - filled_old.sum())
        g.attrs.update(attrs)
        if hasattr(g, "flush"):
            g.flush()
        else:
            _consolidate(tmp)
    # what the store now holds, as read back it would be (not read again: ~20 ms)
    now_meta = StoreMeta({**meta.attrs, **attrs}, syms, times, old_vars, filled)
    return _summary(path, now_meta, "appended", k, added_symbols=len(new_syms), added_bars=added_bars)


def _unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` of int64 times (numpy's imports numpy.ma on first use: ~0.04 s of a fresh append)."""
    a = np.sort(a)
    return a[np.concatenate([[True], a[1:] != a[:-1]])] if a.size else a


def _check_window(p: Panel, where: str) -> None:
    """:func:`check_values` on a window of the existing rows: a row may be all NaN there (a
    symbol without bars in the window), so only the value checks apply."""
    for v, a in p.arrays.items():
        if np.isinf(a).any():
            i, j = np.argwhere(np.isinf(a))[0]
            raise StoreError(f"{where}: infinite {v} for symbol {p.symbols[i]!r} at {format_time(p.times[j])}")
    check_values(Panel(p.symbols, p.times, {v: np.where(np.isnan(a), 1.0, a) for v, a in p.arrays.items()},
                       p.filled), where)


def _write_coords(g, symbols: list[str], times: np.ndarray, filled: np.ndarray, new_symbols: bool) -> None:
    """Rewrite the small 1-D arrays whole: ``time`` in units that represent every time exactly
    (finer bars may follow coarser ones), ``symbol`` and ``filled_gaps``."""
    write_time_coord(g["time"], times)
    if new_symbols:
        s = g["symbol"]
        s.resize((len(symbols),))
        s[:] = np.array(symbols, dtype=object)
    f = g["filled_gaps"]
    f.resize((len(symbols),))
    f[:] = filled


def _summary(path: Path, meta: StoreMeta, action: str, k: int, **kw: Any) -> StoreSummary:
    """A summary without reading the data: counts from the attributes (a store written before
    ``own_bars`` existed counts its closes once)."""
    own = meta.attrs.get("own_bars")
    if own is None:
        own = int(np.count_nonzero(~np.isnan(np.asarray(_open_group(path, "r")["close"][:]))))
    n_sym, n_time = len(meta.symbols), int(meta.times.size)
    return StoreSummary(path=path, action=action, n_symbols=n_sym, n_bars=n_time,
                        variables=tuple(meta.variables), filled_gaps=int(meta.attrs.get("filled_gaps_total", 0)),
                        own_bars=int(own), fill=str(meta.attrs.get("fill", "ffill")), nbytes=store_nbytes(path),
                        raw_nbytes=int(len(meta.variables) * n_sym * n_time * 8),
                        fingerprint=str(meta.attrs["fingerprint"]), chunk_symbols=k, **kw)
