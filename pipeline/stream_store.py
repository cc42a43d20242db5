"""The streaming state inside a results store: the `stream` group that `atc update` continues from.

Layout: a Zarr group `stream` in the results store holding the arrays of `kernels.stream.StreamState`
(`t`, `xo`, `x`, `fam`, `ring`, `prev`, `avg`, `status`) plus `hist_hash`, all with the symbol as
their first axis and chunked like the results store's symbol chunks, so every `atc run` task writes
its own region (no two tasks touch one chunk). Plain numeric arrays, no pickles.

Attributes of the group say what the state continues: `n_time` (the results store's times it
covers), `prices_fingerprint` (of the price store it was computed from), `params`, `dtype`. A task
that cannot capture a state (the GPU backend) leaves `have` at 0 for its symbols; `atc update`
rebuilds those from their history.

`hist_hash` is a per-symbol digest of the closes the state has seen (its own bars up to `n_time`),
so an update can tell which symbols' past bars were revised in the price store and recompute
exactly those from their history. The digest is a sum over times, so `hist_head`, the same digest
of the times before `head_time(n_time)` (the start of the last, partly covered fingerprint block),
lets an update check the past by reading only the times from there on: the attribute
`price_blocks` records the price store's block digests (`fingerprint_blocks`) the state was
computed from, and where the current price store still has those blocks before `head_time`, no
close there changed. Without them (stores written before, price stores of format 1 or 2) an update
reads the whole close panel, as before.

The newest values, for `atc scan` (so it reads no output chunk at all, however old a symbol's last
bar): `last_bar` (time index of the symbol's last bar with an `Average_Signal`, -1 without one,
-2 unknown: a GPU task, or a store written before), `last_trend` (-1/0/1, the cut of that signal),
`trend_bars` (signal bars in the current run of that trend, counted back to the last bar with
another trend), `last_signal`, `last_families` (the 6 Layer-1 signals, family order of
`kernels.params.FAMILIES`) and `last_close` at that bar. `newest_marks` computes them from outputs
in memory; `atc run` tasks and `atc update` write them with the state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from kernels.params import ATCParams
from pipeline.chunk_io import read_whole, write_whole

GROUP = "stream"


def history_hashes(close: np.ndarray, start: int = 0) -> np.ndarray:
    """A 64-bit digest of each row's own bars: their values (bit patterns) and positions.

    Not cryptographic: it tells an update which symbols' past closes were revised (a changed
    value, an added or removed bar), with a collision chance of about 2**-64 per revision. Plain
    wrapping integer arithmetic over the whole panel at once: a 2,000 x 5,000 panel in ~50 ms,
    where a hash library called per row cost ~0.4 s. The digest is a wrapping sum of one term per
    time, so the digest of times [a, c) is that of [a, b) plus that of [b, c): ``close`` holds
    the columns from time index ``start`` on, and an update hashes only the times it reads.
    """
    a = np.ascontiguousarray(close, dtype=np.float64)
    bits = np.where(np.isnan(a), 0.0, a).view(np.uint64)
    with np.errstate(over="ignore"):
        pos = np.arange(start, start + a.shape[1], dtype=np.uint64)
        key = (pos * np.uint64(2) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        mixed = bits * key
        mixed ^= mixed >> np.uint64(29)
        return mixed.sum(axis=1, dtype=np.uint64)


def head_time(n_time: int) -> int:
    """Where the digest `hist_head` ends: the start of the fingerprint block holding time n_time - 1
    (blocks before it are whole, so equal block digests mean equal closes there)."""
    from pipeline.price_format import FINGERPRINT_BLOCK

    return max(0, int(n_time) - 1) // FINGERPRINT_BLOCK * FINGERPRINT_BLOCK


def digest_arrays(close: np.ndarray, n_time: int, start: int = 0) -> dict[str, np.ndarray]:
    """`hist_hash` and `hist_head` of the closes of times [start, n_time) (``close`` holds them)."""
    head = head_time(n_time)
    return {"hist_hash": history_hashes(close, start),
            "hist_head": history_hashes(np.asarray(close)[:, :max(0, head - start)], start)}


#: The arrays `atc scan` reads: name -> (dtype, fill value = "unknown", trailing shape).
MARKS: dict[str, tuple[Any, Any, tuple[int, ...]]] = {
    "last_bar": (np.int64, -2, ()), "last_trend": (np.int8, 0, ()), "trend_bars": (np.int64, 0, ()),
    "last_signal": (np.float64, np.nan, ()), "last_families": (np.float64, np.nan, (6,)),
    "last_close": (np.float64, np.nan, ()),
}


def cut(v: np.ndarray, short: float, long: float) -> np.ndarray:
    """The spec's Cut with the store's thresholds: +1 above long, -1 below short, else (and NaN) 0."""
    return np.where(v > long, 1, np.where(v < short, -1, 0)).astype(np.int8)


def _marks(avg, families, close, params: ATCParams, start: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(marks, changed): `newest_marks` and, per row, whether a bar of another trend was found."""
    a = np.asarray(avg, np.float64)
    n, t = a.shape
    valid = ~np.isnan(a)
    has = valid.any(axis=1)
    last = np.where(has, t - 1 - np.argmax(valid[:, ::-1], axis=1), -1)
    rows, col = np.arange(n), np.maximum(last, 0)
    lo, hi = float(params.short_threshold), float(params.long_threshold)
    signal = np.where(has, a[rows, col], np.nan)
    trend = cut(signal, lo, hi)
    other = valid & (cut(a, lo, hi) != trend[:, None])
    changed = other.any(axis=1)
    last_other = np.where(changed, t - 1 - np.argmax(other[:, ::-1], axis=1), -1)
    run = (valid & (np.arange(t) > last_other[:, None])).sum(axis=1)

    def at_last(x) -> np.ndarray:
        return np.where(has, np.asarray(x, np.float64)[rows, col], np.nan) if x is not None else np.full(n, np.nan)

    return {
        "last_bar": np.where(has, last + start, -1).astype(np.int64),
        "last_trend": trend,
        "trend_bars": run.astype(np.int64),
        "last_signal": signal,
        "last_families": np.stack([at_last(f) for f in families], axis=1) if n else np.zeros((0, 6)),
        "last_close": at_last(close),
    }, changed


def newest_marks(avg, families, close, params: ATCParams, start: int = 0) -> dict[str, np.ndarray]:
    """The `MARKS` arrays of rows of outputs in memory: ``avg`` (symbols x times, from time index
    ``start``), ``families`` (the 6 Layer-1 signal panels in family order) and ``close`` (or None)."""
    return _marks(avg, families, close, params, start)[0]


def advance_marks(old: dict[str, np.ndarray], avg, families, close, params: ATCParams, start: int
                  ) -> dict[str, np.ndarray]:
    """The marks after new times: ``old`` (of the times before ``start``) continued by the outputs
    of the times from ``start`` on. A run of the trend that reaches back to ``start`` adds to the
    old run when the old trend is the same. Unknown old marks (-2) stay unknown."""
    new, changed = _marks(avg, families, close, params, start)
    out = {k: np.array(v, copy=True) for k, v in old.items()}
    fresh = (new["last_bar"] >= 0) & (old["last_bar"] != -2)
    joins = fresh & ~changed & (old["last_bar"] >= 0) & (old["last_trend"] == new["last_trend"])
    for k in MARKS:
        out[k][fresh] = new[k][fresh]
    out["trend_bars"][joins] += old["trend_bars"][joins]
    return out


def stream_extras(close: np.ndarray, res, params: ATCParams) -> dict[str, np.ndarray]:
    """What an `atc run` task stores beside the state: the digests and the scan's marks of its
    symbols (``close`` on the whole time axis, ``res`` the kernel's outputs for them)."""
    from kernels.params import FAMILIES

    out = digest_arrays(close, np.asarray(close).shape[1])
    out.update(newest_marks(res["Average_Signal"], [res[f"{f}_Signal"] for f in FAMILIES], close, params))
    return out


#: Arrays beside the state arrays (each with the symbol as first axis).
EXTRAS: tuple[str, ...] = ("have", "hist_hash", "hist_head") + tuple(MARKS)


def _template(params: ATCParams, dtype: str) -> dict[str, np.ndarray]:
    from kernels.stream import StreamState

    arrays = StreamState.empty(0, params, dtype).to_arrays()
    arrays["have"] = np.zeros(0, np.int8)
    arrays["hist_hash"] = np.zeros(0, np.uint64)
    arrays["hist_head"] = np.zeros(0, np.uint64)
    for name, (dt, _, shape) in MARKS.items():
        arrays[name] = np.zeros((0,) + shape, dt)
    return arrays


def _create(g, name: str, a: np.ndarray, n_symbols: int, chunk_symbols: int) -> None:
    """One state array in symbol chunks. Multi-dimensional ones (the MA buffers: 7.8 MB for 2,000
    symbols) are compressed with zstd level 1: 2.64 x, encoded in 24 ms, where zarr's default
    (level 3) got 2.73 x in 103 ms, and every `atc update` rewrites them (2026-11-29)."""
    from zarr.codecs import ZstdCodec

    from pipeline.zarr_template import create_array

    fill = MARKS[name][1] if name in MARKS else 0
    create_array(g, name, shape=(n_symbols,) + a.shape[1:], dtype=a.dtype, chunks=(max(1, chunk_symbols),) + a.shape[1:],
                   fill_value=fill, compressors=None if a.ndim == 1 else ZstdCodec(level=1))


def price_blocks(prices: str | os.PathLike | None, fingerprint: str) -> list[str] | None:
    """The block digests of the price store at ``prices`` if it still has ``fingerprint`` (None
    otherwise, or for a store without block digests)."""
    import zarr

    if not prices or not (Path(prices) / "zarr.json").exists():
        return None
    attrs = zarr.open_group(str(prices), mode="r", zarr_format=3, use_consolidated=False).attrs
    blocks = attrs.get("fingerprint_blocks")
    return list(blocks) if blocks is not None and attrs.get("fingerprint") == fingerprint else None


def create_stream_group(path: str | os.PathLike, n_symbols: int, chunk_symbols: int, params: ATCParams,
                        dtype: str, n_time: int, prices_fingerprint: str) -> None:
    """Create (or replace) the empty `stream` group of a results store before its tasks run; its
    `price_blocks` are read from the price store the results store names (``prices_path``)."""
    import zarr

    root = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    blocks = price_blocks(root.attrs.get("prices_path"), prices_fingerprint)
    g = root.create_group(GROUP, overwrite=True)
    for name, a in _template(params, dtype).items():
        _create(g, name, a, n_symbols, chunk_symbols)
    g.attrs.update(stream_attrs(params, dtype, n_time, prices_fingerprint, blocks))


def stream_attrs(params: ATCParams, dtype: str, n_time: int, prices_fingerprint: str,
                 blocks: list[str] | None = None) -> dict[str, Any]:
    return {"params": json.dumps(params.to_dict(), sort_keys=True), "dtype": str(dtype), "n_time": int(n_time),
            "prices_fingerprint": prices_fingerprint, "price_blocks": blocks}


def has_stream(path: str | os.PathLike) -> bool:
    return (Path(path) / GROUP / "zarr.json").exists()


def write_stream_region(path: str | os.PathLike, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
    """Write symbols [start, stop) of every state array (a task's own chunk region); arrays a store
    created before they existed lacks are left out (they read as unknown)."""
    from pipeline.zarr_template import write_rows

    write_rows(Path(path) / GROUP, start, stop, arrays)


def read_stream(path: str | os.PathLike):
    """(StreamState, extras, attrs) of a results store's `stream` group: extras holds the `EXTRAS`
    arrays the group has (`have` as bool; stores written before lack `hist_head` and the marks)."""
    return stream_from_arrays(*read_stream_arrays(path))


def read_stream_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays by name, attrs) of a results store's `stream` group, as stored: what `read_stream`
    reads, without importing the stream kernels (Numba), so `atc update` reads them on a thread
    while the kernels load (chunk decoding and file reads release the GIL)."""
    import zarr

    g = zarr.open_group(str(Path(path) / GROUP), mode="r", zarr_format=3, use_consolidated=False)
    return {name: read_whole(g[name]) for name in sorted(g.array_keys())}, dict(g.attrs)


def stream_from_arrays(arrays: dict[str, np.ndarray], attrs: dict[str, Any]):
    """`read_stream`'s (StreamState, extras, attrs) from `read_stream_arrays`' output."""
    from kernels.stream import StreamState

    params = ATCParams(**json.loads(attrs["params"]))
    arrays = {name: arrays[name] for name in _template(params, attrs["dtype"]) if name in arrays}
    state = StreamState.from_arrays(arrays, params, attrs["dtype"])
    extras = {name: arrays[name] for name in EXTRAS if name in arrays}
    extras["have"] = extras["have"].astype(bool)
    return state, extras, attrs


def read_marks(path: str | os.PathLike, n_time: int) -> dict[str, np.ndarray] | None:
    """The scan's `MARKS` arrays when the group has them for the store's ``n_time`` times (None
    otherwise: a store written before, or an update that stopped before writing the state)."""
    import zarr

    if not has_stream(path):
        return None
    g = zarr.open_group(str(Path(path) / GROUP), mode="r", zarr_format=3, use_consolidated=False)
    if (int(g.attrs.get("n_time", -1)) != int(n_time) or g.attrs.get("writing")
            or not set(MARKS) <= set(g.array_keys())):
        return None
    return {name: read_whole(g[name]) for name in MARKS}


def write_stream(path: str | os.PathLike, state, extras: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Rewrite the whole state and the ``extras`` (after an update; arrays a store written before
    lacks are created) and then the attributes: they name the times the arrays cover, so they
    are written last.

    While the arrays are written the group says so (attribute `writing`): stopped half way, some
    symbols' state has the new times and their digests may not, and the update run again must
    not advance them twice; it recomputes every symbol from its history instead (`atc update`),
    and `read_marks` gives no marks."""
    import zarr

    g = zarr.open_group(str(Path(path) / GROUP), mode="r+", zarr_format=3, use_consolidated=False)
    g.attrs.update({"writing": True})
    arrays = state.to_arrays()
    arrays.update(extras)
    arrays["have"] = np.asarray(arrays["have"], np.int8)
    present = set(g.array_keys())
    k = int(g["have"].chunks[0])
    for name, a in arrays.items():
        if name not in present:
            _create(g, name, np.asarray(a)[:0], state.n_symbols, k)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:  # numcodecs releases the GIL
        list(pool.map(lambda item: write_whole(g[item[0]], item[1]), arrays.items()))
    g.attrs.update({**attrs, "writing": False})
