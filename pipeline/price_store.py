"""Creating, opening and describing price stores on disk (format: ``pipeline/store.py``,
``data/README.md``), and their content fingerprint.

A store is always built in a temporary sibling and renamed into place (:mod:`pipeline.atomic`),
so readers never see a half-written store: written whole on create, or with the unchanged chunks
hard-linked on append (:mod:`pipeline.price_append`). :func:`write_prices_chunked` streams one
symbol chunk at a time (``atc synth``, ``atc ingest`` of many files), so memory does not grow
with the number of symbols.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.atomic import atomic_directory, store_format
from pipeline.panel import check_fill, check_values, to_panel, validate_prices
from pipeline.price_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PRICE_VARS,
    READABLE_VERSIONS,
    FINGERPRINT_BLOCK,
    TARGET_CHUNK_VALUES,
    TIME_CHUNK,
    StoreError,
    blosc_codec,
)

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

# pandas and xarray are imported where used: the cheap append (pipeline.price_append) works on
# plain arrays with zarr, and a fresh `atc ingest --append` must not pay their ~1 s of imports

__all__ = ["StoreSummary", "auto_chunk_symbols", "check_target", "fingerprint_prices", "open_prices",
           "write_prices_chunked",
           "store_nbytes", "to_frames", "validate_prices", "write_prices"]


def fingerprint_arrays_v1(symbols: list[str], times: np.ndarray, arrays: Mapping[str, np.ndarray]) -> str:
    """The whole-content fingerprint of format versions 1 and 2 (``atc-price-store/1``), still
    used to verify those stores; see ``data/README.md``."""
    h = hashlib.sha256(b"atc-price-store/1\n")
    _hash_coords(h, symbols, times)
    for v in sorted(arrays):
        a = arrays[v]
        h.update(f"{v}\n".encode() + np.asarray(a.shape, dtype="<i8").tobytes())
        step = max(1, TARGET_CHUNK_VALUES // max(1, a.shape[1]))
        for r in range(0, a.shape[0], step):
            h.update(_canonical(a[r: r + step]).tobytes())
    return "sha256:" + h.hexdigest()


def _hash_coords(h: Any, symbols: list[str], times: np.ndarray) -> None:
    h.update(b"symbol\n" + len(symbols).to_bytes(8, "little"))
    for s in symbols:
        b = s.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    h.update(b"time\n" + np.ascontiguousarray(times, dtype="<i8").tobytes())


def _canonical(block: np.ndarray) -> np.ndarray:
    """float64 little endian, ``-0.0`` as ``0.0``, one NaN bit pattern: equal data, equal bytes."""
    out = np.asarray(block, dtype="<f8") + 0.0
    out[np.isnan(out)] = np.nan
    return np.ascontiguousarray(out)


class BlockHasher:
    """Per-block digests of a price panel fed in symbol order, a batch of whole rows at a time.

    Block ``b`` covers times ``[b * FINGERPRINT_BLOCK, (b + 1) * FINGERPRINT_BLOCK)``; its digest
    is sha256 over, for each variable in name order, ``name + "\n"`` and the sha256 of that
    variable's values in the block (all symbols, C order, canonical float64). Feeding rows in
    batches gives the same bytes as one C-order pass, so a writer that streams symbol chunks
    (``atc synth``) and one that hashes a block of the whole panel (an append) agree.
    """

    def __init__(self, n_times: int, variables: list[str] | tuple[str, ...], first_block: int = 0,
                 offset: int = 0):
        self.variables = sorted(variables)
        self.offset = offset  # time index of the first column fed (a multiple of the block size)
        self.first_block = first_block
        n_blocks = -(-(n_times + offset) // FINGERPRINT_BLOCK) - first_block
        self.h = [{v: hashlib.sha256() for v in self.variables} for _ in range(max(0, n_blocks))]

    def update(self, arrays: Mapping[str, np.ndarray]) -> None:
        for v in self.variables:
            a = arrays[v]
            for i, hs in enumerate(self.h):
                lo = (self.first_block + i) * FINGERPRINT_BLOCK - self.offset
                hs[v].update(_canonical(a[:, max(0, lo): lo + FINGERPRINT_BLOCK]).tobytes())

    def blocks(self) -> list[str]:
        out = []
        for hs in self.h:
            h = hashlib.sha256()
            for v in self.variables:
                h.update(f"{v}\n".encode() + hs[v].digest())
            out.append(h.hexdigest())
        return out


def combine_fingerprint(symbols: list[str], times: np.ndarray, variables: list[str] | tuple[str, ...],
                        blocks: list[str]) -> str:
    """The price fingerprint (format version 3) from the coordinates and the block digests."""
    h = hashlib.sha256(b"atc-price-store/2\n")
    _hash_coords(h, symbols, times)
    h.update(b"vars\n" + "\n".join(sorted(variables)).encode() + b"\n")
    h.update(b"blocks\n" + FINGERPRINT_BLOCK.to_bytes(8, "little"))
    for b in blocks:
        h.update(bytes.fromhex(b))
    return "sha256:" + h.hexdigest()


def block_fingerprint(symbols: list[str], times: np.ndarray, arrays: Mapping[str, np.ndarray]) -> tuple[str, list[str]]:
    """``(fingerprint, block digests)`` of a panel held in memory."""
    hasher = BlockHasher(len(times), list(arrays))
    hasher.update(arrays)
    blocks = hasher.blocks()
    return combine_fingerprint(symbols, times, list(arrays), blocks), blocks


def fingerprint_arrays(symbols: list[str], times: np.ndarray, arrays: Mapping[str, np.ndarray]) -> str:
    """See :func:`fingerprint_prices`; on plain arrays so writers can stamp a store before writing it."""
    return block_fingerprint(symbols, times, arrays)[0]


def fingerprint_prices(ds: xr.Dataset) -> str:
    """Content fingerprint of a price dataset: sha256 over the symbol and time coordinates and
    every price variable (values as little-endian float64, NaN canonical), hashed in blocks of
    ``FINGERPRINT_BLOCK`` bars so an append rehashes only the blocks it touches. ``filled_gaps``
    and attributes do not enter. Equal data gives an equal fingerprint, whatever the chunking.
    A dataset of a version 1 or 2 store gets that store's whole-content fingerprint instead.
    Reads one block of bars at a time."""
    symbols = [str(s) for s in ds["symbol"].values]
    times = ds["time"].values.astype("datetime64[ns]").astype(np.int64)
    variables = [v for v in PRICE_VARS if v in ds.data_vars]
    if ds.attrs.get("atc_format_version") in (1, 2):
        arrays = {v: np.asarray(ds[v].transpose("symbol", "time").values) for v in variables}
        return fingerprint_arrays_v1(symbols, times, arrays)
    blocks = []
    for b, lo in enumerate(range(0, times.size, FINGERPRINT_BLOCK)):
        sub = BlockHasher(min(FINGERPRINT_BLOCK, times.size - lo), variables)
        sub.update({v: np.asarray(ds[v].transpose("symbol", "time")[:, lo: lo + FINGERPRINT_BLOCK].values)
                    for v in variables})
        blocks += sub.blocks()
    return combine_fingerprint(symbols, times, variables, blocks)

@dataclass(frozen=True)
class StoreSummary:
    """What a write or append did, for the CLI's closing line."""

    path: Path
    action: str  # "created", "overwritten", "appended", "unchanged"
    n_symbols: int
    n_bars: int  # length of the time axis (the union of the symbols' calendars)
    variables: tuple[str, ...]
    filled_gaps: int
    nbytes: int
    raw_nbytes: int
    fingerprint: str
    chunk_symbols: int
    added_symbols: int = 0
    added_bars: int = 0
    own_bars: int = 0  # bars the symbols really have (non-NaN closes), filled ones included
    fill: str = "none"
    #: rows skipped for lack of a close, per source file (ingest --drop-empty-close)
    dropped_empty_close: tuple[tuple[str, int], ...] = ()

    @property
    def dropped_total(self) -> int:
        return sum(n for _, n in self.dropped_empty_close)

    @property
    def ratio(self) -> float:
        return self.raw_nbytes / self.nbytes if self.nbytes else float("nan")

    def describe(self) -> str:
        filled = (f"fill ffill: {self.filled_gaps} gaps forward-filled" if self.fill == "ffill"
                  else "fill none: no bar invented")
        lines = [
            f"{self.action} {self.path}",
            f"  {self.n_symbols} symbols x {self.n_bars} times ({', '.join(self.variables)}), "
            f"{self.own_bars} bars; {filled}",
        ]
        if self.dropped_empty_close:
            files = [f"{name} ({n})" for name, n in self.dropped_empty_close if n]
            shown = ", ".join(files[:10]) + (f", ... ({len(files) - 10} more files)" if len(files) > 10 else "")
            lines.append(f"  dropped {self.dropped_total} rows without a close" + (f": {shown}" if files else ""))
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


def utc_now() -> str:
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


def store_encoding(ds: xr.Dataset, chunk_symbols: int) -> dict[str, dict[str, Any]]:
    """Chunks ``(chunk_symbols, TIME_CHUNK)`` for every ``(symbol, time)`` variable (see
    ``TIME_CHUNK``), ``(chunk_symbols,)`` on ``symbol``; one codec for all."""
    encoding: dict[str, dict[str, Any]] = {}
    for v in ds.data_vars:
        chunks = (chunk_symbols, TIME_CHUNK) if ds[v].ndim == 2 else (chunk_symbols,)
        encoding[v] = {"compressors": [blosc_codec()], "chunks": chunks}
    return encoding


def write_store(ds: xr.Dataset, path: Path, chunk_symbols: int, *, replace: bool) -> None:
    """Write ``ds`` into a temporary sibling of ``path`` and rename it into place."""
    encoding = store_encoding(ds, chunk_symbols)
    with atomic_directory(path, error=StoreError, what="store", replace=replace) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            # consolidated metadata: plain xarray.open_zarr opens the store without a warning
            ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=True, encoding=encoding)


def summarise(path: Path, ds: xr.Dataset, action: str, chunk_symbols: int, **kw: Any) -> StoreSummary:
    variables = tuple(v for v in PRICE_VARS if v in ds.data_vars)
    raw = sum(ds[v].size * 8 for v in variables)
    return StoreSummary(
        path=path,
        action=action,
        n_symbols=ds.sizes["symbol"],
        n_bars=ds.sizes["time"],
        variables=variables,
        filled_gaps=int(ds["filled_gaps"].values.sum()),
        own_bars=int(np.count_nonzero(~np.isnan(np.asarray(ds["close"].values)))),
        fill=str(ds.attrs.get("fill", "ffill")),
        nbytes=store_nbytes(path),
        raw_nbytes=int(raw),
        fingerprint=str(ds.attrs["fingerprint"]),
        chunk_symbols=chunk_symbols,
        **kw,
    )


def new_attrs(source: str, fill: str, chunk_symbols: int, fingerprint: str, blocks: list[str],
              filled_total: int, own_bars: int = 0) -> dict[str, Any]:
    """Root attributes of a newly created store."""
    now = utc_now()
    return {
        "atc_format": FORMAT_NAME,
        "atc_format_version": FORMAT_VERSION,
        "source": str(source),
        "created": now,
        "modified": now,
        "history": [f"{now} created from {source}"],
        "fingerprint": fingerprint,
        "fingerprint_blocks": list(blocks),
        "fill": fill,
        "filled_gaps_total": int(filled_total),
        "own_bars": int(own_bars),
        "chunk_symbols": int(chunk_symbols),
        "time_chunk": TIME_CHUNK,
        "timezone": "UTC",
    }


def write_prices(
    data: Any,
    path: str | os.PathLike,
    *,
    chunk_symbols: int | None = None,
    overwrite: bool = False,
    source: str = "python",
    fill: str = "none",
) -> StoreSummary:
    """Create a price store at ``path`` from ``data``.

    ``data`` is a ``{symbol: DataFrame | Series}`` mapping (a Series is the close), a long-format
    DataFrame with a symbol column, or an xarray Dataset laid out like a store. Frames take the
    usual column spellings (see :func:`normalise_table`). Symbols keep the mapping's order (a
    long table is sorted by symbol); the time axis is the union of all calendars and a symbol is
    NaN where it has no bar (a NaN close in the input means the same). ``fill="ffill"``
    forward-fills the gaps inside each symbol's span instead and counts them; the choice is
    recorded in the ``fill`` attribute and later appends follow it. Raises :class:`StoreError` if ``path`` exists and
    ``overwrite`` is false, or on bad data; in both cases nothing on disk changes.
    """
    path = check_target(path, overwrite=overwrite)
    existed = path.exists()
    panel = to_panel(data, "input", check_fill(fill))
    check_values(panel, "input")
    if chunk_symbols is None:
        chunk_symbols = auto_chunk_symbols(len(panel.symbols), panel.times.size)
    if chunk_symbols < 1:
        raise StoreError(f"chunk_symbols must be >= 1, got {chunk_symbols}")
    chunk_symbols = min(chunk_symbols, max(1, len(panel.symbols)))
    fp, blocks = block_fingerprint(panel.symbols, panel.times, panel.arrays)
    attrs = new_attrs(source, fill, chunk_symbols, fp, blocks, int(panel.filled.sum()),
                      int(np.count_nonzero(~np.isnan(panel.arrays["close"]))))
    ds = panel.to_dataset(attrs)
    write_store(ds, path, chunk_symbols, replace=overwrite)
    return summarise(path, ds, "overwritten" if existed else "created", chunk_symbols)


def open_prices(path: str | os.PathLike, *, chunks: Any = None, verify: bool = False) -> xr.Dataset:
    """Open a price store as an xarray Dataset (lazy: values are read when used).

    ``chunks`` is passed to xarray (``None``: lazy numpy-backed arrays; ``{}``: dask arrays on
    the store's chunks). ``verify=True`` loads everything, validates it and checks the stored
    fingerprint. Stores of format version 1 (always forward-filled) open with ``fill="ffill"``.
    """
    p = Path(path) if not (isinstance(path, str) and "://" in path) else None
    if p is not None and not p.exists():
        raise StoreError(f"{path}: no such price store")
    import xarray as xr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # version 1: not consolidated
            ds = xr.open_dataset(path, engine="zarr", consolidated=None, chunks=chunks, zarr_format=3)
    except (OSError, ValueError, KeyError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{path}: not a readable Zarr v3 store ({msg})") from None
    if ds.attrs.get("atc_format") != FORMAT_NAME:
        raise StoreError(f"{path}: not a price store (attribute atc_format is {ds.attrs.get('atc_format')!r})")
    version = ds.attrs.get("atc_format_version")
    if version not in READABLE_VERSIONS:
        raise StoreError(f"{path}: price-store format version {version!r}, this code reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    ds.attrs.setdefault("fill", "ffill")  # only version 1 lacks it, and it always filled
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
    """Per-symbol DataFrames of a price dataset: each symbol's own bars (the times where it has a
    close), index ``time`` (naive UTC, ``datetime64[time_unit]``; pandas 3 itself defaults to
    ``"us"``), the price variables it has data for (all-NaN optional columns dropped)."""
    import pandas as pd

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
        sl = np.flatnonzero(~np.isnan(c))
        cols = {}
        for v in variables:
            a = arrays[v][k, sl]
            if v == "close" or not np.isnan(a).all():
                cols[v] = a
        out[sym] = pd.DataFrame(cols, index=pd.DatetimeIndex(times[sl], name="time").as_unit(time_unit))
    return out



def _consolidate(path: str | os.PathLike) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the Zarr v3 spec"
        zarr.consolidate_metadata(str(path), zarr_format=3)


def _rechunk(batches: Iterable[Mapping[str, np.ndarray]], k: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of any number of rows -> batches of exactly ``k`` rows (the last may be shorter), so
    every write covers whole symbol chunks and never reads a chunk back."""
    pending: list[Mapping[str, np.ndarray]] = []
    have = 0
    for b in batches:
        pending.append(b)
        have += next(iter(b.values())).shape[0]
        while have >= k:
            joined = {v: np.concatenate([p[v] for p in pending]) for v in pending[0]}
            yield {v: a[:k] for v, a in joined.items()}
            rest = {v: a[k:] for v, a in joined.items()}
            have -= k
            pending = [rest] if have else []
    if have:
        yield {v: np.concatenate([p[v] for p in pending]) for v in pending[0]}


def write_prices_chunked(
    path: str | os.PathLike,
    symbols: list[str],
    times: np.ndarray,
    variables: list[str] | tuple[str, ...],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    chunk_symbols: int | None = None,
    overwrite: bool = False,
    source: str = "python",
    fill: str = "none",
) -> StoreSummary:
    """Create a price store from row batches (``{var: (rows, n_times) float64}``, in symbol order),
    one symbol chunk in memory at a time: peak memory does not grow with the number of symbols.

    ``times`` (int64 ns or datetime64) is the whole time axis and every batch is already on it (a
    NaN close = no bar). Each chunk is checked like :func:`write_prices` checks a whole panel, and
    the fingerprint is hashed as chunks pass (see :class:`BlockHasher`), so the store equals what
    :func:`write_prices` writes for the concatenated panel. Atomic like every other write.
    """
    import dask.array as da
    import xarray as xr
    import zarr

    from pipeline.panel import Panel, check_values, fill_gaps

    path = check_target(path, overwrite=overwrite)
    existed = path.exists()
    check_fill(fill)
    symbols = [str(s) for s in symbols]
    times = np.asarray(times)
    times = times.astype("datetime64[ns]").astype(np.int64) if times.dtype.kind == "M" else times.astype(np.int64)
    variables = [v for v in PRICE_VARS if v in variables]
    if "close" not in variables:
        raise StoreError("input: no 'close' variable")
    n, m = len(symbols), int(times.size)
    if n == 0 or m == 0:
        raise StoreError(f"input: need at least 1 symbol and 1 time, got {n} symbols and {m} times")
    if len(set(symbols)) != n or "" in symbols:
        check_values(Panel(symbols, times[:0], {"close": np.empty((n, 0))}, np.zeros(n, np.int64)), "input")
    if m > 1 and np.any(np.diff(times) <= 0):
        raise StoreError("input: time coordinate is not strictly increasing")
    k = auto_chunk_symbols(n, m) if chunk_symbols is None else int(chunk_symbols)
    if k < 1:
        raise StoreError(f"chunk_symbols must be >= 1, got {k}")
    k = min(k, n)
    lazy = {v: (("symbol", "time"), da.zeros((n, m), dtype=np.float64, chunks=(k, min(m, TIME_CHUNK))))
            for v in variables}
    lazy["filled_gaps"] = (("symbol",), da.zeros(n, dtype=np.int64, chunks=k))
    template = xr.Dataset(lazy, coords={"symbol": np.array(symbols, dtype=object), "time": times.view("datetime64[ns]")},
                          attrs=new_attrs(source, fill, k, "", [], 0))
    filled = np.zeros(n, np.int64)
    hasher = BlockHasher(m, variables)
    own = lo = 0
    with atomic_directory(path, error=StoreError, what="store", replace=overwrite) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            template.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, compute=False,
                             encoding=store_encoding(template, k))
        g = zarr.open_group(str(tmp), mode="r+", zarr_format=3, use_consolidated=False)
        arrs = {v: g[v] for v in variables}
        for rows in _rechunk(batches, k):
            rows = {v: np.array(rows[v], dtype=np.float64) for v in variables}
            r = rows["close"].shape[0]
            if lo + r > n or rows["close"].shape[1] != m:
                raise StoreError(f"input: batches hold more rows than the {n} symbols or not {m} times")
            no_bar = np.isnan(rows["close"])
            for v, a in rows.items():
                if v != "close":
                    a[no_bar] = np.nan
            check_values(Panel(symbols[lo: lo + r], times, rows, np.zeros(r, np.int64)), "input")
            if fill == "ffill":
                filled[lo: lo + r] = fill_gaps(rows)
            for v in variables:
                arrs[v][lo: lo + r, :] = rows[v]
            hasher.update(rows)
            own += int(np.count_nonzero(~np.isnan(rows["close"])))
            lo += r
        if lo != n:
            raise StoreError(f"input: batches hold {lo} rows for {n} symbols")
        g["filled_gaps"][:] = filled
        blocks = hasher.blocks()
        fp = combine_fingerprint(symbols, times, variables, blocks)
        g.attrs.update({"fingerprint": fp, "fingerprint_blocks": blocks, "filled_gaps_total": int(filled.sum()),
                        "own_bars": own})
        _consolidate(tmp)
    return StoreSummary(path=path, action="overwritten" if existed else "created", n_symbols=n, n_bars=m,
                        variables=tuple(variables), filled_gaps=int(filled.sum()), nbytes=store_nbytes(path),
                        raw_nbytes=n * m * 8 * len(variables), fingerprint=fp, chunk_symbols=k, own_bars=own, fill=fill)

