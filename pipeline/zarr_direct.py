"""A price store's arrays read and written with json and numcodecs, without importing zarr.

Why: a fresh `atc ingest --append` of one bar spent ~0.5 CPU s importing zarr and ~0.2 s more in
zarr's asyncio pipeline (thread hops per chunk) for the handful of chunks it reads and writes
(2026-11-29, 2,000 x 5,000 store). The stores are plain Zarr v3 directories written by zarr
itself: ``zarr.json`` per node (written by zarr as ``json.dumps(..., indent=2)``), chunk files
under ``c/`` with the default "/" key encoding, codecs ``bytes`` then ``blosc`` or ``zstd`` (or
``vlen-utf8`` then ``zstd`` for the symbol names, read only). This module does what zarr does
with those, byte for byte (tests compare the files): chunks encoded by the same numcodecs
codecs, an edge chunk padded with the fill value, a chunk of fill values only not stored
(``write_empty_chunks=False``), each file replaced atomically (a hard-linked chunk file is never
written through), the root's consolidated metadata rebuilt from the arrays' metadata.

:func:`open_store` returns None for anything else (another codec, key encoding, data type,
storage transformers, a group without consolidated metadata) and the caller uses zarr.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import chunk_codec

__all__ = ["DirectArray", "DirectStore", "open_store"]

_NUMERIC = {"float64", "float32", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8"}
_FLOAT_FILL = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}


def _dumps(meta: dict) -> bytes:
    """A node's ``zarr.json`` as zarr writes it (config ``json_indent`` 2)."""
    return json.dumps(meta, indent=2, allow_nan=True).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by a new file: a hard link to an older store's file stays untouched."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


class DirectArray:
    """One array of a Zarr v3 directory: whole chunks decoded and encoded in this thread."""

    def __init__(self, path: Path, meta: dict, dtype: np.dtype, codec: Any, strings: bool) -> None:
        self.path, self.meta, self.dtype, self.codec, self.strings = path, meta, dtype, codec, strings
        self.chunks = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
        fill = meta["fill_value"]
        self.fill = _FLOAT_FILL.get(fill, fill) if isinstance(fill, str) and not strings else fill
        self.fill_nan = dtype.kind == "f" and bool(np.isnan(self.fill))

    @classmethod
    def open(cls, path: Path, meta: dict) -> "DirectArray | None":
        """The array at ``path`` (its ``zarr.json`` read as ``meta``), or None if not handled."""
        try:
            if (meta.get("node_type") != "array" or meta.get("zarr_format") != 3 or meta.get("storage_transformers")
                    or meta["chunk_grid"].get("name") != "regular"
                    or meta["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}):
                return None
            codecs, dt = list(meta["codecs"]), meta["data_type"]
            if len(meta["shape"]) != len(meta["chunk_grid"]["configuration"]["chunk_shape"]):
                return None
            if dt == "string":
                if codecs[0].get("name") != "vlen-utf8" or len(codecs) > 2:
                    return None
                codec = chunk_codec.compressor_for(codecs[1]) if len(codecs) == 2 else None
                if codec is chunk_codec.NOT_HANDLED:
                    return None
                return cls(path, meta, np.dtype(object), codec, True)
            if dt not in _NUMERIC:
                return None
            dtype = np.dtype(dt)
            codec = chunk_codec.codec_for(codecs, dtype)
            if codec is chunk_codec.NOT_HANDLED:
                return None
            fill = meta["fill_value"]
            if not (isinstance(fill, (int, float)) or (dtype.kind == "f" and fill in _FLOAT_FILL)):
                return None
            return cls(path, meta, dtype, codec, False)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError):
            return None

    # zarr's Array interface, as far as the price append uses it
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.meta["shape"])

    @property
    def ndim(self) -> int:
        return len(self.chunks)

    @property
    def attrs(self) -> dict:
        return self.meta.setdefault("attributes", {})

    def _file(self, index: tuple[int, ...]) -> Path:
        return self.path.joinpath("c", *map(str, index))

    def get_chunk(self, index: tuple[int, ...]) -> np.ndarray | None:
        """The decoded chunk (its whole chunk shape), or None where none is stored (all fill)."""
        try:
            raw = self._file(index).read_bytes()
        except FileNotFoundError:
            return None
        if self.strings:
            from numcodecs import VLenUTF8

            data = raw if self.codec is None else self.codec.decode(raw)
            return VLenUTF8().decode(bytes(data)).reshape(self.chunks)
        return chunk_codec.decode(self.codec, raw, self.dtype, self.chunks)

    def put_chunk(self, index: tuple[int, ...], block: np.ndarray) -> None:
        """Store one chunk as zarr does: an edge block padded with the fill value, a chunk of fill
        values only removed."""
        if self.strings:
            raise NotImplementedError("string arrays are read only here")
        f = self._file(index)
        data = chunk_codec.encode(self.codec, block, self.dtype, self.chunks, self.fill, self.fill_nan)
        if data is None:
            f.unlink(missing_ok=True)
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(f, data)

    def _region(self, key: Any) -> tuple[list[slice], list[bool]]:
        """Per axis the slice a key selects, and whether the axis was an integer (dropped)."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > self.ndim:
            raise IndexError("too many indices")
        key = key + (slice(None),) * (self.ndim - len(key))
        out, drop = [], []
        for k, n in zip(key, self.shape):
            if isinstance(k, (int, np.integer)):
                i = int(k) + n if k < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} out of bounds for size {n}")
                out.append(slice(i, i + 1))
                drop.append(True)
            elif isinstance(k, slice) and k.step in (None, 1):
                lo, hi, _ = k.indices(n)
                out.append(slice(lo, max(lo, hi)))
                drop.append(False)
            else:
                raise IndexError(f"unsupported selection {k!r}")
        return out, drop

    def __getitem__(self, key: Any) -> np.ndarray:
        region, drop = self._region(key)
        out = np.empty(tuple(s.stop - s.start for s in region), dtype=self.dtype)
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, self.chunks)]
        for index in np.ndindex(*(len(r) for r in ranges)):
            idx = tuple(r[i] for r, i in zip(ranges, index))
            chunk = self.get_chunk(idx)
            src, dst = [], []
            for i, s, c in zip(idx, region, self.chunks):
                lo, hi = max(s.start, i * c), min(s.stop, (i + 1) * c)
                src.append(slice(lo - i * c, hi - i * c))
                dst.append(slice(lo - s.start, hi - s.start))
            out[tuple(dst)] = self.fill if chunk is None else chunk[tuple(src)]
        return out[tuple(0 if d else slice(None) for d in drop)]

    def get_orthogonal_selection(self, selection: tuple) -> np.ndarray:
        rows, rest = selection[0], selection[1:]
        rows = np.asarray(rows)
        if rows.size == 0:
            return self[(slice(0, 0),) + rest]
        lo = int(rows.min())
        return self[(slice(lo, int(rows.max()) + 1),) + rest][rows - lo]

    def resize(self, shape: tuple[int, ...]) -> None:
        """A larger shape (as zarr's resize when growing: no chunk changes); shrinking is not
        handled. The metadata is written by :meth:`DirectStore.flush`."""
        if len(shape) != self.ndim or any(n < o for n, o in zip(shape, self.shape)):
            raise NotImplementedError("only growing an array is handled here")
        self.meta["shape"] = [int(n) for n in shape]

    def __setitem__(self, key: Any, values: Any) -> None:
        """Write a region that starts on chunk boundaries and runs to the end of every axis (what
        the price append writes: the newest time chunks, a whole 1-D coordinate)."""
        region, drop = self._region(key)
        if any(drop) or any(s.start % c or s.stop != n for s, c, n in zip(region, self.chunks, self.shape)):
            raise NotImplementedError("only whole trailing chunks are written here")
        values = np.broadcast_to(np.asarray(values), tuple(s.stop - s.start for s in region))
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, self.chunks)]
        for index in np.ndindex(*(len(r) for r in ranges)):
            idx = tuple(r[i] for r, i in zip(ranges, index))
            sel = tuple(slice(i * c - s.start, min((i + 1) * c, s.stop) - s.start)
                        for i, s, c in zip(idx, region, self.chunks))
            self.put_chunk(idx, values[sel])


class DirectStore:
    """A Zarr v3 directory whose arrays :class:`DirectArray` handles (the zarr group's subset
    the price append uses: ``attrs``, ``array_keys()``, ``store[name]``)."""

    def __init__(self, path: Path, root: dict, arrays: dict[str, DirectArray]) -> None:
        self.path, self.root, self.arrays = path, root, arrays

    @property
    def attrs(self) -> dict:
        return self.root["attributes"]

    def array_keys(self) -> list[str]:
        return list(self.arrays)

    def __getitem__(self, name: str) -> DirectArray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def flush(self) -> None:
        """Write every array's ``zarr.json`` (shapes and attributes changed in memory) and the
        root's, with the arrays' metadata consolidated as ``zarr.consolidate_metadata`` writes it
        (members sorted by name)."""
        for a in self.arrays.values():
            _write_atomic(a.path / "zarr.json", _dumps(a.meta))
        cm = self.root["consolidated_metadata"]
        cm["metadata"] = {k: self.arrays[k].meta for k in sorted(self.arrays, key=lambda k: k.casefold())}
        _write_atomic(self.path / "zarr.json", _dumps(self.root))


def open_store(path: str | os.PathLike) -> DirectStore | None:
    """The store at ``path`` for direct access, or None where zarr must handle it: a root
    without inline consolidated metadata, a member that is not an array this module handles,
    nested groups, or a member list that differs from the consolidated one."""
    path = Path(path)
    root = _read_json(path / "zarr.json")
    if not isinstance(root, dict) or root.get("node_type") != "group" or root.get("zarr_format") != 3:
        return None
    cm = root.get("consolidated_metadata")
    if not isinstance(cm, dict) or cm.get("kind") != "inline" or not isinstance(cm.get("metadata"), dict):
        return None
    if not isinstance(root.get("attributes"), dict) or list(root) != ["attributes", "zarr_format",
                                                                     "consolidated_metadata", "node_type"]:
        return None
    arrays: dict[str, DirectArray] = {}
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return None
    for entry in entries:
        if not entry.is_dir():
            continue
        meta = _read_json(Path(entry.path) / "zarr.json")
        if meta is None:
            continue  # not a node (zarr skips it too)
        arr = DirectArray.open(Path(entry.path), meta)
        if arr is None:
            return None
        arrays[entry.name] = arr
    if set(arrays) != set(cm["metadata"]) or any(cm["metadata"][k] != a.meta for k, a in arrays.items()):
        return None
    return DirectStore(path, root, arrays)
