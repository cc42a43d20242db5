"""pipeline/zarr_direct.py: a store's arrays read and written without zarr, exactly as zarr does."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from pipeline.zarr_direct import open_store

CODECS = {
    "blosc-zstd-bitshuffle": [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")],
    "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")],
    "zstd": [ZstdCodec(level=0)],
    "none": [],
}


def _group(path: Path, codec: str, shape=(23, 37), chunks=(5, 8), dtype="float64", fill=np.nan) -> Path:
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    rng = np.random.default_rng(0)
    a = g.create_array("close", shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                       compressors=CODECS[codec], dimension_names=("symbol", "time"))
    vals = rng.uniform(1, 100, shape).astype(dtype) if np.dtype(dtype).kind == "f" else \
        rng.integers(0, 9, shape).astype(dtype)
    if np.dtype(dtype).kind == "f":
        vals[3] = np.nan  # a row without values
        vals[:, 30:] = np.nan
    a[:] = vals
    t = g.create_array("time", shape=(shape[1],), chunks=(shape[1],), dtype="int64", fill_value=0,
                       compressors=[ZstdCodec(level=0)])
    t[:] = np.arange(shape[1]) * 3
    t.attrs.update({"units": "days since 2000-01-03", "calendar": "proleptic_gregorian"})
    s = g.create_array("symbol", shape=(shape[0],), chunks=(shape[0],), dtype=str, compressors=[ZstdCodec(level=0)])
    s[:] = np.array([f"S{i}" for i in range(shape[0])], dtype=object)
    f = g.create_array("filled_gaps", shape=(shape[0],), chunks=(chunks[0],), dtype="int64", fill_value=0,
                       compressors=CODECS[codec])
    f[:] = np.zeros(shape[0], np.int64)
    g.attrs.update({"fingerprint": "x", "history": ["a"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path), zarr_format=3)
    return path


def _files(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("dtype", ["float64", "int64"])
def test_reads_what_zarr_reads(tmp_path, codec, dtype):
    path = _group(tmp_path / "s.zarr", codec, dtype=dtype, fill=np.nan if dtype == "float64" else 0)
    d, z = open_store(path), zarr.open_group(str(path), mode="r")
    assert d is not None and sorted(d.array_keys()) == sorted(z.array_keys())
    assert d.attrs == dict(z.attrs) and d["time"].attrs == dict(z["time"].attrs)
    for key in [(slice(None), slice(None)), (slice(3, 17), slice(8, 37)), (4, slice(None)), (slice(0, 5), 36),
                (slice(22, 23), slice(29, 31)), (slice(5, 5), slice(None))]:
        a, b = d["close"][key], z["close"][key]
        assert a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes(), key
    rows = np.array([1, 4, 9, 20])
    assert d["close"].get_orthogonal_selection((rows, slice(7, 30))).tobytes() == \
        z["close"].get_orthogonal_selection((rows, slice(7, 30))).tobytes()
    assert list(d["symbol"][:]) == list(z["symbol"][:])
    assert d["time"][:].tobytes() == z["time"][:].tobytes()


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_writes_the_files_zarr_writes(tmp_path, codec):
    """Growing the arrays and writing their trailing chunks (with an all-NaN chunk, which is not
    stored, and an edge chunk), the coordinates, attributes and consolidated metadata: every
    file as zarr leaves it."""
    base = _group(tmp_path / "base.zarr", codec)
    a, b = tmp_path / "direct.zarr", tmp_path / "zarr.zarr"
    shutil.copytree(base, a)
    shutil.copytree(base, b)
    rng = np.random.default_rng(1)
    new = rng.uniform(1, 9, (23, 45 - 32))
    new[5:10] = np.nan  # a whole chunk of fill values
    for path, g in ((a, open_store(a)), (b, zarr.open_group(str(b), mode="r+", zarr_format=3))):
        c = g["close"]
        c.resize((23, 45))
        c[:, 32:] = new
        t = g["time"]
        t.resize((45,))
        t[:] = np.arange(45) * 3
        f = g["filled_gaps"]
        f[:] = np.r_[np.zeros(20, np.int64), [1, 2, 0]]
        g.attrs.update({"fingerprint": "y", "history": ["a", "b"], "new": 1})
        if hasattr(g, "flush"):
            g.flush()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                zarr.consolidate_metadata(str(path), zarr_format=3)
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert [k for k in fa if fa[k] != fb[k]] == []
    assert not (a / "close" / "c" / "1" / "4").exists()  # rows 5..9, times 32..39: all NaN, not stored


def test_linked_chunk_files_are_never_written_through(tmp_path):
    base = _group(tmp_path / "base.zarr", "zstd")
    a = tmp_path / "a.zarr"
    shutil.copytree(base, a)
    chunk = a / "close" / "c" / "0" / "3"
    before = (base / "close" / "c" / "0" / "3").read_bytes()
    chunk.unlink()
    chunk.hardlink_to(base / "close" / "c" / "0" / "3")
    g = open_store(a)
    g["close"][:, 24:] = np.ones((23, 13))
    assert (base / "close" / "c" / "0" / "3").read_bytes() == before
    assert chunk.read_bytes() != before and chunk.stat().st_nlink == 1


def test_other_layouts_are_left_to_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "gzip.zarr"), mode="w", zarr_format=3)
    g.create_array("close", shape=(4, 4), chunks=(2, 2), dtype="float64", compressors=[GzipCodec()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(tmp_path / "gzip.zarr"), zarr_format=3)
    assert open_store(tmp_path / "gzip.zarr") is None  # a codec not handled here
    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    g.create_array("close", shape=(4, 4), chunks=(2, 2), dtype="float64")
    assert open_store(tmp_path / "plain.zarr") is None  # no consolidated metadata
    path = _group(tmp_path / "stale.zarr", "zstd")
    zarr.open_group(str(path), mode="r+", zarr_format=3).create_array("extra", shape=(2,), dtype="int64")
    assert open_store(path) is None  # consolidated metadata that does not list every array
    assert open_store(tmp_path / "missing.zarr") is None
