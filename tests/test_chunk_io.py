"""pipeline/chunk_io.py writes chunks without zarr's codec pipeline: the files must be byte for
byte what zarr itself stores, and zarr must read them back as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from pipeline.chunk_io import direct, read_whole, write_whole
from pipeline.results_write import _write_rows

CODECS = {
    "lz4-noshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")],
    "lz4-shuffle": [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")],
    "zstd-bitshuffle": [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")],
    "zstd": [ZstdCodec(level=1)],
    "none": None,
}


def _values(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        v = np.round(rng.standard_normal(shape), 2).astype(dtype)
        v[:12, :600] = np.nan  # a late listing: whole chunks of NaN (not stored)
        return v
    return rng.integers(-1, 2, shape).astype(dtype)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pair(tmp_path, shape, chunks, dtype, codec):
    made = []
    for name in ("zarr", "direct"):
        g = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=3)
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        made.append(g.create_array("v", shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                                   compressors=codec))
    return made


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("dtype", ["float64", "float32", "int8"])
def test_symbol_chunk_rows_are_the_bytes_zarr_writes(tmp_path, codec, dtype):
    shape, chunks = (23, 1100), (10, 512)  # edge chunks in both directions
    values = _values(shape, dtype, 1)
    by_zarr, by_direct = _pair(tmp_path, shape, chunks, dtype, CODECS[codec])
    for start in range(0, shape[0], chunks[0]):
        stop = min(start + chunks[0], shape[0])
        by_zarr[start:stop] = values[start:stop]
        assert _write_rows(by_direct, start, values[start:stop])
    assert _files(tmp_path / "direct") == _files(tmp_path / "zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "direct"), path="v")[:], values)


@pytest.mark.parametrize("codec", ["lz4-shuffle", "zstd", "none"])
def test_whole_arrays_along_rows_round_trip_and_match_zarr(tmp_path, codec):
    shape, chunks = (25, 4, 3), (10, 4, 3)
    values = _values((25, 12), "float64", 2).reshape(shape)
    by_zarr, by_direct = _pair(tmp_path, shape, chunks, "float64", CODECS[codec])
    by_zarr[:] = values
    write_whole(by_direct, values)
    assert _files(tmp_path / "direct") == _files(tmp_path / "zarr")
    np.testing.assert_array_equal(read_whole(by_direct), values)
    write_whole(by_direct, np.full(shape, np.nan))  # all fill: the chunk files go, as with zarr
    by_zarr[:] = np.nan
    assert _files(tmp_path / "direct") == _files(tmp_path / "zarr")
    assert np.isnan(read_whole(by_direct)).all()


def test_codecs_it_does_not_know_are_left_to_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "s"), mode="w", zarr_format=3)
    arr = g.create_array("v", shape=(4, 8), chunks=(2, 8), dtype="float64", compressors=[GzipCodec()])
    assert direct(arr) is None
    assert not _write_rows(arr, 0, np.ones((2, 8)))
    write_whole(arr, np.arange(32.0).reshape(4, 8))  # falls back to zarr's own write
    np.testing.assert_array_equal(read_whole(arr), np.arange(32.0).reshape(4, 8))
