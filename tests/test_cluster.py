"""A real cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1, started here.

Faults: the client killed mid-run (rerun resumes), a second run on the same results store
(refused), a worker process killed mid-run (the run completes). Every wait is bounded and every
process started here is stopped at the end. Workers are slowed down where a test needs a run to
be "in the middle" by patching, on the workers only, the function that reads a chunk's prices.

The workers compile the kernel once each (~15-20 s, in parallel); the clients started as
subprocesses never run the kernel, so they do not compile.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
import zarr

from flows.cli import main
from kernels import OUTPUT_NAMES, compute_atc
from pipeline.cluster import connect
from pipeline.run import run_atc
from pipeline.store import open_prices, write_prices
from pipeline.synth import synth_prices

DASK = str(Path(sys.executable).with_name("dask"))
N_SYM, N_BARS, CHUNK = 48, 300, 4  # 12 chunks
START_TIMEOUT = 120  # worker start + kernel compile on a loaded 2-core machine
RUN_TIMEOUT = 120

SLOW = """
import time, pipeline.chunk_task as r  # run_chunk's module: it calls read_close
orig = getattr(r, "_test_orig_read_close", None) or r.read_close
r._test_orig_read_close = orig
def slow(task, _orig=orig, _delay={delay}):
    time.sleep(_delay)
    return _orig(task)
r.read_close = slow if {delay} else orig
"""


def _wait(cond, timeout: float, what: str, interval: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started here (and its own process group, e.g. a scheduler's children)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def _env() -> dict:
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    sched_file = d / "scheduler.json"
    procs: list[subprocess.Popen] = []
    logs = []
    client = None

    def start(args, name):
        log = open(d / f"{name}.log", "w")
        logs.append(log)
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=d, start_new_session=True)
        procs.append(p)
        return p

    try:
        sched = start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                       "--scheduler-file", str(sched_file)], "scheduler")

        def address():
            assert sched.poll() is None, (d / "scheduler.log").read_text()
            try:
                return json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                return None

        addr = _wait(address, 60, "the scheduler file")
        assert addr.startswith("tcp://127.0.0.1:")
        workers = [
            # no nanny: killing a worker process ends it for good (no restart that recompiles)
            start([DASK, "worker", addr, "--nthreads", "1", "--nworkers", "1", "--no-nanny", "--host", "127.0.0.1",
                   "--no-dashboard", "--name", f"w{i}", "--local-directory", str(d / f"w{i}")], f"worker{i}")
            for i in range(2)
        ]
        from distributed import Client

        client = Client(addr, timeout=30)
        client.wait_for_workers(2, timeout=START_TIMEOUT)
        from flows.bench_pipeline_cmd import warm_kernel

        client.run(warm_kernel, False)  # compile on both workers at once, before any timing matters
        yield SimpleNamespace(address=addr, client=client, workers=workers, dir=d)
    finally:
        if client is not None:
            client.close()
        for p in reversed(procs):
            _stop(p)
        for log in logs:
            log.close()


def _slow(ext, delay: float) -> None:
    ext.client.run(exec, SLOW.format(delay=delay), {})


@pytest.fixture(scope="module")
def prices(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cprices") / "prices.zarr"
    write_prices(synth_prices(N_SYM, N_BARS, seed=5), p, chunk_symbols=CHUNK)
    return p


@pytest.fixture(scope="module")
def clean(prices, tmp_path_factory) -> Path:
    """A clean run on an in-process local cluster: the reference every cluster run must equal."""
    res = tmp_path_factory.mktemp("clean") / "results.zarr"
    with connect(None, workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        run_atc(prices, res, client=cl.client)
    close = open_prices(prices)["close"].values
    exp = compute_atc(close, parallel=False, on_bad="status")
    ds = xr.open_zarr(res)
    for name in OUTPUT_NAMES:
        assert np.array_equal(ds[name].values, exp[name], equal_nan=True), name
    return res


def assert_identical(a: Path, b: Path) -> None:
    x, y = xr.open_zarr(a), xr.open_zarr(b)
    for name in list(OUTPUT_NAMES) + ["status", "reason", "chunk_done"]:
        u, v = x[name].values, y[name].values
        assert u.dtype == v.dtype, name
        if u.dtype.kind == "f":
            assert np.array_equal(u.view(np.uint64), v.view(np.uint64)), name  # bit for bit
        else:
            assert np.array_equal(u, v), name
    assert x.attrs["fingerprint"] == y.attrs["fingerprint"]


def _done(res: Path) -> int:
    try:
        return int((zarr.open_array(str(res / "chunk_done"), mode="r")[:] == 1).sum())
    except Exception:  # not created yet
        return -1


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def test_real_cluster_equals_local_run(ext, prices, clean, tmp_path, capsys, monkeypatch):
    _slow(ext, 0)
    res = tmp_path / "r.zarr"
    assert main(["run", str(prices), str(res), "--scheduler", ext.address, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"cluster {ext.address}: 2 workers x 1 threads (serial kernel per worker thread)" in out
    assert "12 computed now" in out
    assert_identical(res, clean)

    # Dask's own convention: DASK_SCHEDULER_ADDRESS instead of --scheduler
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", ext.address)
    assert main(["run", str(prices), str(tmp_path / "r2.zarr"), "--no-progress"]) == 0
    assert f"cluster {ext.address}" in capsys.readouterr().out
    assert_identical(tmp_path / "r2.zarr", clean)


def test_killed_client_then_rerun_resumes(ext, prices, clean, tmp_path, capsys):
    res = tmp_path / "r.zarr"
    _slow(ext, 0.4)
    try:
        proc = _cli("run", str(prices), str(res), "--scheduler", ext.address, "--no-progress")
        try:
            _wait(lambda: _done(res) >= 2 or proc.poll() is not None, RUN_TIMEOUT, "two finished chunks")
            assert proc.poll() is None, proc.communicate()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        # tasks already running when the client died still finish; wait until the store is quiet
        _wait(lambda: not any(ext.client.processing().values()), 30, "the scheduler to drop the tasks")
        prev = [-2]

        def settled():
            n = _done(res)
            same = n == prev[0]
            prev[0] = n
            return same

        _wait(settled, 30, "writes to settle", interval=1.0)
    finally:
        _slow(ext, 0)
    done = _done(res)
    assert 2 <= done < 12, done
    assert main(["run", str(prices), str(res), "--scheduler", ext.address, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"results .*, resumed\n.*{12 - done} computed now, {done} already done", out), out
    assert_identical(res, clean)


def test_second_concurrent_run_refuses(ext, prices, clean, tmp_path, capsys):
    res = tmp_path / "r.zarr"
    lock = tmp_path / ".r.zarr.lock"
    _slow(ext, 0.3)
    try:
        proc = _cli("run", str(prices), str(res), "--scheduler", ext.address, "--no-progress")
        try:
            def holder():
                try:
                    return json.loads(lock.read_text() or "{}").get("pid") == proc.pid and _done(res) >= 1
                except OSError:
                    return proc.poll() is not None

            _wait(holder, RUN_TIMEOUT, "the first run to hold the lock")
            assert proc.poll() is None, proc.communicate()
            os.kill(proc.pid, signal.SIGSTOP)  # keep it mid-run, however slow this machine is
            try:
                assert main(["run", str(prices), str(res), "--scheduler", ext.address, "--no-progress"]) == 2
                err = capsys.readouterr().err
                assert f"is being written by another atc run (pid {proc.pid} on " in err
                assert "wait for that run to finish or stop it" in err
                from pipeline.results import ResultsLockedError

                with pytest.raises(ResultsLockedError):
                    run_atc(prices, res, client=ext.client)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    finally:
        _slow(ext, 0)
    assert proc.returncode == 0, err
    assert "12 computed now, 0 already done" in out
    assert_identical(res, clean)
    assert not lock.exists()


def test_worker_killed_mid_run_still_completes(ext, prices, clean, tmp_path):
    """Runs last in this module: it leaves the cluster with one worker."""
    res = tmp_path / "r.zarr"
    _slow(ext, 0.3)
    pids = ext.client.run(os.getpid)
    box: dict = {}

    def go():
        try:
            box["summary"] = run_atc(prices, res, client=ext.client, progress=False)
        except BaseException as exc:  # reported by the assertion below
            box["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    try:
        _wait(lambda: _done(res) >= 1, RUN_TIMEOUT, "the first finished chunk")
        busy = _wait(lambda: [w for w, keys in ext.client.processing().items() if keys], 30, "a busy worker")
        victim = busy[0]
        os.kill(pids[victim], signal.SIGKILL)
        t.join(RUN_TIMEOUT)
        assert not t.is_alive(), "the run did not finish after a worker was killed"
    finally:
        _slow(ext, 0)
    assert "error" not in box, box.get("error")
    s = box["summary"]
    assert s.computed == 12
    assert victim not in ext.client.scheduler_info()["workers"]
    assert_identical(res, clean)


@pytest.mark.slow  # the README demo itself runs in-process in the default run (tests/test_startup.py)
def test_demo_end_to_end(tmp_path):
    """`atc demo` as a user runs it (console script), on a local cluster of worker processes
    (``--cluster``; without it this size runs in-process: tests/test_startup.py)."""
    d = tmp_path / "demo"
    atc = str(Path(sys.executable).with_name("atc"))
    proc = subprocess.run([atc, "demo", "--dir", str(d), "--workers", "1", "--no-progress", "--cluster"],
                          capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"prices:  {d / 'prices.zarr'}  (300 symbols x 2500 daily bars" in out
    assert "local cluster tcp://127.0.0.1:" in out
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/status", out)
    assert f"results: {d / 'results.zarr'}  (12 chunks, 12 computed now" in out
    assert "Strongest signals at each symbol's last bar" in out  # the atc scan table
    assert f"xr.open_zarr({str(d / 'results.zarr')!r})" in out
    block = out[out.index("LONG ("):].splitlines()
    assert block[1].split()[:3] == ["symbol", "signal", "trend"]
    table = block[2:7]
    assert len(table) == 5 and all(re.match(r"\s*SYN\d{4}\s+[-0-9.]+", r) for r in table)
    res = xr.open_zarr(d / "results.zarr")
    assert (res["status"].values == 0).all() and (res["chunk_done"].values == 1).all()
    longs = [float(r.split()[1]) for r in table]
    assert longs == sorted(longs, reverse=True)
    last = res["Average_Signal"].to_pandas().T.ffill().iloc[-1].to_numpy()  # each symbol's own last bar
    assert abs(longs[0] - np.nanmax(last)) < 1e-3
