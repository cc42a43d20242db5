"""The sweep task: one symbol chunk x one block of combinations, computed and written to its own
region of the sweep store by a worker (in-process threads or a Dask worker), and the records it
returns (`task_balance` reads how evenly they filled the workers)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels.metrics import METRIC_NAMES, periods_per_year_by_symbol
from kernels.status import OK, STATUS_NAMES
from kernels.sweep import SweepGrid

__all__ = ["SweepTask", "run_sweep_task", "task_balance", "task_combinations"]


@dataclass(frozen=True)
class SweepTask:
    """One task: a symbol chunk x a block of combinations. Small and picklable (paths, not data);
    `prices`, `prices_fingerprint`, `start`, `stop` as in `pipeline.run.ChunkTask`."""

    prices: str
    store: str
    index: int
    block: tuple[tuple[int, int], ...]
    start: int
    stop: int
    grid: SweepGrid
    periods_per_year: float | None
    prices_fingerprint: str
    dtype: str = "float64"
    save_signals: bool = False
    write_reason: bool = False
    parallel: bool = False
    folds: int = 0  # blocks of the time axis for per-block return statistics (0: none)
    portfolio: str = ""  # "equal" / "signal": keep the portfolio input (pipeline/sweep_portfolio.py)
    rebalance_every: int = 1
    cost: float = 0.0  # estimated (combinations + MA passes) x symbols, for largest-first scheduling


def task_combinations(grid: SweepGrid, block: tuple[tuple[int, int], ...]) -> list:
    """The (ATCParams, BacktestParams) of a block, in C order of the block."""
    from kernels.backtest import split_params

    out = []
    for idx in itertools.product(*(range(lo, hi) for lo, hi in block)):
        point = {d: grid.values[i][j] for i, (d, j) in enumerate(zip(grid.dims, idx))}
        out.append(split_params(point, grid.base_atc, grid.base_backtest))
    return out


def run_sweep_task(task: SweepTask) -> dict[str, Any]:
    """Compute and write one task's region; return a small record."""
    import zarr

    from kernels.sweep import sweep_panel
    from pipeline.chunk_task import worker_threads, read_close, worker_name

    t0, c0, th0 = time.perf_counter(), time.process_time(), time.thread_time()
    close, symbols, times = read_close(task)
    t1 = time.perf_counter()
    combos = task_combinations(task.grid, task.block)
    parallel = bool(task.parallel) and worker_threads() == 1
    ppy = task.periods_per_year
    if ppy is None:  # each symbol's own, from the times of its own bars
        ppy = periods_per_year_by_symbol(times, close)
    res = sweep_panel(close, combos, periods_per_year=ppy, dtype=np.dtype(task.dtype),
                      parallel=parallel, save_signals=task.save_signals or task.portfolio == "signal",
                      on_bad="status", symbols=symbols, index_offset=task.start, folds=task.folds,
                      save_positions=task.portfolio == "equal")
    del close
    t2 = time.perf_counter()
    bshape = tuple(hi - lo for lo, hi in task.block)
    n_s = task.stop - task.start
    region = tuple(slice(lo, hi) for lo, hi in task.block) + (slice(task.start, task.stop),)
    g = zarr.open_group(task.store, mode="r+", zarr_format=3, use_consolidated=False)
    for m, name in enumerate(METRIC_NAMES):
        g[name][region] = res.metrics[:, m, :].reshape(bshape + (n_s,))
    g["status"][region] = res.status.reshape(bshape + (n_s,))
    if task.save_signals:
        g["Average_Signal"][region + (slice(None),)] = res.average_signal.reshape(bshape + (n_s, -1))
    if task.folds:
        g["fold_stats"][region[:-1] + (slice(None), slice(None), region[-1])] = \
            res.fold_stats.reshape(bshape + (task.folds, 5, n_s))
    if task.portfolio:  # after Average_Signal: task_input may zero the signal cube in place
        from pipeline.sweep_portfolio import INPUT_VAR, task_input

        g[INPUT_VAR][region + (slice(None),)] = task_input(res, task.portfolio, task.rebalance_every).reshape(
            bshape + (n_s, -1))
    if task.write_reason:
        reasons = [""] * n_s
        for i, msg in res.messages.items():
            reasons[i] = f"{STATUS_NAMES.get(int(res.status[0, i]), 'unknown')}: {msg}"
        g["reason"][task.start:task.stop] = np.array(reasons, dtype=object)
    g["task_done"][task.index] = 1
    t3 = time.perf_counter()
    return {"task": task.index, "combinations": len(combos), "symbols": n_s,
            "ok": int(np.count_nonzero(res.status == OK)), "worker": worker_name(), "parallel": parallel,
            "read_s": t1 - t0, "compute_s": t2 - t1, "write_s": t3 - t2,
            # the task's CPU: its thread's, or with parallel kernels its process's (one task at a time then)
            "cpu_s": time.process_time() - c0 if parallel else time.thread_time() - th0,
            "slot": f"{worker_name()}/{threading.current_thread().name}"}


def task_balance(records: list[dict[str, Any]]) -> float:
    """How evenly a sweep's tasks filled its workers, from each task's CPU time (`cpu_s`) and not
    the wall clock, so that other load on the machine does not enter: the total over (workers x the
    busiest worker's total; a worker is a thread that ran tasks). 1 = every worker busy until the
    end; a pair of tasks of 20 and 10 combinations on 2 threads gives about 0.75."""
    per: dict[str, float] = {}
    for r in records:
        slot = str(r.get("slot", r.get("worker")))  # the thread that ran it
        per[slot] = per.get(slot, 0.0) + float(r.get("cpu_s", 0.0))
    busiest = max(per.values(), default=0.0)
    return sum(per.values()) / (len(per) * busiest) if busiest > 0 else float("nan")
