"""One Zarr v3 chunk as zarr stores it, without zarr: the codec chain from an array's metadata
(its ``zarr.json`` form), decoding, and the bytes zarr would write for a block.

Why a module of its own: two writers bypass zarr's asyncio codec pipeline (~1-3 ms per chunk,
see :mod:`pipeline.chunk_io`), one holding zarr arrays (a run's tasks, `atc update`) and one that
must not even import zarr (a fresh `atc ingest --append`, :mod:`pipeline.zarr_direct`). Both
must leave exactly zarr's files, so the rules live here once: only ``bytes`` in this machine's
byte order, then nothing, ``zstd`` or ``blosc`` (with the typesize zarr recorded); an edge chunk
padded with the fill value; a chunk of fill values only not stored (zarr's default
``write_empty_chunks=False``).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

NOT_HANDLED = object()
"""What :func:`codec_for` returns for a chain this module does not write as zarr would."""


def codec_for(codecs: Sequence[dict], dtype: np.dtype) -> Any:
    """The numcodecs codec of the chain's bytes-to-bytes step (None for uncompressed bytes), or
    NOT_HANDLED. ``codecs`` is the ``codecs`` list of a ``zarr.json`` (``metadata.to_dict()``)."""
    codecs = list(codecs)
    if not codecs or codecs[0].get("name") != "bytes" or len(codecs) > 2:
        return NOT_HANDLED
    endian = (codecs[0].get("configuration") or {}).get("endian")
    if np.dtype(dtype).itemsize > 1 and endian != sys.byteorder:
        return NOT_HANDLED
    if len(codecs) == 1:
        return None
    return compressor_for(codecs[1])


def compressor_for(step: dict) -> Any:
    """The numcodecs codec zarr uses for one bytes-to-bytes step, or NOT_HANDLED."""
    name, conf = step.get("name"), step.get("configuration") or {}
    if name == "zstd":
        from numcodecs import Zstd

        return Zstd(level=int(conf.get("level", 0)), checksum=bool(conf.get("checksum", False)))
    if name == "blosc":
        from numcodecs import Blosc

        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        if conf.get("shuffle") not in shuffle or "typesize" not in conf:
            return NOT_HANDLED
        return Blosc(cname=str(conf["cname"]), clevel=int(conf["clevel"]), shuffle=shuffle[conf["shuffle"]],
                     blocksize=int(conf.get("blocksize", 0)), typesize=int(conf["typesize"]))
    return NOT_HANDLED


def decode(codec: Any, raw: bytes, dtype: np.dtype, chunk_shape: tuple[int, ...]) -> np.ndarray:
    """A stored chunk's values (read only: a view of the decoded bytes)."""
    data = raw if codec is None else codec.decode(raw)
    return np.frombuffer(data, dtype=dtype).reshape(chunk_shape)


def encode(codec: Any, block: np.ndarray, dtype: np.dtype, chunk_shape: tuple[int, ...], fill: Any,
           fill_nan: bool) -> bytes | None:
    """The bytes zarr stores for ``block`` (an edge block is padded with the fill value), or None
    where zarr stores nothing (every value the fill value)."""
    if np.shape(block) != chunk_shape:
        full = np.full(chunk_shape, fill, dtype=dtype)
        full[tuple(slice(0, n) for n in np.shape(block))] = block
        block = full
    else:
        block = np.ascontiguousarray(block, dtype=dtype)
    if all_fill(block, fill, fill_nan):
        return None
    data = block.tobytes() if codec is None else codec.encode(block)
    return data if isinstance(data, bytes) else bytes(data)


def all_fill(block: np.ndarray, fill: Any, fill_nan: bool) -> bool:
    """Whether every value is the fill value (the first and last decide at once almost always)."""
    flat = block.reshape(-1)
    if fill_nan:
        return bool(np.isnan(flat[0]) and np.isnan(flat[-1]) and np.isnan(flat).all())
    return bool(flat[0] == fill and flat[-1] == fill and (flat == fill).all())
