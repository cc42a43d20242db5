"""Time-chunked stores (issues 10 item 2, 12 items 3-4): layout, cheap appends, the block
fingerprint, growing a results store by new time steps, reading the newest bars, bounded writes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from kernels import OUTPUT_NAMES, ATCParams
from pipeline import price_append_chunks
from pipeline import results as rs
from pipeline.price_store import write_prices_chunked
from pipeline.store import (
    TIME_CHUNK,
    StoreError,
    append_prices,
    fingerprint_prices,
    open_prices,
    to_frames,
    write_prices,
)
from pipeline.synth import synth_prices, synth_universe

N_BARS = 2 * TIME_CHUNK + 300  # three time chunks, the last one partial


def _inodes(path: Path) -> dict[str, int]:
    return {str(Path(r, f).relative_to(path)): os.stat(Path(r, f)).st_ino for r, _, fs in os.walk(path) for f in fs}


def _tree(path: Path) -> dict[str, bytes]:
    return {str(Path(r, f).relative_to(path)): Path(r, f).read_bytes() for r, _, fs in os.walk(path) for f in fs}


def _split(full: xr.Dataset, cut: int):
    """The frames of ``full`` up to time index ``cut`` (a store) and the bars after it (an append)."""
    frames = to_frames(full)
    t_cut = pd.Timestamp(full["time"].values[cut - 1])
    head = {s: f[f.index <= t_cut] for s, f in frames.items()}
    tail = {s: f[f.index > t_cut] for s, f in frames.items()}
    return {s: f for s, f in head.items() if len(f)}, {s: f for s, f in tail.items() if len(f)}


@pytest.fixture(scope="module")
def universe():
    return synth_prices(24, N_BARS, seed=7, ohlcv=True)


def test_new_stores_chunk_time(tmp_path, universe):
    write_prices(universe, tmp_path / "p.zarr", chunk_symbols=5)
    g = zarr.open_group(tmp_path / "p.zarr", mode="r")
    assert g["close"].chunks == (5, TIME_CHUNK) and g.attrs["time_chunk"] == TIME_CHUNK
    assert g.attrs["atc_format_version"] == 3 and len(g.attrs["fingerprint_blocks"]) == 3


@pytest.mark.parametrize("fill", ["none", "ffill"])
def test_cheap_append_equals_a_fresh_write_and_keeps_old_chunks(tmp_path, universe, fill):
    head, tail = _split(universe, N_BARS - 5)
    tail = {s: f for s, f in tail.items() if s in head}  # new symbols: next test
    p, ref = tmp_path / "p.zarr", tmp_path / "ref.zarr"
    write_prices(head, p, chunk_symbols=5, fill=fill)
    before = _inodes(p)
    s = append_prices(tail, p)
    assert s.action == "appended" and s.added_bars == sum(len(f) for f in tail.values())
    after = _inodes(p)
    # chunks of the first two time chunks are the same files (hard links); the last one is new
    kept = [k for k in before if k.startswith("close/c/") and not k.endswith("/2")]
    assert kept and all(after[k] == before[k] for k in kept)
    assert all(after[k] != before[k] for k in before if k.startswith("close/c/") and k.endswith("/2"))
    # same data and the same fingerprint as writing everything at once
    write_prices({sym: pd.concat([head.get(sym, f.iloc[:0]), f]) if sym in tail else f
                  for sym, f in {**head, **tail}.items()}, ref, chunk_symbols=5, fill=fill)
    got, want = open_prices(p, verify=True), open_prices(ref)
    xr.testing.assert_identical(got.drop_attrs(), want.drop_attrs())
    assert got.attrs["fingerprint"] == want.attrs["fingerprint"] == fingerprint_prices(want)
    assert got.attrs["fingerprint_blocks"] == want.attrs["fingerprint_blocks"]
    assert got.attrs["own_bars"] == want.attrs["own_bars"] and got.attrs["filled_gaps_total"] == want.attrs["filled_gaps_total"]


def test_cheap_append_with_new_symbols_and_a_new_chunk(tmp_path, universe):
    head, tail = _split(universe, 2 * TIME_CHUNK)  # the append opens the third time chunk
    syms = sorted(head)
    store = {s: head[s] for s in syms[:-3]}
    new = {s: pd.concat([head[s], tail.get(s, head[s].iloc[:0])]) for s in syms[-3:]}  # whole histories
    p = tmp_path / "p.zarr"
    write_prices(store, p, chunk_symbols=5)
    s = append_prices({**{k: v for k, v in tail.items() if k in store}, **new}, p)
    assert s.added_symbols == 3
    ref = tmp_path / "ref.zarr"
    write_prices({k: pd.concat([store[k], tail.get(k, store[k].iloc[:0])]) for k in store} | new, ref, chunk_symbols=5)
    got, want = open_prices(p, verify=True), open_prices(ref)
    assert list(got["symbol"].values) == list(want["symbol"].values)
    np.testing.assert_array_equal(got["close"].values, want["close"].values)
    assert got.attrs["fingerprint"] == want.attrs["fingerprint"]


def test_any_changed_value_changes_the_fingerprint(tmp_path, universe):
    p = tmp_path / "p.zarr"
    write_prices(universe, p, chunk_symbols=5)
    fp = open_prices(p).attrs["fingerprint"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        ds = open_prices(p).load()
        v = str(rng.choice(["open", "high", "low", "close", "volume"]))
        i, j = np.argwhere(~np.isnan(ds[v].values))[rng.integers(0, np.count_nonzero(~np.isnan(ds[v].values)))]
        ds[v].values[i, j] = np.nextafter(ds[v].values[i, j], np.inf)  # one ulp
        assert fingerprint_prices(ds) != fp
    ds = open_prices(p).load()
    ds["close"].values[0, 0] = np.nan  # a bar removed
    assert fingerprint_prices(ds) != fp
    zarr.open_array(p / "close", mode="r+")[3, 5] = 1.5  # data changed behind the store's back
    with pytest.raises(StoreError, match="fingerprint mismatch"):
        open_prices(p, verify=True)


def test_failed_cheap_append_leaves_the_store_as_it_was(tmp_path, universe, monkeypatch):
    head, tail = _split(universe, N_BARS - 5)
    p = tmp_path / "p.zarr"
    write_prices(head, p, chunk_symbols=5)
    before = _tree(p)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(price_append_chunks, "_write_coords", boom)
    with pytest.raises(StoreError, match="No space left"):
        append_prices(tail, p)
    assert _tree(p) == before and sorted(os.listdir(tmp_path)) == ["p.zarr"]
    open_prices(p, verify=True)


def test_version_2_store_without_time_chunks_appends_and_becomes_version_3(tmp_path, universe):
    head, tail = _split(universe, N_BARS - 5)
    src = tmp_path / "src.zarr"
    write_prices(head, src, chunk_symbols=5)
    ds = open_prices(src).load()
    ds.attrs.update(atc_format_version=2)
    for a in ("fingerprint_blocks", "time_chunk", "own_bars"):
        ds.attrs.pop(a)
    ds.attrs["fingerprint"] = fingerprint_prices(ds)  # the version 2 (whole-content) fingerprint
    for v in ds.variables.values():
        v.encoding.pop("chunks", None), v.encoding.pop("preferred_chunks", None)
    p = tmp_path / "v2.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the Zarr v3 spec"
        ds.to_zarr(p, zarr_format=3, consolidated=True)
    assert zarr.open_group(p, mode="r")["close"].chunks[1] == ds.sizes["time"]  # whole histories
    open_prices(p, verify=True)
    append_prices(tail, p)
    got = open_prices(p, verify=True)
    assert got.attrs["atc_format_version"] == 3 and zarr.open_group(p, mode="r")["close"].chunks == (5, TIME_CHUNK)


def test_append_inserting_a_time_rebuilds_and_still_checks(tmp_path, universe):
    head, _ = _split(universe, N_BARS - 5)
    p = tmp_path / "p.zarr"
    write_prices(head, p, chunk_symbols=5)
    t_mid = pd.Timestamp(universe["time"].values[100]) + pd.Timedelta(hours=12)  # not on the axis
    s = append_prices({"LATE": pd.Series([5.0, 6.0], index=pd.DatetimeIndex([t_mid, t_mid + pd.Timedelta(days=1)]))}, p)
    assert s.added_symbols == 1 and open_prices(p, verify=True).sizes["time"] == N_BARS - 5 + 2
    sym = sorted(head)[0]
    last = head[sym].index[-1]
    bad = head[sym].iloc[-1:].copy()
    bad["close"] *= 1.01
    with pytest.raises(StoreError, match=f"overlapping bar disagrees for symbol '{sym}' at {last:%Y-%m-%d}"):
        append_prices({sym: bad}, p)


@pytest.mark.parametrize("k", [1, 7, 300])
def test_synth_store_is_the_same_whatever_the_chunk_size(tmp_path, k):
    u = synth_universe(300, 400, seed=4, ohlcv=True)
    write_prices_chunked(tmp_path / "a.zarr", u.symbols, u.times.values, u.variables, u.batches(), chunk_symbols=k,
                         source=u.source)
    ref = tmp_path / "ref.zarr"
    write_prices(synth_prices(300, 400, seed=4, ohlcv=True), ref, chunk_symbols=64)
    got, want = open_prices(tmp_path / "a.zarr", verify=True), open_prices(ref)
    for v in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(got[v].values, want[v].values)
    assert got.attrs["fingerprint"] == want.attrs["fingerprint"] and got.attrs["own_bars"] == want.attrs["own_bars"]


def test_chunked_writer_refuses_bad_rows_and_leaves_nothing(tmp_path):
    times = pd.date_range("2020-01-01", periods=5).values
    rows = [{"close": np.array([[1.0, 2, 3, 4, 5]])}, {"close": np.array([[1.0, -2, 3, 4, 5]])}]
    with pytest.raises(StoreError, match="close <= 0 .* for symbol 'B' at 2020-01-02"):
        write_prices_chunked(tmp_path / "p.zarr", ["A", "B"], times, ["close"], iter(rows), chunk_symbols=1)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------- results store

def _results(tmp_path: Path, n_sym: int = 12, n_bars: int = N_BARS, k: int = 5) -> tuple[Path, xr.Dataset]:
    px = tmp_path / "px.zarr"
    write_prices(synth_prices(n_sym, n_bars, seed=3), px, chunk_symbols=k)
    prices = open_prices(px)
    path = tmp_path / "res.zarr"
    rs.create_results(path, prices, rs.RunIdentity(ATCParams(), prices.attrs["fingerprint"]), k)
    return path, prices


def _fake_outputs(prices: xr.Dataset, a: int, b: int) -> dict[str, np.ndarray]:
    close = prices["close"].values[a:b]
    return {name: close * (i + 1) for i, name in enumerate(OUTPUT_NAMES)}


def test_results_time_chunks_and_whole_chunk_region_writes(tmp_path):
    path, prices = _results(tmp_path)
    g = zarr.open_group(path, mode="r")
    assert g["Average_Signal"].chunks == (5, TIME_CHUNK)
    for i, (a, b) in enumerate(rs.chunk_bounds(12, 5)):
        out = _fake_outputs(prices, a, b)
        rs.write_chunk(path, i, a, b, out, np.zeros(b - a, np.int8), [""] * (b - a))
    ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds["EMA_Signal"].values, prices["close"].values)
    assert ds["Average_Signal"].encoding["chunks"] == (5, TIME_CHUNK)


def test_extend_time_grows_every_series_with_nan_and_touches_only_the_last_chunk(tmp_path):
    path, prices = _results(tmp_path)
    for i, (a, b) in enumerate(rs.chunk_bounds(12, 5)):
        rs.write_chunk(path, i, a, b, _fake_outputs(prices, a, b), np.zeros(b - a, np.int8), [""] * (b - a))
    before = _inodes(path)
    t = prices["time"].values
    new = t[-1] + np.arange(1, 301) * np.timedelta64(1, "h")  # finer than the daily axis, past the last chunk
    assert rs.extend_time(path, new) == N_BARS + 300
    after = _inodes(path)
    early = [k for k in before if k.startswith("Average_Signal/c/") and not k.endswith("/2")]
    assert early and all(after[k] == before[k] for k in early)
    ds = xr.open_zarr(path)  # consolidated metadata is valid: plain xarray sees the new length
    assert ds.sizes["time"] == N_BARS + 300
    np.testing.assert_array_equal(ds["time"].values, np.concatenate([t, new]))
    assert np.isnan(ds["Average_Signal"].values[:, N_BARS:]).all()  # rewritten chunk and never-written one
    assert not any(k.endswith("/3") for k in after if k.startswith("Average_Signal/c/"))
    np.testing.assert_array_equal(ds["EMA_Signal"].values[:, :N_BARS], prices["close"].values)
    assert rs.read_state(path).n_time == N_BARS + 300
    with pytest.raises(rs.ResultsError, match="after the store's last time"):
        rs.extend_time(path, new[:1])


def test_read_last_bars_goes_back_only_as_far_as_each_symbol_needs(tmp_path):
    path, prices = _results(tmp_path)
    close = prices["close"].values.copy()
    close[1, TIME_CHUNK + 100:] = np.nan  # last bar in the second time chunk
    close[2, 200:] = np.nan  # in the first
    close[3, :] = np.nan  # none at all
    for i, (a, b) in enumerate(rs.chunk_bounds(12, 5)):
        out = {name: close[a:b] * (j + 1) for j, name in enumerate(OUTPUT_NAMES)}
        rs.write_chunk(path, i, a, b, out, np.zeros(b - a, np.int8), [""] * (b - a))
    got = rs.read_last_bars(path, ["Average_Signal", "EMA_S"])
    times = prices["time"].values
    for s in range(12):
        valid = np.flatnonzero(~np.isnan(close[s]))
        if not valid.size:
            assert np.isnat(got["time"].values[s]) and np.isnan(got["Average_Signal"].values[s])
            continue
        j = valid[-1]
        assert got["time"].values[s] == times[j]
        assert got["Average_Signal"].values[s] == close[s, j] * (OUTPUT_NAMES.index("Average_Signal") + 1)
        assert got["EMA_S"].values[s] == close[s, j] * (OUTPUT_NAMES.index("EMA_S") + 1)
    assert list(got["symbol"].values) == list(prices["symbol"].values)
    recent = rs.read_last_bars(path, "Average_Signal", max_chunks_back=1)  # the last two time chunks only
    assert recent["time"].values[1] == times[TIME_CHUNK + 99] and np.isnat(recent["time"].values[2])
    with pytest.raises(rs.ResultsError, match="no \\(symbol, time\\) variable 'status'"):
        rs.read_last_bars(path, ["status"])


def test_append_of_a_new_time_where_some_symbols_have_no_bar(tmp_path, universe):
    """Today's bars as a panel: delisted or halted symbols are NaN (no bar) at the new time; the
    append adds the others' bars and nothing for them (it once failed on their empty frames)."""
    write_prices(universe.isel(time=slice(0, N_BARS - 1)), tmp_path / "p.zarr", chunk_symbols=5)
    last = universe.isel(time=slice(N_BARS - 1, N_BARS)).copy(deep=True)
    close = last["close"].values
    close[[1, 6]] = np.nan
    last["close"] = (("symbol", "time"), close)
    append_prices(last, tmp_path / "p.zarr")
    got = open_prices(tmp_path / "p.zarr", verify=True)["close"].values
    assert got.shape == (24, N_BARS)
    assert np.isnan(got[[1, 6], -1]).all()
    want = universe["close"].values[:, -1]
    keep = ~np.isnan(close[:, 0])
    np.testing.assert_array_equal(got[keep, -1], want[keep])
