"""`atc run --backtest` and `atc sweep` on both paths (the ``via`` fixture: in-process threads,
pipeline/executor.py, and an in-process Dask cluster): a sweep combination equals the run with
those parameters, both paths write the same store, the store layout, resume after interruption,
failed tasks, refusals, bad grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from flows.cli import main
from kernels import ATCParams, compute_atc
from kernels import status as st
from kernels.backtest import BACKTEST_SERIES, run_backtest
from kernels.metrics import METRIC_NAMES, periods_per_year_by_symbol
from kernels.sweep import make_grid, sweep_panel
from pipeline import results as rs
from pipeline.cluster import connect
from pipeline.run import run_atc
from pipeline.store import open_prices, write_prices
from pipeline.sweep import SweepError, run_sweep, summarize_sweep
from pipeline.synth import synth_prices

N_SYM, N_BARS, CHUNK = 24, 260, 8
BASE = ATCParams(ema_len=12, hma_len=14, wma_len=10, dema_len=16, lsma_len=12, kama_len=10)
GRID = {"La": [0.02, 0.5], "De": [0.0, 1.0, 3.0], "long_threshold": [0.1, 0.25], "fee_bps": [0, 20]}


@pytest.fixture(scope="module")
def cluster():
    with connect(None, workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        yield cl


@pytest.fixture(params=["in-process", "cluster"])
def via(request, cluster) -> dict:
    """How run_sweep / run_atc run: keyword arguments for them (``client`` or ``threads``)."""
    return {"threads": 2} if request.param == "in-process" else {"client": cluster.client}


@pytest.fixture(params=["in-process", "cluster"])
def cli_via(request, cluster) -> list[str]:
    return ["--in-process", "--workers", "2"] if request.param == "in-process" else ["--scheduler", cluster.address]


@pytest.fixture(scope="module")
def prices(tmp_path_factory):
    p = tmp_path_factory.mktemp("sweep") / "prices.zarr"
    write_prices(synth_prices(N_SYM, N_BARS, seed=5), p, chunk_symbols=CHUNK)
    return p


@pytest.fixture(scope="module")
def close(prices):
    ds = open_prices(prices)
    out = (ds["close"].values, periods_per_year_by_symbol(ds["time"].values, ds["close"].values))  # own bars
    ds.close()
    return out


@pytest.fixture(scope="module")
def swept(cluster, prices, tmp_path_factory):
    store = tmp_path_factory.mktemp("sw") / "sweep.zarr"
    grid = make_grid(GRID, BASE)
    summary = run_sweep(prices, store, grid, client=cluster.client, combos_per_task=6, save_signals=True)
    return store, grid, summary


def test_store_layout_and_values(swept, close):
    store, grid, summary = swept
    # even blocks of 6 combinations, (1, 3, 1, 2): 4 blocks x 3 symbol chunks, 12 equal tasks on the 2 workers
    # (the old rule's whole trailing dims, (1, 1, 2, 2), would make 6 blocks of 4, twice the crossover passes)
    assert json.loads(xr.open_zarr(store).attrs["block_shape"]) == [1, 3, 1, 2]
    assert (summary.action, summary.n_tasks, summary.computed) == ("created", 4 * 3, 12)
    ds = xr.open_zarr(store)
    assert ds["sharpe"].dims == ("La", "De", "long_threshold", "fee_bps", "symbol")
    assert ds["Average_Signal"].dims == ("La", "De", "long_threshold", "fee_bps", "symbol", "time")
    assert list(ds["De"].values) == [0.0, 1.0, 3.0] and ds["symbol"].size == N_SYM
    assert set(METRIC_NAMES) <= set(ds.data_vars) and (ds["task_done"].values == 1).all()
    assert ds.attrs["atc_format"] == "atc-sweep" and json.loads(ds.attrs["grid"])["dims"] == list(GRID)
    x, ppy = close
    exp = sweep_panel(x, grid.all_params(), periods_per_year=ppy, save_signals=True, parallel=False)
    shape = grid.shape + (N_SYM,)
    for m, name in enumerate(METRIC_NAMES):
        assert np.array_equal(ds[name].values, exp.metrics[:, m].reshape(shape), equal_nan=True), name
    np.testing.assert_array_equal(ds["status"].values, exp.status.reshape(shape))
    assert np.array_equal(ds["Average_Signal"].values, exp.average_signal.reshape(shape + (N_BARS,)), equal_nan=True)
    assert (ds["status"].values == st.OK).mean() > 0.9


def test_a_sweep_combination_equals_atc_run_backtest(via, prices, swept, tmp_path):
    store, grid, _ = swept
    point = {"La": 0.5, "De": 1.0, "long_threshold": 0.25, "fee_bps": 20.0}
    p, b = grid.params(int(np.ravel_multi_index((1, 1, 1, 1), grid.shape)))
    assert (p.La, p.De, p.long_threshold, b.fee_bps) == tuple(point.values())
    res = tmp_path / "r.zarr"
    run_atc(prices, res, p, **via, backtest=b)
    r = xr.open_zarr(res)
    s = xr.open_zarr(store).sel(**point)
    for name in METRIC_NAMES:
        assert np.array_equal(r[name].values, s[name].values, equal_nan=True), name
    assert np.array_equal(r["Average_Signal"].values, s["Average_Signal"].values, equal_nan=True)
    np.testing.assert_array_equal(r["status"].values, s["status"].values)
    # and the run's series are the backtest of its own signal
    x = open_prices(prices)["close"].values
    exp = compute_atc(x, p, parallel=False, on_bad="status")
    bt = run_backtest(x, exp["Average_Signal"], p, b, periods_per_year=json.loads(r.attrs["backtest"])["periods_per_year"])
    for name in BACKTEST_SERIES:
        assert np.array_equal(r[name].values, bt[name], equal_nan=True), name
    assert json.loads(r.attrs["backtest"])["fee_bps"] == 20.0


def test_resume_after_interruption(via, prices, swept, tmp_path):
    import shutil

    store, grid, _ = swept
    copy = tmp_path / "sweep.zarr"
    shutil.copytree(store, copy)
    g = zarr.open_group(str(copy), mode="r+", use_consolidated=False)
    # as if the run had died: two tasks not marked done, one of them half written
    g["task_done"][1] = 0
    g["task_done"][7] = 0
    g["sharpe"][0, :, 0, :, 8:16] = 99.0  # task 1: block 0, symbol chunk 1
    g["status"][0, :, 0, :, 8:16] = rs.NOT_COMPUTED
    records = []
    s = run_sweep(prices, copy, grid, **via, save_signals=True, on_record=records.append)
    assert (s.action, s.computed, s.already_done) == ("resumed", 2, 10)
    assert sorted(r["task"] for r in records) == [1, 7]
    a, b = xr.open_zarr(copy), xr.open_zarr(store)
    for name in ("sharpe", "status", "Average_Signal"):
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name
    again = run_sweep(prices, copy, grid, **via, save_signals=True)
    assert (again.action, again.computed) == ("complete", 0)


def test_stores_from_the_old_block_rule_resume(prices, swept, tmp_path, monkeypatch):
    """A store written with the old rule's blocks (its `block_shape` attribute) resumes with them."""
    import pipeline.sweep as sw

    store, grid, _ = swept
    old = tmp_path / "old.zarr"
    with monkeypatch.context() as m:
        m.setattr(sw, "block_shape_for", lambda shape, n, **kw: sw.legacy_block_shape_for(shape, n))
        run_sweep(prices, old, grid, threads=2, combos_per_task=6, save_signals=True)
    assert json.loads(xr.open_zarr(old).attrs["block_shape"]) == [1, 1, 2, 2]
    g = zarr.open_group(str(old), mode="r+", use_consolidated=False)
    g["task_done"][[0, 5, 17]] = 0
    g["sharpe"][0, 0, :, :, 0:8] = 99.0  # task 0: block 0, symbol chunk 0
    s = run_sweep(prices, old, grid, threads=2, combos_per_task=6, save_signals=True)
    assert (s.action, s.computed, s.already_done, s.n_tasks) == ("resumed", 3, 15, 18)
    a, b = xr.open_zarr(old), xr.open_zarr(store)
    for name in ("sharpe", "status", "Average_Signal"):
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name
    with pytest.raises(SweepError, match=r"blocks of \(1, 1, 2, 2\) combinations, more than 3"):
        run_sweep(prices, old, grid, threads=2, combos_per_task=3, save_signals=True)


def test_even_blocks():
    """Block shapes: equal task costs where the old rule left a short block beside full ones."""
    from pipeline.sweep import block_shape_for, legacy_block_shape_for, plan_blocks

    def sizes(shape, b):
        return sorted({int(np.prod([hi - lo for lo, hi in blk])) for blk in plan_blocks(shape, b)})

    # issue 12's grid: (3, 100) in blocks of at most 200 gave tasks of 200 and 100
    assert sizes((3, 100), legacy_block_shape_for((3, 100), 200)) == [100, 200]
    b = block_shape_for((3, 100), 200, dims=("La", "De"), chunk_sizes=(100, 100), slots=2)
    assert sizes((3, 100), b) == [150] and np.prod(b) <= 200
    # a length dim is kept whole inside blocks rather than repeated across them (one crossover pass each)
    assert block_shape_for((3, 100), 200, dims=("ema_len", "De"), chunk_sizes=(100, 100), slots=2) == (1, 100)
    # fits in one block: unchanged
    assert block_shape_for((5, 5), 256, dims=("La", "De"), chunk_sizes=(250, 250), slots=2) == (5, 5)
    for shape, n in (((7, 3, 4), 10), ((12,), 5), ((2, 2, 2, 2, 2), 3)):
        b = block_shape_for(shape, n, chunk_sizes=(8,), slots=2)
        assert np.prod(b) <= n and len(sizes(shape, b)) == 1, (shape, b)


def test_task_balance():
    """From each task's CPU time on the thread that ran it: tasks of 20 and 10 on two threads keep
    one thread idle for a third of the time (balance 0.75); 15 and 15 none."""
    from pipeline.sweep import task_balance

    rec = lambda slot, cpu: {"slot": slot, "cpu_s": cpu}  # noqa: E731
    assert task_balance([rec("a", 2.0), rec("b", 1.0)]) == pytest.approx(0.75)
    assert task_balance([rec("a", 1.5), rec("b", 1.5)]) == pytest.approx(1.0)
    assert task_balance([rec("a", 1.0), rec("b", 0.5), rec("b", 0.5)]) == pytest.approx(1.0)
    assert np.isnan(task_balance([]))


def test_refusals(via, prices, swept, tmp_path):
    store, grid, _ = swept
    before = (store / "zarr.json").read_text()
    other = make_grid({**GRID, "De": [0.0, 1.0]}, BASE)
    with pytest.raises(SweepError, match="a different grid.*--overwrite"):
        run_sweep(prices, store, other, **via, save_signals=True)
    with pytest.raises(SweepError, match="save_signals=True"):
        run_sweep(prices, store, grid, **via)
    with pytest.raises(SweepError, match="stored with 8 symbols per chunk, not 4"):
        run_sweep(prices, store, grid, **via, save_signals=True, chunk_symbols=4)
    assert (store / "zarr.json").read_text() == before
    with pytest.raises(rs.ResultsError, match="not aligned"):
        run_sweep(prices, tmp_path / "x.zarr", grid, **via, chunk_symbols=5)
    assert not (tmp_path / "x.zarr").exists()


def test_summary_ranks_by_median(swept):
    store, grid, _ = swept
    df = summarize_sweep(store, "sharpe", top=5)
    ds = xr.open_zarr(store)
    med = ds["sharpe"].median("symbol", skipna=True).values.reshape(-1)
    assert list(df.columns[:4]) == list(GRID) and len(df) == 5
    np.testing.assert_allclose(df["median sharpe"].values, np.sort(med)[::-1][:5])
    low = summarize_sweep(store, "max_drawdown", top=3)["median max_drawdown"].values
    assert (np.diff(low) >= 0).all()  # lower is better


def test_cli_sweep_and_bad_grids(cli_via, prices, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("De: [0.0, 2.0]\nlong_only: [false, true]\n")
    store = tmp_path / "s.zarr"
    argv = ["sweep", str(prices), str(store), "--grid", str(grid), "--set", "ema_len=12", "--set", "fee_bps=5",
            "--rank-by", "cagr", "--top", "3", *cli_via, "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"4 combinations (De x long_only) x {N_SYM} symbols, computed" in out
    assert "Best 3 combinations by median cagr" in out and "median cagr" in out
    ds = xr.open_zarr(store)
    assert json.loads(ds.attrs["backtest"])["fee_bps"] == 5.0 and json.loads(ds.attrs["params"])["ema_len"] == 12
    assert main(argv) == 0 and "already complete" in capsys.readouterr().out

    bad = {
        "emalen: [10]\n": "unknown parameter 'emalen'",
        "La: []\n": "La has an empty list",
        "De: [1, 500]\n": "De=500 is invalid",
        "La: [0.1\n": "not valid YAML",
        "- La\n": "must map parameter names",
    }
    for text, msg in bad.items():
        grid.write_text(text)
        target = tmp_path / "never.zarr"
        assert main(["sweep", str(prices), str(target), "--grid", str(grid), "--scheduler", "tcp://127.0.0.1:1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {grid}") and msg in err and err.count("\n") == 1, err
        assert not target.exists()
    grid.write_text("La: [0.1]\n")
    assert main(["sweep", str(prices), str(tmp_path / "n.zarr"), "--grid", str(grid), "--rank-by", "luck"]) == 2
    assert "--rank-by must be one of" in capsys.readouterr().err


def test_cli_run_backtest_refusals(prices, tmp_path, capsys):
    res = tmp_path / "r.zarr"
    assert main(["run", str(prices), str(res), "--set", "fee_bps=3", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "add --backtest" in capsys.readouterr().err
    assert main(["run", str(prices), str(res), "--backtest", "--set", "fee_bps=-3"]) == 2
    assert "fee_bps must be" in capsys.readouterr().err
    assert not res.exists()


def test_bad_symbol_gets_status_and_reason_for_every_combination(via, prices, tmp_path):
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(prices, bad)
    zarr.open_array(str(bad / "close"), mode="r+")[10, 50] = -2.0
    store = tmp_path / "s.zarr"
    run_sweep(bad, store, make_grid({"De": [0.0, 1.0], "La": [0.02, 0.1]}, BASE), **via,
              combos_per_task=2)
    ds = xr.open_zarr(store)
    assert (ds["status"].sel(symbol="SYN0010").values == st.BAD_DATA).all()
    assert np.isnan(ds["sharpe"].sel(symbol="SYN0010").values).all()
    assert ds["reason"].values[10] == "bad data: symbol 'SYN0010' (index 10) has a close <= 0 (-2.0) at bar 50"
    assert (ds["reason"].values[:10] == "").all() and (ds["status"].values[..., :10] == st.OK).all()


def test_in_process_sweep_writes_the_same_store(prices, swept, tmp_path):
    """The in-process path and the cluster (the `swept` store) write identical sweep stores."""
    store, grid, _ = swept
    mine = tmp_path / "sweep.zarr"
    s = run_sweep(prices, mine, grid, threads=2, combos_per_task=6, save_signals=True)
    assert (s.action, s.computed) == ("created", s.n_tasks)
    a, b = xr.open_zarr(mine), xr.open_zarr(store)
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        assert np.array_equal(a[name].values, b[name].values, equal_nan=a[name].dtype.kind == "f"), name
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]


def test_failed_sweep_task_is_one_line_and_a_rerun_completes(via, prices, tmp_path, monkeypatch, capsys):
    import pipeline.chunk_task as task_mod  # sweep tasks read closes with chunk_task.read_close
    from pipeline.run import RunError

    real = task_mod.read_close

    def flaky(task):
        if task.index == 1:
            raise OSError("disk on fire")
        return real(task)

    monkeypatch.setattr(task_mod, "read_close", flaky)  # both paths run tasks on threads of this process
    store = tmp_path / "s.zarr"
    grid = make_grid({"La": [0.02, 0.1]}, BASE)
    with pytest.raises(RunError, match=r"1 of 3 sweep tasks failed \(first: task 1: OSError: disk on fire\)"):
        run_sweep(prices, store, grid, **via)
    log = tmp_path / "s.zarr.errors.log"
    assert capsys.readouterr().err.splitlines() == [
        f"task 1 (symbols 8..15) failed: OSError: disk on fire (details: {log})"]
    assert "in flaky" in log.read_text()
    monkeypatch.setattr(task_mod, "read_close", real)
    s = run_sweep(prices, store, grid, **via)
    assert (s.action, s.computed, s.already_done) == ("resumed", 1, 2)
