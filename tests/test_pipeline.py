"""`atc run` on both paths (the ``via`` fixture): in-process (pipeline/executor.py, no Dask) and an
in-process Dask cluster (threads of this process, so the kernel compiles once for every test
here): exact results, bad symbols, resume, failures, refusals, the lock, the CLI. A real
multi-process cluster: tests/test_cluster.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from flows.cli import main
from kernels import OUTPUT_NAMES, ATCParams, compute_atc
from kernels import status as st
from kernels.errors import ATCUserError
from pipeline import results as rs
from pipeline.cluster import connect
from pipeline.run import run_atc
from pipeline.store import open_prices, write_prices
from pipeline.synth import synth_prices

N_SYM, N_BARS, CHUNK = 36, 300, 8


@pytest.fixture(scope="module")
def cluster():
    # two single-threaded in-process workers: tasks really run concurrently, serial kernels
    with connect(None, workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        yield cl


@pytest.fixture(params=["in-process", "cluster"])
def via(request, cluster) -> dict:
    """How run_atc runs: keyword arguments for it (``client`` or ``threads``)."""
    return {"threads": 2} if request.param == "in-process" else {"client": cluster.client}


@pytest.fixture(params=["in-process", "cluster"])
def cli_via(request, cluster) -> list[str]:
    """How `atc run` runs: the options that choose the path."""
    return ["--in-process", "--workers", "2"] if request.param == "in-process" else ["--scheduler", cluster.address]


@pytest.fixture(scope="module")
def prices(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pipe") / "prices.zarr"
    write_prices(synth_prices(N_SYM, N_BARS, seed=11), p, chunk_symbols=CHUNK)
    return p


def expected(prices: Path, params: ATCParams | None = None, dtype=np.float64):
    close = open_prices(prices)["close"].values
    return compute_atc(close, params, dtype=dtype, parallel=False, on_bad="status")


def assert_same(res_path: Path, exp) -> xr.Dataset:
    ds = xr.open_zarr(res_path)
    for name in OUTPUT_NAMES:
        got = ds[name].values
        assert got.dtype == exp[name].dtype, name
        assert np.array_equal(got, exp[name], equal_nan=True), name
        assert np.array_equal(np.isnan(got), np.isnan(exp[name])), name
    np.testing.assert_array_equal(ds["status"].values, exp.status)
    assert (ds["chunk_done"].values == 1).all()
    return ds


def test_results_equal_compute_atc_exactly(via, prices, tmp_path):
    res = tmp_path / "r.zarr"
    records = []
    s = run_atc(prices, res, **via, on_record=records.append)
    assert (s.action, s.n_chunks, s.computed, s.chunk_symbols) == ("created", 5, 5, CHUNK)
    assert not s.kernel_parallel  # two workers in one process: serial kernels
    assert sorted(r["chunk"] for r in records) == list(range(5))
    assert all(set(r) >= {"counts", "read_s", "compute_s", "write_s", "worker"} for r in records)
    ds = assert_same(res, expected(prices))
    assert s.status_counts["ok"] == N_SYM
    assert ds.attrs["completed"] and json.loads(ds.attrs["status_counts"])["ok"] == N_SYM
    src = open_prices(prices)
    assert list(ds["symbol"].values) == list(src["symbol"].values)
    np.testing.assert_array_equal(ds["time"].values, src["time"].values)

    again = run_atc(prices, res, **via)  # nothing left to do
    assert (again.action, again.computed, again.already_done) == ("complete", 0, 5)


@pytest.mark.slow  # compiles the float32 kernel: ~20 s more
def test_float32_and_params(via, prices, tmp_path):
    params = ATCParams(ema_len=20, robustness="Wide", La=0.05, cutout=3)
    s = run_atc(prices, tmp_path / "r.zarr", params, **via, dtype="float32", chunk_symbols=16)
    assert (s.n_chunks, s.chunk_symbols) == (3, 16)
    ds = assert_same(tmp_path / "r.zarr", expected(prices, params, np.float32))
    assert ds["Average_Signal"].dtype == np.float32 and ds.attrs["dtype"] == "float32"
    assert json.loads(ds.attrs["params"])["ema_len"] == 20


def test_bad_and_short_symbols_get_a_status_and_the_rest_completes(via, prices, tmp_path):
    bad = tmp_path / "bad.zarr"
    shutil.copytree(prices, bad)
    close = zarr.open_array(str(bad / "close"), mode="r+")
    close[3, 100] = -1.0  # the price store never holds these; a hand-edited or foreign one might
    close[20, 200] = np.inf  # (a NaN would only mean "no bar at that time")
    n_valid = (~np.isnan(open_prices(prices)["close"].values)).sum(axis=1)
    params = ATCParams(ema_len=int(n_valid.min()) - 7)  # needs one bar more than the shortest symbol has
    exp = expected(bad, params)
    assert exp.status[3] == st.BAD_DATA and exp.status[20] == st.BAD_DATA
    short = np.flatnonzero(exp.status == st.INSUFFICIENT_HISTORY)
    assert short.size >= 1
    s = run_atc(bad, tmp_path / "r.zarr", params, **via)
    ds = assert_same(tmp_path / "r.zarr", exp)
    reason = ds["reason"].values
    assert reason[3] == "bad data: symbol 'SYN0003' (index 3) has a close <= 0 (-1.0) at bar 100"
    assert reason[20].startswith("bad data: symbol 'SYN0020' (index 20)")
    assert reason[short[0]].startswith(f"insufficient history: symbol '{ds['symbol'].values[short[0]]}'")
    assert all(reason[i] == "" for i in np.flatnonzero(exp.status == st.OK))
    assert s.status_counts == {"not computed": 0, "ok": int((exp.status == 0).sum()),
                               "insufficient history": int(short.size), "no data": 0, "bad data": 2}
    assert "SYN0003" in s.describe() and "bad data" in s.describe()


def test_resume_computes_only_missing_chunks(via, prices, tmp_path):
    res = tmp_path / "r.zarr"
    run_atc(prices, res, **via)
    # as if the run had died: two chunks not marked done, one of them half written
    g = zarr.open_group(str(res), mode="r+", use_consolidated=False)
    g["chunk_done"][1] = 0
    g["chunk_done"][3] = 0
    g["EMA_S"][8:16] = 123.0
    g["status"][24:32] = rs.NOT_COMPUTED
    records = []
    s = run_atc(prices, res, **via, on_record=records.append)
    assert (s.action, s.computed, s.already_done) == ("resumed", 2, 3)
    assert sorted(r["chunk"] for r in records) == [1, 3]
    assert_same(res, expected(prices))


def test_failed_chunk_is_reported_and_a_rerun_completes(via, prices, tmp_path, monkeypatch, capsys):
    import pipeline.chunk_task as task_mod
    import pipeline.run as run_mod

    real = task_mod.read_close

    def flaky(task):
        if task.index == 2:
            raise OSError("disk on fire")
        return real(task)

    monkeypatch.setattr(task_mod, "read_close", flaky)  # the workers are threads of this process
    res = tmp_path / "r.zarr"
    with pytest.raises(run_mod.RunError, match=r"1 of 5 chunks failed \(first: chunk 2, symbols 16\.\.23: "
                                                r"OSError: disk on fire\); the 4 finished chunks are saved"):
        run_atc(prices, res, **via)
    # one line on the terminal, not Dask's "Compute Failed" report; the traceback in the log beside the store
    log = tmp_path / "r.zarr.errors.log"
    err = capsys.readouterr().err
    assert err.splitlines() == [f"chunk 2 (symbols 16..23) failed: OSError: disk on fire (details: {log})"]
    assert "Traceback" in log.read_text() and "in flaky" in log.read_text()
    assert list(xr.open_zarr(res)["chunk_done"].values) == [1, 1, 0, 1, 1]
    assert "completed" not in xr.open_zarr(res).attrs
    monkeypatch.setattr(task_mod, "read_close", real)
    s = run_atc(prices, res, **via)
    assert (s.action, s.computed) == ("resumed", 1)
    assert_same(res, expected(prices))


def test_refuses_other_params_or_changed_prices_unless_overwrite(via, prices, tmp_path):
    px = tmp_path / "prices.zarr"
    shutil.copytree(prices, px)
    res = tmp_path / "r.zarr"
    run_atc(px, res, **via)
    before = (res / "zarr.json").read_text()
    with pytest.raises(rs.ResultsError, match=r"different parameters \(ema_len 28 -> 30\).*--overwrite"):
        run_atc(px, res, ATCParams(ema_len=30), **via)
    with pytest.raises(rs.ResultsError, match="stored with 8 symbols per chunk, not 16"):
        run_atc(px, res, **via, chunk_symbols=16)
    write_prices(synth_prices(N_SYM, N_BARS, seed=12), px, chunk_symbols=CHUNK, overwrite=True)
    with pytest.raises(rs.ResultsError, match="a different price store"):
        run_atc(px, res, **via)
    assert (res / "zarr.json").read_text() == before  # refused runs change nothing

    s = run_atc(px, res, ATCParams(ema_len=30), **via, overwrite=True)
    assert (s.action, s.computed) == ("overwritten", 5)
    assert_same(res, expected(px, ATCParams(ema_len=30)))
    # the replaced store was deleted (in the background, while the tasks ran) before run_atc returned
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.zarr.")]


def test_refusals_before_any_work(via, prices, tmp_path):
    with pytest.raises(rs.ResultsError, match="not aligned with the price store's chunks of 8"):
        run_atc(prices, tmp_path / "r.zarr", **via, chunk_symbols=12)
    assert not (tmp_path / "r.zarr").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("not a store")
    for overwrite in (False, True):
        with pytest.raises(rs.ResultsError, match="not an atc results store"):
            run_atc(prices, other, **via, overwrite=overwrite)
    assert (other / "keep.txt").read_text() == "not a store"
    with pytest.raises(ATCUserError, match="cannot be the price store"):
        run_atc(prices, prices, **via)


def test_cli_run_with_config_and_set(cli_via, prices, tmp_path, capsys):
    cfg = tmp_path / "atc.yaml"
    cfg.write_text("ema_len: 24\nrobustness: Narrow\n")
    res = tmp_path / "r.zarr"
    report = tmp_path / "perf.html"
    on_cluster = "--scheduler" in cli_via
    argv = ["run", str(prices), str(res), "--config", str(cfg), "--set", "La=0.04", "--set", "ema_len=26",
            *cli_via, "--no-progress"] + (["--report", str(report)] if on_cluster else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"results {res}: {N_SYM} symbols x {N_BARS} bars, computed" in out
    assert "5 computed now, 0 already done" in out
    assert ("in-process: 2 threads" in out) != on_cluster
    assert on_cluster or "dashboard" not in out  # the link only where there is a dashboard
    if on_cluster:
        assert report.stat().st_size > 0
    assert_same(res, expected(prices, ATCParams(ema_len=26, robustness="Narrow", La=0.04)))
    assert main(argv) == 0
    assert "already complete" in capsys.readouterr().out

    # refusals are one line on stderr with exit code 2, before any cluster is contacted
    assert main(["run", str(prices), str(res), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "different parameters" in err and err.count("\n") == 1
    assert main(["run", str(tmp_path / "nope.zarr"), str(res)]) == 2
    assert "no such price store" in capsys.readouterr().err
    assert main(["run", str(prices), str(res), "--set", "bogus=1"]) == 2
    assert "unknown ATC parameter(s): bogus" in capsys.readouterr().err
    assert main(["run", str(prices), str(tmp_path / "x.zarr"), "--dtype", "float16"]) == 2
    assert "dtype must be one of" in capsys.readouterr().err


def test_prices_changed_during_the_run_names_the_command_that_works(cli_via, prices, tmp_path, monkeypatch,
                                                                   capsys):
    """A plain rerun is refused once the price store changed (other fingerprint): the message must
    give the command with --overwrite, and that command must then work."""
    import pipeline.chunk_task as task_mod

    px = tmp_path / "prices.zarr"
    shutil.copytree(prices, px)
    res = tmp_path / "r.zarr"
    real = task_mod.read_close

    def replaced_meanwhile(task):
        if task.index == 1:  # the store is replaced while the run is going
            write_prices(synth_prices(N_SYM, N_BARS, seed=12), px, chunk_symbols=CHUNK, overwrite=True)
        return real(task)

    monkeypatch.setattr(task_mod, "read_close", replaced_meanwhile)
    argv = ["run", str(px), str(res), *cli_via, "--no-progress", "--chunk-symbols", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and err[-1].endswith(f": atc run {px} {res} {' '.join(cli_via)} "
                                                              "--no-progress --chunk-symbols 8 --overwrite")
    assert "the price store" in err[-1] and "changed during the run" in err[-1]
    assert all(" failed: PricesChangedError: " in line for line in err[:-1]) and len(err) >= 2
    monkeypatch.setattr(task_mod, "read_close", real)
    assert main(argv) == 2  # what the old message advised: refused
    assert "a different price store" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0  # what the new one says: works
    assert_same(res, expected(px))


def test_small_store_gives_every_worker_a_task(via, tmp_path):
    """25 symbols in one price chunk on 2 workers: tasks smaller than the price chunk (each writes
    whole results chunks), every worker busy, results still exact."""
    px = tmp_path / "small.zarr"
    write_prices(synth_prices(25, N_BARS, seed=5), px, chunk_symbols=25)
    records = []
    s = run_atc(px, tmp_path / "r.zarr", **via, on_record=records.append)
    assert s.n_chunks >= 2 and len(records) == s.n_chunks
    assert_same(tmp_path / "r.zarr", expected(px))


def test_second_run_on_a_locked_store_is_refused(via, prices, tmp_path):
    """The lock works the same on both paths (another process's run holds it: here, a lock taken
    on its own file descriptor, which flock treats as another holder)."""
    res = tmp_path / "r.zarr"
    lock = rs.ResultsLock(res)
    lock.acquire()
    try:
        with pytest.raises(rs.ResultsError, match="is being written by another atc run"):
            run_atc(prices, res, **via)
    finally:
        lock.release()
    assert (run_atc(prices, res, **via)).action == "created"


def test_small_run_in_a_fresh_process_imports_no_cluster(prices, tmp_path):
    """`atc run` of a small store runs in-process: distributed and bokeh are never imported, no
    dashboard line; a rerun on the complete store loads no kernel either."""
    import subprocess
    import sys

    res = tmp_path / "r.zarr"
    code = ("import sys; from flows.cli import main; rc = main(sys.argv[1:]); "
            "print('MODULES', *sorted({m.split('.')[0] for m in sys.modules} & {'distributed', 'bokeh'}), "
            "'cpu' if 'kernels.cpu' in sys.modules else '-'); sys.exit(rc)")
    for expect in ("computed", "already complete"):
        p = subprocess.run([sys.executable, "-c", code, "run", str(prices), str(res), "--no-progress"],
                           capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stderr
        assert expect in p.stdout
        assert "dashboard" not in p.stdout and "local cluster" not in p.stdout
        modules = p.stdout.split("MODULES")[1].split()
        assert modules == (["cpu"] if expect == "computed" else ["-"]), p.stdout


def test_bench_pipeline_size_option():
    import typer

    from flows.bench_pipeline_cmd import parse_size

    assert parse_size("2000x5000") == (2000, 5000)
    assert parse_size("20,000 x 5,000") == (20000, 5000)
    for bad in ("2000", "0x10", "ax5", "10x10x10"):
        with pytest.raises(typer.BadParameter, match="--size"):
            parse_size(bad)
