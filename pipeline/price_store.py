"""Creating, opening and describing price stores on disk (format: ``pipeline/store.py``,
``data/README.md``), and their content fingerprint.

A store is always written whole into a temporary sibling and renamed into place
(:mod:`pipeline.atomic`), so readers never see a half-written store.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.atomic import atomic_directory, store_format
from pipeline.panel import check_fill, check_values, to_panel, validate_prices
from pipeline.price_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PRICE_VARS,
    READABLE_VERSIONS,
    TARGET_CHUNK_VALUES,
    StoreError,
    blosc_codec,
)

__all__ = ["StoreSummary", "auto_chunk_symbols", "check_target", "fingerprint_prices", "open_prices",
           "store_nbytes", "to_frames", "validate_prices", "write_prices"]


def fingerprint_arrays(symbols: list[str], times: np.ndarray, arrays: Mapping[str, np.ndarray]) -> str:
    """See :func:`fingerprint_prices`; on plain arrays so writers can stamp a store before writing it."""
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
    return fingerprint_arrays(symbols, times, arrays)

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


def write_store(ds: xr.Dataset, path: Path, chunk_symbols: int, *, replace: bool) -> None:
    """Write ``ds`` into a temporary sibling of ``path`` and rename it into place."""
    n_time = ds.sizes["time"]
    encoding: dict[str, dict[str, Any]] = {}
    for v in ds.data_vars:
        chunks = (chunk_symbols, max(1, n_time)) if ds[v].ndim == 2 else (chunk_symbols,)
        encoding[v] = {"compressors": [blosc_codec()], "chunks": chunks}
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
    now = utc_now()
    attrs = {
        "atc_format": FORMAT_NAME,
        "atc_format_version": FORMAT_VERSION,
        "source": str(source),
        "created": now,
        "modified": now,
        "history": [f"{now} created from {source}"],
        "fingerprint": fingerprint_arrays(panel.symbols, panel.times, panel.arrays),
        "fill": fill,
        "filled_gaps_total": int(panel.filled.sum()),
        "chunk_symbols": int(chunk_symbols),
        "timezone": "UTC",
    }
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

