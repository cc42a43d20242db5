"""Writing a task's symbol chunk into a results store, and the codec of each results variable.

Split from :mod:`pipeline.results` (the store's format, identity and creation): this is the part
every worker task runs, so it imports only numpy and zarr.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np


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
    every variable, which no other task writes. The (symbol, time) variables are encoded chunk by
    chunk in this thread and stored through the zarr store (:func:`_write_rows`); the arrays are
    opened from their metadata files in this thread too (:func:`pipeline.zarr_template.open_arrays`)."""
    from pipeline.results import ResultsError  # here: pipeline.results imports this module
    from pipeline.zarr_template import open_arrays

    data: dict[str, np.ndarray] = dict(outputs)
    data["status"] = np.asarray(status, dtype=np.int8)
    data["reason"] = np.array(reasons, dtype=object)
    data.update({name: values for name, (_, values) in (extra or {}).items()})
    try:
        arrays = open_arrays(path, [*data, "chunk_done"])
    except KeyError as exc:
        raise ResultsError(f"{path}: no variable {exc.args[0]!r} in this results store") from None
    for name, values in data.items():
        arr = arrays[name]
        k = int(arr.chunks[0])
        if start % k or (stop - start) % k and stop != arr.shape[0] or np.shape(values)[0] != stop - start:
            raise ResultsError(f"{path}: symbols {start}..{stop - 1} are not whole chunks of {name!r} "
                               f"({k} symbols per chunk)")
    for name, values in data.items():
        arr = arrays[name]
        if not _write_rows(arr, start, values):
            arr[start:stop] = values
    arrays["chunk_done"][index] = 1


def _write_rows(arr: Any, start: int, values: np.ndarray) -> bool:
    """Store rows ``start..`` of a (symbol, time) array, whole symbol chunks, chunk by chunk:
    encoded with numcodecs' Blosc here and stored with the local store's synchronous ``set_sync``
    (atomic per chunk, as zarr writes), byte for byte what ``arr[start:stop] = values`` stores.

    Why: zarr 3.1's write path runs each chunk through its asyncio codec pipeline, two thread
    hops per chunk (codec, file) and a pass comparing the chunk with the fill value; a task writes
    ~130 chunks. Measured per task of 209 x 5,000 float64 (13 outputs, 49 MB encoded), median of
    8 alternating runs, CPU s: zarr 0.58 (~1,800 context switches), this path 0.37 (~440), of
    which Blosc ~0.10, the files ~0.09 and the chunk copies ~0.02. Like zarr's default
    (``write_empty_chunks`` False), a chunk that is all fill value is not stored (its key is
    removed). Returns False where this path does not apply (other codecs, not 2-D, another
    store): the caller then writes with zarr."""
    from pipeline.chunk_io import direct

    values = np.asarray(values)
    d = direct(arr) if values.ndim == 2 and arr.ndim == 2 else None
    if d is None:
        return False
    ks, kt = d.chunk_shape
    i = start // ks
    for j, t0 in enumerate(range(0, arr.shape[1], kt)):
        d.put((i, j), values[:, t0:t0 + kt])
    return True
