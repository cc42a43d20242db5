"""The results template written with zarr directly (pipeline/zarr_template.py) is the one xarray
writes: compared with a template written the way it was before (an xarray Dataset of lazy dask
arrays, ``to_zarr(compute=False)``), file by file and as xarray and zarr read them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from kernels import ATCParams
from pipeline import results as rs
from pipeline.price_format import TIME_CHUNK
from pipeline.store import open_prices, write_prices
from pipeline.synth import synth_prices


def xarray_template(path: Path, prices: xr.Dataset, identity: rs.RunIdentity, k: int, prices_path: str,
                    created: str) -> None:
    """The template as `create_results` wrote it up to 2026-11-29 (xarray + dask), verbatim but for
    the ``created`` time, which is given."""
    import dask.array as da

    n_sym, n_time = prices.sizes["symbol"], prices.sizes["time"]
    n_chunks = len(rs.chunk_bounds(n_sym, k))
    ft = np.dtype(identity.dtype)
    data_vars, encoding = {}, {}
    lazy_chunks = (k, max(1, min(n_time, TIME_CHUNK)))
    for name in rs.OUTPUT_CHOICES[identity.outputs]:
        lazy = da.zeros((n_sym, n_time), dtype=ft, chunks=lazy_chunks)
        data_vars[name] = (("symbol", "time"), lazy, {"description": rs._DESCRIPTIONS[name]})
        encoding[name] = {"compressors": [rs.results_codec(name)], "chunks": (k, TIME_CHUNK)}
    if identity.backtest:
        from kernels.backtest import BACKTEST_DESCRIPTIONS
        from kernels.metrics import METRIC_DESCRIPTIONS

        for name, desc in BACKTEST_DESCRIPTIONS.items():
            lazy = da.zeros((n_sym, n_time), dtype=np.float64, chunks=lazy_chunks)
            data_vars[name] = (("symbol", "time"), lazy, {"description": desc})
            encoding[name] = {"compressors": [rs.results_codec(name)], "chunks": (k, TIME_CHUNK)}
        for name, desc in METRIC_DESCRIPTIONS.items():
            data_vars[name] = (("symbol",), np.full(n_sym, np.nan), {"description": desc})
            encoding[name] = {"chunks": (k,)}
    flags = sorted(rs.STATUS_FLAGS)
    data_vars["status"] = (("symbol",), np.full(n_sym, rs.NOT_COMPUTED, np.int8), {
        "description": "outcome per symbol", "flag_values": flags,
        "flag_meanings": " ".join(rs.STATUS_FLAGS[c].replace(" ", "_") for c in flags)})
    encoding["status"] = {"compressors": [rs.results_codec("status")], "chunks": (k,)}
    data_vars["reason"] = (("symbol",), np.full(n_sym, "", dtype=object),
                           {"description": "why a symbol is not ok ('' when it is)"})
    encoding["reason"] = {"chunks": (k,)}
    data_vars["chunk_done"] = (("chunk",), np.zeros(n_chunks, np.int8),
                               {"description": "1 once the chunk's symbols are all written"})
    encoding["chunk_done"] = {"chunks": (1,)}
    coords = {"symbol": np.array([str(s) for s in prices["symbol"].values], dtype=object),
              "time": prices["time"].values}
    attrs = {
        "atc_format": rs.FORMAT_NAME, "atc_format_version": rs.FORMAT_VERSION, "params": identity.params_json(),
        "prices_fingerprint": identity.prices_fingerprint, "prices_path": prices_path,
        "fingerprint": identity.fingerprint(), "dtype": identity.dtype, "code_version": identity.code,
        "backend": "cpu", "chunk_symbols": k, "n_chunks": n_chunks,
        "versions": json.dumps(rs.versions(), sort_keys=True), "created": created,
        "status_codes": json.dumps({str(c): rs.STATUS_FLAGS[c] for c in flags}), "outputs": identity.outputs,
    }
    if identity.backtest:
        attrs["backtest"] = identity.backtest
    template = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        template.to_zarr(path, mode="w-", zarr_format=3, consolidated=False, encoding=encoding, compute=False)
    rs._consolidate(path)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CASES = [
    # symbols, bars, price chunk, results chunk, dtype, outputs, backtest, intraday
    (10, 50, 4, 4, "float64", "all", False, False),
    (23, 1300, 8, 8, "float32", "signals", False, False),  # several time chunks, a partial edge chunk
    (7, 40, 7, 7, "float64", "average", True, False),  # --backtest: series and per-symbol metrics
    (5, 30, 5, 2, "float64", "all", False, True),  # hourly times (other CF units), odd symbol names
]


@pytest.mark.parametrize("n_sym,n_bars,price_k,k,dtype,outputs,backtest,intraday", CASES)
def test_template_equals_xarrays(tmp_path, n_sym, n_bars, price_k, k, dtype, outputs, backtest, intraday):
    prices_path = tmp_path / "prices.zarr"
    ds = synth_prices(n_sym, n_bars, seed=5, freq="h" if intraday else "B")
    if intraday:  # and symbols of any characters
        ds = ds.assign_coords(symbol=["BRK.B", "ÆØÅ ö", "a b/c", "日本株", "x" * 40][:n_sym])
    write_prices(ds, prices_path, chunk_symbols=price_k)
    prices = open_prices(prices_path)
    bt = json.dumps({"fee_bps": 1.0, "long_only": False, "periods_per_year": None}, sort_keys=True) if backtest else ""
    identity = rs.RunIdentity(ATCParams(), prices.attrs["fingerprint"], dtype, rs.code_version(), bt, outputs)
    new, old = tmp_path / "new.zarr", tmp_path / "old.zarr"
    rs.create_results(new, prices, identity, k, prices_path=str(prices_path))
    created = zarr.open_group(str(new), mode="r").attrs["created"]
    xarray_template(old, prices, identity, k, str(prices_path), created)

    # every file: the same names, the same bytes (chunks), the same JSON (metadata, consolidated included)
    fn, fo = _files(new), _files(old)
    assert sorted(fn) == sorted(fo)
    for name in fo:
        if name.endswith("zarr.json"):
            assert json.loads(fn[name]) == json.loads(fo[name]), name
        else:
            assert fn[name] == fo[name], name
    assert fn["zarr.json"] == fo["zarr.json"]  # key order too: the consolidated metadata's listing
    assert any(n.startswith("status/c") for n in fn) and any(n.startswith("symbol/c") for n in fn)

    # as xarray reads them: variables, order, dims, shape, chunks, dtype, attributes, encoding, values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dn, do = xr.open_zarr(new), xr.open_zarr(old)
    assert list(dn.variables) == list(do.variables) and list(dn.data_vars) == list(do.data_vars)
    assert dn.attrs == do.attrs
    for v in do.variables:
        a, b = dn[v], do[v]
        assert (a.dims, a.shape, a.dtype, a.chunks, a.attrs) == (b.dims, b.shape, b.dtype, b.chunks, b.attrs), v
        assert repr(a.encoding) == repr(b.encoding), v  # codecs, fill value, chunks, units, calendar
        xr.testing.assert_identical(a.load(), b.load())
    np.testing.assert_array_equal(dn["time"].values, prices["time"].values)
    assert list(dn["symbol"].values) == [str(s) for s in prices["symbol"].values]

    # as zarr reads them: every array's metadata (codecs, fill value, dimension names)
    gn, go = zarr.open_group(str(new), mode="r"), zarr.open_group(str(old), mode="r")
    assert sorted(gn.array_keys()) == sorted(go.array_keys())
    for name in go.array_keys():
        assert gn[name].metadata.to_dict() == go[name].metadata.to_dict(), name
    assert (rs.read_state(new).chunk_done == rs.read_state(old).chunk_done).all()


def test_create_array_writes_what_zarr_writes(tmp_path):
    """The fast ``create_array`` (used for templates and the stream group) stores the very
    ``zarr.json`` zarr's ``Group.create_array`` stores, for the kinds of arrays the stores hold."""
    from zarr.codecs import BloscCodec, ZstdCodec

    from pipeline.zarr_template import create_array

    specs = {
        "series": dict(shape=(30, 1300), dtype="float32", chunks=(7, 512), fill_value=np.nan,
                       compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")],
                       dimension_names=("symbol", "time"), attributes={"description": "d", "_FillValue": "x"}),
        "status": dict(shape=(30,), dtype=np.int8, chunks=(7,), compressors=[rs.results_codec("status")],
                       dimension_names=("symbol",), attributes={"flag_values": [-1, 0, 1]}),
        "reason": dict(shape=(30,), dtype=str, chunks=(7,), dimension_names=("symbol",)),
        "ring": dict(shape=(30, 9, 64), dtype=np.float64, chunks=(7, 9, 64), fill_value=0,
                     compressors=ZstdCodec(level=1)),
        "hash": dict(shape=(30,), dtype=np.uint64, chunks=(7,), fill_value=0, compressors=None),
        "last_bar": dict(shape=(30,), dtype=np.int64, chunks=(7,), fill_value=-2, compressors=None),
        "empty": dict(shape=(0,), dtype=np.float64, chunks=(1,), fill_value=np.nan),
    }
    ref = zarr.open_group(str(tmp_path / "ref.zarr"), mode="w-", zarr_format=3)
    fast = zarr.open_group(str(tmp_path / "fast.zarr"), mode="w-", zarr_format=3)
    sub = fast.create_group("stream")  # a subgroup, as the stream group of a results store
    for name, kw in specs.items():
        ref.create_array(name, **kw)
        create_array(fast, name, **kw)
        create_array(sub, name, **kw)
        want = (tmp_path / "ref.zarr" / name / "zarr.json").read_bytes()
        assert (tmp_path / "fast.zarr" / name / "zarr.json").read_bytes() == want, name
        assert (tmp_path / "fast.zarr" / "stream" / name / "zarr.json").read_bytes() == want, name
    # the arrays work: written and read back through zarr
    g = zarr.open_group(str(tmp_path / "fast.zarr" / "stream"), mode="r+", use_consolidated=False)
    g["last_bar"][:] = np.arange(30)
    g["ring"][3:9] = 1.5
    assert (g["last_bar"][:] == np.arange(30)).all() and g["ring"][:].sum() == 1.5 * 6 * 9 * 64
    with pytest.raises(Exception, match="already|exists|Contains"):  # an existing node: zarr's own refusal
        create_array(fast, "hash", **specs["hash"])


def test_open_arrays_opens_what_zarr_opens(tmp_path):
    from pipeline.zarr_template import open_arrays

    prices_path = tmp_path / "prices.zarr"
    write_prices(synth_prices(9, 600, seed=2), prices_path, chunk_symbols=3)
    prices = open_prices(prices_path)
    res = tmp_path / "r.zarr"
    rs.create_results(res, prices, rs.RunIdentity(ATCParams(), prices.attrs["fingerprint"], "float64", "x"), 3)
    g = zarr.open_group(str(res), mode="r+", use_consolidated=False)
    names = ["EMA_Signal", "status", "reason", "chunk_done", "symbol", "time"]
    fast = open_arrays(res, names)
    for name in names:
        assert fast[name].metadata.to_dict() == g[name].metadata.to_dict() and fast[name].path == g[name].path, name
        np.testing.assert_array_equal(fast[name][:], g[name][:])
    fast["EMA_Signal"][3:6, 500:600] = 0.25  # writes land where zarr reads them
    fast["reason"][0] = "why"
    assert (g["EMA_Signal"][3:6, 500:600] == 0.25).all() and np.isnan(g["EMA_Signal"][:3]).all()
    assert g["reason"][0] == "why"
    with pytest.raises(KeyError):
        open_arrays(res, ["no_such_variable"])
    with pytest.raises(Exception):
        open_arrays(tmp_path / "missing.zarr", ["status"])


def test_write_rows_stores_what_zarr_stores(tmp_path):
    """write_rows (for the stream group's per-task regions) leaves every file as zarr's setitem
    does: whole chunks, a partial last chunk, all-fill chunks (not stored), regions that are not
    whole chunks and arrays chunked along other axes too (both through zarr), missing arrays."""
    from zarr.codecs import ZstdCodec

    from pipeline.zarr_template import write_rows

    rng = np.random.default_rng(4)
    n, k = 23, 5
    specs = {
        "t": dict(shape=(n,), dtype=np.int64, chunks=(k,), fill_value=-2, compressors=None),
        "ring": dict(shape=(n, 3, 7), dtype=np.float64, chunks=(k, 3, 7), fill_value=0,
                     compressors=ZstdCodec(level=1)),
        "have": dict(shape=(n,), dtype=np.int8, chunks=(k,), fill_value=0, compressors=None),
        "hash": dict(shape=(n,), dtype=np.uint64, chunks=(k,), fill_value=0, compressors=None),
        "tiled": dict(shape=(n, 8), dtype=np.float64, chunks=(k, 4), fill_value=np.nan),  # not along rows only
    }
    regions = [(0, 5), (5, 15), (20, 23), (15, 20), (3, 9)]  # the last one: not whole chunks
    groups = {}
    for how in ("zarr", "rows"):
        g = zarr.open_group(str(tmp_path / f"{how}.zarr"), mode="w-", zarr_format=3)
        for name, kw in specs.items():
            g.create_array(name, **kw)
        groups[how] = g
    for start, stop in regions:
        m = stop - start
        values = {
            "t": np.arange(start, stop) * 7, "ring": rng.standard_normal((m, 3, 7)),
            "have": np.ones(m, bool), "hash": rng.integers(0, 2**63, m).astype(np.uint64),
            "tiled": rng.standard_normal((m, 8)), "not_in_this_store": np.zeros(m),
        }
        if start == 15:
            values["ring"][:] = 0  # a chunk of fill values only: zarr removes it, so must write_rows
        for name, a in values.items():
            if name in specs:
                groups["zarr"][name][start:stop] = a
        write_rows(tmp_path / "rows.zarr", start, stop, values)
        assert _files(tmp_path / "zarr.zarr") == _files(tmp_path / "rows.zarr"), (start, stop)
    assert not (tmp_path / "rows.zarr" / "not_in_this_store").exists()
