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
    "time_values",
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
    store at ``path`` is swapped out (only a results store is ever replaced), and deleted in the
    background (:func:`pipeline.atomic.wait_discarded` waits for that).

    Written with zarr directly (:mod:`pipeline.zarr_template`), as xarray's ``to_zarr`` of the
    same Dataset writes it: xarray built a dask graph of every output chunk for it (~1 CPU s at
    2,000 x 5,000 with the import of ``dask.array``, ~3 s at 20,000 x 5,000).
    """
    from pipeline import zarr_template as zt

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
    arrays: dict[str, zt.ArraySpec] = {}
    tk = TIME_CHUNK  # every task writes (its symbol chunk, all time): whole chunks, never shared
    shape, chunks, dims = (n_sym, n_time), (k, tk), ("symbol", "time")
    for name in OUTPUT_CHOICES[identity.outputs]:
        arrays[name] = zt.series(shape, ft, chunks, dims, {"description": _DESCRIPTIONS[name]}, [results_codec(name)])
    if identity.backtest:  # `atc run --backtest`: series on (symbol, time), metrics on symbol, float64
        from kernels.backtest import BACKTEST_DESCRIPTIONS
        from kernels.metrics import METRIC_DESCRIPTIONS

        for name, desc in BACKTEST_DESCRIPTIONS.items():
            arrays[name] = zt.series(shape, np.float64, chunks, dims, {"description": desc}, [results_codec(name)])
        for name, desc in METRIC_DESCRIPTIONS.items():
            arrays[name] = zt.series((n_sym,), np.float64, (k,), ("symbol",), {"description": desc})
    flags = sorted(STATUS_FLAGS)
    arrays["status"] = zt.ArraySpec((n_sym,), np.int8, (k,), ("symbol",), {
        "description": "outcome per symbol",
        "flag_values": flags,
        "flag_meanings": " ".join(STATUS_FLAGS[c].replace(" ", "_") for c in flags),
    }, [results_codec("status")], data=np.full(n_sym, NOT_COMPUTED, np.int8))
    arrays["reason"] = zt.ArraySpec((n_sym,), str, (k,), ("symbol",),
                                    {"description": "why a symbol is not ok ('' when it is)"})
    arrays["chunk_done"] = zt.ArraySpec((n_chunks,), np.int8, (1,), ("chunk",),
                                        {"description": "1 once the chunk's symbols are all written"})
    arrays["symbol"] = zt.string_coord(prices["symbol"].values, "symbol")
    arrays["time"] = zt.time_coord(prices["time"].values)
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
    with atomic_directory(path, error=ResultsError, what="results store", discard="background") as tmp:
        zt.write_store(tmp, attrs, arrays)


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
    from pipeline.chunk_io import read_whole

    with read_store_state(path, FORMAT_VERSION, error=ResultsError, what="results") as (g, attrs):
        close_like = g["Average_Signal"]  # stored whatever `--outputs` chose
        done = np.asarray(read_whole(g["chunk_done"])) == 1  # one tiny chunk per task: read here, not via zarr's loop
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


def finalize_results(path: str | os.PathLike, extra_attrs: Mapping[str, Any]) -> None:
    """Record a finished run in the root attributes and refresh the consolidated metadata."""
    import zarr

    g = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    g.attrs.update(dict(extra_attrs))
    _consolidate(path)




# Re-exported: the write path and the time axis live in their own modules.
from pipeline.results_time import extend_time, read_last_bars, time_values  # noqa: E402
from pipeline.results_write import results_codec, write_chunk  # noqa: E402
