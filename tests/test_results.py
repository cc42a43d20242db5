"""Results store, lock, run identity, cluster shape rules and config loading (no Dask cluster,
no kernel compile: these tests are fast)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flows.run_cmd import load_params
from kernels import OUTPUT_NAMES, ATCParams
from kernels.errors import ATCUserError
from pipeline import results as rs
from pipeline.cluster import ClusterError, connect, kernel_parallel
from pipeline.run import check_alignment, default_chunk_symbols
from pipeline.store import TIME_CHUNK, open_prices, write_prices
from pipeline.synth import synth_prices


@pytest.fixture(scope="module")
def prices(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("res") / "prices.zarr"
    write_prices(synth_prices(10, 50, seed=3), p, chunk_symbols=4)
    return p


def _identity(prices: Path, **changes) -> rs.RunIdentity:
    ds = open_prices(prices)
    return rs.RunIdentity(ATCParams().replace(**changes), ds.attrs["fingerprint"], "float64", rs.code_version())


def test_template_is_plain_xarray_readable(prices, tmp_path):
    res = tmp_path / "r.zarr"
    ident = _identity(prices)
    rs.create_results(res, open_prices(prices), ident, 4, prices_path=str(prices))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "consolidated metadata" or other warnings
        ds = xr.open_zarr(res)
    src = open_prices(prices)
    assert list(ds["symbol"].values) == list(src["symbol"].values)
    np.testing.assert_array_equal(ds["time"].values, src["time"].values)
    for name in OUTPUT_NAMES:
        assert ds[name].dims == ("symbol", "time") and ds[name].dtype == np.float64
        assert ds[name].encoding["chunks"] == (4, TIME_CHUNK)  # time chunked too
        assert np.isnan(ds[name].values).all()  # never written: fill value
    assert (ds["status"].values == rs.NOT_COMPUTED).all() and ds["status"].dtype == np.int8
    assert list(ds["chunk_done"].values) == [0, 0, 0]
    a = ds.attrs
    assert a["atc_format"] == "atc-results" and a["fingerprint"] == ident.fingerprint()
    assert json.loads(a["params"]) == ATCParams().to_dict()
    assert a["prices_fingerprint"] == src.attrs["fingerprint"]
    assert "numba" in json.loads(a["versions"])
    codec = json.loads((res / "Average_Signal" / "zarr.json").read_text())["codecs"]
    assert any(c["name"] == "blosc" for c in codec)
    state = rs.read_state(res)
    assert (state.n_symbols, state.n_time, state.chunk_symbols, state.n_chunks) == (10, 50, 4, 3)
    assert not state.complete


def test_write_chunk_region_and_done_marker(prices, tmp_path):
    res = tmp_path / "r.zarr"
    rs.create_results(res, open_prices(prices), _identity(prices), 4)
    outs = {n: np.full((4, 50), float(k)) for k, n in enumerate(OUTPUT_NAMES)}
    rs.write_chunk(res, 1, 4, 8, outs, np.array([0, 3, 0, 1], np.int8), ["", "bad data: x", "", "short"])
    ds = xr.open_zarr(res)
    assert list(ds["chunk_done"].values) == [0, 1, 0]
    assert list(ds["status"].values) == [-1] * 4 + [0, 3, 0, 1] + [-1] * 2
    assert ds["reason"].values[5] == "bad data: x"
    assert (ds["KAMA_S"].values[4:8] == OUTPUT_NAMES.index("KAMA_S")).all()
    assert np.isnan(ds["KAMA_S"].values[:4]).all() and np.isnan(ds["KAMA_S"].values[8:]).all()



def test_write_chunk_refuses_a_region_that_is_not_whole_chunks(prices, tmp_path):
    """Tasks write zarr arrays directly: a region that is not whole chunks could be shared by two
    tasks (read-modify-write races), so it is refused before anything is written."""
    res = tmp_path / "r.zarr"
    rs.create_results(res, open_prices(prices), _identity(prices), 4)
    outs = {n: np.zeros((3, 50)) for n in OUTPUT_NAMES}
    with pytest.raises(rs.ResultsError, match="not whole chunks"):
        rs.write_chunk(res, 1, 5, 8, outs, np.zeros(3, np.int8), [""] * 3)
    with pytest.raises(rs.ResultsError, match="no variable 'position'"):
        rs.write_chunk(res, 2, 8, 10, {n: np.zeros((2, 50)) for n in OUTPUT_NAMES}, np.zeros(2, np.int8), [""] * 2,
                       {"position": (("symbol", "time"), np.zeros((2, 50)))})
    ds = xr.open_zarr(res)
    assert list(ds["chunk_done"].values) == [0, 0, 0] and (ds["status"].values == rs.NOT_COMPUTED).all()
    assert np.isnan(ds["EMA_S"].values).all()
    rs.write_chunk(res, 2, 8, 10, {n: np.ones((2, 50)) for n in OUTPUT_NAMES}, np.zeros(2, np.int8), [""] * 2)
    assert list(xr.open_zarr(res)["chunk_done"].values) == [0, 0, 1]  # the short last chunk is whole


def test_results_codecs_round_trip_two_decimal_signals_exactly(prices, tmp_path):
    """The measured codecs (lz4 without shuffle for the signals) are lossless: 2-decimal values and
    full doubles come back bit for bit."""
    res = tmp_path / "r.zarr"
    rs.create_results(res, open_prices(prices), _identity(prices), 4)
    rng = np.random.default_rng(5)
    outs = {n: (np.round(rng.uniform(-1, 1, (4, 50)), 2) if n.endswith("_Signal") else rng.lognormal(size=(4, 50)))
            for n in OUTPUT_NAMES}
    outs["Average_Signal"][0, :7] = np.nan
    rs.write_chunk(res, 0, 0, 4, outs, np.zeros(4, np.int8), [""] * 4)
    ds = xr.open_zarr(res)
    for n in OUTPUT_NAMES:
        np.testing.assert_array_equal(ds[n].values[:4].view(np.int64), outs[n].view(np.int64))
    cfg = json.loads((res / "EMA_Signal" / "zarr.json").read_text())["codecs"][-1]["configuration"]
    assert (cfg["cname"], cfg["shuffle"]) == ("lz4", "noshuffle")

def test_identity_differences_name_the_change(prices):
    a = _identity(prices)
    attrs = {"params": a.params_json(), "prices_fingerprint": a.prices_fingerprint, "dtype": "float64",
             "code_version": a.code, "fingerprint": a.fingerprint()}
    assert a.differences(attrs) == []
    b = _identity(prices, ema_len=30, robustness="Wide")
    (msg,) = b.differences(attrs)
    assert "ema_len 28 -> 30" in msg and "robustness 'Medium' -> 'Wide'" in msg
    c = rs.RunIdentity(a.params, "sha256:other", "float64", a.code)
    assert "different price store" in c.differences(attrs)[0]
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3


def test_create_refuses_to_replace_a_non_results_store(prices, tmp_path):
    with pytest.raises(rs.ResultsError, match="not an atc results store"):
        rs.create_results(prices, open_prices(prices), _identity(prices), 4, replace=True)
    with pytest.raises(rs.ResultsError, match="not an atc results store"):
        rs.read_state(prices)


def test_lock_refuses_a_second_holder_and_releases(tmp_path):
    res = tmp_path / "r.zarr"
    with rs.ResultsLock(res) as first:
        assert first.held and first.path.exists()
        with pytest.raises(rs.ResultsLockedError, match=rf"another atc run \(pid {os.getpid()} on "):
            rs.ResultsLock(res).acquire()
    assert not first.path.exists()
    with rs.ResultsLock(res):  # free again
        pass


def test_lock_of_a_killed_process_is_free(tmp_path):
    res = tmp_path / "r.zarr"
    code = ("import sys, time; from pipeline.results import ResultsLock; "
            f"ResultsLock({str(res)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(rs.ResultsLockedError, match=rf"pid {proc.pid} "):
            rs.ResultsLock(res).acquire()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with rs.ResultsLock(res):  # the stale file is there, but nobody holds it
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_kernel_parallel_only_for_one_single_threaded_worker_per_host():
    one = {"tcp://10.0.0.1:1": {"nthreads": 1, "host": "10.0.0.1"}}
    assert kernel_parallel(one)
    assert kernel_parallel({**one, "tcp://10.0.0.2:1": {"nthreads": 1, "host": "10.0.0.2"}})
    assert not kernel_parallel({**one, "tcp://10.0.0.1:2": {"nthreads": 1, "host": "10.0.0.1"}})
    assert not kernel_parallel({"tcp://10.0.0.1:1": {"nthreads": 2, "host": "10.0.0.1"}})
    assert not kernel_parallel({})


def test_chunking_rules():
    assert rs.chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert default_chunk_symbols(209, 2000, 2) == 209  # 10 chunks already
    assert default_chunk_symbols(300, 300, 2) == 75  # one price chunk split for 2 workers
    assert default_chunk_symbols(8, 40, 2) == 8
    # a small store still gives every worker thread work (issue 9: 25 symbols on 2 workers were 1 task)
    from pipeline.results import chunk_bounds

    for price_k, n, slots in [(25, 25, 2), (25, 25, 4), (100, 30, 2), (50, 10, 3), (16, 16, 2), (300, 40, 8)]:
        k = default_chunk_symbols(price_k, n, slots)
        assert len(chunk_bounds(n, k)) >= slots, (price_k, n, slots, k)
    assert len(chunk_bounds(3, default_chunk_symbols(25, 3, 8))) == 3  # fewer symbols than threads: one each
    check_alignment(50, 25)
    check_alignment(5, 25)
    with pytest.raises(rs.ResultsError, match="not aligned"):
        check_alignment(30, 25)


def test_cluster_options_do_not_mix(monkeypatch):
    with pytest.raises(ClusterError, match="do not apply"):
        with connect("tcp://127.0.0.1:1", workers=2):
            pass
    with pytest.raises(ClusterError, match="cannot reach"):
        with connect("tcp://127.0.0.1:1", connect_timeout=1):
            pass


def test_load_params(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("ema_len: 30\nrobustness: Wide\nLa: 0.05\n")
    p = load_params(cfg, ["ema_len=32", "strategy_mode=true"])
    assert (p.ema_len, p.robustness, p.La, p.strategy_mode) == (32, "Wide", 0.05, True)
    cfg.write_text("ema_len: 30\nbogus: 1\n")
    with pytest.raises(ATCUserError, match=r"p\.yaml: unknown ATC parameter\(s\): bogus"):
        load_params(cfg)
    cfg.write_text("ema_len: [1\n")
    with pytest.raises(ATCUserError, match="not valid YAML"):
        load_params(cfg)
    with pytest.raises(ATCUserError, match="key=value"):
        load_params(None, ["ema_len"])
    with pytest.raises(ATCUserError, match="ema_len must be of type int"):
        load_params(None, ["ema_len=abc"])


def test_replacing_a_store_never_shows_a_half_deleted_one(prices, tmp_path, monkeypatch):
    """`atc run --overwrite` deletes the old store in the background: by then it has been renamed
    aside (a hidden sibling) and the path holds the whole new template; wait_discarded waits."""
    import threading

    from pipeline import atomic

    res = tmp_path / "r.zarr"
    rs.create_results(res, open_prices(prices), _identity(prices), 4)
    old_fp = _identity(prices).fingerprint()
    new = _identity(prices, ema_len=30)
    seen, release = [], threading.Event()
    real_rmtree = atomic.shutil.rmtree

    def slow_rmtree(path, *args, **kwargs):
        # what a reader sees at the path while the old store is being deleted
        seen.append((Path(path).name, json.loads((res / "zarr.json").read_text())["attributes"]["fingerprint"]))
        release.wait(10)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", slow_rmtree)
    rs.create_results(res, open_prices(prices), new, 4, replace=True)  # returns before the deletion ends
    assert rs.read_state(res).attrs["fingerprint"] == new.fingerprint() != old_fp
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.zarr.old-")]
    assert len(hidden) == 1  # the old store, renamed aside, still being deleted
    release.set()
    atomic.wait_discarded()
    assert seen == [(hidden[0], new.fingerprint())]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.zarr.")]
    assert rs.read_state(res).attrs["fingerprint"] == new.fingerprint()
