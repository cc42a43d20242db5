"""Ctrl-C during `atc run`, `atc sweep` and `atc ingest`: exit status 130 (so `atc run ... && publish`
stops), one line on stderr saying what is saved and how to go on, no worker tracebacks, and the
same command then resumes. run and sweep get a real SIGINT to their whole process group, as a
terminal's Ctrl-C does (the worker processes receive it too)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from flows.cli import main
from pipeline.store import write_prices
from pipeline.synth import synth_prices

N_SYM, N_BARS, CHUNK = 600, 2000, 10  # 60 chunks: several seconds on 2 workers, after the cluster starts
ATC = [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def prices(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("interrupt") / "prices.zarr"
    write_prices(synth_prices(N_SYM, N_BARS, seed=3), p, chunk_symbols=CHUNK)
    return p


def _done_files(store: Path, record: str) -> int:
    d = store / record / "c"
    return sum(1 for _ in d.iterdir()) if d.is_dir() else 0


def _interrupt_after(args: list[str], store: Path, record: str, n_done: int = 2, timeout: float = 240):
    """Start `atc ARGS` in its own process group, wait until `n_done` chunks (tasks) are marked done
    in the store, send SIGINT to the group, and return (exit status, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # SIGINT back to its default in the child: a test run started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then keeps ignoring it
    p = subprocess.Popen(ATC + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.monotonic()
        while _done_files(store, record) < n_done:
            assert p.poll() is None, f"ended before the interrupt: {p.communicate()}"
            assert time.monotonic() - t0 < timeout, "no chunk finished in time"
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p.returncode, out, err


#: Both paths: threads of the client (the default for this size) and a local cluster of processes.
PATHS = pytest.mark.parametrize("path", ["--in-process", pytest.param("--cluster", marks=pytest.mark.slow)])
# (the cluster variants take ~40 s more: CI runs them in its slow step)


@PATHS
def test_run_interrupted_exits_130_with_one_line_and_resumes(prices, tmp_path, capsys, path):
    res = tmp_path / "r.zarr"
    args = ["run", str(prices), str(res), "--no-progress", "--workers", "2", path]
    rc, out, err = _interrupt_after(args, res, "chunk_done")
    assert rc == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    m = re.fullmatch(rf"interrupted: (\d+) of 60 chunks are complete in {re.escape(str(res))}; "
                     r"rerun the same command to resume", lines[0])
    assert m, lines[0]
    saved = int(m.group(1))
    assert saved >= 2 and saved == int(xr.open_zarr(res)["chunk_done"].values.sum())
    assert saved < 60  # it really was interrupted

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and f"{60 - saved} computed now, {saved} already done" in out
    assert (xr.open_zarr(res)["status"].values == 0).all()


@pytest.mark.slow  # ~45 s even in-process; the run's Ctrl-C stays in the default suite
@PATHS
def test_sweep_interrupted_exits_130_with_one_line_and_resumes(prices, tmp_path, capsys, path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("La: [0.01, 0.02]\nDe: [0.03, 0.1]\n")
    sw = tmp_path / "s.zarr"
    args = ["sweep", str(prices), str(sw), "--grid", str(grid), "--no-progress", "--workers", "2",
            "--combos-per-task", "4", path]
    rc, out, err = _interrupt_after(args, sw, "task_done")
    assert rc == 130, (out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    m = re.fullmatch(rf"interrupted: (\d+) of 60 sweep tasks are complete in {re.escape(str(sw))}; "
                     r"rerun the same command to resume", lines[0])
    assert m, lines[0]
    saved = int(m.group(1))
    assert 2 <= saved < 60

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and f"{60 - saved} computed now, {saved} already done" in out


def _csv_dir(tmp_path: Path) -> Path:
    src = tmp_path / "csv"
    src.mkdir()
    ds = synth_prices(3, 200, seed=1)
    for i, sym in enumerate(ds["symbol"].values):
        s = ds["close"].isel(symbol=i).to_series().dropna()
        s.rename("Close").rename_axis("Date").to_csv(src / f"{sym}.csv")
    return src


def test_ingest_interrupted_leaves_no_store_and_the_old_one_unchanged(tmp_path, monkeypatch, capsys):
    src = _csv_dir(tmp_path)
    store = tmp_path / "p.zarr"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C came while the store was being written

    real = xr.Dataset.to_zarr
    monkeypatch.setattr(xr.Dataset, "to_zarr", interrupted)
    assert main(["ingest", str(src), str(store), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == f"interrupted: atc ingest wrote nothing; no store was created at {store}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["csv"]  # no store, no hidden temporary directory

    monkeypatch.setattr(xr.Dataset, "to_zarr", real)
    assert main(["ingest", str(src), str(store), "--no-progress"]) == 0
    capsys.readouterr()
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    monkeypatch.setattr(xr.Dataset, "to_zarr", interrupted)
    assert main(["ingest", str(src), str(store), "--overwrite", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"interrupted: atc ingest wrote nothing; {store} is unchanged (a store is "
                                        "replaced only when ingest completes)"]
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["csv", "p.zarr"]


def test_the_sync_cancel_race_of_distributed_is_dropped_and_nothing_else():
    """A Ctrl-C before distributed's sync() has started its call makes its cancel() read an unset
    `future` on the event loop (NameError, logged by tornado with a traceback): that one record is
    dropped, so an interrupted command still prints one line; any other error is kept."""
    import logging

    from pipeline.cluster import _SyncCancelRace

    def raised(filename: str, code: str) -> logging.LogRecord:
        try:
            exec(compile(code, filename, "exec"), {})
        except Exception as exc:  # noqa: BLE001
            return logging.LogRecord("tornado.application", logging.ERROR, filename, 1, "Exception in callback",
                                     None, (type(exc), exc, exc.__traceback__))
        raise AssertionError("no exception")

    race = ("def sync():\n    future = 1\n    del future\n    def cancel():\n        if future is not None:\n"
            "            pass\n    cancel()\nsync()\n")
    utils = str(Path("site-packages") / "distributed" / "utils.py")
    keep = _SyncCancelRace()
    assert keep.filter(raised(utils, race)) is False
    assert keep.filter(raised("mine.py", race)) is True                        # the same error elsewhere
    assert keep.filter(raised(utils, "raise NameError('name x is not defined')")) is True
    assert keep.filter(raised(utils, "1 / 0")) is True
