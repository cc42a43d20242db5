"""`atc update` and `atc scan` on real stores.

An update after appending bars must leave the results store equal, variable by variable and bit for
bit, to a full `atc run` on the grown price store: for symbols that simply advance, for a symbol
whose past close was revised, for one that had too little history before and for one that had no
bar at all, with and without a backtest (trades included). The scan table is checked against a plain
pandas reading of the store, after a run and after an update, from the marks the stream group keeps
(reading no output chunk) and from the walk that stores written before them use.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from flows.cli import main
from kernels import ATCParams
from kernels.backtest import BacktestParams
from pipeline.cluster import connect
from pipeline.run import run_atc
from pipeline import stream_store as ss
from pipeline.scan import newest_signals, rank
from pipeline.store import write_prices
from pipeline.trades_store import read_trades
from pipeline.synth import synth_prices
from pipeline.update import UpdateError, update_results

PARAMS = ATCParams(ema_len=10, hma_len=10, wma_len=10, dema_len=10, lsma_len=10, kama_len=10, cutout=5)
N_SYM, N_OLD, N_NEW = 24, 300, 330


@pytest.fixture(scope="module")
def cluster():
    with connect(None, workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        yield cl


def universe() -> xr.Dataset:
    ds = synth_prices(N_SYM, N_NEW, seed=5)
    close = ds["close"].values.copy()
    for i in range(4, 10):  # full histories (the first symbol spans the whole axis), shaped below
        close[i] = close[0] * (1.0 + 0.1 * i) if i % 2 else close[0][::-1] * (1.0 + 0.1 * i)
    rng = np.random.default_rng(1)
    close[4][rng.random(N_NEW) < 0.3] = np.nan      # many times without a bar
    close[5, : N_OLD - 12] = np.nan                 # too short before the update, enough after
    close[6, : N_OLD - 1] = np.nan                  # one bar before the update
    close[7, N_OLD - 40:] = np.nan                  # delisted before the new bars
    close[8, N_OLD:] = np.nan                       # no new bar
    close[9, N_OLD + 3] = np.nan                    # misses one new time
    ds["close"] = (("symbol", "time"), close)
    return ds


def write(ds: xr.Dataset, path, **kw):
    write_prices(ds, path, chunk_symbols=8, **kw)


def run(cl, prices, results, backtest=None):
    return run_atc(prices, results, PARAMS, client=cl.client, chunk_symbols=8, progress=False, backtest=backtest)


def assert_same_store(a, b):
    x, y = xr.open_zarr(a), xr.open_zarr(b)
    assert list(x.data_vars) == list(y.data_vars)
    for name in x.data_vars:
        assert np.array_equal(x[name].values, y[name].values, equal_nan=x[name].dtype.kind == "f"), name
    np.testing.assert_array_equal(x["time"].values, y["time"].values)
    for key in ("fingerprint", "prices_fingerprint", "params"):
        assert x.attrs[key] == y.attrs[key], key


@pytest.mark.parametrize("backtest", [None, BacktestParams(fee_bps=10)], ids=["signals", "backtest"])
def test_update_equals_a_full_run(cluster, tmp_path, backtest):
    full = universe()
    write(full.isel(time=slice(0, N_OLD)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr", backtest)
    assert "different price store" not in str(update_results(tmp_path / "p.zarr", tmp_path / "r.zarr").describe())
    write(full, tmp_path / "p.zarr", overwrite=True)      # the grown price store
    summary = update_results(tmp_path / "p.zarr", tmp_path / "r.zarr")
    assert (summary.action, summary.n_old, summary.n_new) == ("updated", N_OLD, N_NEW)
    assert summary.recomputed == {"enough bars now or a first bar": [str(full["symbol"].values[i]) for i in (5, 6)]}
    run(cluster, tmp_path / "p.zarr", tmp_path / "full.zarr", backtest)
    assert_same_store(tmp_path / "r.zarr", tmp_path / "full.zarr")
    assert_same_marks(tmp_path / "r.zarr", tmp_path / "full.zarr")
    pd.testing.assert_frame_equal(newest_signals(tmp_path / "r.zarr"), newest_signals(tmp_path / "full.zarr"))
    if backtest is not None:  # the trades, rebuilt from the open ones only, equal a full run's
        got, want = read_trades(tmp_path / "r.zarr"), read_trades(tmp_path / "full.zarr")
        assert len(want) > N_SYM and want["is_open"].any()
        np.testing.assert_array_equal(got, want)
    again = update_results(tmp_path / "p.zarr", tmp_path / "r.zarr")
    assert again.action == "up to date"


def assert_same_marks(a, b):
    """The scan's marks in the stream group: equal, and all known (-2: unknown)."""
    n = xr.open_zarr(a).sizes["time"]
    x, y = ss.read_marks(a, n), ss.read_marks(b, n)
    assert x is not None and y is not None
    for name in ss.MARKS:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    assert (x["last_bar"] >= -1).all()


def test_revised_past_close_is_recomputed_and_named(cluster, tmp_path):
    full = universe()
    write(full.isel(time=slice(0, N_OLD)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr")
    revised = full.copy(deep=True)
    c = revised["close"].values
    c[2, 100] *= 1.01                                   # a revised price in the past
    revised["close"] = (("symbol", "time"), c)
    write(revised, tmp_path / "p.zarr", overwrite=True)
    summary = update_results(tmp_path / "p.zarr", tmp_path / "r.zarr")
    assert summary.recomputed["revised past bars"] == [str(full["symbol"].values[2])]
    assert "revised past bars" in summary.describe()
    run(cluster, tmp_path / "p.zarr", tmp_path / "full.zarr")
    assert_same_store(tmp_path / "r.zarr", tmp_path / "full.zarr")


def test_refusals_name_the_command_that_works(cluster, tmp_path):
    full = universe()
    write(full.isel(time=slice(0, N_OLD)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr")
    write(full, tmp_path / "grown.zarr")
    with pytest.raises(Exception, match=r"atc update PRICES .*r\.zarr"):  # atc run points to atc update
        run(cluster, tmp_path / "grown.zarr", tmp_path / "r.zarr")
    write(full.isel(symbol=slice(0, N_SYM - 1)), tmp_path / "fewer.zarr")
    with pytest.raises(UpdateError, match="symbols of .* changed .*--overwrite"):
        update_results(tmp_path / "fewer.zarr", tmp_path / "r.zarr")
    shifted = full.isel(time=slice(1, N_NEW))
    write(shifted, tmp_path / "shifted.zarr")
    with pytest.raises(UpdateError, match="time axis .* --overwrite"):
        update_results(tmp_path / "shifted.zarr", tmp_path / "r.zarr")
    with pytest.raises(UpdateError, match="no such results store"):
        update_results(tmp_path / "grown.zarr", tmp_path / "nothing.zarr")


def expected_table(results) -> pd.DataFrame:
    """Each symbol's newest values read the obvious way, with pandas, from the whole store."""
    ds = xr.open_zarr(results)
    rows = []
    for sym in ds["symbol"].values:
        r = ds.sel(symbol=sym)
        avg = r["Average_Signal"].to_series().dropna()
        if avg.empty:
            continue
        trend = np.sign(avg.where(avg.abs() > 0.1, 0.0)).astype(int)  # thresholds +-0.1 (defaults)
        changed = trend.ne(trend.iloc[-1])
        since = len(trend) - 1 - (np.flatnonzero(changed.to_numpy())[-1] if changed.any() else -1) - 1
        t = avg.index[-1]
        fams = [float(r[f"{f}_Signal"].sel(time=t)) for f in ("EMA", "HMA", "WMA", "DEMA", "LSMA", "KAMA")]
        rows.append(dict(symbol=str(sym), signal=float(avg.iloc[-1]), trend=int(trend.iloc[-1]),
                         families_long=sum(v > 0.1 for v in fams), families_short=sum(v < -0.1 for v in fams),
                         time=t, bars_since_change=int(since), stale=bool(t < ds["time"].values[-1])))
    return pd.DataFrame(rows)


def test_scan_table_matches_the_store(cluster, tmp_path):
    full = universe()
    write(full, tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr")
    got = newest_signals(tmp_path / "r.zarr")
    want = expected_table(tmp_path / "r.zarr")
    pd.testing.assert_frame_equal(got.drop(columns=["close"]).reset_index(drop=True), want, check_dtype=False)
    closes = full["close"].values
    for _, row in got.iterrows():
        i = list(full["symbol"].values).index(row["symbol"])
        assert row["close"] == closes[i][~np.isnan(closes[i])][-1]
    long, short = rank(got, top=3, min_signal=0.0)
    assert len(long) <= 3 and (long["signal"] > 0).all() and (short["signal"] < 0).all()
    for table, ascending in ((long, False), (short, True)):  # current symbols first, strongest first
        assert table["stale"].is_monotonic_increasing
        for _, part in table.groupby("stale"):
            assert list(part["signal"]) == sorted(part["signal"], reverse=not ascending)
    assert got.loc[got["symbol"] == str(full["symbol"].values[7]), "stale"].item()


def drop_output_chunks(results):
    """Delete every chunk file of the (symbol, time) outputs: a scan that reads none still works."""
    import shutil

    for var in results.glob("*_Signal"):
        shutil.rmtree(var / "c")


def test_scan_reads_no_output_chunk_and_old_stores_walk(cluster, tmp_path):
    """The marks (from `atc run`) give the pandas table without any output chunk; a store written
    before the marks (its arrays removed) gives it by the walk, and an update stores them."""
    import shutil

    full = universe()
    write(full, tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr")
    want = expected_table(tmp_path / "r.zarr")
    shutil.copytree(tmp_path / "r.zarr", tmp_path / "old.zarr")
    for name in ss.MARKS:
        shutil.rmtree(tmp_path / "old.zarr" / "stream" / name)
    drop_output_chunks(tmp_path / "r.zarr")
    got = newest_signals(tmp_path / "r.zarr")
    pd.testing.assert_frame_equal(got.drop(columns=["close"]), want, check_dtype=False)
    old = newest_signals(tmp_path / "old.zarr")
    pd.testing.assert_frame_equal(old, got)


def test_update_of_a_store_without_marks_stores_them(cluster, tmp_path):
    import shutil

    full = universe()
    write(full.isel(time=slice(0, N_OLD)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr")
    for name in ("hist_head", *ss.MARKS):  # as written before they existed
        shutil.rmtree(tmp_path / "r.zarr" / "stream" / name)
    write(full, tmp_path / "p.zarr", overwrite=True)
    update_results(tmp_path / "p.zarr", tmp_path / "r.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "full.zarr")
    assert_same_store(tmp_path / "r.zarr", tmp_path / "full.zarr")
    assert_same_marks(tmp_path / "r.zarr", tmp_path / "full.zarr")


@pytest.mark.parametrize("revise_at, backtest", [(None, None), (100, None), (530, None), (530, BacktestParams())],
                         ids=["none", "before-head", "after-head", "after-head-backtest"])
def test_update_reads_the_last_block_and_still_finds_revisions(cluster, tmp_path, monkeypatch, revise_at, backtest):
    """Past the first fingerprint block, an update hashes only the times from the start of the
    block holding the old last time (the price store's earlier blocks are the ones the state saw);
    a revised close there is found by the digest, one before it by the block digests."""
    n_old, n_new = 560, 575
    ds = synth_prices(10, n_new, seed=9)
    write(ds.isel(time=slice(0, n_old)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr", backtest)
    grown = ds.copy(deep=True)
    if revise_at is not None:
        c = grown["close"].values
        c[0, revise_at] *= 1.01
        grown["close"] = (("symbol", "time"), c)
    write(grown, tmp_path / "p.zarr", overwrite=True)
    starts = []
    real = ss.history_hashes
    monkeypatch.setattr(ss, "history_hashes", lambda close, start=0: starts.append(start) or real(close, start))
    summary = update_results(tmp_path / "p.zarr", tmp_path / "r.zarr")
    monkeypatch.undo()
    assert summary.recomputed == ({} if revise_at is None else {"revised past bars": [str(ds["symbol"].values[0])]})
    assert starts[0] == (0 if revise_at == 100 else 512)  # the revision check: from the block start, or all
    run(cluster, tmp_path / "p.zarr", tmp_path / "full.zarr", backtest)
    assert_same_store(tmp_path / "r.zarr", tmp_path / "full.zarr")
    assert_same_marks(tmp_path / "r.zarr", tmp_path / "full.zarr")


def assert_same_state(a, b):
    """The whole stream group (state, digests, marks) equal byte for byte: the next update
    continues from it."""
    state, extras, _ = ss.read_stream(a)
    want, want_extras, _ = ss.read_stream(b)
    got, ref = {**state.to_arrays(), **extras}, {**want.to_arrays(), **want_extras}
    assert sorted(got) == sorted(ref)
    for name, v in got.items():
        assert v.dtype == ref[name].dtype and v.tobytes() == ref[name].tobytes(), name


def test_updates_across_a_fingerprint_block_keep_the_digests(cluster, tmp_path):
    """Updates whose new times cross the start of a fingerprint block (the digest of the times
    before it, `hist_head`, then grows by old and new times) and the update after it: the stream
    group equals a full run's each time (digests included), and so does the store."""
    ds = synth_prices(10, 545, seed=3)
    write(ds.isel(time=slice(0, 500)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr")
    for n in (530, 545):
        write(ds.isel(time=slice(0, n)), tmp_path / "p.zarr", overwrite=True)
        assert update_results(tmp_path / "p.zarr", tmp_path / "r.zarr").recomputed == {}
        run(cluster, tmp_path / "p.zarr", tmp_path / f"full{n}.zarr")
        assert_same_store(tmp_path / "r.zarr", tmp_path / f"full{n}.zarr")
        assert_same_state(tmp_path / "r.zarr", tmp_path / f"full{n}.zarr")


def test_update_trades_after_an_interrupted_update_or_without_trades(cluster, tmp_path):
    """Trades that are not those of the results before the update (an update stopped while
    rewriting them leaves their fingerprint cleared; a store without trades) are computed whole."""
    import shutil

    from pipeline.trades_store import _group

    full = universe()
    write(full.isel(time=slice(0, N_OLD)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr", BacktestParams(fee_bps=10))
    shutil.copytree(tmp_path / "r.zarr", tmp_path / "none.zarr")
    shutil.rmtree(tmp_path / "none.zarr" / "trades")
    g = _group(tmp_path / "r.zarr", "r+")
    g["ret"][:5] = 0.5  # garbage, as an interruption could leave
    g.attrs["fingerprint"] = ""
    write(full, tmp_path / "p.zarr", overwrite=True)
    update_results(tmp_path / "p.zarr", tmp_path / "r.zarr")
    update_results(tmp_path / "p.zarr", tmp_path / "none.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "full.zarr", BacktestParams(fee_bps=10))
    want = read_trades(tmp_path / "full.zarr")
    np.testing.assert_array_equal(read_trades(tmp_path / "r.zarr"), want)
    np.testing.assert_array_equal(read_trades(tmp_path / "none.zarr"), want)
    assert_same_store(tmp_path / "none.zarr", tmp_path / "full.zarr")


@pytest.mark.parametrize("stop", ["time coordinate", "state", "state half written"])
def test_interrupted_update_finishes_when_run_again(cluster, tmp_path, monkeypatch, stop):
    """An update stopped after growing the variables (before the time coordinate is written),
    after the whole time axis (before the state), or with some of the state's arrays written,
    leaves a store the same update finishes: equal to a full run, backtest and trades included."""
    import pipeline.stream_store
    import pipeline.time_coord

    full = universe()
    write(full.isel(time=slice(0, N_OLD)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr", BacktestParams(fee_bps=10))
    write(full, tmp_path / "p.zarr", overwrite=True)

    def boom(*a, **k):
        raise KeyboardInterrupt

    written = []
    real_write = pipeline.stream_store.write_whole

    def half(arr, values):  # the state arrays first (t, xo, x, ...), the digests not yet
        if len(written) >= 3:
            raise KeyboardInterrupt
        written.append(arr.path)
        real_write(arr, values)

    with monkeypatch.context() as m:
        if stop == "time coordinate":
            m.setattr(pipeline.time_coord, "write_time_coord", boom)
        elif stop == "state":
            m.setattr(pipeline.stream_store, "write_stream", boom)
        else:
            m.setattr(pipeline.stream_store, "write_whole", half)
        with pytest.raises(KeyboardInterrupt):
            update_results(tmp_path / "p.zarr", tmp_path / "r.zarr")
    assert stop != "state half written" or len(written) == 3
    assert update_results(tmp_path / "p.zarr", tmp_path / "r.zarr").action == "updated"
    run(cluster, tmp_path / "p.zarr", tmp_path / "full.zarr", BacktestParams(fee_bps=10))
    assert_same_store(tmp_path / "r.zarr", tmp_path / "full.zarr")
    np.testing.assert_array_equal(read_trades(tmp_path / "r.zarr"), read_trades(tmp_path / "full.zarr"))


@pytest.mark.slow  # five full runs beside the updates
def test_trades_over_many_updates_equal_a_full_run(cluster, tmp_path, monkeypatch):
    """One bar at a time: each update rewrites only each chunk's tail (closed trades first, open
    ones last); with 8-row reservations, chunks outgrow theirs and move. The trades and their
    statistics equal a full run's after every update."""
    import zarr

    from pipeline import trades_store as ts

    monkeypatch.setattr(ts, "ROWS_PER_CHUNK", 8)
    full = universe()
    bt = BacktestParams(fee_bps=10)
    write(full.isel(time=slice(0, N_OLD)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr", bt)
    tails = 0
    real = ts.write_trades_part
    monkeypatch.setattr(ts, "write_trades_part", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    for n in range(N_OLD + 1, N_OLD + 6):
        calls: list[int] = []
        write(full.isel(time=slice(0, n)), tmp_path / "p.zarr", overwrite=True)
        update_results(tmp_path / "p.zarr", tmp_path / "r.zarr")
        tails += N_SYM // 8 - len(set(calls))  # chunks updated by their tail alone
        run(cluster, tmp_path / "p.zarr", tmp_path / f"full{n}.zarr", bt)
        np.testing.assert_array_equal(read_trades(tmp_path / "r.zarr"), read_trades(tmp_path / f"full{n}.zarr"))
        assert_same_store(tmp_path / "r.zarr", tmp_path / f"full{n}.zarr")
        g = zarr.open_group(str(tmp_path / "r.zarr" / "trades"), mode="r")
        start, count, closed = (np.asarray(g[k][:]) for k in ("chunk_start", "chunk_count", "chunk_closed"))
        is_open = np.asarray(g["is_open"][:])
        for c in range(len(count)):  # closed first, open last
            rows = is_open[start[c]:start[c] + count[c]]
            assert not rows[:closed[c]].any() and rows[closed[c]:].all()
    assert tails > 0


def test_scan_cli_formats_and_prices_input(cluster, tmp_path, capsys):
    ds = synth_prices(12, 200, seed=3)
    write(ds, tmp_path / "p.zarr")
    assert main(["run", str(tmp_path / "p.zarr"), str(tmp_path / "r.zarr"), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["scan", str(tmp_path / "r.zarr"), "--top", "3", "--format", "csv"]) == 0
    from_results = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert set(from_results["side"]) <= {"long", "short"} and len(from_results) <= 6
    assert main(["scan", str(tmp_path / "p.zarr"), "--top", "3", "--format", "csv"]) == 0
    from_prices = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    pd.testing.assert_frame_equal(from_results, from_prices)
    assert main(["scan", str(tmp_path / "r.zarr"), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("LONG (") and "SHORT (" in out


@pytest.mark.parametrize("choice", ["signals", "average"])
def test_fewer_outputs_stored_updated_and_scanned(cluster, tmp_path, choice):
    """`atc run --outputs`: only the chosen variables are stored, equal to the full store's; an
    update keeps them equal to a full run; scan works (families NaN-counted when not stored)."""
    from pipeline.results import OUTPUT_CHOICES

    full = universe()
    write(full.isel(time=slice(0, N_OLD)), tmp_path / "p.zarr")
    run_atc(tmp_path / "p.zarr", tmp_path / "r.zarr", PARAMS, client=cluster.client, chunk_symbols=8,
            progress=False, outputs=choice)
    write(full, tmp_path / "p.zarr", overwrite=True)
    update_results(tmp_path / "p.zarr", tmp_path / "r.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "all.zarr")
    small, big = xr.open_zarr(tmp_path / "r.zarr"), xr.open_zarr(tmp_path / "all.zarr")
    stored = [n for n in big.data_vars if n in small.data_vars and "time" in big[n].dims]
    assert sorted(stored) == sorted(OUTPUT_CHOICES[choice])
    for name in stored:
        np.testing.assert_array_equal(small[name].values, big[name].values)
    assert small.attrs["outputs"] == choice and small.attrs["fingerprint"] != big.attrs["fingerprint"]
    table = newest_signals(tmp_path / "r.zarr")
    np.testing.assert_array_equal(table["signal"], newest_signals(tmp_path / "all.zarr")["signal"])
    with pytest.raises(Exception, match="outputs"):
        run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr")  # all 13 asked of a store holding fewer


def test_daily_update_imports_neither_pandas_nor_xarray(cluster, tmp_path):
    """The daily update starts fast: its CF time coordinate and store reads are plain numpy/zarr
    (pipeline/time_coord.py), so a fresh `atc update` never imports pandas or xarray (about a
    second of its two-second budget on this machine); nor does `atc scan` (its table is laid out
    with numpy: pipeline.scan.newest_columns, rank_columns). The fresh update loads its kernels
    without Numba's implementation registries (`numba.np.arraymath` and the rest: only compiling
    needs them, pipeline/kernel_load.py) and reads the store on threads meanwhile: its store equals
    a full run's, bit for bit."""
    import subprocess
    import sys

    full = universe()
    write(full.isel(time=slice(0, N_OLD)), tmp_path / "p.zarr")
    run(cluster, tmp_path / "p.zarr", tmp_path / "r.zarr")
    write(full, tmp_path / "p.zarr", overwrite=True)
    probe = ("import sys; from flows.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print(sorted(m for m in ('pandas', 'xarray', 'numba.np.arraymath', 'scipy.linalg') if m in sys.modules))")
    for args in (["update", "p.zarr", "r.zarr"], ["scan", "r.zarr", "--top", "3"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "[]", (args, out.stdout[-500:])
    assert xr.open_zarr(tmp_path / "r.zarr").sizes["time"] == N_NEW
    run(cluster, tmp_path / "p.zarr", tmp_path / "full.zarr")
    assert_same_store(tmp_path / "r.zarr", tmp_path / "full.zarr")
    assert_same_state(tmp_path / "r.zarr", tmp_path / "full.zarr")


def test_light_cache_loads_step_aside_for_a_numba_they_do_not_know(monkeypatch):
    """pipeline/kernel_load patches one private Numba method; with any other signature it must
    leave Numba alone (the update then loads its kernels the usual way)."""
    from numba.core import caching

    from pipeline.kernel_load import cache_loads_without_registries

    def other(self, sig, target_context, extra=None):  # what a later Numba might have
        return None

    monkeypatch.setattr(caching.Cache, "load_overload", other)
    with cache_loads_without_registries():
        assert caching.Cache.load_overload is other
    assert caching.Cache.load_overload is other
