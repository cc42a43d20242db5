"""`atc run --backtest --portfolio` and the stored trades, on an in-process cluster: the stored
portfolio is the portfolio kernel applied to the stored positions / signals and the price store's
closes (bit for bit), the trade records are each symbol's own `trade_records` on store times, reruns
are no-ops or recompute only the post-pass, an interrupted post-pass is redone, and `atc update`
brings trades and portfolio up to date."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from kernels import ATCParams
from kernels.backtest import BacktestParams
from kernels.metrics import infer_periods_per_year
from kernels.portfolio import PORTFOLIO_METRIC_NAMES, portfolio_equal, portfolio_signal
from kernels.trades import TRADE_DTYPE, trade_records, trade_stats
from pipeline import portfolio_store as ps
from pipeline import trades_store as ts
from pipeline.cluster import connect
from pipeline.run import run_atc
from pipeline.store import open_prices, write_prices
from pipeline.synth import synth_prices
from pipeline.update import update_results

PARAMS = ATCParams(ema_len=10, hma_len=10, wma_len=10, dema_len=10, lsma_len=10, kama_len=10, cutout=5)
N_SYM, N_OLD, N_NEW, CHUNK = 20, 260, 290, 4
FEE = 10.0


@pytest.fixture(scope="module")
def cluster():
    with connect(None, workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        yield cl


def universe() -> xr.Dataset:
    """Symbols with holes, a late listing, a delisting and one too short to compute."""
    ds = synth_prices(N_SYM, N_NEW, seed=21, freq="B")
    close = ds["close"].values.copy()
    rng = np.random.default_rng(4)
    close[1][rng.random(N_NEW) < 0.2] = np.nan
    close[2, :120] = np.nan
    close[3, 200:] = np.nan
    close[5, :N_OLD - 8] = np.nan            # insufficient history before the update
    close[7, 50:53] = np.nan
    ds["close"] = (("symbol", "time"), close)
    return ds


@pytest.fixture(scope="module")
def prices(tmp_path_factory):
    p = tmp_path_factory.mktemp("pf") / "prices.zarr"
    write_prices(universe().isel(time=slice(0, N_OLD)), p, chunk_symbols=CHUNK)
    return p


def run(cl, prices, results, portfolio=None, fee=FEE, long_only=False):
    return run_atc(prices, results, PARAMS, client=cl.client, chunk_symbols=CHUNK, progress=False,
                   backtest=BacktestParams(fee_bps=fee, long_only=long_only), portfolio=portfolio,
                   on_notice=lambda m: None)


def stored(results):
    ds = xr.open_zarr(results)
    return ds, ds["time"].values


def closes(prices):
    px = open_prices(prices)
    try:
        return np.asarray(px["close"].values, np.float64)
    finally:
        px.close()


def assert_portfolio_equals(results, expected):
    ds = xr.open_zarr(results)
    for name, var in ps.SERIES_VARS.items():
        got = ds[var].values
        assert np.array_equal(got, getattr(expected, name)), name      # bit for bit
    got_m = ds[ps.METRICS_VAR].to_series()
    assert list(got_m.index) == list(PORTFOLIO_METRIC_NAMES)
    for m in PORTFOLIO_METRIC_NAMES:
        assert np.array_equal(got_m[m], expected.metrics[m], equal_nan=True), m


def test_equal_and_signal_portfolios_match_the_kernels(cluster, prices, tmp_path):
    res = tmp_path / "r.zarr"
    run(cluster, prices, res, {"kind": "equal", "rebalance_every": 3})
    ds, times = stored(res)
    close = closes(prices)
    ppy = infer_periods_per_year(times)
    assert 240 < ppy < 270  # business days
    exp = portfolio_equal(close, ds["position"].values, fee_bps=FEE, rebalance_every=3, periods_per_year=ppy)
    assert_portfolio_equals(res, exp)
    rec = json.loads(ds.attrs["portfolio"])
    assert (rec["kind"], rec["rebalance_every"], rec["periods_per_year"]) == ("equal", 3, None)
    assert rec["fingerprint"] == ds.attrs["fingerprint"] and rec["periods_per_year_used"] == ppy
    assert ds[ps.METRICS_VAR].attrs["periods_per_year"] == ppy

    # other settings on the complete store: only the post-pass runs again
    notices = []
    s = run_atc(prices, res, PARAMS, client=cluster.client, progress=False, backtest=BacktestParams(fee_bps=FEE),
                portfolio={"kind": "signal", "rebalance_every": 1}, on_notice=notices.append)
    assert (s.action, s.computed) == ("complete", 0)
    assert any("recomputing only the portfolio" in n for n in notices)
    ds, _ = stored(res)
    exp = portfolio_signal(close, ds["Average_Signal"].values, fee_bps=FEE, rebalance_every=1,
                           periods_per_year=ppy, ok=ds["status"].values == 0)
    assert_portfolio_equals(res, exp)
    assert np.isnan(ds[ps.METRICS_VAR].sel(portfolio_metric="n_trades"))  # signal: no discrete trades


def test_long_only_signal_and_given_periods_per_year(cluster, prices, tmp_path):
    res = tmp_path / "r.zarr"
    run_atc(prices, res, PARAMS, client=cluster.client, chunk_symbols=CHUNK, progress=False,
            backtest=BacktestParams(fee_bps=5, long_only=True, periods_per_year=52.0),
            portfolio={"kind": "signal", "rebalance_every": 5})
    ds, _ = stored(res)
    exp = portfolio_signal(closes(prices), ds["Average_Signal"].values, fee_bps=5, rebalance_every=5, long_only=True,
                           periods_per_year=52.0, ok=ds["status"].values == 0)
    assert_portfolio_equals(res, exp)
    assert json.loads(ds.attrs["portfolio"])["periods_per_year"] == 52.0


def test_rerun_is_a_no_op_and_without_portfolio_removes_it(cluster, prices, tmp_path, monkeypatch):
    res = tmp_path / "r.zarr"
    run(cluster, prices, res, {"kind": "equal", "rebalance_every": 1})
    before = xr.open_zarr(res)["portfolio_equity"].values

    def fail(*a, **k):
        raise AssertionError("recomputed on a no-op rerun")

    with monkeypatch.context() as m:
        m.setattr(ps, "compute_portfolio", fail)
        m.setattr(ts, "rebuild_trades", fail)
        s = run(cluster, prices, res, {"kind": "equal", "rebalance_every": 1})
    assert s.computed == 0
    assert np.array_equal(xr.open_zarr(res)["portfolio_equity"].values, before)

    notices = []
    run_atc(prices, res, PARAMS, client=cluster.client, progress=False, backtest=BacktestParams(fee_bps=FEE),
            on_notice=notices.append)
    ds = xr.open_zarr(res)
    assert "portfolio" not in ds.attrs and not any(v.startswith("portfolio") for v in ds.variables)
    assert any("removed the equal portfolio" in n for n in notices)
    assert ps.portfolio_summary(res) is None


def test_interrupted_post_pass_is_redone(cluster, prices, tmp_path, monkeypatch):
    res = tmp_path / "r.zarr"
    run(cluster, prices, res, {"kind": "equal", "rebalance_every": 1})
    real = ts.append_variables

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ts, "append_variables", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run(cluster, prices, res, {"kind": "equal", "rebalance_every": 2})
    assert ps.stored_portfolio(res, complete=True) is None
    assert ts.append_variables is real
    s = run(cluster, prices, res, {"kind": "equal", "rebalance_every": 2})
    assert s.computed == 0
    ds, times = stored(res)
    exp = portfolio_equal(closes(prices), ds["position"].values, fee_bps=FEE, rebalance_every=2,
                          periods_per_year=infer_periods_per_year(times))
    assert_portfolio_equals(res, exp)


def expected_trades(close, position, fee):
    """Each symbol's trades alone (its own row), mapped to store rows; times stay store indices."""
    rows = []
    for i in range(close.shape[0]):
        r = trade_records(close[i], position[i], fee_bps=fee)
        r["symbol"] = i
        rows.append(r)
    return np.concatenate(rows)


def assert_trades_match(results, prices, fee=FEE):
    ds = xr.open_zarr(results)
    close, pos = closes(prices), ds["position"].values
    exp = expected_trades(close, pos, fee)
    got = ts.read_trades(results)
    assert got.dtype == TRADE_DTYPE
    assert len(got) == len(exp) > 20
    for name in TRADE_DTYPE.names:
        assert np.array_equal(got[name], exp[name]), name
    # every trade starts and ends on a bar of its symbol; open ones run to its last bar
    assert not np.isnan(close[got["symbol"], got["entry"]]).any()
    closed = got["exit"] >= 0
    assert not np.isnan(close[got["symbol"][closed], got["exit"][closed]]).any()
    stats = trade_stats(exp, close.shape[0])
    for name in ts.STORED_STATS:
        assert np.array_equal(ds[name].values, stats[name], equal_nan=True), name
    ok = ds["status"].values == 0
    assert ok.any() and np.array_equal(stats["n_trades"][ok], ds["n_trades"].values[ok])
    return got


def test_trades_equal_trade_records_per_symbol_and_chunks_never_share_a_zarr_chunk(cluster, prices, tmp_path):
    res = tmp_path / "r.zarr"
    run(cluster, prices, res)
    got = assert_trades_match(res, prices)
    assert got["is_open"].any() and (got["direction"] == -1).any()
    g = zarr.open_group(str(res / "trades"), mode="r")
    start, rows, count = (np.asarray(g[n][:]) for n in ("chunk_start", "chunk_rows", "chunk_count"))
    assert len(count) == N_SYM // CHUNK and (count >= 0).all() and (count <= rows).all()
    assert (start % ts.ROWS_PER_CHUNK == 0).all() and (rows % ts.ROWS_PER_CHUNK == 0).all()
    used = sorted((a, a + r) for a, r in zip(start, rows) if r)
    assert all(b0 <= a1 for (_, b0), (a1, _) in zip(used, used[1:]))          # disjoint ranges
    sym = np.asarray(g["symbol"][:])
    assert (sym >= 0).sum() == len(got) and set(np.unique(sym)) <= set(range(-1, N_SYM))
    # one symbol reads only its chunk and gives its own trades
    one = ts.read_trades(res, [6])
    assert np.array_equal(one, got[got["symbol"] == 6])


def test_store_without_trades_gets_them_on_rerun(cluster, prices, tmp_path):
    res = tmp_path / "r.zarr"
    run(cluster, prices, res)
    root = zarr.open_group(str(res), mode="r+")
    del root["trades"]
    for name in ts.STORED_STATS:
        del root[name]
    zarr.consolidate_metadata(str(res))
    run(cluster, prices, res)
    assert_trades_match(res, prices)


@pytest.mark.slow  # ~50 s; CI's slow step (the trades' refresh on update is also in tests/test_update_scan.py)
def test_update_refreshes_trades_and_portfolio(cluster, tmp_path):
    full = universe()
    px = tmp_path / "p.zarr"
    write_prices(full.isel(time=slice(0, N_OLD)), px, chunk_symbols=CHUNK)
    res = tmp_path / "r.zarr"
    run(cluster, px, res, {"kind": "equal", "rebalance_every": 2})
    write_prices(full, px, chunk_symbols=CHUNK, overwrite=True)
    summary = update_results(px, res)
    assert (summary.action, summary.n_new) == ("updated", N_NEW)
    ds, times = stored(res)
    assert ds.sizes["time"] == N_NEW and ds["portfolio_equity"].shape == (N_NEW,)
    exp = portfolio_equal(closes(px), ds["position"].values, fee_bps=FEE, rebalance_every=2,
                          periods_per_year=infer_periods_per_year(times))
    assert_portfolio_equals(res, exp)
    assert json.loads(ds.attrs["portfolio"])["fingerprint"] == ds.attrs["fingerprint"]
    assert_trades_match(res, px)
    # and a full run on the grown prices stores the same trades and portfolio
    run(cluster, px, tmp_path / "full.zarr", {"kind": "equal", "rebalance_every": 2})
    assert_portfolio_equals(tmp_path / "full.zarr", exp)
    assert np.array_equal(ts.read_trades(res), ts.read_trades(tmp_path / "full.zarr"))
