"""One task of a run (:func:`run_chunk`): it opens the price store itself, reads its symbol slice,
runs the kernel, writes its own whole chunk region(s) of the results store and returns a small
status record (counts, a few reasons, timings). Prices and results never travel through the
client or the scheduler. :class:`ChunkTask` carries the parameters, a backend name and an
``options`` mapping (outputs, backtest settings); it is small and picklable (paths, not data)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from kernels.params import ATCParams
from kernels.status import INSUFFICIENT_HISTORY, OK, STATUS_NAMES
from pipeline import results as rs
from pipeline.failures import PricesChangedError

__all__ = ["MAX_REPORTED", "ChunkTask", "backtest_outputs", "read_close", "run_chunk", "worker_name"]

#: Non-ok symbols a task reports back by name (the store has every reason).
MAX_REPORTED = 5


@dataclass(frozen=True)
class ChunkTask:
    """Everything one task needs; small and picklable (paths, not data)."""

    prices: str
    results: str
    index: int
    start: int
    stop: int
    params: ATCParams
    prices_fingerprint: str
    dtype: str = "float64"
    backend: str = "cpu"
    parallel: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Symbols per store chunk when the task spans several consecutive chunks ``index, index + 1, ...``
    #: (a GPU task); 0: the task is the one chunk ``index``.
    chunk_symbols: int = 0

    def parts(self) -> list[tuple[int, int, int]]:
        """(chunk index, start, stop) of every store chunk the task writes."""
        k = self.chunk_symbols
        if not k or self.stop - self.start <= k:
            return [(self.index, self.start, self.stop)]
        return [(self.index + j, a, min(a + k, self.stop)) for j, a in enumerate(range(self.start, self.stop, k))]


def _get_worker() -> Any:
    """The Dask worker running this task, or None. A Dask worker has ``distributed`` loaded; a task on
    the in-process path (pipeline/executor.py) must not import it (seconds, and bokeh with it)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def worker_threads() -> int:
    """Threads of the Dask worker running this task (1 outside a worker)."""
    w = _get_worker()
    if w is None:
        return 1
    state = getattr(w, "state", None)
    return int(getattr(state, "nthreads", None) or getattr(w, "nthreads", 1) or 1)


def worker_name() -> str:
    """Who ran a task, for its record: the Dask worker's address, or this process' id in-process."""
    w = _get_worker()
    return str(w.address) if w is not None else f"pid {os.getpid()}"



@contextmanager
def checked_prices(path: str, fingerprint: str, what: str = "run") -> Iterator[Any]:
    """The price store a task reads, opened by the task itself, refused when it is no longer the one
    the client planned from (``PricesChangedError``: the rerun needs ``--overwrite``)."""
    from pipeline.store import open_prices

    ds = open_prices(path)
    try:
        fp = ds.attrs.get("fingerprint")
        if fp != fingerprint:
            raise PricesChangedError(f"{path}: the price store changed during the {what} (fingerprint {fp}, "
                                     f"expected {fingerprint})")
        yield ds
    finally:
        ds.close()


def read_close(task: ChunkTask) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The task's ``close`` slice, symbol names and the time axis, from the price store it opens itself."""
    with checked_prices(task.prices, task.prices_fingerprint) as ds:
        sl = slice(task.start, task.stop)
        close = np.asarray(ds["close"][sl].values, dtype=np.float64)
        symbols = [str(s) for s in ds["symbol"].values[sl]]
        times = np.asarray(ds["time"].values)
    return close, symbols, times


def _reasons(messages: Mapping[int, str], status: np.ndarray) -> list[str]:
    out = [""] * status.size
    for i, msg in messages.items():
        out[i] = f"{STATUS_NAMES.get(int(status[i]), 'unknown')}: {msg}"
    return out


def backtest_outputs(close: np.ndarray, times: np.ndarray, res: Any, params: ATCParams,
                     settings: Mapping[str, Any]) -> dict:
    """Positions, strategy returns, equity and per-symbol metrics of a chunk, as store variables."""
    from kernels.backtest import BACKTEST_SERIES, BacktestParams, run_backtest
    from kernels.metrics import periods_per_year_by_symbol

    ppy = settings["periods_per_year"]
    if ppy is None:
        ppy = periods_per_year_by_symbol(times, close)
    bt = run_backtest(close, res["Average_Signal"], params,
                      BacktestParams(fee_bps=settings["fee_bps"], long_only=settings["long_only"]),
                      periods_per_year=ppy, ok=np.asarray(res.status) == OK)
    out: dict[str, Any] = {name: (("symbol", "time"), bt[name]) for name in BACKTEST_SERIES}
    out.update({name: (("symbol",), values) for name, values in bt.metrics.items()})
    return out


def run_chunk(task: ChunkTask) -> dict[str, Any]:
    """Compute and write one symbol chunk; return a small record of what happened."""
    from kernels import compute_atc
    from pipeline.stream_store import has_stream, stream_extras, write_stream_region
    from pipeline.trades_store import task_trades, write_trades_part

    t0, c0 = time.perf_counter(), time.thread_time()
    close, symbols, times = read_close(task)
    t1, c1 = time.perf_counter(), time.thread_time()
    parallel = bool(task.parallel) and worker_threads() == 1
    stream = task.backend == "cpu" and has_stream(task.results)
    if stream:  # the same batch kernel, also capturing the state `atc update` continues from
        from kernels.stream import build_stream

        res, state = build_stream(close, task.params, dtype=np.dtype(task.dtype), symbols=symbols,
                                  parallel=parallel, index_offset=task.start, replay=False)
        state_arrays = state.to_arrays()
        # short histories are not captured (`atc update` rebuilds them: they are short)
        state_arrays["have"] = (np.asarray(res.status) != INSUFFICIENT_HISTORY).astype(np.int8)
        state_arrays.update(stream_extras(close, res, task.params))  # digests, and the newest values for atc scan
    else:
        res = compute_atc(close, task.params, backend=task.backend, dtype=np.dtype(task.dtype), parallel=parallel,
                          on_bad="status", symbols=symbols, index_offset=task.start)
    settings = task.options.get("backtest")
    extra = backtest_outputs(close, times, res, task.params, settings) if settings else None
    trades = task_trades(task.results, close, extra, settings)  # adds the trade statistics to extra
    del close
    t2, c2 = time.perf_counter(), time.thread_time()
    status = np.asarray(res.status, dtype=np.int8)
    reasons = _reasons(res.messages, status)
    parts = task.parts()
    for index, a, b in parts:  # one region write per store chunk: regions of tasks never overlap
        sl = slice(a - task.start, b - task.start)
        if stream:  # before write_chunk marks the chunk done
            write_stream_region(task.results, a, b, {n: v[sl] for n, v in state_arrays.items()})
        if trades is not None:  # before write_chunk marks the chunk done (pipeline/trades_store.py)
            write_trades_part(task.results, index, sl.start, sl.stop, task.start, trades)
        names = rs.OUTPUT_CHOICES[task.options.get("outputs", "all")]
        rs.write_chunk(task.results, index, a, b, {n: res[n][sl] for n in names}, status[sl], reasons[sl],
                       {n: (dims, v[sl]) for n, (dims, v) in extra.items()} if extra else None)
    t3, c3 = time.perf_counter(), time.thread_time()
    codes, counts = np.unique(status, return_counts=True)
    not_ok = [(symbols[i], reasons[i]) for i in np.flatnonzero(status != OK)[:MAX_REPORTED]]
    return {
        "chunk": task.index,
        "chunks": [p[0] for p in parts],
        "start": task.start,
        "stop": task.stop,
        "counts": {int(c): int(n) for c, n in zip(codes, counts)},
        "not_ok": not_ok,
        "worker": worker_name(),
        "pid": os.getpid(),
        "backend": task.backend,
        "parallel": parallel,
        "read_s": t1 - t0,
        "compute_s": t2 - t1,
        "write_s": t3 - t2,
        # CPU seconds of this task's thread per phase (wall times above move with the machine's load)
        "read_cpu_s": c1 - c0,
        "compute_cpu_s": c2 - c1,
        "write_cpu_s": c3 - c2,
    }
