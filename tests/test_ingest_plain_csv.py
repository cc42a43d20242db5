"""`atc ingest --append` reads plain CSV files without pandas (pipeline/csv_simple.py): the same
bars, stores and errors as pandas' reading, which every other file still takes."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.csv_simple import _number, _pandas_rounds_correctly, read_simple
from pipeline.ingest import _load, ingest, list_sources, read_columns, read_sources
from pipeline.price_append import append_prices
from pipeline.price_format import StoreError
from pipeline.store import write_prices
from pipeline.synth import synth_prices


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def _pandas_columns(path: Path, empty_close: str):
    got = _load(path, False, empty_close)
    return ({s: (f.index.asi8, {v: f[v].to_numpy() for v in f.columns}) for s, f in got.frames.items()},
            got.dropped_empty_close)


def _same(a, b) -> None:
    """Equal bars, bit for bit: symbols (in order), times, variables (in order), values."""
    (ca, da), (cb, db) = a, b
    assert da == db
    assert list(ca) == list(cb)
    for s in ca:
        (ta, va), (tb, vb) = ca[s], cb[s]
        assert ta.dtype == tb.dtype == np.int64 and np.array_equal(ta, tb), s
        assert list(va) == list(vb), s
        for v in va:
            assert va[v].dtype == vb[v].dtype == np.float64
            assert va[v].tobytes() == vb[v].tobytes(), (s, v)


def _pandas_error(path: Path, empty_close: str) -> str:
    with pytest.raises(StoreError) as e:
        _load(path, False, empty_close)
    return str(e.value)


# files read without pandas: each gives pandas' bars exactly
PLAIN = {
    "repr17.csv": "Date,Close\n2013-09-10,25.359156090934626\n2013-09-11,0.09074338733591417\n"
                  "2013-09-12,3121.9381878487943\n",
    "ohlcv.csv": "Date,Open,High,Low,Close,Volume\n2024-01-02,10,11,9,10.5,100\n2024-01-03,10.5,12,10,11.5,\n",
    "times.csv": "Datetime,Close\n2013-09-10 09:30,1.75\n2013-09-10T09:31:00.5,1.76\n"
                 "2013-09-10 09:32:01.123456789,1.77\n2013-09-11,1.78\n",
    "unsorted_crlf.csv": "date,adj close\r\n2013-09-10,7.5\r\n2013-09-09,7.25\r\n",
    "long.csv": "Ticker,Date,Close,Volume\nBBB,2013-09-10,3.25,0\nAAA,2013-09-11,1.5,7\nAAA,2013-09-10,1.25,\n",
    "empty_open.csv": "Date,Open,Close,Note\n2024-01-02,,10.5,anything at all\n2024-01-03,,11,#\n",
    "long_digits.csv": "Date,Close\n2024-01-02,1.700000000000000177635684\n2024-01-03,0.1000000000000000055511151231257827\n",
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_files_give_pandas_bars_bit_for_bit(tmp_path, name):
    p = _write(tmp_path / name, PLAIN[name])
    if name == "long_digits.csv" and not _pandas_rounds_correctly():
        assert read_simple(p, str(p), p.stem, "error") is None  # pandas 3.0 rounds these its own way
        return
    got = read_simple(p, str(p), p.stem, "error")
    assert got is not None, "should take the plain path"
    _same(got, _pandas_columns(p, "error"))


@pytest.mark.parametrize("text", [
    "Date,Close\n2024-01-02,10\n2024-01-03,\n",  # an empty close: an error, or dropped and counted
    "Symbol,Date,Close\nAAA,2024-01-02,10\nBBB,2024-01-02,\nAAA,2024-01-03,11\nBBB,2024-01-03,4\n",
])
def test_empty_closes_dropped_or_errors_as_with_pandas(tmp_path, text):
    p = _write(tmp_path / "x.csv", text)
    _same(read_simple(p, str(p), "x", "drop"), _pandas_columns(p, "drop"))
    with pytest.raises(StoreError) as e:
        read_simple(p, str(p), "x", "error")
    assert str(e.value) == _pandas_error(p, "error")


@pytest.mark.parametrize("text", [
    "Date,Close\n2024-01-02,10\n2024-01-02,11\n",  # duplicate timestamp
    "Date,Close\n2024-01-02,10\n2024-01-03,0\n",  # close <= 0
    "Date,Close,Volume\n2024-01-02,10,5\n2024-01-03,11,0.0\n2024-01-04,12,\n2024-01-01,0.5,1\n",  # ok, unsorted
    "Symbol,Date,Close\nAAA,2024-01-02,10\nAAA,2024-01-02,11\n",  # duplicate in a long table
    "Date,Close,Low\n2024-01-02,10,0\n",  # low <= 0
])
def test_checks_after_parsing_are_pandas_own(tmp_path, text):
    p = _write(tmp_path / "x.csv", text)
    try:
        expected = _pandas_columns(p, "error")
    except StoreError as e:
        with pytest.raises(StoreError) as got:
            read_simple(p, str(p), "x", "error")
        assert str(got.value) == str(e)
    else:
        _same(read_simple(p, str(p), "x", "error"), expected)


# files left to pandas: read_simple says None, and read_columns still gives pandas' bars or error
FALLBACK = {
    "tz.csv": "Date,Close\n2013-09-10 09:30:00+02:00,7.5\n",
    "zulu.csv": "Date,Close\n2013-09-10T09:30:00Z,7.5\n",
    "quoted.csv": 'Date,Close\n"2013-09-10",7.5\n',
    "semicolon.csv": "Date;Close\n2013-09-10;7.5\n",
    "bom.csv": "\ufeffDate,Close\n2013-09-10,7.5\n",
    "blank_line.csv": "Date,Close\n2013-09-10,7.5\n\n2013-09-11,7.6\n",
    "yyyymmdd.csv": "Date,Close\n20130910,7.5\n",
    "epoch.csv": "Timestamp,Close\n1378771200,7.5\n",
    "slash_dates.csv": "Date,Close\n09/10/2013,7.5\n",
    "exponent.csv": "Date,Close\n2013-09-10,7.5e1\n",
    "spaces.csv": "Date, Close\n2013-09-10, 7.5\n",
    "index_column.csv": "Date,Close\n0,2013-09-10,7.5\n",
    "unnamed_time.csv": ",Close\n2013-09-10,7.5\n",
    "numeric_symbols.csv": "Symbol,Date,Close\n001,2013-09-10,7.5\n002,2013-09-10,8.5\n",
    "na_symbol.csv": "Symbol,Date,Close\nNA,2013-09-10,7.5\n",
    "big_int.csv": "Date,Close,Volume\n2013-09-10,7.5,123456789012345678901\n",
    "duplicate_header.csv": "Date,Close,Close\n2013-09-10,7.5,7.6\n",
    "bad_date.csv": "Date,Close\n2013-02-30,7.5\n",
    "negative.csv": "Date,Close\n2013-09-10,-7.5\n",
    "nan_text.csv": "Date,Close\n2013-09-10,NaN\n2013-09-11,7.5\n",
    "inf.csv": "Date,Close\n2013-09-10,inf\n",
    "header_only.csv": "Date,Close\n",
    "year_3000.csv": "Date,Close\n3000-01-01,7.5\n",
    "arabic_digits.csv": "Date,Close\n2013-09-10,\u0667.\u0665\n",  # float() reads these, pandas does not
    "underscore.csv": "Date,Close\n2013-09-10,1_000.5\n",  # the same
}


@pytest.mark.parametrize("name", sorted(FALLBACK))
def test_unusual_files_go_to_pandas(tmp_path, name):
    p = _write(tmp_path / "d" / name, FALLBACK[name])
    assert read_simple(p, str(p), p.stem, "drop") is None
    files = list_sources(p.parent)
    try:
        frames = read_sources(files, progress=False, drop_empty_close=True)
    except StoreError as e:
        with pytest.raises(StoreError) as got:
            read_columns(files, progress=False, drop_empty_close=True)
        assert str(got.value) == str(e)
        return
    cols = read_columns(files, progress=False, drop_empty_close=True)
    _same((dict(cols), cols.dropped_empty_close),
          ({s: (f.index.asi8, {v: f[v].to_numpy() for v in f.columns}) for s, f in frames.items()},
           frames.dropped_empty_close))


def test_pandas_version_read_without_importing_it():
    m = re.fullmatch(r"(\d+)\.(\d+)\.\d+", pd.__version__)
    if m is not None:
        assert _pandas_rounds_correctly() == ((int(m.group(1)), int(m.group(2))) >= (3, 1))


def test_numbers_read_as_pandas_reads_them():
    """Random prices written as users' tools write them (shortest repr, fixed decimals, long
    expansions, exact halfway points between doubles) parse to pandas' value whenever the plain
    path takes them, and the plain path takes every one of them with a correctly rounding pandas."""
    from decimal import Decimal, getcontext

    getcontext().prec = 60
    rng = np.random.default_rng(5)
    vals = np.exp(rng.uniform(-10, 14, 4000))
    texts = [repr(float(v)) for v in vals] + [f"{v:.2f}" for v in vals] + [f"{v:.20f}" for v in vals[:500]]
    for v in vals[:1500]:
        mid = (Decimal(float(v)) + Decimal(float(np.nextafter(v, np.inf)))) / 2
        texts.append(format(mid, "f"))
    texts += [str(i) for i in rng.integers(0, 2**53, 200)] + ["0", "007", "0.0", "1.0", "100"]
    texts = [t for t in texts if "e" not in t]
    want = pd.read_csv(io.StringIO("x\n" + "\n".join(texts) + "\n"))["x"].to_numpy(dtype=np.float64)
    got = [_number(t) for t in texts]
    taken = np.array([g is not None for g in got])
    if _pandas_rounds_correctly():
        assert taken.all()
    assert taken.sum() > len(texts) // 2
    g = np.array([x for x in got if x is not None])
    assert g.tobytes() == want[taken].tobytes()


# ------------------------------------------------------------- whole appends, both paths, file by file

def _store_files(p: Path) -> dict[str, bytes]:
    """Every file of a store, by path."""
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def _base(tmp_path: Path, n_bars: int, fill: str, ohlcv: bool = False) -> Path:
    ds = synth_prices(6, n_bars, seed=3, ohlcv=ohlcv)
    store = tmp_path / f"base-{fill}-{n_bars}-{ohlcv}.zarr"
    if fill == "ffill":  # a gap inside SYN0001's span, filled by the store
        ds["close"][1, n_bars - 3] = np.nan
    write_prices(ds, store, fill=fill)
    return store


def _csv(bars: dict[str, list[tuple]], cols: str) -> dict[str, str]:
    return {f"{s}.csv": cols + "\n" + "".join(",".join(str(x) for x in row) + "\n" for row in rows)
            for s, rows in bars.items()}


def _last(store: Path, sym: str, var: str = "close"):
    import zarr

    from pipeline.time_coord import read_time_coord

    g = zarr.open_group(str(store), mode="r")
    syms = list(g["symbol"][:])
    row = np.asarray(g[var][syms.index(sym), :])
    valid = np.flatnonzero(~np.isnan(np.asarray(g["close"][syms.index(sym), :])))
    t = read_time_coord(g)[valid[-1]]
    return pd.Timestamp(int(t)).strftime("%Y-%m-%d"), row[valid[-1]]


def _cases(tmp_path: Path):
    """(name, base store, files of new bars, ingest options)."""
    days = [d.strftime("%Y-%m-%d") for d in pd.date_range("2001-03-01", periods=4, freq="D")]
    base = _base(tmp_path, 511, "none")  # the new bars cross a time-chunk boundary
    end = pd.Timestamp(int(np.datetime64("2000-01-03", "ns").astype(np.int64) + 510 * 86_400 * 10**9))
    nxt = [(end + pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in (1, 2, 3)]
    rng = np.random.default_rng(9)
    one_bar = {f"SYN{i:04d}": [(nxt[0], repr(float(rng.uniform(1, 500))))] for i in range(6)}
    yield "one bar each, 17 digits", base, _csv(one_bar, "Date,Close"), {}
    last_day, last_close = _last(base, "SYN0002")
    resent = {"SYN0002": [(last_day, repr(float(last_close))), (nxt[0], "12.5"), (nxt[1], "13")],
              "SYN0003": [(nxt[1], "7.25")]}
    yield "re-sent last bar, a skipped day", base, _csv(resent, "date,close"), {}
    new_sym = {"NEW1": [(d, f"{10 + i}.5") for i, d in enumerate(days)], "SYN0000": [(nxt[0], "1.5")]}
    yield "a new symbol with history on the axis", base, _csv(new_sym, "Date,Close"), {}
    inside = {"NEW3": [(f"{days[0]} 12:00", "3.5")], "SYN0000": [(nxt[0], "1.5")]}
    yield "a new time inside the axis (rebuilds)", base, _csv(inside, "Datetime,Close"), {}
    later = {"NEW2": [(nxt[0], "3.5"), (nxt[1], "3.75")], "SYN0001": [(nxt[0], "2.5")]}
    yield "a new symbol", base, _csv(later, "Date,Close"), {}
    mixed = dict(_csv({"SYN0004": [(nxt[0], "4.5")]}, "Date,Close"))
    mixed["SYN0005.csv"] = f"Date,Close\n{nxt[0]}T00:00:00+00:00,5.5\n"  # a time zone: pandas
    mixed["SYN0003.csv"] = f'Date,Close\n"{nxt[0]}",6.5\n'  # quoted: pandas
    mixed["SYN0002.csv"] = f"Date;Close\n{nxt[0]};6.75\n"  # semicolons: pandas
    yield "plain and unusual files together", base, mixed, {}
    empty = _csv({"SYN0000": [(nxt[0], ""), (nxt[1], "2.5")], "SYN0001": [(nxt[0], "3.5")]}, "Date,Close")
    yield "empty closes dropped", base, empty, {"drop_empty_close": True}
    hourly = _csv({"SYN0000": [(f"{nxt[0]} 10:00", "2.5"), (f"{nxt[0]} 11:30", "2.75")]}, "Datetime,Close")
    yield "hourly bars after daily ones", base, hourly, {}
    ohlcv = _csv({"SYN0001": [(nxt[0], "1", "2", "0.5", "1.5", "100")]}, "Date,Open,High,Low,Close,Volume")
    yield "a variable the store lacks (rebuilds)", base, ohlcv, {}
    base_o = _base(tmp_path, 40, "none", ohlcv=True)
    end_o = (pd.Timestamp("2000-01-03") + pd.Timedelta(days=39))
    d1 = (end_o + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    yield "ohlcv, an empty volume", base_o, _csv({"SYN0000": [(d1, "1", "2", "0.5", "1.5", "")]},
                                                "Date,Open,High,Low,Close,Volume"), {}
    base_f = _base(tmp_path, 600, "ffill")
    end_f = pd.Timestamp("2000-01-03") + pd.Timedelta(days=599)
    f1, f3 = ((end_f + pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in (1, 3))
    yield "ffill store, a gap filled", base_f, _csv({"SYN0000": [(f1, "2.5")], "SYN0001": [(f3, "3.5")]},
                                                   "Date,Close"), {}
    long = {"day.csv": "Symbol,Date,Close\n" + "".join(f"SYN{i:04d},{nxt[0]},{i + 1}.25\n" for i in range(6))}
    yield "one long-format file", base, long, {}


def test_appends_write_the_stores_the_pandas_and_zarr_path_writes(tmp_path, monkeypatch):
    """Each case appended twice to copies of one store: by `ingest --append` (plain files read
    without pandas, the store read and written without zarr: pipeline/zarr_direct.py) and as
    before either existed (every file read by pandas, appended as frames, the store read and
    written by zarr). The stores are equal file by file, byte for byte, and so are the summaries."""
    import pipeline.price_append_chunks as pa
    import pipeline.zarr_direct as zd

    monkeypatch.setattr(pa, "utc_now", lambda: "2026-01-01T00:00:00Z")  # the history's time stamps
    n = 0
    for name, base, files, opts in _cases(tmp_path):
        n += 1
        src = tmp_path / f"src{n}"
        for fname, text in files.items():
            _write(src / fname, text)
        new, old = tmp_path / f"new{n}.zarr", tmp_path / f"old{n}.zarr"
        shutil.copytree(base, new)
        shutil.copytree(base, old)
        assert zd.open_store(new) is not None
        got = ingest(src, new, append=True, progress=False, **opts)
        frames = read_sources(list_sources(src), progress=False, drop_empty_close=opts.get("drop_empty_close", False))
        with monkeypatch.context() as m:
            m.setattr(zd, "open_store", lambda path: None)
            want = append_prices(frames, old, source=f"ingest {src.resolve()}")
        assert got.added_bars == want.added_bars and got.fingerprint == want.fingerprint, name
        if opts.get("drop_empty_close"):  # the rows left out, per file, as the pandas path counts them
            assert got.dropped_empty_close == tuple((str(f), frames.dropped_empty_close.get(str(f), 0))
                                                    for f in list_sources(src)), name
            assert got.dropped_total == 1, name
        assert (got.n_symbols, got.n_bars, got.own_bars, got.filled_gaps, got.nbytes) == \
               (want.n_symbols, want.n_bars, want.own_bars, want.filled_gaps, want.nbytes), name
        if got.action == "appended" and "time_chunk" in pa.StoreMeta.read(new).attrs:  # the summary is the store's
            again = pa._summary(new, pa.StoreMeta.read(new), "appended", got.chunk_symbols,
                                added_symbols=got.added_symbols, added_bars=got.added_bars)
            assert dict(vars(got), dropped_empty_close=()) == dict(vars(again), dropped_empty_close=()), name
        a, b = _store_files(new), _store_files(old)
        assert sorted(a) == sorted(b), name
        assert [k for k in a if a[k] != b[k]] == [], name
        assert got.added_bars > 0, name
    assert n == 12


@pytest.mark.parametrize("case", ["revised", "inside", "two files", "zero", "dup", "before"])
def test_append_errors_are_the_pandas_path_errors_and_leave_the_store(tmp_path, case):
    base = _base(tmp_path, 30, "none")
    day, close = _last(base, "SYN0001")
    nxt = (pd.Timestamp(day) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    prev = (pd.Timestamp(day) - pd.Timedelta(days=5)).strftime("%Y-%m-%d")
    files = {
        "revised": {"SYN0001.csv": f"Date,Close\n{day},{close * 1.01!r}\n{nxt},2.5\n"},
        "inside": {"SYN0001.csv": f"Date,Close\n{prev}T12:00,2.5\n"},
        "two files": {"SYN0001.csv": f"Date,Close\n{nxt},2.5\n",
                      "more.csv": f"Symbol,Date,Close\nSYN0001,{nxt},2.5\n"},
        "zero": {"SYN0001.csv": f"Date,Close\n{nxt},0\n"},
        "dup": {"SYN0001.csv": f"Date,Close\n{nxt},1\n{nxt},2\n"},
        "before": {"SYN0001.csv": "Date,Close\n1999-01-04,2.5\n"},
    }[case]
    src = tmp_path / "src"
    for fname, text in files.items():
        _write(src / fname, text)
    before = _store_files(base)
    with pytest.raises(StoreError) as got:
        ingest(src, base, append=True, progress=False)
    with pytest.raises(StoreError) as want:
        append_prices(read_sources(list_sources(src), progress=False), base)
    assert str(got.value) == str(want.value)
    assert _store_files(base) == before


def _next_day_files(tmp_path: Path, base: Path, n: int) -> Path:
    """One plain file per symbol SYN0000.. with a close the day after the store's last bar."""
    day, _ = _last(base, "SYN0000")
    nxt = (pd.Timestamp(day) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    src = tmp_path / "src"
    for i in range(n):
        _write(src / f"SYN{i:04d}.csv", f"Date,Close\n{nxt},{i + 1.5}\n")
    return src


def test_fresh_append_of_plain_files_imports_no_heavy_library(tmp_path):
    """What makes a fresh `atc ingest --append` cheap: plain files and the store's own layout need
    neither pandas, xarray, dask, zarr nor numba (each costs 0.3-1 s of a fresh process)."""
    import subprocess
    import sys

    base = _base(tmp_path, 30, "none")
    src = _next_day_files(tmp_path, base, 6)
    code = ("import sys; from flows.cli import main; rc = main(sys.argv[1:]); "
            "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & "
            "{'pandas', 'xarray', 'dask', 'zarr', 'numba'})); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "ingest", str(src), str(base), "--append"], capture_output=True,
                       text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert p.returncode == 0, p.stderr
    assert "added 0 new symbols and 6 new bars" in p.stdout and "HEAVY []" in p.stdout, p.stdout


@pytest.mark.parametrize("where", ["put_chunk", "flush"])
def test_interrupted_append_leaves_the_store_as_it_was(tmp_path, monkeypatch, where):
    """Ctrl-C while the direct writer writes chunks or metadata (into the store's temporary
    sibling): the store is byte for byte what it was, and no temporary directory is left."""
    import pipeline.zarr_direct as zd

    base = _base(tmp_path, 600, "none")
    src = _next_day_files(tmp_path, base, 6)
    before = _store_files(base)
    listing = sorted(p.name for p in tmp_path.iterdir())
    calls = []
    real = getattr(zd.DirectStore if where == "flush" else zd.DirectArray, where)

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2 or where == "flush":
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(zd.DirectStore if where == "flush" else zd.DirectArray, where, interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(src, base, append=True, progress=False)
    assert calls
    assert _store_files(base) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    monkeypatch.setattr(zd.DirectStore if where == "flush" else zd.DirectArray, where, real)
    assert ingest(src, base, append=True, progress=False).added_bars == 6
