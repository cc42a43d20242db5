"""Routing of GPU work in the distributed run, without a GPU.

A cluster of two in-process workers: a CPU worker and a worker started with the Dask resource
``GPU=1`` (``pipeline.cluster.add_workers``). The "GPU" worker's tasks run ``backend="cuda"``,
i.e. numba-cuda's simulator: the switch must be set before numba.cuda is first imported, so this
module sets NUMBA_ENABLE_CUDASIM=1 at collection (unless numba.cuda is already loaded, as
tests/test_cuda.py does) and restores the environment afterwards. The simulator is slow (about
1 s per 8 symbols x 80 bars), hence the tiny panels. Also: "auto" without GPU workers (CPU + a
notice), "cuda" without them (refused before any work), the pure planning, the CLI and the local
cluster's GPU detection.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

# numba.cuda is already loaded in simulator mode by tests/conftest.py (unless NUMBA_ENABLE_CUDASIM=0)

from flows.cli import main  # noqa: E402
from kernels import ATCParams  # noqa: E402
from kernels.api import ATCBackendError, cuda_status  # noqa: E402
from kernels.backtest import BacktestParams  # noqa: E402
from pipeline import cluster as cluster_mod  # noqa: E402
from pipeline.cluster import ClusterError, add_workers, connect, gpu_workers  # noqa: E402
from pipeline.results import ResultsError  # noqa: E402
from pipeline.run import ChunkTask, Feed, plan_routes, run_atc  # noqa: E402
from pipeline.store import write_prices  # noqa: E402
from pipeline.synth import synth_prices  # noqa: E402

USABLE, SIMULATED, WHAT = cuda_status()
needs_cuda = pytest.mark.skipif(not USABLE, reason=f"CUDA backend not usable: {WHAT}")

N_SYM, N_BARS, CHUNK = 24, 80, 4  # 6 store chunks
SMALL = ATCParams(ema_len=6, hma_len=7, wma_len=5, dema_len=6, lsma_len=5, kama_len=8, robustness="Narrow")


@pytest.fixture(scope="module")
def prices(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("gpu") / "prices.zarr"
    write_prices(synth_prices(N_SYM, N_BARS, seed=5), p, chunk_symbols=CHUNK)
    return p


@pytest.fixture(scope="module")
def mixed():
    """A CPU worker and a "GPU" worker (resource GPU=1), both threads of this process."""
    with connect(None, workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        add_workers(cl.cluster, 1, resources={"GPU": 1}, prefix="gpu")
        cl.client.wait_for_workers(2, timeout=30)
        yield cl


@pytest.fixture(scope="module")
def cpu_only():
    with connect(None, workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        yield cl


@pytest.fixture(scope="module")
def cpu_store(cpu_only, prices, tmp_path_factory) -> Path:
    """The reference: a CPU-only run with a backtest."""
    res = tmp_path_factory.mktemp("gpu") / "cpu.zarr"
    run_atc(prices, res, SMALL, client=cpu_only.client, backend="cpu", backtest=BacktestParams(fee_bps=5))
    return res


def assert_stores_equal(a: Path, b: Path) -> None:
    x, y = xr.open_zarr(a), xr.open_zarr(b)
    assert sorted(x.data_vars) == sorted(y.data_vars)
    for name in x.data_vars:
        u, v = x[name].values, y[name].values
        if u.dtype.kind == "f":
            np.testing.assert_allclose(v, u, rtol=0, atol=1e-12, equal_nan=True, err_msg=name)
            assert np.array_equal(np.isnan(u), np.isnan(v)), name
        else:
            assert np.array_equal(u, v), name


def addresses(cl) -> tuple[str, str]:
    gpus = gpu_workers(cl.workers())
    assert len(gpus) == 1
    gpu = next(iter(gpus))
    (cpu,) = set(cl.workers()) - {gpu}
    return gpu, cpu


# ---- planning (no cluster) ------------------------------------------------------------------

CPU_W = {"tcp://h:1": {"nthreads": 2}, "tcp://h:2": {"nthreads": 1, "resources": {}}}
GPU_W = {"tcp://h:3": {"nthreads": 1, "resources": {"GPU": 1}}}


def test_plan_routes():
    kw = dict(n_todo=40, chunk_symbols=100, n_time=1000)
    (r,), notice = plan_routes("cpu", {**CPU_W, **GPU_W}, **kw)
    assert (r.backend, r.chunks_per_task, r.in_flight, dict(r.submit), notice) == ("cpu", 1, None, {}, None)
    (r,), notice = plan_routes("auto", CPU_W, **kw)
    assert r.backend == "cpu" and "no GPU worker" in notice and "\n" not in notice
    with pytest.raises(ATCBackendError, match="none of the cluster's 2 workers has the resource GPU"):
        plan_routes("cuda", CPU_W, **kw)

    gpu, cpu = plan_routes("auto", {**CPU_W, **GPU_W}, **kw)[0]
    assert (gpu.backend, gpu.in_flight, dict(gpu.submit), gpu.from_back) == ("cuda", 1, {"resources": {"GPU": 1}},
                                                                              False)
    assert gpu.chunks_per_task == 20  # 2**24 symbol-bars -> 167 chunks, capped to two tasks per GPU
    assert (cpu.backend, cpu.chunks_per_task, cpu.in_flight, cpu.from_back) == ("cpu", 1, 6, True)
    assert cpu.submit == {"workers": ["tcp://h:1", "tcp://h:2"], "allow_other_workers": True}
    assert plan_routes("auto", {**CPU_W, **GPU_W}, n_todo=400, chunk_symbols=100, n_time=5000)[0][0] \
        .chunks_per_task == 33  # 2**24 // (100 * 5000)
    (only,), _ = plan_routes("cuda", {**CPU_W, **GPU_W}, **kw, gpu_chunk_symbols=300)
    assert (only.backend, only.chunks_per_task, only.in_flight) == ("cuda", 3, None)
    assert [r.backend for r in plan_routes("auto", GPU_W, **kw)[0]] == ["cuda"]
    with pytest.raises(ResultsError, match="multiple of the results store's chunk of 100"):
        plan_routes("auto", {**CPU_W, **GPU_W}, **kw, gpu_chunk_symbols=150)


def test_feed_hands_out_aligned_runs_of_chunks():
    from pipeline import results as rs

    bounds = rs.chunk_bounds(22, 4)  # 6 chunks, the last of 2 symbols
    routes = plan_routes("auto", {**CPU_W, **GPU_W}, n_todo=5, chunk_symbols=4, n_time=80, gpu_chunk_symbols=12)[0]

    def make(backend, chunks):
        return ChunkTask("p", "r", chunks[0], bounds[chunks[0]][0], bounds[chunks[-1]][1], SMALL, "fp",
                         backend=backend, chunk_symbols=4 if len(chunks) > 1 else 0)

    feed = Feed([0, 1, 3, 4, 5], routes, make)  # chunk 2 already done
    gpu, cpu = routes
    t = feed.next(gpu)
    assert (t.backend, t.index, t.start, t.stop, t.parts()) == ("cuda", 0, 0, 8, [(0, 0, 4), (1, 4, 8)])
    t = feed.next(cpu)
    assert (t.backend, t.parts()) == ("cpu", [(5, 20, 22)])
    t = feed.next(gpu)
    assert t.parts() == [(3, 12, 16), (4, 16, 20)]
    assert feed.next(cpu) is None and feed.next(gpu) is None


# ---- runs on the mixed cluster --------------------------------------------------------------

@needs_cuda
def test_mixed_run_sends_gpu_tasks_to_the_gpu_worker(mixed, prices, cpu_store, tmp_path):
    gpu, cpu = addresses(mixed)
    records, notices = [], []
    res = tmp_path / "mixed.zarr"
    s = run_atc(prices, res, SMALL, client=mixed.client, backend="auto", gpu_chunk_symbols=2 * CHUNK,
                backtest=BacktestParams(fee_bps=5), on_record=records.append, on_notice=notices.append)
    assert notices == [] and s.notice is None
    on_gpu = [r for r in records if r["backend"] == "cuda"]
    on_cpu = [r for r in records if r["backend"] == "cpu"]
    assert on_gpu and on_cpu  # both kinds worked in the same run
    # a GPU task takes up to 2 consecutive chunks from the front; the last one may find a single
    # chunk left when the CPU worker took its neighbour from the back (timing-dependent)
    assert all(r["worker"] == gpu and 1 <= len(r["chunks"]) <= 2 for r in on_gpu), on_gpu
    assert len(on_gpu[0]["chunks"]) == 2, on_gpu
    # CPU tasks prefer the CPU workers but may be stolen by an idle GPU worker (allow_other_workers:
    # a CUDA worker's process computes CPU chunks too), so only their shape is fixed
    assert all(r["worker"] in (cpu, gpu) and len(r["chunks"]) == 1 for r in on_cpu), on_cpu
    assert sorted(c for r in records for c in r["chunks"]) == list(range(N_SYM // CHUNK))
    assert s.backends == {"cuda": sum(len(r["chunks"]) for r in on_gpu), "cpu": len(on_cpu)}
    assert s.computed == N_SYM // CHUNK
    assert "chunks on cuda" in s.describe()
    assert xr.open_zarr(res).attrs["backend"] == "cpu+cuda"
    assert_stores_equal(cpu_store, res)


@needs_cuda
def test_cuda_run_uses_only_the_gpu_worker(mixed, prices, cpu_store, tmp_path):
    gpu, _ = addresses(mixed)
    records = []
    res = tmp_path / "cuda.zarr"
    s = run_atc(prices, res, SMALL, client=mixed.client, backend="cuda", gpu_chunk_symbols=3 * CHUNK,
                backtest=BacktestParams(fee_bps=5), on_record=records.append)
    assert [(r["backend"], r["worker"], r["chunks"]) for r in sorted(records, key=lambda r: r["chunk"])] == [
        ("cuda", gpu, [0, 1, 2]), ("cuda", gpu, [3, 4, 5])]
    assert s.backends == {"cuda": 6}
    assert_stores_equal(cpu_store, res)


def test_auto_without_gpu_workers_runs_on_cpu_with_a_notice(cpu_only, prices, cpu_store, tmp_path):
    records, notices = [], []
    res = tmp_path / "auto.zarr"
    s = run_atc(prices, res, SMALL, client=cpu_only.client, backend="auto", backtest=BacktestParams(fee_bps=5),
                on_record=records.append, on_notice=notices.append)
    assert len(notices) == 1 and notices[0].startswith("no GPU worker in the cluster") and "\n" not in notices[0]
    assert {r["backend"] for r in records} == {"cpu"} and s.backends == {"cpu": 6}
    assert_stores_equal(cpu_store, res)


def test_cuda_without_gpu_workers_is_refused_before_any_work(cpu_only, prices, tmp_path, capsys, monkeypatch):
    res = tmp_path / "r.zarr"
    with pytest.raises(ATCBackendError, match="--backend cuda: none of the cluster's 1 workers has the resource GPU"):
        run_atc(prices, res, SMALL, client=cpu_only.client, backend="cuda")
    assert not res.exists()
    # the CLI: one line on stderr, exit code 2; a local cluster on a machine without GPUs is not even started
    argv = ["run", str(prices), str(res), "--backend", "cuda", "--no-progress"]
    assert main(argv + ["--scheduler", cpu_only.address]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --backend cuda: none of the cluster's") and err.count("\n") == 1
    assert not res.exists()
    monkeypatch.setattr(cluster_mod, "local_gpu_count", lambda: 0)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --backend cuda: no NVIDIA GPU on this machine") and err.count("\n") == 1
    assert not res.exists()


def test_cli_auto_notice(cpu_only, prices, tmp_path, capsys):
    res = tmp_path / "r.zarr"
    assert main(["run", str(prices), str(res), "--scheduler", cpu_only.address, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "notice: no GPU worker in the cluster" in out and "6 computed now" in out


# ---- the local cluster's GPU detection ------------------------------------------------------

def test_local_gpu_count_and_cluster_choice(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-0)'\necho 'GPU 1: Fake (UUID: GPU-1)'\n")
    smi.chmod(0o755)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # NVML unavailable: nvidia-smi decides
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert cluster_mod.local_gpu_count() == 2
    for visible, n in (("1", 1), ("0,1,2", 2), ("", 0), ("-1", 0), ("0,-1,1", 1)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert cluster_mod.local_gpu_count() == n, visible
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert cluster_mod.local_gpu_count() == 0

    # GPUs found but no usable dask-cuda: "auto" gets a CPU cluster and a notice, "cuda" an error
    monkeypatch.setattr(cluster_mod, "local_gpu_count", lambda: 1)
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    with connect(None, workers=1, processes=False, dashboard_address=None, backend="auto") as cl:
        assert "GPU(s) found but dask-cuda cannot be imported" in cl.notice and not gpu_workers(cl.workers())
    with pytest.raises(ClusterError, match="--backend cuda on a local cluster needs dask-cuda"), \
            connect(None, processes=False, dashboard_address=None, backend="cuda"):
        pass
    monkeypatch.setattr(cluster_mod, "local_gpu_count", lambda: 0)
    with pytest.raises(ClusterError, match="--backend cuda: no NVIDIA GPU on this machine"), \
            connect(None, processes=False, dashboard_address=None, backend="cuda"):
        pass
