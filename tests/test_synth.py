"""Synthetic universes (pipeline/synth.py) and `atc synth`."""

from __future__ import annotations

import importlib.util
import sys
import time
import types

import numpy as np
import pytest
import xarray as xr

from pipeline.store import StoreError, open_prices, validate_prices
from pipeline.synth import MIN_VALID_BARS, synth_prices


def run(*args) -> int:
    if "flows.bench_cmd" not in sys.modules and importlib.util.find_spec("flows.bench_cmd") is None:
        stub = types.ModuleType("flows.bench_cmd")  # another issue's module, not there yet
        stub.bench_kernel = lambda: None
        sys.modules["flows.bench_cmd"] = stub
    from flows.cli import main

    return main([str(a) for a in args])


def test_deterministic_for_a_seed():
    a = synth_prices(40, 400, seed=3, ohlcv=True)
    b = synth_prices(40, 400, seed=3, ohlcv=True)
    xr.testing.assert_identical(a, b)
    assert not np.array_equal(a["close"].values, synth_prices(40, 400, seed=4)["close"].values, equal_nan=True)


def test_properties():
    ds = synth_prices(200, 1200, seed=1, freq="B")
    validate_prices(ds)  # positive, no interior NaN, unique symbols, increasing time
    c = ds["close"].values
    valid = ~np.isnan(c)
    assert valid.sum(axis=1).min() >= MIN_VALID_BARS
    assert valid[0].all()  # the first symbol spans the whole axis
    late, dead = ~valid[:, 0], ~valid[:, -1]
    assert 10 < late.sum() < 60 and 0 < dead.sum() < 30
    r = np.diff(np.log(c), axis=1)
    vol = np.nanstd(r, axis=1) * np.sqrt(252)
    assert 0.05 < np.median(vol) < 0.6 and vol.max() / vol.min() > 3  # different volatilities
    # regime changes: volatility differs between the halves of a history
    full = r[valid.all(axis=1)]
    halves = np.std(full[:, :550], axis=1) / np.std(full[:, 650:], axis=1)
    assert np.mean(np.abs(np.log(halves)) > 0.2) > 0.2
    assert str(ds["symbol"].values[0]) == "SYN0000" and ds["time"].values[1] - ds["time"].values[0] == np.timedelta64(1, "D")


def test_ohlcv_consistent():
    ds = synth_prices(30, 300, seed=2, ohlcv=True)
    validate_prices(ds)
    o, h, lo, c, v = (ds[k].values for k in ("open", "high", "low", "close", "volume"))
    m = ~np.isnan(c)
    assert np.array_equal(m, ~np.isnan(o)) and np.array_equal(m, ~np.isnan(v))
    assert (h[m] >= np.maximum(o, c)[m]).all() and (lo[m] <= np.minimum(o, c)[m]).all()
    assert (v[m] >= 0).all()


@pytest.mark.parametrize("n, t", [(1, 1), (3, 5), (2, 151)])
def test_tiny_shapes(n, t):
    ds = synth_prices(n, t, seed=0)
    assert ds["close"].shape == (n, t) and not np.isnan(ds["close"].values).any()


def test_fast():
    t0 = time.perf_counter()
    synth_prices(400, 5000, seed=0)
    assert time.perf_counter() - t0 < 3.0  # 2000 x 5000 takes ~1.5 s on a shared 2-core box


def test_bad_arguments():
    with pytest.raises(StoreError, match="at least 1 symbol"):
        synth_prices(0, 10)
    with pytest.raises(StoreError, match="bad frequency 'fortnightly'"):
        synth_prices(2, 10, freq="fortnightly")


def test_cli_synth(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    assert run("synth", store, "--symbols", 12, "--bars", 300, "--seed", 5, "--chunk-symbols", 5, "--ohlcv") == 0
    out = capsys.readouterr().out
    assert "12 symbols x 300 times (open, high, low, close, volume)" in out and "5 symbols per chunk" in out
    ds = open_prices(store, verify=True)
    assert ds.attrs["source"].startswith("synth(n_symbols=12, n_bars=300, seed=5")
    expected = synth_prices(12, 300, seed=5, ohlcv=True)
    np.testing.assert_array_equal(ds["close"].values, expected["close"].values)
    # same seed, same fingerprint; an existing store needs --overwrite
    assert run("synth", store, "--symbols", 12, "--bars", 300, "--seed", 5, "--ohlcv") == 2
    assert "already exists" in capsys.readouterr().err
    fp = ds.attrs["fingerprint"]
    assert run("synth", store, "--symbols", 12, "--bars", 300, "--seed", 5, "--ohlcv", "--overwrite") == 0
    assert open_prices(store).attrs["fingerprint"] == fp


@pytest.mark.parametrize(
    "args, message",
    [
        (["--symbols", "0"], "at least 1 symbol"),
        (["--freq", "nope"], "bad frequency 'nope'"),
        (["--chunk-symbols", "0"], "chunk_symbols must be >= 1"),
    ],
)
def test_cli_synth_bad_arguments(tmp_path, capsys, args, message):
    assert run("synth", tmp_path / "s.zarr", "--bars", 10, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "s.zarr").exists() and list(tmp_path.iterdir()) == []


def test_cli_synth_same_store_whatever_the_chunk_size(tmp_path):
    """`atc synth` streams symbol chunks from fixed generation blocks (GEN_BLOCK symbols), so the
    chunk size changes the layout only: same values, same fingerprint."""
    from pipeline.synth import GEN_BLOCK

    n = GEN_BLOCK + 45  # two generation blocks, cut differently by each chunk size
    for k in (7, 300):
        assert run("synth", tmp_path / f"s{k}.zarr", "--symbols", n, "--bars", 200, "--seed", 9, "--ohlcv",
                   "--chunk-symbols", k) == 0
    a, b = open_prices(tmp_path / "s7.zarr", verify=True), open_prices(tmp_path / "s300.zarr", verify=True)
    assert a["close"].encoding["chunks"][0] == 7 and b["close"].encoding["chunks"][0] == 300
    assert a.drop_attrs().identical(b.drop_attrs()) and a.attrs["fingerprint"] == b.attrs["fingerprint"]
