"""Price store: round trips, appends, codecs, symbols, atomicity, validation (pipeline/store.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.errors import ATCUserError
from pipeline import store as store_mod
from pipeline.store import (
    StoreError,
    append_prices,
    fingerprint_prices,
    open_prices,
    to_frames,
    validate_prices,
    write_prices,
)

ODD_SYMBOLS = ["BRK/B", "../../etc/passwd", "..", "with space", "ünï-çødé 株", "a\\b", ".hidden", "x" * 200]


def _frames(seed: int = 0, n_symbols: int = 4, n_bars: int = 60, ohlcv: bool = True) -> dict[str, pd.DataFrame]:
    """Ragged frames on one shared calendar (late starts and early ends, no holes)."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2021-03-01", periods=n_bars, freq="D", name="time", unit="ns")
    out = {}
    for k in range(n_symbols):
        a = int(rng.integers(0, n_bars // 3)) if k else 0
        b = n_bars - (int(rng.integers(0, n_bars // 3)) if k else 0)
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, b - a)))
        cols = {"close": close}
        if ohlcv and k % 2 == 0:
            cols = {
                "open": close * 1.001,
                "high": close * 1.01,
                "low": close * 0.99,
                "close": close,
                "volume": rng.integers(0, 10**6, b - a).astype(float),
            }
        out[f"S{k}"] = pd.DataFrame(cols, index=idx[a:b])
    return out


def _assert_frames_equal(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert list(a) == list(b)
    for s in a:
        pd.testing.assert_frame_equal(a[s], b[s], check_freq=False)


def _listing(p: Path) -> list[str]:
    return sorted(os.listdir(p))


def _tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


# ---------------------------------------------------------------------------------- round trip

def test_round_trip_frames_identical(tmp_path):
    frames = _frames()
    s = write_prices(frames, tmp_path / "p.zarr", chunk_symbols=3, source="test")
    assert (s.n_symbols, s.n_bars, s.filled_gaps) == (4, 60, 0)
    assert s.variables == ("open", "high", "low", "close", "volume")
    ds = open_prices(tmp_path / "p.zarr", verify=True)
    assert list(ds.data_vars) == ["open", "high", "low", "close", "volume", "filled_gaps"]
    assert ds["close"].dims == ("symbol", "time") and ds["time"].dtype == np.dtype("datetime64[ns]")
    _assert_frames_equal(to_frames(ds), frames)
    assert ds.attrs["source"] == "test" and ds.attrs["atc_format"] == "price-store"
    assert ds.attrs["fingerprint"] == s.fingerprint == fingerprint_prices(ds)
    assert ds.attrs["created"].endswith("Z") and ds.attrs["chunk_symbols"] == 3
    assert ds["filled_gaps"].values.tolist() == [0, 0, 0, 0]


def test_round_trip_pandas_default_microseconds(tmp_path):
    idx = pd.date_range("2020-01-01", periods=5, name="time")  # pandas 3: datetime64[us]
    frames = {"A": pd.DataFrame({"close": np.arange(1.0, 6.0)}, index=idx)}
    write_prices(frames, tmp_path / "p.zarr")
    assert open_prices(tmp_path / "p.zarr")["time"].dtype == np.dtype("datetime64[ns]")
    _assert_frames_equal(to_frames(open_prices(tmp_path / "p.zarr"), time_unit=idx.unit), frames)


def test_round_trip_long_format_and_series(tmp_path):
    frames = _frames(1, ohlcv=False)
    long = pd.concat({s: f for s, f in frames.items()}, names=["symbol", "time"]).reset_index()
    write_prices(long.sample(frac=1, random_state=0), tmp_path / "long.zarr")  # shuffled rows
    write_prices({s: f["close"] for s, f in frames.items()}, tmp_path / "series.zarr")
    for name in ("long.zarr", "series.zarr"):
        _assert_frames_equal(to_frames(open_prices(tmp_path / name)), frames)


def test_round_trip_dataset_and_fingerprint_independent_of_chunking(tmp_path):
    frames = _frames(2)
    write_prices(frames, tmp_path / "a.zarr", chunk_symbols=1)
    ds = open_prices(tmp_path / "a.zarr")
    write_prices(ds, tmp_path / "b.zarr", chunk_symbols=4)
    b = open_prices(tmp_path / "b.zarr", chunks={})
    assert b["close"].chunks[0] == (4,)
    assert b.attrs["fingerprint"] == ds.attrs["fingerprint"]
    xr.testing.assert_identical(ds.drop_attrs(), b.compute().drop_attrs())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.lists(st.floats(1e-6, 1e9, allow_nan=False), min_size=1, max_size=12),
        min_size=1,
        max_size=5,
    ),
    chunk=st.integers(1, 6),
)
def test_round_trip_property(tmp_path_factory, data, chunk):
    idx = pd.date_range("2020-01-01", periods=12, freq="h", name="time", unit="ns")
    frames = {s: pd.DataFrame({"close": np.array(v)}, index=idx[12 - len(v):]) for s, v in data.items()}
    path = tmp_path_factory.mktemp("h") / "p.zarr"
    write_prices(frames, path, chunk_symbols=chunk)
    _assert_frames_equal(to_frames(open_prices(path)), frames)


# ---------------------------------------------------------------------------------- codec, layout

def test_codec_and_chunks_in_written_arrays(tmp_path):
    write_prices(_frames(n_symbols=5), tmp_path / "p.zarr", chunk_symbols=2)
    g = zarr.open_group(tmp_path / "p.zarr", mode="r")
    assert g.metadata.zarr_format == 3
    for name in ("open", "high", "low", "close", "volume", "filled_gaps"):
        arr = g[name]
        (codec,) = arr.compressors
        assert type(codec).__name__ == "BloscCodec"
        assert codec.cname.value == "zstd" and codec.clevel == 5 and codec.shuffle.value == "bitshuffle"
        assert codec.typesize == 8
        assert arr.chunks[0] == 2
        if arr.ndim == 2:
            assert arr.chunks == (2, store_mod.TIME_CHUNK) and arr.dtype == np.float64  # time chunked too
    # and on disk, as the Zarr v3 spec spells it
    meta = json.loads((tmp_path / "p.zarr" / "close" / "zarr.json").read_text())
    blosc = [c for c in meta["codecs"] if c["name"] == "blosc"][0]["configuration"]
    assert blosc["cname"] == "zstd" and blosc["clevel"] == 5 and blosc["shuffle"] == "bitshuffle"
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [2, store_mod.TIME_CHUNK]


def test_auto_chunk_size():
    assert store_mod.auto_chunk_symbols(2000, 5000) == 209
    assert store_mod.auto_chunk_symbols(5, 5000) == 5
    assert store_mod.auto_chunk_symbols(10_000, 10**7) == 16
    assert store_mod.auto_chunk_symbols(10_000, 10) == 512


# ---------------------------------------------------------------------------------- symbols

def test_odd_symbol_names_are_values_not_paths(tmp_path):
    idx = pd.date_range("2020-01-01", periods=5, name="time", unit="ns")
    frames = {s: pd.DataFrame({"close": np.arange(1.0, 6.0) + k}, index=idx) for k, s in enumerate(ODD_SYMBOLS)}
    root = tmp_path / "box"
    root.mkdir()
    write_prices(frames, root / "p.zarr")
    assert _listing(root) == ["p.zarr"]
    assert _listing(root / "p.zarr") == ["close", "filled_gaps", "symbol", "time", "zarr.json"]
    assert not (tmp_path / "etc").exists()
    ds = open_prices(root / "p.zarr", verify=True)
    assert [str(s) for s in ds["symbol"].values] == ODD_SYMBOLS
    assert float(ds["close"].sel(symbol="BRK/B")[0]) == 1.0
    assert float(ds["close"].sel(symbol="..")[0]) == 3.0
    _assert_frames_equal(to_frames(ds), frames)


def test_symbol_checks(tmp_path):
    idx = pd.date_range("2020-01-01", periods=3)
    with pytest.raises(StoreError, match="symbol names must be strings"):
        write_prices({1: pd.Series([1.0, 2, 3], index=idx)}, tmp_path / "p.zarr")
    ds = xr.Dataset({"close": (("symbol", "time"), np.ones((2, 3)))},
                    coords={"symbol": np.array(["a", "a"], dtype=object), "time": idx})
    with pytest.raises(StoreError, match="'a' appears twice"):
        write_prices(ds, tmp_path / "p.zarr")
    assert not (tmp_path / "p.zarr").exists()


# ---------------------------------------------------------------------------------- gaps, calendars

def _calendars():
    """A trades Mon-Fri, B every day but with one empty close, C starts late, on a weekend."""
    wk = pd.date_range("2024-01-01", periods=14, freq="D", name="time")  # Mon..Sun x2
    business = wk[wk.day_of_week < 5]
    a = pd.DataFrame({"close": np.arange(1.0, 11.0), "open": np.arange(1.0, 11.0) * 0.9,
                      "volume": np.full(10, 7.0)}, index=business)
    b = pd.DataFrame({"close": np.arange(101.0, 115.0)}, index=wk)
    b.iloc[3, 0] = np.nan  # a NaN close in Python: no bar at that time
    c = pd.DataFrame({"close": [5.0, 6.0]}, index=wk[[12, 13]])
    return wk, {"A": a, "B": b, "C": c}


def test_union_calendar_without_fill_invents_no_bar(tmp_path):
    wk, frames = _calendars()
    s = write_prices(frames, tmp_path / "p.zarr")
    ds = open_prices(tmp_path / "p.zarr", verify=True)
    assert ds.sizes["time"] == 14 and ds.attrs["fill"] == "none"
    assert ds["filled_gaps"].values.tolist() == [0, 0, 0] and s.filled_gaps == 0 == ds.attrs["filled_gaps_total"]
    assert s.own_bars == 10 + 13 + 2
    got = to_frames(ds)
    for sym, f in frames.items():
        own = f.dropna(subset=["close"])
        assert got[sym].index.equals(own.index) and got[sym]["close"].tolist() == own["close"].tolist()
    ca = ds["close"].sel(symbol="A").values
    assert np.isnan(ca[[5, 6]]).all()  # A's weekend: no bar, NaN in every variable
    assert np.isnan(ds["open"].sel(symbol="A").values[5]) and np.isnan(ds["volume"].sel(symbol="A").values[5])
    assert np.isnan(ds["close"].sel(symbol="B").values[3])


def test_union_calendar_ffill_on_request(tmp_path):
    wk, frames = _calendars()
    s = write_prices(frames, tmp_path / "p.zarr", fill="ffill")
    ds = open_prices(tmp_path / "p.zarr", verify=True)
    assert ds.sizes["time"] == 14 and ds.attrs["fill"] == "ffill"
    # A: the first weekend (inside its span) is filled, the last one is after its end; B: its NaN close
    assert ds["filled_gaps"].values.tolist() == [2, 1, 0]
    assert s.filled_gaps == 3 == ds.attrs["filled_gaps_total"]
    ca = ds["close"].sel(symbol="A").values
    assert ca[5] == ca[6] == ca[4] == 5.0 and np.isnan(ca[12:]).all()
    assert ds["open"].sel(symbol="A").values[5] == 5.0  # filled bar: open = close
    assert ds["volume"].sel(symbol="A").values[5] == 0.0  # filled bar: no volume
    assert ds["close"].sel(symbol="B").values[3] == 103.0
    cc = ds["close"].sel(symbol="C").values
    assert np.isnan(cc[:12]).all() and cc[12:].tolist() == [5.0, 6.0]
    assert np.isnan(ds["volume"].sel(symbol="B").values).all()
    with pytest.raises(StoreError, match="fill must be one of none, ffill, got 'linear'"):
        write_prices(frames, tmp_path / "q.zarr", fill="linear")
    assert not (tmp_path / "q.zarr").exists()


def test_nan_closes_in_python_input_are_no_bars(tmp_path):
    idx = pd.date_range("2020-01-01", periods=6, name="time")
    f = pd.DataFrame({"close": [np.nan, 2.0, np.nan, 4.0, 5.0, np.nan]}, index=idx)
    frames = {"X": f, "Y": pd.DataFrame({"close": np.ones(6)}, index=idx)}
    write_prices(frames, tmp_path / "p.zarr")
    ds = open_prices(tmp_path / "p.zarr")
    x = ds["close"].sel(symbol="X").values
    assert np.isnan(x[[0, 2, 5]]).all() and x[[1, 3, 4]].tolist() == [2.0, 4.0, 5.0]
    write_prices(frames, tmp_path / "f.zarr", fill="ffill")
    ds = open_prices(tmp_path / "f.zarr")
    assert ds["filled_gaps"].values.tolist() == [1, 0]
    x = ds["close"].sel(symbol="X").values
    assert np.isnan(x[[0, 5]]).all() and x[1:5].tolist() == [2.0, 2.0, 4.0, 5.0]


def test_dataset_input_keeps_nan_bars_and_drops_values_without_close(tmp_path):
    idx = pd.date_range("2020-01-01", periods=4)
    ds = xr.Dataset({"close": (("symbol", "time"), [[1.0, np.nan, 3.0, 4.0]]),
                     "volume": (("symbol", "time"), [[1.0, 2.0, 3.0, 4.0]])},
                    coords={"symbol": np.array(["a"], dtype=object), "time": idx})
    write_prices(ds, tmp_path / "p.zarr")
    got = open_prices(tmp_path / "p.zarr", verify=True)
    assert np.isnan(got["close"].values[0, 1]) and np.isnan(got["volume"].values[0, 1])
    assert got["volume"].values[0, [0, 2, 3]].tolist() == [1.0, 3.0, 4.0]


def test_time_zones_converted_to_utc(tmp_path):
    idx = pd.DatetimeIndex(["2024-03-01 09:30", "2024-03-01 10:30"]).tz_localize("America/New_York")
    write_prices({"X": pd.DataFrame({"close": [1.0, 2.0]}, index=idx.rename("time"))}, tmp_path / "p.zarr")
    t = open_prices(tmp_path / "p.zarr")["time"].values
    np.testing.assert_array_equal(t, np.array(["2024-03-01T14:30", "2024-03-01T15:30"], dtype="datetime64[ns]"))


# ---------------------------------------------------------------------------------- validation

@pytest.mark.parametrize(
    "frame, match",
    [
        (pd.DataFrame({"close": [1.0, 0.0]}), r"close <= 0 \(0\.0\) for symbol 'X' at 2020-01-02"),
        (pd.DataFrame({"close": [1.0, -2.0]}), "close <= 0"),
        (pd.DataFrame({"close": [1.0, 2.0], "volume": [1.0, -1.0]}), "volume < 0"),
        (pd.DataFrame({"close": [1.0, np.inf]}), "infinite value"),
        (pd.DataFrame({"close": [1.0, "abc"]}), "non-numeric value 'abc' in column 'close'"),
        (pd.DataFrame({"close": [np.nan, np.nan]}), "no close values"),
        (pd.DataFrame({"open": [1.0, 2.0]}), "no close column"),
        (pd.DataFrame({"close": [], "time": []}), "empty"),
    ],
)
def test_bad_frames_rejected(tmp_path, frame, match):
    if "time" not in frame.columns:
        frame.index = pd.date_range("2020-01-01", periods=len(frame), name="time")
    with pytest.raises(StoreError, match=match) as info:
        write_prices({"X": frame}, tmp_path / "p.zarr")
    assert isinstance(info.value, ATCUserError) and "\n" not in str(info.value)
    assert _listing(tmp_path) == []


def test_duplicate_timestamps_rejected(tmp_path):
    idx = pd.DatetimeIndex(["2020-01-01", "2020-01-02", "2020-01-02"], name="time")
    with pytest.raises(StoreError, match="duplicate timestamp 2020-01-02 for symbol 'X'"):
        write_prices({"X": pd.DataFrame({"close": [1.0, 2.0, 3.0]}, index=idx)}, tmp_path / "p.zarr")
    assert _listing(tmp_path) == []


def test_validate_prices_accepts_no_bar_and_catches_bad_values():
    idx = pd.date_range("2020-01-01", periods=4)
    ok = xr.Dataset({"close": (("symbol", "time"), [[1.0, 2.0, 3.0, 4.0], [np.nan, 1.0, 2.0, np.nan]])},
                    coords={"symbol": np.array(["a", "b"], dtype=object), "time": idx})
    validate_prices(ok)
    gap = ok.copy(deep=True)
    gap["close"][0, 2] = np.nan  # a has no bar on 2020-01-03: valid (ATC_SPEC.md section 7)
    validate_prices(gap)
    none = ok.copy(deep=True)
    none["close"][1, :] = np.nan
    with pytest.raises(StoreError, match="symbol 'b' has no close values"):
        validate_prices(none)
    inf = ok.copy(deep=True)
    inf["close"][0, 1] = np.inf
    with pytest.raises(StoreError, match="infinite close for symbol 'a' at 2020-01-02"):
        validate_prices(inf)
    neg = ok.copy(deep=True)
    neg["close"][1, 1] = -1.0
    with pytest.raises(StoreError, match="close <= 0 .* symbol 'b' at 2020-01-02"):
        validate_prices(neg)
    with pytest.raises(StoreError, match="no 'close'"):
        validate_prices(ok.rename({"close": "price"}))


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="no such price store"):
        open_prices(tmp_path / "missing.zarr")
    xr.Dataset({"x": ("i", [1, 2])}).to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="not a price store"):
        open_prices(tmp_path / "other.zarr")
    (tmp_path / "junk").mkdir()
    with pytest.raises(StoreError):
        open_prices(tmp_path / "junk")


def test_verify_detects_tampering(tmp_path):
    write_prices(_frames(n_symbols=2), tmp_path / "p.zarr")
    arr = zarr.open_array(tmp_path / "p.zarr" / "close", mode="r+")
    arr[0, 0] = arr[0, 0] * 1.5
    open_prices(tmp_path / "p.zarr")  # cheap open does not hash
    with pytest.raises(StoreError, match="fingerprint mismatch"):
        open_prices(tmp_path / "p.zarr", verify=True)


# ---------------------------------------------------------------------------------- atomicity

def test_existing_store_needs_overwrite(tmp_path):
    p = tmp_path / "p.zarr"
    write_prices(_frames(0), p)
    before = _tree(p)
    with pytest.raises(StoreError, match="already exists"):
        write_prices(_frames(1), p)
    assert _tree(p) == before
    s = write_prices(_frames(1), p, overwrite=True)
    assert s.action == "overwritten"
    _assert_frames_equal(to_frames(open_prices(p)), _frames(1))
    assert _listing(tmp_path) == ["p.zarr"]


def test_overwrite_refuses_non_store(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("x")
    with pytest.raises(StoreError, match="not a price store; refusing"):
        write_prices(_frames(), d, overwrite=True)
    assert (d / "thesis.tex").read_text() == "x"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_zarr", boom)
    with pytest.raises(StoreError, match="No space left on device"):
        write_prices(_frames(), tmp_path / "p.zarr")
    assert _listing(tmp_path) == []


def test_failed_overwrite_keeps_old_store(tmp_path, monkeypatch):
    p = tmp_path / "p.zarr"
    write_prices(_frames(0), p)
    before = _tree(p)
    real = xr.Dataset.to_zarr

    def half_then_die(self, store, *a, **k):
        real(self, store, *a, **k)  # the whole temporary store is written ...
        raise KeyboardInterrupt  # ... and then the user hits Ctrl-C before the rename

    monkeypatch.setattr(xr.Dataset, "to_zarr", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_prices(_frames(1), p, overwrite=True)
    assert _tree(p) == before and _listing(tmp_path) == ["p.zarr"]


def test_temporary_directory_is_a_sibling(tmp_path, monkeypatch):
    seen = []
    real = xr.Dataset.to_zarr

    def spy(self, store, *a, **k):
        seen.append(Path(store))
        assert not (tmp_path / "p.zarr").exists()
        return real(self, store, *a, **k)

    monkeypatch.setattr(xr.Dataset, "to_zarr", spy)
    write_prices(_frames(), tmp_path / "p.zarr")
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".p.zarr.tmp-")
    assert _listing(tmp_path) == ["p.zarr"]


# ---------------------------------------------------------------------------------- append

def test_append_round_trip(tmp_path):
    full = _frames(3, n_symbols=5)
    cut = pd.Timestamp("2021-04-10")
    head = {s: f[f.index < cut] for s, f in full.items() if (f.index < cut).any()}
    head.pop("S4", None)  # S4 arrives only with the append (a new symbol)
    p = tmp_path / "p.zarr"
    write_prices(head, p, chunk_symbols=2)
    old = open_prices(p).load()
    # the append overlaps a few days before the cut (they agree) and brings everything after it
    tail = {s: f[f.index >= cut - pd.Timedelta(days=3)] for s, f in full.items()}
    tail = {s: f for s, f in tail.items() if len(f)}
    tail["S4"] = full["S4"]
    s = append_prices(tail, p)
    assert s.action == "appended" and s.added_symbols == (1 if "S4" not in head else 0)
    ds = open_prices(p, verify=True)
    _assert_frames_equal(to_frames(ds), {k: full[k] for k in list(head) + [k for k in full if k not in head]})
    # existing bars untouched
    kept = ds.sel(symbol=old["symbol"].values, time=old["time"].values)
    for v in ("close", "open", "volume"):
        np.testing.assert_array_equal(kept[v].values, old[v].values)
    assert ds.attrs["created"] == old.attrs["created"] and len(ds.attrs["history"]) == 2
    assert ds.attrs["chunk_symbols"] == 2
    # appending the same again adds nothing and leaves the files alone
    before = _tree(p)
    assert append_prices(tail, p).action == "unchanged"
    assert _tree(p) == before


def test_append_equals_single_write(tmp_path):
    full = _frames(4, n_symbols=3, ohlcv=False)
    cut = pd.Timestamp("2021-04-01")
    write_prices({s: f[f.index < cut] for s, f in full.items()}, tmp_path / "a.zarr")
    append_prices({s: f[f.index >= cut] for s, f in full.items()}, tmp_path / "a.zarr")
    write_prices(full, tmp_path / "b.zarr")
    a, b = open_prices(tmp_path / "a.zarr"), open_prices(tmp_path / "b.zarr")
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]


def test_append_new_calendar_dates_stay_no_bars(tmp_path):
    wk = pd.date_range("2024-01-01", periods=14, freq="D", name="time")
    business = wk[wk.day_of_week < 5]
    p = tmp_path / "p.zarr"
    write_prices({"STOCK": pd.Series(np.arange(1.0, 11.0), index=business)}, p)
    s = append_prices({"COIN": pd.Series(np.arange(1.0, 15.0), index=wk)}, p)
    ds = open_prices(p, verify=True)
    assert ds.sizes["time"] == 14 and s.added_symbols == 1 and ds.attrs["fill"] == "none"
    assert ds["filled_gaps"].values.tolist() == [0, 0]
    assert to_frames(ds, ["STOCK"])["STOCK"].index.equals(business)


def test_append_new_calendar_dates_are_filled_in_an_ffill_store(tmp_path):
    wk = pd.date_range("2024-01-01", periods=14, freq="D", name="time")
    business = wk[wk.day_of_week < 5]
    p = tmp_path / "p.zarr"
    write_prices({"STOCK": pd.Series(np.arange(1.0, 11.0), index=business)}, p, fill="ffill")
    s = append_prices({"COIN": pd.Series(np.arange(1.0, 15.0), index=wk)}, p)
    ds = open_prices(p, verify=True)
    assert ds.sizes["time"] == 14 and s.added_symbols == 1
    assert ds["filled_gaps"].values.tolist() == [2, 0]
    stock = ds["close"].sel(symbol="STOCK").values
    assert stock[5] == stock[6] == 5.0 and np.isnan(stock[12:]).all()
    with pytest.raises(StoreError, match="written with fill 'ffill'"):
        append_prices({"NEW": pd.Series([1.0], index=wk[:1])}, p, fill="none")


@pytest.mark.parametrize(
    "tail, match",
    [
        ({"S0": pd.Series([999.0], index=[pd.Timestamp("2021-03-05")])},
         r"overlapping bar disagrees for symbol 'S0' at 2021-03-05: close stored"),
        ({"S0": pd.Series([1.0], index=[pd.Timestamp("2021-02-01")])}, "before its first stored bar"),
        ({"S0": pd.Series([1.0], index=[pd.Timestamp("2021-03-05 12:00")])}, "an append cannot insert bars"),
        ({"S0": pd.Series([1.0, -1.0], index=pd.date_range("2021-06-01", periods=2))}, "close <= 0"),
        ({"S0": pd.DataFrame({"price": ["x"]}, index=[pd.Timestamp("2021-06-01")])}, "non-numeric"),
    ],
)
def test_append_refused_and_store_unchanged(tmp_path, tail, match):
    p = tmp_path / "p.zarr"
    write_prices(_frames(5, n_symbols=2), p)
    before = _tree(p)
    with pytest.raises(StoreError, match=match):
        append_prices(tail, p)
    assert _tree(p) == before and _listing(tmp_path) == ["p.zarr"]


def test_append_adds_a_variable(tmp_path):
    idx = pd.date_range("2020-01-01", periods=4, name="time", unit="ns")
    p = tmp_path / "p.zarr"
    write_prices({"A": pd.Series([1.0, 2.0, 3.0, 4.0], index=idx)}, p)
    tail = pd.DataFrame({"close": [4.0, 5.0], "volume": [7.0, 8.0]}, index=pd.date_range("2020-01-04", periods=2))
    append_prices({"A": tail}, p)
    ds = open_prices(p, verify=True)
    assert ds["close"].values.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0]]
    assert np.isnan(ds["volume"].values[0, :3]).all() and ds["volume"].values[0, 4] == 8.0
    assert ds["volume"].values[0, 3] != ds["volume"].values[0, 3]  # the stored bar keeps no volume


def test_unwritable_parent_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot write store"):
        write_prices(_frames(), tmp_path / "file" / "p.zarr")


def test_append_needs_a_store(tmp_path):
    with pytest.raises(StoreError, match="no price store to append to"):
        append_prices(_frames(), tmp_path / "nope.zarr")
    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreError, match="not a price store"):
        append_prices(_frames(), tmp_path / "dir")


def test_failed_append_swap_keeps_old_store(tmp_path, monkeypatch):
    p = tmp_path / "p.zarr"
    full = _frames(6, n_symbols=2, ohlcv=False)
    cut = pd.Timestamp("2021-04-01")
    write_prices({s: f[f.index < cut] for s, f in full.items()}, p)
    before = _tree(p)
    real_rename = os.rename
    calls = []

    def flaky_rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(src).name.startswith(".p.zarr.tmp-"):
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(store_mod.os, "rename", flaky_rename)
    with pytest.raises(StoreError, match="Input/output error"):
        append_prices({s: f[f.index >= cut] for s, f in full.items()}, p)
    assert _tree(p) == before and _listing(tmp_path) == ["p.zarr"]
    assert calls[0][0] == "p.zarr" and calls[-1][1] == "p.zarr"  # old moved aside, then back


# ---------------------------------------------------------------------------------- format version 1

def _write_v1_store(path: Path) -> xr.Dataset:
    """A store as format version 1 wrote it: gaps always forward-filled, no ``fill`` attribute,
    no consolidated metadata."""
    _, frames = _calendars()
    write_prices(frames, path.parent / "tmp.zarr", fill="ffill")
    ds = open_prices(path.parent / "tmp.zarr").load()
    ds.attrs["atc_format_version"] = 1
    for a in ("fill", "fingerprint_blocks", "time_chunk"):
        del ds.attrs[a]
    ds.attrs["fingerprint"] = fingerprint_prices(ds)  # the whole-content fingerprint versions 1 and 2 used
    for v in ds.variables.values():
        v.encoding.pop("chunks", None)
        v.encoding.pop("preferred_chunks", None)
    ds.to_zarr(path, zarr_format=3, consolidated=False, mode="w-")  # one chunk per variable: no time chunks
    return ds


def test_version_1_store_opens_verifies_and_appends(tmp_path):
    p = tmp_path / "v1.zarr"
    v1 = _write_v1_store(p)
    assert "consolidated_metadata" not in json.loads((p / "zarr.json").read_text()) or \
        json.loads((p / "zarr.json").read_text())["consolidated_metadata"] is None
    ds = open_prices(p, verify=True)
    assert ds.attrs["atc_format_version"] == 1 and ds.attrs["fill"] == "ffill"
    assert ds["filled_gaps"].values.tolist() == [2, 1, 0]
    np.testing.assert_array_equal(ds["close"].values, v1["close"].values)
    # an append follows the store's (implicit) ffill and rewrites it in the current format
    nxt = pd.date_range("2024-01-15", periods=2, name="time")
    s = append_prices({"A": pd.Series([11.0, 12.0], index=nxt), "D": pd.Series([1.0], index=nxt[1:])}, p)
    got = open_prices(p, verify=True)
    assert got.attrs["atc_format_version"] == store_mod.FORMAT_VERSION == 3 and got.attrs["fill"] == "ffill"
    # A's stored values (filled weekend included) are unchanged; the 2nd weekend is now inside its span
    np.testing.assert_array_equal(got["close"].sel(symbol="A").values[:14][:12], v1["close"].sel(symbol="A").values[:12])
    assert got["filled_gaps"].values.tolist() == [4, 1, 0, 0] and s.filled_gaps == 5
    with pytest.raises(StoreError, match="written with fill 'ffill'"):
        append_prices({"E": pd.Series([1.0], index=nxt[:1])}, p, fill="none")


def test_unknown_format_version_refused(tmp_path):
    p = tmp_path / "p.zarr"
    write_prices(_frames(n_symbols=1), p)
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["atc_format_version"] = 99
    (p / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="format version 99, this code reads 1, 2"):
        open_prices(p)


def test_plain_open_zarr_without_warnings_after_write_and_append(tmp_path):
    import warnings

    p = tmp_path / "p.zarr"
    frames = _frames(n_symbols=3)
    head = {s: f.iloc[:-5] for s, f in frames.items()}
    write_prices(head, p)
    for step in ("write", "append"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = xr.open_zarr(p)
            want = head if step == "write" else frames
            assert ds.sizes["time"] == len(pd.DatetimeIndex(sorted(set().union(*(f.index for f in want.values())))))
        if step == "write":
            append_prices(frames, p)
