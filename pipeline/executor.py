"""Small jobs in the client process: a thread pool instead of a Dask cluster.

Starting a local cluster costs seconds (worker processes, each importing numpy, numba, zarr and
loading the kernels), far more than the computation of a small store. Below
:data:`IN_PROCESS_SYMBOL_BARS` symbol-bars, ``atc run`` and ``atc sweep`` therefore run their tasks
on threads of the client (:func:`run_tasks`): the same task functions (``run_chunk``,
``run_sweep_task``), writing the same regions of the same stores, with the same resume, lock and
refusal logic around them, so the stores are identical whichever path computed them. The serial
kernels are compiled with ``nogil`` (kernels/jitcache.py), so the threads really compute in
parallel; the parallel kernels are never used here (they must not be entered from two threads).

Nothing here imports ``distributed`` (or bokeh): a small job never pays for them.

:func:`run_tasks` is the reusable part (``atc run``, ``atc sweep``, ``atc update``): it runs a list
of tasks with :func:`pipeline.failures.guarded`, shows a progress bar, turns every failure into
:class:`pipeline.failures.TaskFailure` records (one per chunk a task covers) for
:func:`pipeline.failures.report_failures`, and on Ctrl-C cancels what has not started, lets the running
tasks finish their regions (they are small) and re-raises, so the caller's one-line "interrupted"
message counts every saved chunk.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, Sequence

__all__ = ["IN_PROCESS_SYMBOL_BARS", "default_threads", "run_tasks", "use_in_process"]

#: Jobs of at most this many symbol-bars (symbols x bars of the price store; for a sweep, times the
#: grid's combinations) run in the client process unless a cluster is asked for. 2000 symbols x
#: 5000 bars take ~3 s of kernel time on 2 cores, about what a local cluster takes to start.
IN_PROCESS_SYMBOL_BARS = 10_000_000


def default_threads() -> int:
    """Threads of the in-process path: one per core this process may use, as the local cluster's workers."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def use_in_process(size: int, *, forced: bool | None, scheduler: str | None) -> bool:
    """Whether a job of ``size`` symbol-bars runs in-process: ``forced`` (``--in-process`` True,
    ``--cluster`` False) decides if given; a scheduler address (``--scheduler``, or
    ``DASK_SCHEDULER_ADDRESS``) means a cluster; else small jobs run in-process."""
    if forced is not None:
        return bool(forced)
    if scheduler:
        return False
    return size <= IN_PROCESS_SYMBOL_BARS


def run_tasks(fn: Callable[[Any], dict[str, Any]], tasks: Sequence[Any], *, threads: int | None = None,
              progress: bool | None = None, desc: str = "atc", unit: str = "task",
              parts: Callable[[Any], Iterable[int]] | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[dict], list]:
    """Run ``fn(task)`` for every task on ``threads`` threads (default: one per core); return the
    records of the tasks that succeeded and the failures, sorted by index.

    ``parts(task)``: the indices a task covers (chunks of a run; default ``[task.index]``); a failed
    task gives one failure per index and the progress bar counts them. A task that raises never
    stops the others: its exception becomes a failure (its traceback kept for the log)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm import tqdm

    from pipeline.failures import TaskFailure, guarded

    if parts is None:
        parts = lambda t: [t.index]  # noqa: E731
    if progress is None:
        progress = sys.stderr.isatty()
    n = max(1, min(int(threads or default_threads()), len(tasks) or 1))
    records: list[dict] = []
    failures: list[TaskFailure] = []
    total = sum(len(list(parts(t))) for t in tasks)
    bar = tqdm(total=total, unit=unit, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="atc-task")
    try:
        pending = {pool.submit(guarded, fn, t): t for t in tasks}
        while pending:
            # a timeout keeps the main thread responsive to Ctrl-C whatever the platform's lock waits do
            done, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
            for f in done:
                t = pending.pop(f)
                idx = list(parts(t))
                rec = f.result()  # guarded: never raises
                if isinstance(rec, dict) and rec.get("failed"):
                    failures.extend(TaskFailure(i, rec["error"], rec.get("traceback", ""),
                                                bool(rec.get("prices_changed"))) for i in idx)
                else:
                    records.append(rec)
                    if on_record is not None:
                        on_record(rec)
                bar.update(len(idx))
    except BaseException:
        # Ctrl-C: drop the tasks not started; the running ones finish their regions (a task marks
        # its chunk done last), so what the interrupted message counts is what is saved
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    failures.sort(key=lambda x: x.index)
    return records, failures


def warm_up(params: Any, *, dtype: str = "float64", backtest: Any = None, n_time: int = 300) -> float:
    """Compile (or load) the kernels a CPU run will use, once, in this process, before a local
    cluster starts its workers; returns the seconds it took.

    Every worker process of a local cluster would otherwise compile the same kernels at the same
    time on a cold cache (one compile per core, each slowed by the others). Compiled here first,
    they are in the on-disk cache (kernels/jitcache.py) and the workers only load them. The kernels
    are warmed by the real task code (:func:`pipeline.run.run_atc` in-process on a two-symbol
    synthetic store in a temporary directory), so exactly the variants a task needs are compiled:
    this float type, the stream-capturing batch kernel, backtest and trade kernels only with a
    backtest. Nothing is warmed without the disk cache (``ATC_NUMBA_CACHE=0``): it would not reach
    the workers."""
    import tempfile
    import time
    from pathlib import Path

    from kernels.jitcache import caching_enabled

    if not caching_enabled():
        return 0.0
    from pipeline.run import run_atc
    from pipeline.store import write_prices
    from pipeline.synth import synth_prices

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="atc-warm-") as d:
        px = Path(d) / "prices.zarr"
        write_prices(synth_prices(2, max(int(n_time), 2), seed=1), px, chunk_symbols=2)
        run_atc(px, Path(d) / "results.zarr", params, threads=1, dtype=dtype, backend="cpu", progress=False,
                backtest=backtest, on_notice=lambda m: None)
    return time.perf_counter() - t0
