"""The results store: the 13 ATC outputs of every symbol in a Blosc-compressed Zarr v3 directory.

Format (see ``data/README.md``):

* variables named as in ATC_SPEC.md (``EMA_Signal`` ... ``KAMA_S``, ``Average_Signal``) on
  ``(symbol, time)`` with the price store's coordinates, float64 (or float32 with ``--dtype``),
  NaN outside each symbol's valid span and for symbols that could not be computed;
* ``status`` (int8 on ``symbol``): -1 not computed yet, 0 ok, 1 insufficient history, 2 no data,
  3 bad data (codes of ``kernels/status.py``), and ``reason`` (string on ``symbol``): why a symbol
  is not ok, "" when it is;
* with ``atc run --backtest``: ``position``, ``strategy_return`` and ``equity`` (float64 on
  ``(symbol, time)``, see ``kernels/backtest.py``), every metric of ``kernels/metrics.py`` (float64
  on ``symbol``) and the root attribute ``backtest`` (JSON: fee_bps, long_only, periods_per_year);
* ``chunk_done`` (int8 on ``chunk``, one Zarr chunk per entry): 1 once a task has written its
  whole symbol chunk (written last, so a 1 means every variable of that chunk is on disk);
* chunked along ``symbol`` (``chunk_symbols`` per chunk, aligned with the price store) and
  ``time`` (``TIME_CHUNK`` bars, as the price store: the newest bar of every symbol is one time
  chunk away, and new time steps rewrite only the last chunk, see :func:`extend_time`); stores
  written before keep ``time`` in one chunk and still open, run and resume; codec Blosc (see
  :func:`results_codec`);
* root attributes: ``atc_format`` ("atc-results"), ``atc_format_version``, ``params`` (JSON of
  ``ATCParams.to_dict()``), ``prices_fingerprint``, ``prices_path``, ``fingerprint`` (the results
  fingerprint: sha256 of parameters, price fingerprint, dtype and code version; see
  :class:`RunIdentity`), ``dtype``, ``chunk_symbols``, ``n_chunks``, ``versions`` (JSON),
  ``created``, and after a complete run ``completed`` and ``status_counts`` (JSON);
* consolidated metadata, so a plain ``xarray.open_zarr(path)`` opens it without warnings.

Writing follows the template + region pattern: :func:`create_results` writes the metadata, the
coordinates and the small per-symbol variables once (into a hidden sibling directory renamed into
place), then each task writes its own whole chunk region with :func:`write_chunk`. A
:class:`ResultsLock` beside the store keeps a second run from writing into it at the same time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:  # xarray is imported where it is used: readers of a store need not load it
    import xarray as xr

from kernels.errors import ATCUserError
from pipeline.atomic import atomic_directory, read_store_state, store_format
from kernels.params import FAMILIES, OUTPUT_NAMES, ATCParams
from kernels.status import STATUS_NAMES
from pipeline.price_format import TIME_CHUNK
from pipeline.time_coord import simple_cf_units

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "NOT_COMPUTED",
    "ResultsError",
    "ResultsLock",
    "ResultsLockedError",
    "ResultsState",
    "RunIdentity",
    "chunk_bounds",
    "code_version",
    "create_results",
    "extend_time",
    "finalize_results",
    "open_results",
    "read_last_bars",
    "read_state",
    "results_codec",
    "versions",
    "write_chunk",
]

FORMAT_NAME = "atc-results"
FORMAT_VERSION = 1
#: ``status`` of a symbol whose chunk has not been written yet.
NOT_COMPUTED = -1
STATUS_FLAGS: dict[int, str] = {NOT_COMPUTED: "not computed", **STATUS_NAMES}
DTYPES = ("float64", "float32")
#: `atc run --outputs`: which outputs a results store keeps. "signals" = the six Layer-1 family
#: signals and the average (what `atc scan` reads); "average" = Average_Signal alone.
OUTPUT_CHOICES: dict[str, tuple[str, ...]] = {
    "all": OUTPUT_NAMES,
    "signals": tuple(n for n in OUTPUT_NAMES if n.endswith("_Signal")),
    "average": ("Average_Signal",),
}


def stored_outputs(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """The outputs a results store holds (stores written before `--outputs` hold all 13)."""
    return OUTPUT_CHOICES[attrs.get("outputs", "all")]

_DESCRIPTIONS = {
    **{f"{f}_Signal": f"Layer-1 signal of the {f} family (9 lines), rounded to 2 decimals" for f in FAMILIES},
    **{f"{f}_S": f"Layer-2 equity of the {f} family signal" for f in FAMILIES},
    "Average_Signal": "final ATC signal: equity-weighted average of the cut Layer-1 signals",
}


class ResultsError(ATCUserError, ValueError):
    """A results store cannot be created, resumed or written as asked."""


class ResultsLockedError(ResultsError):
    """Another run is writing the results store right now."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def results_codec(name: str):
    """The Blosc codec of a results variable.

    Results are 13 times the size of the close panel they come from and are rewritten by every
    run, so compression speed matters as much as the ratio. Measured per core (CPU time, so the
    shared machine's load does not enter) on 418 x 5000 float64 outputs of a synthetic universe in
    (209, 512) chunks, 2026-11-29:

    * ``*_Signal`` (the Layer-1 signals, 2-decimal values that stay put for many bars): lz4 level 5
      without shuffle, 7.2 x at ~770 MB/s. Byte shuffle (what they had before) splits each
      repeated value into 8 streams and gets 3.4 x at ~400 MB/s; zstd-1 without shuffle 12.3 x at
      ~300 MB/s.
    * ``Average_Signal``: likewise lz4 level 5 without shuffle, 1.77 x at ~570 MB/s (zstd-1 with
      bit shuffle, before: 1.53 x at ~215 MB/s).
    * ``*_S`` (equities, full-precision doubles): lz4 level 1 with byte shuffle, 1.32 x at
      ~1050 MB/s (level 5: 1.34 x at ~950 MB/s; without shuffle 1.11 x). The backtest's
      ``strategy_return`` and ``equity`` keep lz4 level 5 with byte shuffle.
    * everything else (per-symbol variables, sweep metrics, ``position``): zstd level 1 with bit
      shuffle.

    Stores written with other codecs keep theirs (a codec is per array, in its metadata).
    """
    from zarr.codecs import BloscCodec

    if name.endswith("_Signal"):
        return BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")
    if name.endswith("_S"):
        return BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")
    if name in ("strategy_return", "equity"):  # (`--backtest` series: doubles much like the equities)
        return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


def code_version() -> str:
    """Version of the code that computes the results (enters the results fingerprint)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"atc-pipeline {version('atc-pipeline')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "atc-pipeline (source)"


def versions() -> dict[str, str]:
    """Versions of the packages that wrote a results store."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("atc-pipeline", "numpy", "numba", "xarray", "zarr", "numcodecs", "dask", "distributed"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            pass
    return out


def chunk_bounds(n_symbols: int, chunk_symbols: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of each symbol chunk."""
    return [(lo, min(lo + chunk_symbols, n_symbols)) for lo in range(0, n_symbols, chunk_symbols)]


# --------------------------------------------------------------------------------------------
# Identity of a run: what a results store was computed from
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunIdentity:
    """Everything the numbers in a results store depend on. Equal identities, equal results."""

    params: ATCParams
    prices_fingerprint: str
    dtype: str = "float64"
    code: str = ""
    backtest: str = ""  # canonical JSON of the backtest settings (`atc run --backtest`), "" for none
    outputs: str = "all"  # which of the 13 outputs are stored (OUTPUT_CHOICES)

    def params_json(self) -> str:
        return json.dumps(self.params.to_dict(), sort_keys=True)

    def fingerprint(self) -> str:
        """The results fingerprint: sha256 over the canonical JSON of parameters, price-store
        fingerprint, dtype and code version."""
        what = {
            "format": f"{FORMAT_NAME}/{FORMAT_VERSION}",
            "params": self.params.to_dict(),
            "prices": self.prices_fingerprint,
            "dtype": self.dtype,
            "code": self.code,
        }
        if self.backtest:  # absent otherwise, so stores without a backtest keep their fingerprint
            what["backtest"] = json.loads(self.backtest)
        if self.outputs != "all":  # likewise
            what["outputs"] = self.outputs
        blob = json.dumps(what, sort_keys=True)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    def differences(self, attrs: Mapping[str, Any]) -> list[str]:
        """Why a store with root attributes ``attrs`` was computed from something else ([] if not)."""
        out = []
        try:
            stored = json.loads(attrs.get("params", "{}"))
        except (TypeError, ValueError):
            stored = {}
        mine = self.params.to_dict()
        changed = [f"{k} {stored.get(k)!r} -> {mine.get(k)!r}" for k in sorted(set(mine) | set(stored))
                   if stored.get(k) != mine.get(k)]
        if changed:
            out.append("different parameters (" + ", ".join(changed) + ")")
        if attrs.get("prices_fingerprint") != self.prices_fingerprint:
            out.append(f"a different price store (fingerprint {_short(attrs.get('prices_fingerprint'))}, "
                       f"now {_short(self.prices_fingerprint)})")
        if attrs.get("dtype") != self.dtype:
            out.append(f"dtype {attrs.get('dtype')} (now {self.dtype})")
        if (attrs.get("backtest") or "") != self.backtest:
            out.append(f"backtest settings {attrs.get('backtest') or 'none'} (now {self.backtest or 'none'})")
        if attrs.get("code_version") != self.code:
            out.append(f"code version {attrs.get('code_version')!r} (now {self.code!r})")
        if attrs.get("outputs", "all") != self.outputs:
            out.append(f"outputs {attrs.get('outputs', 'all')} (now {self.outputs})")
        if not out and attrs.get("fingerprint") != self.fingerprint():
            out.append("a different results fingerprint")
        return out


def _short(fp: Any) -> str:
    s = str(fp)
    return s[:19] + "..." if len(s) > 22 else s


# --------------------------------------------------------------------------------------------
# Lock: one writer at a time
# --------------------------------------------------------------------------------------------

class ResultsLock:
    """An exclusive, non-blocking lock on a results store: ``.<name>.lock`` beside it.

    Taken with ``flock`` on that file, so it is released by the kernel when the holding process
    dies (a killed run never leaves a stale lock behind). The file records who holds it, for the
    message the second run prints. Local file systems only (as is the rest of the pipeline's
    writing): on a network file system without working ``flock`` use one client at a time.
    """

    def __init__(self, results_path: str | os.PathLike):
        p = Path(results_path)
        self.results_path = p
        self.path = p.parent / f".{p.name}.lock"
        self._fd: int | None = None

    def acquire(self) -> "ResultsLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ResultsLockedError(
                    f"{self.results_path} is being written by another atc run ({holder}); "
                    f"refusing to write it at the same time: wait for that run to finish or stop it"
                ) from None
            # the previous holder may have removed the file between our open and our flock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(),
                    "command": " ".join(sys.argv)[:300]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            return self
        raise ResultsError(f"{self.path}: could not take the lock (it keeps changing)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: see the same-file check in acquire()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "ResultsLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"


# --------------------------------------------------------------------------------------------
# Template, state, region writes
# --------------------------------------------------------------------------------------------

def is_results_store(path: Path) -> bool:
    return store_format(path) == FORMAT_NAME


def create_results(
    path: str | os.PathLike,
    prices: xr.Dataset,
    identity: RunIdentity,
    chunk_symbols: int,
    *,
    prices_path: str = "",
    backend: str = "cpu",
    replace: bool = False,
) -> None:
    """Write the template of a results store for ``prices`` (a lazily opened price store): the
    metadata of every variable, the coordinates, ``status`` = not computed, no output chunks.

    Built in a hidden sibling directory and renamed into place; with ``replace`` an existing
    store at ``path`` is swapped out (only a results store is ever replaced).
    """
    import dask.array as da

    path = Path(path)
    if identity.dtype not in DTYPES:
        raise ResultsError(f"dtype must be one of {', '.join(DTYPES)}, got {identity.dtype!r}")
    if path.exists() or path.is_symlink():
        if not replace:
            raise ResultsError(f"{path} already exists")
        if not is_results_store(path):
            raise ResultsError(f"{path} exists and is not an atc results store; refusing to overwrite it")
    n_sym, n_time = prices.sizes["symbol"], prices.sizes["time"]
    k = max(1, min(int(chunk_symbols), max(n_sym, 1)))
    n_chunks = len(chunk_bounds(n_sym, k))
    ft = np.dtype(identity.dtype)
    data_vars: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}
    tk = TIME_CHUNK  # every task writes (its symbol chunk, all time): whole chunks, never shared
    lazy_chunks = (k, max(1, min(n_time, tk)))
    for name in OUTPUT_CHOICES[identity.outputs]:
        lazy = da.zeros((n_sym, n_time), dtype=ft, chunks=lazy_chunks)
        data_vars[name] = (("symbol", "time"), lazy, {"description": _DESCRIPTIONS[name]})
        encoding[name] = {"compressors": [results_codec(name)], "chunks": (k, tk)}
    if identity.backtest:  # `atc run --backtest`: series on (symbol, time), metrics on symbol, float64
        from kernels.backtest import BACKTEST_DESCRIPTIONS
        from kernels.metrics import METRIC_DESCRIPTIONS

        for name, desc in BACKTEST_DESCRIPTIONS.items():
            lazy = da.zeros((n_sym, n_time), dtype=np.float64, chunks=lazy_chunks)
            data_vars[name] = (("symbol", "time"), lazy, {"description": desc})
            encoding[name] = {"compressors": [results_codec(name)], "chunks": (k, tk)}
        for name, desc in METRIC_DESCRIPTIONS.items():
            data_vars[name] = (("symbol",), np.full(n_sym, np.nan), {"description": desc})
            encoding[name] = {"chunks": (k,)}
    flags = sorted(STATUS_FLAGS)
    data_vars["status"] = (("symbol",), np.full(n_sym, NOT_COMPUTED, np.int8), {
        "description": "outcome per symbol",
        "flag_values": flags,
        "flag_meanings": " ".join(STATUS_FLAGS[c].replace(" ", "_") for c in flags),
    })
    encoding["status"] = {"compressors": [results_codec("status")], "chunks": (k,)}
    data_vars["reason"] = (("symbol",), np.full(n_sym, "", dtype=object),
                           {"description": "why a symbol is not ok ('' when it is)"})
    encoding["reason"] = {"chunks": (k,)}
    data_vars["chunk_done"] = (("chunk",), np.zeros(n_chunks, np.int8),
                               {"description": "1 once the chunk's symbols are all written"})
    encoding["chunk_done"] = {"chunks": (1,)}
    coords = {
        "symbol": np.array([str(s) for s in prices["symbol"].values], dtype=object),
        "time": prices["time"].values,
    }
    attrs = {
        "atc_format": FORMAT_NAME,
        "atc_format_version": FORMAT_VERSION,
        "params": identity.params_json(),
        "prices_fingerprint": identity.prices_fingerprint,
        "prices_path": str(prices_path),
        "fingerprint": identity.fingerprint(),
        "dtype": identity.dtype,
        "code_version": identity.code,
        "backend": backend,
        "chunk_symbols": k,
        "n_chunks": n_chunks,
        "versions": json.dumps(versions(), sort_keys=True),
        "created": utc_now(),
        "status_codes": json.dumps({str(c): STATUS_FLAGS[c] for c in flags}),
        "outputs": identity.outputs,
    }
    if identity.backtest:
        attrs["backtest"] = identity.backtest
    import xarray as xr

    template = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    write_template(template, path, encoding, error=ResultsError, what="results store")


def write_template(template: xr.Dataset, path: Path, encoding: dict, *, error: type[Exception], what: str) -> None:
    """Write a store's metadata (lazy arrays are not computed) atomically, then consolidate it."""
    with atomic_directory(path, error=error, what=what) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            template.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=encoding, compute=False)
        _consolidate(tmp)


def _consolidate(path: str | os.PathLike) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the Zarr v3 spec"
        zarr.consolidate_metadata(str(path), zarr_format=3)


@dataclass(frozen=True)
class ResultsState:
    """What a results store on disk says about itself (metadata and the small per-chunk record)."""

    attrs: dict[str, Any]
    n_symbols: int
    n_time: int
    chunk_symbols: int
    chunk_done: np.ndarray  # bool per chunk

    @property
    def n_chunks(self) -> int:
        return int(self.chunk_done.size)

    @property
    def complete(self) -> bool:
        return bool(self.chunk_done.all())


def read_state(path: str | os.PathLike) -> ResultsState:
    """Read a results store's attributes and chunk record (never the outputs)."""
    path = Path(path)
    if not is_results_store(path):
        raise ResultsError(f"{path} exists and is not an atc results store (no atc_format attribute "
                           f"'{FORMAT_NAME}'); choose another path")
    with read_store_state(path, FORMAT_VERSION, error=ResultsError, what="results") as (g, attrs):
        close_like = g["Average_Signal"]  # stored whatever `--outputs` chose
        done = np.asarray(g["chunk_done"][:]) == 1
        n_sym, n_time = close_like.shape
        k = int(close_like.chunks[0])
    return ResultsState(attrs, int(n_sym), int(n_time), k, done)


def open_results(path: str | os.PathLike, **kwargs: Any) -> xr.Dataset:
    """Open a results store lazily (plain ``xarray.open_zarr`` works too)."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path}: no such results store")
    if not is_results_store(path):
        raise ResultsError(f"{path}: not an atc results store")
    import xarray as xr

    return xr.open_zarr(path, **kwargs)


def write_chunk(path: str | os.PathLike, index: int, start: int, stop: int, outputs: Mapping[str, np.ndarray],
                status: np.ndarray, reasons: list[str],
                extra: Mapping[str, tuple[tuple[str, ...], np.ndarray]] | None = None) -> None:
    """Write one task's whole symbol chunk ``[start, stop)``: the outputs, ``status`` and ``reason``,
    then mark the chunk done (last, so a done chunk is complete). ``extra`` holds further variables
    of the store as ``name: (dims, values)`` (the backtest's).

    Written with zarr directly: the store's arrays already carry their codecs, fill values and
    attributes (the template), so each write is plain chunk encoding. An xarray region write did
    the same with a Dataset built, the whole store's metadata read and the region checked per task
    (~10% of a task's write CPU). The region is checked here instead: it must be whole chunks of
    every variable, which no other task writes."""
    import zarr

    g = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    data: dict[str, np.ndarray] = dict(outputs)
    data["status"] = np.asarray(status, dtype=np.int8)
    data["reason"] = np.array(reasons, dtype=object)
    data.update({name: values for name, (_, values) in (extra or {}).items()})
    arrays = {}
    for name, values in data.items():
        try:
            arr = g[name]
        except KeyError:
            raise ResultsError(f"{path}: no variable {name!r} in this results store") from None
        k = int(arr.chunks[0])
        if start % k or (stop - start) % k and stop != arr.shape[0] or np.shape(values)[0] != stop - start:
            raise ResultsError(f"{path}: symbols {start}..{stop - 1} are not whole chunks of {name!r} "
                               f"({k} symbols per chunk)")
        arrays[name] = arr
    for name, values in data.items():
        arrays[name][start:stop] = values
    done = g["chunk_done"]
    done[index] = 1


def finalize_results(path: str | os.PathLike, extra_attrs: Mapping[str, Any]) -> None:
    """Record a finished run in the root attributes and refresh the consolidated metadata."""
    import zarr

    g = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    g.attrs.update(dict(extra_attrs))
    _consolidate(path)


# --------------------------------------------------------------------------------------------
# Growing by new time steps, reading the newest bars
# --------------------------------------------------------------------------------------------

def _time_values(g: Any) -> np.ndarray:
    """The decoded ``time`` coordinate of an open Zarr group, as int64 ns.

    The CF encodings xarray writes for a datetime64 axis ("<unit> since <date>", integer values,
    the proleptic Gregorian calendar) are decoded with numpy, so store readers such as `atc scan`
    need not import xarray; anything else goes through xarray's decoder."""
    t = g["time"]
    raw = np.asarray(t[:])
    units = t.attrs.get("units")
    if not units:
        return np.asarray(raw, dtype="datetime64[ns]").astype(np.int64)
    calendar = t.attrs.get("calendar", "proleptic_gregorian")
    simple = simple_cf_units(units, calendar)
    if simple is not None and raw.dtype.kind in "iu":
        base, unit = simple
        return (base + raw.astype(np.int64).astype(f"timedelta64[{unit}]")).astype(np.int64)
    from xarray.coding.times import decode_cf_datetime

    return np.asarray(decode_cf_datetime(raw, units, calendar), dtype="datetime64[ns]").astype(np.int64)


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
    old = _time_values(g)
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

    from pipeline.price_append import last_valid_index

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
    times = _time_values(g)
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
