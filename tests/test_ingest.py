"""`atc ingest`: files -> price store, column spellings, timestamps, bad input, real data."""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.ingest import ingest, symbol_from_filename
from pipeline.store import open_prices, to_frames


def _cli():
    """flows.cli.main; stubs flows.bench_cmd (another issue's module) if it is not there yet."""
    if "flows.bench_cmd" not in sys.modules and importlib.util.find_spec("flows.bench_cmd") is None:
        stub = types.ModuleType("flows.bench_cmd")
        stub.bench_kernel = lambda: None
        sys.modules["flows.bench_cmd"] = stub
    from flows.cli import main

    return main


def run(*args) -> int:
    return _cli()([str(a) for a in args])


def _listing(p: Path) -> list[str]:
    return sorted(os.listdir(p))


def _tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


DAILY = "Date,Open,High,Low,Close,Volume\n2024-01-02,10,11,9,10.5,100\n2024-01-03,10.5,12,10,11.5,200\n"


# ---------------------------------------------------------------------------------- happy paths

def test_ingest_directory_cli(tmp_path, capsys):
    src = tmp_path / "csv"
    _write(src / "AAA.csv", DAILY)
    _write(src / "BBB.csv", "date,close\n2024-01-03,20\n2024-01-04,21\n2024-01-02,19.5\n")  # unsorted
    _write(src / "notes.md", "not data")
    assert run("ingest", src, tmp_path / "p.zarr") == 0
    out = capsys.readouterr().out
    assert "2 symbols x 3 times" in out and "5 bars" in out and "fill none" in out and "on disk" in out
    ds = open_prices(tmp_path / "p.zarr", verify=True)
    assert [str(s) for s in ds["symbol"].values] == ["AAA", "BBB"]
    assert ds["close"].sel(symbol="BBB").values.tolist() == [19.5, 20.0, 21.0]
    assert np.isnan(ds["close"].sel(symbol="AAA").values[2])  # 2024-01-04: AAA has no bar, none invented
    assert ds["volume"].sel(symbol="AAA").values[:2].tolist() == [100.0, 200.0]
    assert ds.attrs["source"] == f"ingest {src.resolve()}"


def test_ingest_spellings_epochs_and_time_zones(tmp_path):
    src = tmp_path / "mixed"
    # epoch milliseconds, odd case and spacing
    ms = pd.Timestamp("2024-01-02T00:00Z").value // 10**6
    _write(src / "MS.csv", f"TimeStamp,CLOSE, vol \n{ms},1.5,10\n{ms + 86_400_000},1.6,11\n")
    # epoch seconds
    s = pd.Timestamp("2024-01-02T00:00Z").value // 10**9
    _write(src / "SEC.csv", f"timestamp,Close\n{s},2.5\n{s + 86_400},2.6\n")
    # ISO with an offset -> UTC, and naive ISO taken as UTC, in one file, unsorted
    _write(src / "ISO.csv", "Datetime,Adj Close\n2024-01-03T01:00:00+01:00,3.6\n2024-01-02 00:00,3.5\n")
    # YYYYMMDD integers and semicolons
    _write(src / "YMD.csv", "date;close\n20240102;4.5\n20240103;4.6\n")
    summary = ingest(src, tmp_path / "p.zarr")
    ds = open_prices(tmp_path / "p.zarr")
    assert summary.n_bars == 2
    np.testing.assert_array_equal(ds["time"].values, np.array(["2024-01-02", "2024-01-03"], dtype="datetime64[ns]"))
    assert ds["close"].sel(symbol="ISO").values.tolist() == [3.5, 3.6]
    assert ds["close"].sel(symbol="MS").values.tolist() == [1.5, 1.6]
    assert ds["close"].sel(symbol="SEC").values.tolist() == [2.5, 2.6]
    assert ds["close"].sel(symbol="YMD").values.tolist() == [4.5, 4.6]
    assert ds["volume"].sel(symbol="MS").values.tolist() == [10.0, 11.0]


def test_ingest_long_format_parquet_and_gzip(tmp_path):
    long = pd.DataFrame({
        "Ticker": ["BRK/B", "ünï 株", "BRK/B", "..", "ünï 株", ".."],
        "Date": pd.to_datetime(["2024-01-03", "2024-01-02", "2024-01-02", "2024-01-02", "2024-01-04", "2024-01-04"]),
        "Close": [2.0, 5.0, 1.0, 7.0, 6.0, 8.0],
    })
    pq = tmp_path / "long.parquet"
    long.to_parquet(pq)
    ingest(pq, tmp_path / "a.zarr")
    ds = open_prices(tmp_path / "a.zarr", verify=True)
    assert [str(s) for s in ds["symbol"].values] == sorted(["BRK/B", "ünï 株", ".."])
    assert ds["filled_gaps"].values.tolist() == [0, 0, 0]
    # 2024-01-03: only BRK/B trades, ".." has no bar there
    assert np.isnan(ds["close"].sel(symbol="..", time="2024-01-03").item())
    assert to_frames(ds, [".."])[".."]["close"].tolist() == [7.0, 8.0]
    assert _listing(tmp_path) == ["a.zarr", "long.parquet"]
    # the same data as gzipped CSV in a directory, plus a per-symbol Parquet file with a DatetimeIndex
    d = tmp_path / "dir"
    d.mkdir()
    with gzip.open(d / "part1.csv.gz", "wt") as f:
        long.to_csv(f, index=False)
    pd.DataFrame({"close": [3.0, 4.0]}, index=pd.date_range("2024-01-02", periods=2, name="Date")).to_parquet(d / "Z Z.pq")
    ingest(d, tmp_path / "b.zarr")
    b = open_prices(tmp_path / "b.zarr")
    assert "Z Z" in [str(s) for s in b["symbol"].values]
    assert to_frames(b, ["BRK/B"])["BRK/B"]["close"].tolist() == [1.0, 2.0]


def test_symbol_from_filename():
    assert symbol_from_filename(Path("BRK B.csv")) == "BRK B"
    assert symbol_from_filename(Path("a..b.CSV.gz")) == "a..b"
    assert symbol_from_filename(Path("x.y.parquet")) == "x.y"


def test_ingest_overwrite_and_append_cli(tmp_path):
    src = tmp_path / "v1"
    _write(src / "AAA.csv", DAILY)
    store = tmp_path / "p.zarr"
    assert run("ingest", src, store) == 0
    v2 = tmp_path / "v2"
    _write(v2 / "AAA.csv", "Date,Close\n2024-01-03,11.5\n2024-01-04,12\n")  # overlaps one bar, agrees
    _write(v2 / "NEW.csv", "Date,Close\n2024-01-04,1\n2024-01-05,2\n")
    assert run("ingest", v2, store, "--append") == 0
    ds = open_prices(store, verify=True)
    assert ds["close"].sel(symbol="AAA").values.tolist()[:3] == [10.5, 11.5, 12.0]
    assert ds["open"].sel(symbol="AAA").values[:2].tolist() == [10.0, 10.5]  # existing bars untouched
    assert np.isnan(ds["close"].sel(symbol="AAA").values[3])  # 2024-01-05 is after AAA's last bar
    assert ds["filled_gaps"].values.tolist() == [0, 0]
    assert run("ingest", v2, store, "--overwrite") == 0
    assert [str(s) for s in open_prices(store)["symbol"].values] == ["AAA", "NEW"]
    assert _listing(tmp_path) == ["p.zarr", "v1", "v2"]


# ---------------------------------------------------------------------------------- bad input

BAD = {
    "empty file": ({"A.csv": ""}, r"A\.csv: empty file"),
    "header only": ({"A.csv": "Date,Close\n"}, r"A\.csv: empty \(no data rows\)"),
    "no close": ({"A.csv": "Date,Open\n2024-01-02,1\n"}, r"A\.csv: no close column .*columns: \['Date', 'Open'\]"),
    "no date": ({"A.csv": "Day,Close\nmonday,1\n"}, r"A\.csv: no date/time column"),
    "non-numeric": ({"A.csv": "Date,Close\n2024-01-02,1\n2024-01-03,abc\n"},
                    r"A\.csv: non-numeric value 'abc' in column 'Close' \(line 3\)"),
    "close zero": ({"A.csv": "Date,Close\n2024-01-02,1\n2024-01-03,0\n"},
                   r"A\.csv: close <= 0 \(0\.0\) for symbol 'A' at 2024-01-03 \(line 3\)"),
    "negative close": ({"A.csv": "Date,Close\n2024-01-02,-1\n"}, r"close <= 0 \(-1\.0\)"),
    "duplicate timestamps": ({"A.csv": "Date,Close\n2024-01-02,1\n2024-01-03,2\n2024-01-02,3\n"},
                             r"A\.csv: duplicate timestamp 2024-01-02 for symbol 'A' \(line 2 and line 4\)"),
    "unparseable timestamp": ({"A.csv": "Date,Close\n2024-01-02,1\nnot-a-date,2\n"},
                              r"A\.csv: unparseable timestamp 'not-a-date' in column 'Date' \(line 3\)"),
    "missing timestamp": ({"A.csv": "Date,Close\n2024-01-02,1\n,2\n"}, r"missing timestamp .*line 3"),
    "symbol in two files": ({"A.csv": DAILY, "long.csv": "symbol,date,close\nA,2024-01-05,3\n"},
                            r"symbol 'A' appears in two files: .*A\.csv and .*long\.csv"),
    "no data files": ({"readme.txt.bak": "x"}, r"no CSV or Parquet files"),
    "corrupt parquet": ({"A.parquet": "this is not parquet"}, r"A\.parquet: cannot read"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_error_no_store(tmp_path, capsys, case):
    files, pattern = BAD[case]
    src = tmp_path / "src"
    src.mkdir()
    for name, text in files.items():
        _write(src / name, text)
    store = tmp_path / "out" / "p.zarr"
    assert run("ingest", src, store) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    import re

    assert re.search(pattern, err), err
    assert not store.exists()
    assert not (tmp_path / "out").exists() or _listing(tmp_path / "out") == []


def test_missing_source(tmp_path, capsys):
    assert run("ingest", tmp_path / "nowhere", tmp_path / "p.zarr") == 2
    assert "nowhere: no such file or directory" in capsys.readouterr().err
    assert _listing(tmp_path) == []


def test_existing_store_without_flags_is_unchanged(tmp_path, capsys):
    src = tmp_path / "src"
    _write(src / "A.csv", DAILY)
    store = tmp_path / "p.zarr"
    assert run("ingest", src, store) == 0
    before = _tree(store)
    _write(src / "B.csv", DAILY)
    capsys.readouterr()
    assert run("ingest", src, store) == 2
    assert "already exists (use --overwrite" in capsys.readouterr().err
    assert run("ingest", src, store, "--append", "--overwrite") == 2
    assert "exclude each other" in capsys.readouterr().err
    assert _tree(store) == before


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("Date,Close\n2024-01-03,99\n", r"overlapping bar disagrees for symbol 'A' at 2024-01-03: close stored 11\.5, new 99\.0"),
        ("Date,Close\n2024-01-01,1\n", r"before its first stored bar"),
        ("Date,Close\n2024-01-05,1\n2024-01-05,2\n", r"duplicate timestamp"),
    ],
)
def test_bad_append_leaves_store_unchanged(tmp_path, capsys, text, pattern):
    store = tmp_path / "p.zarr"
    _write(tmp_path / "v1" / "A.csv", DAILY)
    assert run("ingest", tmp_path / "v1", store) == 0
    before = _tree(store)
    _write(tmp_path / "v2" / "A.csv", text)
    capsys.readouterr()
    assert run("ingest", tmp_path / "v2", store, "--append") == 2
    import re

    assert re.search(pattern, capsys.readouterr().err)
    assert _tree(store) == before
    assert _listing(tmp_path) == ["p.zarr", "v1", "v2"]


def test_append_to_missing_store(tmp_path, capsys):
    _write(tmp_path / "v1" / "A.csv", DAILY)
    assert run("ingest", tmp_path / "v1", tmp_path / "p.zarr", "--append") == 2
    assert "no price store to append to" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- real data

def _arch_csvs(src: Path):
    from arch.data import nasdaq, sp500, wti

    src.mkdir()
    spx, ndx = sp500.load(), nasdaq.load()
    spx.to_csv(src / "^GSPC.csv")  # Date, Open, High, Low, Close, Adj Close, Volume
    ndx.reset_index().rename(columns={"Date": "timestamp"}).to_csv(src / "^IXIC.csv", index=False)
    oil = wti.load().rename(columns={"DCOILWTICO": "Price"})  # FRED calendar, NaN on holidays
    oil.to_csv(src / "WTI.csv")
    return spx, ndx, oil


def test_real_data_from_arch_empty_closes_are_errors_or_dropped(tmp_path, capsys):
    spx, ndx, oil = _arch_csvs(tmp_path / "real")
    store = tmp_path / "p.zarr"
    assert run("ingest", tmp_path / "real", store) == 2
    err = capsys.readouterr().err
    first_nan = int(np.flatnonzero(oil["Price"].isna().to_numpy())[0])
    assert f"WTI.csv: empty close for symbol 'WTI' at {oil.index[first_nan]:%Y-%m-%d} (line {first_nan + 2})" in err
    assert "--drop-empty-close" in err and not store.exists()

    assert run("ingest", tmp_path / "real", store, "--drop-empty-close") == 0
    out = capsys.readouterr().out
    n_nan = int(oil["Price"].isna().sum())
    assert n_nan > 0 and f"dropped {n_nan} rows without a close: {tmp_path / 'real' / 'WTI.csv'} ({n_nan})" in out
    ds = open_prices(store, verify=True)
    assert [str(x) for x in ds["symbol"].values] == ["WTI", "^GSPC", "^IXIC"]
    fr = to_frames(ds, time_unit="us")
    # every symbol: exactly its own rows (WTI without the empty ones); "Close" (not "Adj Close") taken
    for sym, raw, col in (("^GSPC", spx, "Close"), ("^IXIC", ndx, "Close"), ("WTI", oil.dropna(), "Price")):
        assert fr[sym].index.equals(raw.index.as_unit("us").rename("time"))
        np.testing.assert_array_equal(fr[sym]["close"].to_numpy(), raw[col].to_numpy())
    np.testing.assert_array_equal(fr["^GSPC"]["volume"].to_numpy(), spx["Volume"].to_numpy(float))
    assert ds["filled_gaps"].values.tolist() == [0, 0, 0] and ds.attrs["fill"] == "none"
    assert ds.sizes["time"] == len(spx.index.union(oil.dropna().index))


def test_real_data_from_arch_ffill_on_request(tmp_path, capsys):
    spx, ndx, oil = _arch_csvs(tmp_path / "real")
    assert run("ingest", tmp_path / "real", tmp_path / "p.zarr", "--drop-empty-close", "--fill", "ffill") == 0
    assert "gaps forward-filled" in capsys.readouterr().out
    ds = open_prices(tmp_path / "p.zarr", verify=True)
    assert ds.attrs["fill"] == "ffill"
    fr = to_frames(ds, time_unit="us")
    for sym, raw in (("^GSPC", spx), ("^IXIC", ndx)):
        got = fr[sym]
        np.testing.assert_array_equal(got.loc[raw.index, "close"].to_numpy(), raw["Close"].to_numpy())
        # bars only WTI has, inside the index's span, are filled from the previous close with zero volume
        extra = got.index.difference(raw.index)
        assert (extra > raw.index[0]).all() and (extra < raw.index[-1]).all()
        assert int(ds["filled_gaps"].sel(symbol=sym)) == len(extra) > 0
        assert (got.loc[extra, "volume"] == 0).all()
        prev = raw["Close"].reindex(got.index).ffill()
        np.testing.assert_array_equal(got["close"].to_numpy(), prev.to_numpy())
    wti_days = oil.dropna().index
    assert int(ds["filled_gaps"].sel(symbol="WTI")) == len(fr["WTI"]) - len(wti_days) > 0
    assert int(ds.attrs["filled_gaps_total"]) == int(ds["filled_gaps"].sum())


# ---------------------------------------------------------------------------------- options, spellings

def test_empty_close_is_an_error_naming_file_and_line(tmp_path, capsys):
    _write(tmp_path / "src" / "A.csv", "Date,Open,Close\n2024-01-02,1,1\n2024-01-03,2,\n2024-01-04,3,3\n")
    assert run("ingest", tmp_path / "src", tmp_path / "p.zarr") == 2
    err = capsys.readouterr().err
    assert "A.csv: empty close for symbol 'A' at 2024-01-03 (line 3)" in err and err.count("\n") == 1
    assert not (tmp_path / "p.zarr").exists()


def test_drop_empty_close_counts_per_file(tmp_path, capsys):
    src = tmp_path / "src"
    _write(src / "A.csv", "Date,Close\n2024-01-02,1\n2024-01-03,\n2024-01-04,\n2024-01-05,4\n")
    _write(src / "B.csv", "Date,Close\n2024-01-02,\n2024-01-03,5\n")
    _write(src / "C.csv", DAILY)
    s = ingest(src, tmp_path / "p.zarr", drop_empty_close=True)
    assert dict(s.dropped_empty_close) == {str(src / "A.csv"): 2, str(src / "B.csv"): 1, str(src / "C.csv"): 0}
    assert s.dropped_total == 3
    assert f"dropped 3 rows without a close: {src / 'A.csv'} (2), {src / 'B.csv'} (1)" in s.describe()
    fr = to_frames(open_prices(tmp_path / "p.zarr"))
    assert fr["A"]["close"].tolist() == [1.0, 4.0] and fr["B"]["close"].tolist() == [5.0]
    assert [str(t.date()) for t in fr["A"].index] == ["2024-01-02", "2024-01-05"]


# Every spelling of the close column a user might have (the brief of issue 9 and the docs).
CLOSE_COLUMNS = ["Close", "close", "C", "Close Price", "close_price", "Last", "LAST", "Price", "Adj Close",
                 "adj_close", "Adjusted Close"]


@pytest.mark.parametrize("col", CLOSE_COLUMNS)
def test_close_spellings_accepted(tmp_path, col):
    _write(tmp_path / "src" / "A.csv", f"Date,{col}\n2024-01-02,1.5\n")
    ingest(tmp_path / "src", tmp_path / "p.zarr")
    assert open_prices(tmp_path / "p.zarr")["close"].values.tolist() == [[1.5]]


def test_missing_close_error_lists_every_accepted_spelling(tmp_path, capsys):
    from pipeline.tables import SPELLINGS

    _write(tmp_path / "src" / "A.csv", "Date,Open\n2024-01-02,1\n")
    assert run("ingest", tmp_path / "src", tmp_path / "p.zarr") == 2
    err = capsys.readouterr().err
    listed = err.split("looked for ", 1)[1].split(";", 1)[0].split(", ")
    assert "Last" in listed and "Adj Close" in listed
    from pipeline.tables import _key

    # every spelling the parser accepts is listed, and every listed one is accepted
    assert {_key(x) for x in listed} == {_key(x) for x in SPELLINGS["close"]}
    assert {_key(x) for x in CLOSE_COLUMNS} <= {_key(x) for x in listed}


def test_help_lists_every_epoch_unit_and_each_is_parsed(tmp_path, capsys):
    assert run("ingest", "--help") == 0
    help_text = " ".join(capsys.readouterr().out.split())
    t = pd.Timestamp("2024-03-05T00:00Z")
    cases = {"seconds": t.value // 10**9, "milliseconds": t.value // 10**6, "microseconds": t.value // 10**3,
             "nanoseconds": t.value, "YYYYMMDD": 20240305}
    for word, number in cases.items():
        assert word in help_text, word
        d = tmp_path / word
        _write(d / "A.csv", f"timestamp,close\n{number},1\n")
        ingest(d, tmp_path / f"{word}.zarr")
        assert open_prices(tmp_path / f"{word}.zarr")["time"].values[0] == np.datetime64("2024-03-05", "ns"), word
    assert "--dayfirst" in help_text and "--fill" in help_text and "--drop-empty-close" in help_text


def test_dayfirst_reads_ambiguous_dates(tmp_path):
    _write(tmp_path / "src" / "A.csv", "Date,Close\n03/04/2020,1\n13/04/2020,2\n")
    ingest(tmp_path / "src", tmp_path / "d.zarr", dayfirst=True)
    got = open_prices(tmp_path / "d.zarr")["time"].values
    np.testing.assert_array_equal(got, np.array(["2020-04-03", "2020-04-13"], dtype="datetime64[ns]"))
    _write(tmp_path / "us" / "A.csv", "Date,Close\n03/04/2020,1\n04/13/2020,2\n")
    assert run("ingest", tmp_path / "us", tmp_path / "m.zarr") == 0
    got = open_prices(tmp_path / "m.zarr")["time"].values
    np.testing.assert_array_equal(got, np.array(["2020-03-04", "2020-04-13"], dtype="datetime64[ns]"))
    assert run("ingest", tmp_path / "src", tmp_path / "c.zarr", "--dayfirst") == 0
    np.testing.assert_array_equal(open_prices(tmp_path / "c.zarr")["time"].values,
                                  np.array(["2020-04-03", "2020-04-13"], dtype="datetime64[ns]"))


def test_store_opens_with_plain_open_zarr_without_warnings(tmp_path):
    import warnings

    import xarray as xr

    _write(tmp_path / "v1" / "A.csv", DAILY)
    _write(tmp_path / "v2" / "A.csv", "Date,Close\n2024-01-04,12\n")
    store = tmp_path / "p.zarr"
    for args in ((), ("--append",)):
        assert run("ingest", tmp_path / ("v2" if args else "v1"), store, *args) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = xr.open_zarr(store)
            assert ds["close"].values.tolist() == ([[10.5, 11.5, 12.0]] if args else [[10.5, 11.5]])


def test_fill_is_recorded_and_appends_follow_it(tmp_path, capsys):
    _write(tmp_path / "v1" / "A.csv", "Date,Close\n2024-01-02,1\n2024-01-04,2\n")
    _write(tmp_path / "v1" / "B.csv", "Date,Close\n2024-01-02,5\n2024-01-03,6\n2024-01-04,7\n")
    store = tmp_path / "p.zarr"
    assert run("ingest", tmp_path / "v1", store, "--fill", "ffill") == 0
    ds = open_prices(store)
    assert ds.attrs["fill"] == "ffill" and ds["filled_gaps"].values.tolist() == [1, 0]
    assert ds["close"].sel(symbol="A").values.tolist() == [1.0, 1.0, 2.0]
    # C brings 2024-01-05, inside A's new span (A's next bar is 2024-01-06): A gets it filled
    _write(tmp_path / "v2" / "A.csv", "Date,Close\n2024-01-06,3\n")
    _write(tmp_path / "v2" / "C.csv", "Date,Close\n2024-01-05,9\n")
    capsys.readouterr()
    assert run("ingest", tmp_path / "v2", store, "--append", "--fill", "none") == 2
    assert "written with fill 'ffill'" in capsys.readouterr().err
    assert run("ingest", tmp_path / "v2", store, "--append") == 0  # the store's fill
    ds = open_prices(store, verify=True)
    assert ds["close"].sel(symbol="A").values.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0]  # 01-05 filled
    assert ds["filled_gaps"].values.tolist() == [2, 0, 0]
    assert int(ds.attrs["filled_gaps_total"]) == 2
    assert run("ingest", tmp_path / "v1", tmp_path / "x.zarr", "--fill", "bfill") == 2


def test_append_without_fill_cannot_insert_into_a_symbols_history(tmp_path, capsys):
    _write(tmp_path / "v1" / "A.csv", "Date,Close\n2024-01-02,1\n2024-01-04,2\n")
    _write(tmp_path / "v1" / "B.csv", "Date,Close\n2024-01-02,5\n2024-01-03,6\n2024-01-04,7\n")
    store = tmp_path / "p.zarr"
    assert run("ingest", tmp_path / "v1", store) == 0
    before = _tree(store)
    # 2024-01-03 is on the store's time axis (B's bar) but A has no bar there
    _write(tmp_path / "v2" / "A.csv", "Date,Close\n2024-01-03,1.5\n2024-01-05,3\n")
    capsys.readouterr()
    assert run("ingest", tmp_path / "v2", store, "--append") == 2
    assert "bar 2024-01-03 for symbol 'A' is not in the store" in capsys.readouterr().err
    assert _tree(store) == before


@pytest.mark.skipif(shutil.which("atc") is None or not (Path(__file__).parents[1] / "flows" / "bench_cmd.py").exists(),
                    reason="console script not installed or flows.bench_cmd (another issue) missing")
def test_console_script(tmp_path):
    _write(tmp_path / "src" / "A.csv", DAILY)
    ok = subprocess.run(["atc", "ingest", str(tmp_path / "src"), str(tmp_path / "p.zarr")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "1 symbols x 2 times" in ok.stdout
    bad = subprocess.run(["atc", "ingest", str(tmp_path / "src"), str(tmp_path / "p.zarr")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------- batched ingest

def _many_files(src: Path, n: int = 70) -> None:
    """One file per symbol on assorted calendars, a gap, OHLCV for some, and one long-format file."""
    src.mkdir()
    rng = np.random.default_rng(1)
    days = pd.date_range("2021-01-01", periods=40, freq="D")
    for i in range(n):
        t = days[i % 5:: 1 + i % 3][: 20 + i % 7]
        if i % 11 == 0:
            t = t.delete(3)  # a gap inside its span
        df = pd.DataFrame({"Date": t.strftime("%Y-%m-%d"), "Close": np.round(50 + rng.random(len(t)) * 10, 2)})
        if i % 4 == 0:
            df["Volume"] = rng.integers(1, 1000, len(t))
        df.to_csv(src / f"S{i:03d}.csv", index=False)
    pd.DataFrame({"symbol": ["ZL1", "ZL1", "AL2", "AL2"], "date": ["2021-01-03", "2021-01-05", "2021-02-20", "2021-02-21"],
                  "close": [1.0, 2.0, 3.0, 4.0]}).to_csv(src / "long.csv", index=False)


@pytest.mark.parametrize("fill, budget", [("none", 0), ("ffill", 0), ("none", 2**30)])
def test_batched_ingest_writes_exactly_what_the_one_pass_ingest_writes(tmp_path, monkeypatch, fill, budget):
    import pipeline.ingest as ing

    monkeypatch.setattr(ing, "INGEST_MEMORY_BUDGET", budget)  # 0: every file is read a second time
    src = tmp_path / "src"
    _many_files(src)
    assert len(os.listdir(src)) >= ing.BATCH_MIN_FILES
    batched = ingest(src, tmp_path / "b.zarr", chunk_symbols=8, fill=fill)
    monkeypatch.setattr(ing, "BATCH_MIN_FILES", 10**9)
    one_pass = ingest(src, tmp_path / "a.zarr", chunk_symbols=8, fill=fill)
    a, b = open_prices(tmp_path / "a.zarr", verify=True), open_prices(tmp_path / "b.zarr", verify=True)
    assert list(b["symbol"].values) == list(a["symbol"].values) and "AL2" in b["symbol"].values
    assert b.drop_attrs().identical(a.drop_attrs())
    assert b.attrs["fingerprint"] == a.attrs["fingerprint"] and b.attrs["own_bars"] == a.attrs["own_bars"]
    assert (batched.n_symbols, batched.own_bars, batched.filled_gaps) == (one_pass.n_symbols, one_pass.own_bars,
                                                                          one_pass.filled_gaps)


def test_batched_ingest_reports_the_same_errors_and_writes_nothing(tmp_path, monkeypatch):
    import pipeline.ingest as ing

    src = tmp_path / "src"
    _many_files(src)
    (src / "S010.csv").write_text("Date,Close\n2021-01-01,5\n2021-01-02,-1\n")
    (src / "S020.csv").write_text("Date,Close\n2021-01-01,5\n2021-01-01,6\n")
    with pytest.raises(Exception) as batched:
        ingest(src, tmp_path / "b.zarr")
    monkeypatch.setattr(ing, "BATCH_MIN_FILES", 10**9)
    with pytest.raises(Exception) as one_pass:
        ingest(src, tmp_path / "a.zarr")
    assert str(batched.value) == str(one_pass.value) and "S010" in str(batched.value)
    assert _listing(tmp_path) == ["src"]
