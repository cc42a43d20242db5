"""Zarr v3 arrays created, opened and written without zarr's per-call machinery, byte for byte
as zarr (and xarray through it) would: a store's template, and a task's small regions.

Why: a results store's template used to be an xarray Dataset of lazy dask arrays written with
``to_zarr(compute=False)``. Nothing of the big arrays is written, yet xarray built and optimised
a dask graph of every chunk (~0.45 CPU s at 2,000 x 5,000, ~2.4 s at 20,000 x 5,000) and the run
imported ``dask.array`` for it (~0.6 CPU s; even an xarray Variable built from numpy imports it).
Here (:func:`write_store`) each array gets the keywords xarray passes to zarr (dimension names,
chunks, codecs, fill value) and the attributes xarray adds (``_FillValue`` of a float array,
encoded by xarray's own coder); the time coordinate is CF-encoded by xarray's own function; the
few arrays with values (coordinates, ``status``) are written chunk by chunk. Every ``zarr.json``
is built by zarr's own metadata code and written directly (:func:`create_array`). Per task,
:func:`open_arrays` and :func:`write_rows` open arrays and store whole-chunk row regions in the
calling thread. Equivalence with xarray's template (metadata, consolidated metadata, every stored
byte, ``xr.open_zarr``'s view) and with zarr's own calls: ``tests/test_zarr_template.py``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from pipeline.chunk_io import put_rows, write_whole


@dataclass(frozen=True)
class ArraySpec:
    """One array of a template: what ``zarr.Group.create_array`` gets, and its values.

    ``data`` None means every value is the fill value: nothing is stored (zarr, and xarray through
    it, skip chunks of fill values only). ``compressors`` "auto" is zarr's default (what xarray
    writes when its encoding names none)."""

    shape: tuple[int, ...]
    dtype: Any
    chunks: tuple[int, ...]
    dims: tuple[str, ...] | None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    compressors: Any = "auto"
    fill_value: Any = None
    data: np.ndarray | None = None


def float_fill_attrs(dtype: Any) -> dict[str, Any]:
    """The ``_FillValue`` attribute xarray writes beside a float array's NaN fill value."""
    from xarray.backends.zarr import FillValueCoder

    return {"_FillValue": FillValueCoder.encode(np.nan, np.dtype(dtype))}


def series(shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], dims: tuple[str, ...],
           attrs: Mapping[str, Any], compressors: Any = "auto", data: np.ndarray | None = None) -> ArraySpec:
    """A float array as xarray writes one: NaN fill value, ``_FillValue`` attribute after the others."""
    return ArraySpec(tuple(shape), np.dtype(dtype), tuple(chunks), tuple(dims),
                     {**attrs, **float_fill_attrs(dtype)}, compressors, np.nan, data)


def time_coord(times: np.ndarray, dim: str = "time") -> ArraySpec:
    """A datetime64 coordinate CF-encoded as xarray encodes it (integers since the first time,
    units and calendar chosen by xarray's ``encode_cf_datetime``), one chunk."""
    from xarray.coding.times import encode_cf_datetime

    num, units, calendar = encode_cf_datetime(np.asarray(times), None, None)
    num = np.asarray(num)
    return ArraySpec(num.shape, num.dtype, (max(1, num.size),), (dim,),
                     {"units": units, "calendar": calendar}, data=num)


def string_coord(values: Any, dim: str) -> ArraySpec:
    """A coordinate of strings, one chunk (variable-length UTF-8, as xarray writes object strings)."""
    data = np.array([str(s) for s in values], dtype=object)
    return ArraySpec(data.shape, str, (max(1, data.size),), (dim,), data=data)


def write_store(path: str | os.PathLike, attrs: Mapping[str, Any], arrays: Mapping[str, ArraySpec]) -> None:
    """Create a Zarr v3 group at ``path`` (a new directory) with ``attrs``, create every array of
    ``arrays`` and store their values, then consolidate the metadata."""
    import zarr

    g = zarr.open_group(str(path), mode="w-", zarr_format=3, attributes=dict(attrs))
    for name, spec in arrays.items():
        create_array(g, name, shape=spec.shape, dtype=spec.dtype, chunks=spec.chunks, fill_value=spec.fill_value,
                     compressors=spec.compressors, dimension_names=spec.dims, attributes=dict(spec.attrs))
    for name, spec in arrays.items():
        if spec.data is not None:
            write_whole(g[name], spec.data)  # one chunk per task for `status`: not ~1-3 ms each via zarr
    consolidate(path)


def create_array(group: Any, name: str, *, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...],
                 fill_value: Any = None, compressors: Any = "auto", dimension_names: Any = None,
                 attributes: Mapping[str, Any] | None = None) -> None:
    """``group.create_array(name, ...)`` with these keywords, for a new array of a group in a local
    directory: its ``zarr.json`` is built by zarr's own metadata code and written here, byte for
    byte what zarr writes (tested), in ~0.5 ms instead of ~3-5 ms (zarr's existence checks, parent
    checks and file write each go through its event loop thread). A template has ~20 arrays, the
    stream group of a results store ~20 more. Anything else (another store, an existing node,
    a zarr without these internals) goes through ``group.create_array``."""
    kwargs = dict(shape=tuple(shape), dtype=dtype, chunks=tuple(chunks), fill_value=fill_value,
                  compressors=compressors, dimension_names=dimension_names,
                  attributes=dict(attributes) if attributes is not None else None)
    target = _local_dir(group, name)
    meta = _metadata(**kwargs) if target is not None and not (target / "zarr.json").exists() else None
    if meta is None:
        group.create_array(name, **kwargs)
        return
    from zarr.core.buffer import default_buffer_prototype

    files = meta.to_buffer_dict(default_buffer_prototype())
    target.mkdir(parents=False, exist_ok=True)
    for key, buf in files.items():
        (target / key).write_bytes(buf.to_bytes())


def _local_dir(group: Any, name: str) -> Any:
    """The directory of array ``name`` in ``group`` if the group is a directory of a local store."""
    from pathlib import Path

    from zarr.storage import LocalStore

    store = getattr(group, "store", None)
    if not isinstance(store, LocalStore) or getattr(store, "read_only", False) or "/" in name or not name:
        return None
    gdir = Path(store.root) / group.path if group.path else Path(store.root)
    return gdir / name if (gdir / "zarr.json").is_file() else None


def _metadata(*, shape, dtype, chunks, fill_value, compressors, dimension_names, attributes) -> Any:
    """The ArrayV3Metadata ``zarr.create_array`` builds for these keywords (the steps of zarr
    3.1's ``init_array``, unsharded), or None where this zarr lacks them."""
    try:
        from zarr.core.array import AsyncArray, _parse_chunk_encoding_v3, _parse_chunk_key_encoding
        from zarr.core.dtype import parse_dtype
    except ImportError:  # pragma: no cover - another zarr version: zarr's own path
        return None
    zdtype = parse_dtype(dtype, zarr_format=3)
    filters, serializer, compressors = _parse_chunk_encoding_v3(compressors=compressors, filters="auto",
                                                                serializer="auto", dtype=zdtype)
    return AsyncArray._create_metadata_v3(
        shape=shape, dtype=zdtype, chunk_shape=chunks, fill_value=fill_value,
        chunk_key_encoding=_parse_chunk_key_encoding(None, zarr_format=3),
        codecs=(*filters, serializer, *compressors), dimension_names=dimension_names, attributes=attributes)


def consolidate(path: str | os.PathLike) -> None:
    """Refresh the consolidated metadata (what a plain ``xarray.open_zarr`` reads)."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the Zarr v3 spec"
        zarr.consolidate_metadata(str(path), zarr_format=3)


def open_arrays(path: str | os.PathLike, names: Any) -> dict[str, Any]:
    """``{name: group[name]}`` for arrays of the Zarr v3 group in directory ``path``, opened for
    writing: each ``zarr.json`` read and parsed in this thread (~0.4 ms an array) where
    ``zarr.open_group(path)[name]`` takes ~1.5 ms (its reads go through zarr's event loop thread).
    A run task opens ~16 results arrays and ~17 stream arrays: ~0.04 CPU s a task this way.
    A name that is not an array of the group raises KeyError, as ``group[name]`` does."""
    import json
    from pathlib import Path

    try:
        from zarr.core.array import Array, AsyncArray
        from zarr.core.metadata.v3 import ArrayV3Metadata
        from zarr.storage import LocalStore, StorePath
    except ImportError:  # pragma: no cover - another zarr version: zarr's own path
        return _open_with_zarr(path, names)
    if not (Path(path) / "zarr.json").is_file():  # no group there: zarr's own error
        return _open_with_zarr(path, names)
    store = LocalStore(str(path))
    out: dict[str, Any] = {}
    for name in names:
        try:
            meta = json.loads((Path(path) / name / "zarr.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(name) from None
        if "/" in name or meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            out.update(_open_with_zarr(path, [name]))
            continue
        out[name] = Array(AsyncArray(metadata=ArrayV3Metadata.from_dict(meta), store_path=StorePath(store, name)))
    return out


def _open_with_zarr(path: str | os.PathLike, names: Any) -> dict[str, Any]:
    import zarr

    g = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    return {name: g[name] for name in names}


def write_rows(path: str | os.PathLike, start: int, stop: int, arrays: Mapping[str, np.ndarray]) -> None:
    """``group[name][start:stop] = values`` for every array of ``arrays`` that the group in
    directory ``path`` holds (others are skipped: a store written before they existed lacks them).

    For arrays chunked along their first axis only and a region of whole chunks (a run task's own
    symbol chunk, e.g. in the `stream` group), the chunks are encoded and stored in this thread
    (:mod:`pipeline.chunk_io`, byte for byte zarr's); anything else goes through zarr. Measured on
    the 17 arrays of a task's stream state (209 symbols), 2026-11-29: 0.073 CPU s through zarr
    (group listing, opening, one event-loop round trip per array), 0.017 s this way."""
    from pathlib import Path

    d = Path(path)
    names = [name for name in arrays if (d / name / "zarr.json").is_file()]
    opened = open_arrays(d, names)
    for name in names:
        arr, values = opened[name], np.asarray(arrays[name])
        if not put_rows(arr, start, stop, values):
            arr[start:stop] = values
