"""`atc sweep --portfolio equal|signal [--rebalance N]`: every combination's portfolio equals
`atc run --backtest --portfolio` with those parameters (checked against real runs, and for every
combination against the kernels the run uses: compute_atc, run_backtest, portfolio_equal/_signal on
the whole panel), on a universe with holes, a late listing, a delisting and a symbol too short to
compute; ranking by the portfolio's metric; per-block statistics of the portfolio returns; resume of
an interrupted portfolio phase; refusals; the CLI."""

from __future__ import annotations


import numpy as np
import pytest
import xarray as xr
import zarr

from flows.cli import main
from kernels import ATCParams, compute_atc
from kernels.backtest import run_backtest
from kernels.metrics import infer_periods_per_year
from kernels.portfolio import PORTFOLIO_METRIC_NAMES, portfolio_equal, portfolio_signal
from kernels.sweep import make_grid
from pipeline import sweep_portfolio as sp
from pipeline.run import run_atc
from pipeline.store import open_prices, write_prices
from pipeline.sweep import SweepError, run_sweep, summarize_sweep
from pipeline.synth import synth_prices

BASE = ATCParams(ema_len=10, hma_len=10, wma_len=10, dema_len=10, lsma_len=10, kama_len=10, cutout=5)
N_SYM, N_BARS, CHUNK = 14, 220, 4
GRID = {"La": [0.02, 0.5], "fee_bps": [0.0, 10.0], "long_only": [False, True]}


def universe() -> xr.Dataset:
    ds = synth_prices(N_SYM, N_BARS, seed=8, freq="B")
    close = ds["close"].values.copy()
    rng = np.random.default_rng(2)
    close[1][rng.random(N_BARS) < 0.2] = np.nan  # holes
    close[2, :90] = np.nan                       # late listing
    close[3, 150:] = np.nan                      # delisting
    close[5, :N_BARS - 12] = np.nan              # too short to compute (insufficient history)
    close[9, 40:44] = np.nan
    ds["close"] = (("symbol", "time"), close)
    return ds


@pytest.fixture(scope="module")
def prices(tmp_path_factory):
    p = tmp_path_factory.mktemp("swpf") / "prices.zarr"
    write_prices(universe(), p, chunk_symbols=CHUNK)
    return p


@pytest.fixture(scope="module")
def panel(prices):
    px = open_prices(prices)
    try:
        return np.asarray(px["close"].values, np.float64), px["time"].values
    finally:
        px.close()


def expected(x, times, grid, flat, kind, every):
    """The run's portfolio from the kernels it calls (tests/test_portfolio_pipeline.py checks the
    run against these bit for bit)."""
    p, b = grid.params(flat)
    ppy = infer_periods_per_year(times)
    res = compute_atc(x, p, on_bad="status", parallel=False)
    ok = res.status == 0
    if kind == "equal":
        bt = run_backtest(x, res["Average_Signal"], p, b, periods_per_year=ppy, ok=ok)
        return portfolio_equal(x, bt["position"], fee_bps=b.fee_bps, rebalance_every=every, periods_per_year=ppy)
    return portfolio_signal(x, res["Average_Signal"], fee_bps=b.fee_bps, rebalance_every=every,
                            long_only=b.long_only, periods_per_year=ppy, ok=ok)


def assert_combination(ds, grid, flat, pf, tol=0.0):
    idx = np.unravel_index(flat, grid.shape)
    sel = dict(zip(grid.dims, idx))
    for var, name in (("portfolio_equity", "equity"), ("portfolio_returns", "returns")):
        got = ds[var].isel(sel).values
        if tol:
            np.testing.assert_allclose(got, getattr(pf, name), rtol=tol, atol=tol)
        else:
            assert np.array_equal(got, getattr(pf, name)), var
    got = ds["portfolio_metrics"].isel(sel).values
    want = np.array([pf.metrics[m] for m in PORTFOLIO_METRIC_NAMES])
    if tol:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    else:
        assert np.array_equal(got, want, equal_nan=True)


def test_portfolio_time_major_equals_the_portfolio_functions():
    """The sweep's entry point gives the numbers of portfolio_equal / portfolio_signal, its cached
    benchmark pass included (shared between calls with the same bars, kept apart otherwise)."""
    from kernels.portfolio import portfolio_time_major
    from kernels.synthetic import random_walk_panel

    x = random_walk_panel(12, 150, seed=2)
    x[3, 40:50] = np.nan
    x[4, :60] = np.nan
    x[5, 120:] = np.nan
    rng = np.random.default_rng(1)
    p = np.where(np.isnan(x), np.nan, rng.integers(-1, 2, x.shape).astype(float))
    p[7] = np.nan
    a = np.where(np.isnan(x), np.nan, rng.standard_normal(x.shape))
    a[8] = np.nan
    cache: dict = {}
    for every in (1, 4):
        for fee in (0.0, 10.0):
            pairs = [(portfolio_equal(x, p, fee_bps=fee, rebalance_every=every, periods_per_year=252),
                      portfolio_time_major("equal", x.T.copy(), p.T.copy(), fee_bps=fee, rebalance_every=every,
                                           periods_per_year=252, benchmarks=cache))]
            for lo in (False, True):
                pairs.append((portfolio_signal(x, a, fee_bps=fee, rebalance_every=every, long_only=lo,
                                               periods_per_year=252),
                              portfolio_time_major("signal", x.T.copy(), a.T.copy(), fee_bps=fee,
                                                   rebalance_every=every, long_only=lo, periods_per_year=252,
                                                   benchmarks=cache)))
            for want, got in pairs:
                for k in ("equity", "returns", "turnover", "fees", "gross_exposure"):
                    assert np.array_equal(getattr(want, k), getattr(got, k)), k
                assert all(np.array_equal(want.metrics[k], got.metrics[k], equal_nan=True) for k in want.metrics)
    assert len(cache) == 4  # (equal's bars, signal's bars) x (every 1, every 4)


@pytest.fixture(scope="module")
def swept(prices, tmp_path_factory):
    """One store per (kind, rebalance), in-process, small tasks so both phases have several tasks."""
    out = {}
    base = tmp_path_factory.mktemp("swpf-stores")
    grid = make_grid(GRID, BASE)
    for kind, every in (("equal", 1), ("equal", 4), ("signal", 1), ("signal", 3)):
        store = base / f"{kind}{every}.zarr"
        s = run_sweep(prices, store, grid, threads=2, chunk_symbols=CHUNK, combos_per_task=3, progress=False,
                      portfolio=kind, rebalance=every, folds=4 if every > 1 else 0)
        out[kind, every] = (store, s)
    return grid, out


@pytest.mark.parametrize("kind,every", [("equal", 1), ("equal", 4), ("signal", 1), ("signal", 3)])
def test_every_combination_equals_the_run_kernels(swept, panel, kind, every):
    grid, stores = swept
    store, summary = stores[kind, every]
    x, times = panel
    assert summary.portfolio["kind"] == kind and summary.portfolio["tasks"] >= 2
    ds = xr.open_zarr(store)
    assert ds["portfolio_equity"].dims == tuple(GRID) + ("time",)
    assert list(ds["portfolio_metric"].values) == list(PORTFOLIO_METRIC_NAMES)
    assert sp.INPUT_VAR not in zarr.open_group(str(store), mode="r")  # the scratch input is gone
    for flat in range(grid.size):
        assert_combination(ds, grid, flat, expected(x, times, grid, flat, kind, every))
    if every == 1:
        assert "portfolio_fold_stats" not in ds
        return
    # per-block statistics of the portfolio's returns, computed here by hand (4 blocks, every time)
    r = ds["portfolio_returns"].values.reshape(grid.size, -1)
    fs = ds["portfolio_fold_stats"].values.reshape(grid.size, 4, 5)
    assert ds["portfolio_fold_stats"].dims == tuple(GRID) + ("block", "stat")
    for c in range(grid.size):
        for b in range(4):
            seg = r[c][[t for t in range(N_BARS) if t * 4 // N_BARS == b]]
            np.testing.assert_allclose(fs[c, b], [len(seg), seg.sum(), (seg ** 2).sum(), (seg ** 3).sum(),
                                                  (seg ** 4).sum()], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("kind,every,point", [("equal", 4, (1, 1, 0)), ("signal", 3, (0, 1, 1))])
def test_a_combination_equals_atc_run_portfolio(swept, prices, tmp_path, kind, every, point):
    grid, stores = swept
    store, _ = stores[kind, every]
    flat = int(np.ravel_multi_index(point, grid.shape))
    p, b = grid.params(flat)
    assert b.fee_bps == 10.0
    res = tmp_path / "r.zarr"
    run_atc(prices, res, p, threads=2, chunk_symbols=CHUNK, progress=False, backtest=b,
            portfolio={"kind": kind, "rebalance_every": every}, on_notice=lambda m: None)
    r = xr.open_zarr(res)
    s = xr.open_zarr(store).isel(dict(zip(grid.dims, point)))
    assert np.array_equal(r["portfolio_equity"].values, s["portfolio_equity"].values)
    assert np.array_equal(r["portfolio_returns"].values, s["portfolio_returns"].values)
    assert np.array_equal(r["portfolio_metrics"].values, s["portfolio_metrics"].values, equal_nan=True)
    assert np.array_equal(r["time"].values, s["time"].values)


def test_ranking_by_the_portfolio_metric(swept):
    _, stores = swept
    store, _ = stores["equal", 1]
    df = summarize_sweep(store, "sharpe", top=8)
    ds = xr.open_zarr(store)
    want = ds["portfolio_metrics"].sel(portfolio_metric="sharpe").values.reshape(-1)
    np.testing.assert_array_equal(df["portfolio sharpe"].values, np.sort(want)[::-1])
    assert "equal portfolio's sharpe" in df.attrs["ranked_by"]
    assert "median sharpe" in df.columns  # the per-symbol view beside it
    fees = summarize_sweep(store, "fees_paid", top=8)["portfolio fees_paid"].values
    assert (np.diff(fees) >= 0).all() and fees[0] == 0.0  # lower is better; fee-free combinations first
    with pytest.raises(Exception, match="--rank-by must be one of"):
        summarize_sweep(store, "luck")


def test_resume_of_the_portfolio_phase(swept, prices, tmp_path, monkeypatch):
    from pipeline.run import RunError

    grid, stores = swept
    store = tmp_path / "s.zarr"
    real = sp.run_portfolio_task

    def flaky(task):
        if task.index == 1:
            raise RuntimeError("worker lost")
        return real(task)

    monkeypatch.setattr(sp, "run_portfolio_task", flaky)
    with pytest.raises(RunError, match="1 of 2 portfolio tasks failed"):
        run_sweep(prices, store, grid, threads=2, chunk_symbols=CHUNK, combos_per_task=3, progress=False,
                  portfolio="equal", rebalance=4, folds=4)
    g = zarr.open_group(str(store), mode="r", use_consolidated=False)
    assert (g["task_done"][:] == 1).all() and list(g["portfolio_done"][:]) == [1, 0]
    assert sp.INPUT_VAR in g and "completed" not in g.attrs
    monkeypatch.setattr(sp, "run_portfolio_task", real)
    records = []
    s = run_sweep(prices, store, grid, threads=2, progress=False, portfolio="equal", rebalance=4, folds=4,
                  on_record=records.append)
    assert (s.action, s.computed, s.portfolio["computed"]) == ("resumed", 0, 1)
    assert [r["task"] for r in records] == [1] and records[0]["phase"] == "portfolio"
    a, b = xr.open_zarr(store), xr.open_zarr(stores["equal", 4][0])
    for name in ("portfolio_equity", "portfolio_returns", "portfolio_metrics", "portfolio_fold_stats", "sharpe"):
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name
    again = run_sweep(prices, store, grid, threads=2, progress=False, portfolio="equal", rebalance=4, folds=4)
    assert (again.action, again.computed, again.portfolio["computed"]) == ("complete", 0, 0)


def test_refusals(swept, prices, tmp_path):
    grid, stores = swept
    store, _ = stores["equal", 1]
    with pytest.raises(SweepError, match="portfolio"):
        run_sweep(prices, store, grid, threads=2, progress=False, portfolio="signal", folds=4)
    with pytest.raises(SweepError, match="portfolio"):
        run_sweep(prices, store, grid, threads=2, progress=False, folds=4)
    with pytest.raises(Exception, match="--portfolio must be one of"):
        run_sweep(prices, tmp_path / "x.zarr", grid, threads=2, portfolio="cap")
    with pytest.raises(Exception, match="--rebalance applies to portfolios"):
        run_sweep(prices, tmp_path / "x.zarr", grid, threads=2, rebalance=3)
    assert not (tmp_path / "x.zarr").exists()


def test_cli(prices, panel, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("La: [0.02, 0.5]\n")
    store = tmp_path / "s.zarr"
    argv = ["sweep", str(prices), str(store), "--grid", str(grid), "--set", "ema_len=10", "--set", "hma_len=10",
            "--set", "wma_len=10", "--set", "dema_len=10", "--set", "lsma_len=10", "--set", "kama_len=10",
            "--set", "cutout=5", "--set", "fee_bps=5", "--portfolio", "signal", "--rebalance", "2",
            "--rank-by", "turnover", "--in-process", "--workers", "2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "portfolio signal per combination, rebalanced every 2 times" in out
    assert "by the signal portfolio's turnover (rebalanced every 2 times)" in out and "portfolio turnover" in out
    x, times = panel
    g = make_grid({"La": [0.02, 0.5]}, BASE, make_grid({"La": [0.1]}).base_backtest.replace(fee_bps=5.0))
    ds = xr.open_zarr(store)
    for flat in range(2):
        assert_combination(ds, g, flat, expected(x, times, g, flat, "signal", 2))
    assert main([*argv[:-6], "--rank-by", "luck", "--in-process", "--no-progress"]) == 2
    assert "--rank-by must be one of" in capsys.readouterr().err

