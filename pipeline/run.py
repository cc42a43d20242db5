"""The distributed run: price store -> one Dask task per symbol chunk -> results store.

The client only plans and watches (this module; planning and routing in :mod:`pipeline.routing`,
failure handling in :mod:`pipeline.failures`). Each task (:func:`pipeline.chunk_task.run_chunk`) opens the price store itself,
reads its symbol slice, runs the kernel, writes its own whole chunk region of the results store
and returns a small status record (counts, a few reasons, timings): prices and results never
travel through the client or the scheduler, so the client's memory does not grow with the
universe.

Resume: the results store records finished chunks (``chunk_done``); a rerun of the same command
submits only the missing ones. A rerun with other parameters, another price store, dtype or
code version is refused unless ``overwrite``; a :class:`~pipeline.results.ResultsLock` makes a
second concurrent run refuse at once.

Extension points: :class:`ChunkTask` carries the parameters, a backend name and an ``options``
mapping (room for e.g. backtest settings), and :data:`BACKEND_SUBMIT` maps a backend to the
``client.submit`` keywords its tasks need (a GPU backend adds ``resources={"GPU": 1}``).

GPU routing (``backend`` "auto" or "cuda"; :func:`plan_routes`): workers that declare the Dask
resource ``GPU`` get the GPU tasks, submitted as futures with ``resources={"GPU": 1}`` (not
annotations, which graph optimisation can drop), each covering several consecutive store chunks
(written chunk by chunk, so regions never overlap). In a mixed cluster the other workers keep
taking single-chunk CPU tasks, restricted (loosely) to them; the client hands chunks out as tasks
finish, GPU tasks from the front and CPU tasks from the back, so both kinds stay busy whatever
their speeds. Every task names its backend ("cpu" or "cuda"), never "auto": a CPU worker must not
probe CUDA. "auto" without GPU workers runs on the CPU with a one-line notice; "cuda" without them
is refused before any work.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kernels.errors import ATCUserError
from kernels.params import ATCParams
from kernels.status import OK
from pipeline import results as rs
from pipeline.atomic import wait_discarded

# Re-exported: callers (flows/, pipeline/sweep.py, tests) import these from pipeline.run.
from pipeline.chunk_task import (  # noqa: F401
    MAX_REPORTED,
    ChunkTask,
    worker_threads,
    backtest_outputs,
    read_close,
    run_chunk,
    worker_name,
)
from pipeline.failures import (  # noqa: F401
    PricesChangedError,
    RunError,
    TaskFailure,
    to_stderr,
    failure_log_path,
    guarded,
    report_failures,
    task_failure,
)
from pipeline.routing import (  # noqa: F401
    BACKEND_SUBMIT,
    BACKENDS,
    GPU_TASK_SYMBOL_BARS,
    Route,
    check_alignment,
    Feed,
    gpu_group,
    default_chunk_symbols,
    plan_routes,
    price_chunk,
    route_kinds,
)

__all__ = ["BACKENDS", "BACKEND_SUBMIT", "ChunkTask", "PricesChangedError", "Route", "RunError", "RunSummary",
           "TaskFailure", "default_chunk_symbols", "guarded", "plan_routes", "preflight", "run_atc", "run_chunk"]


def backtest_settings(backtest: Any, ds: Any) -> dict[str, Any] | None:
    """The backtest settings a run records and its tasks use (`atc run --backtest`): those of
    ``backtest`` (a BacktestParams, or None for no backtest). ``periods_per_year`` None means: each
    symbol's own, inferred from the times of its own bars (a monthly symbol beside daily ones gets
    about 12, not the union axis' figure)."""
    if backtest is None:
        return None
    return backtest.to_dict()


# --------------------------------------------------------------------------------------------
# The client side
# --------------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    """What a run did, for the CLI's closing lines and for tests."""

    results: Path
    prices: str
    n_symbols: int
    n_time: int
    n_chunks: int
    chunk_symbols: int
    computed: int
    already_done: int
    action: str  # "created", "overwritten", "resumed", "complete"
    fingerprint: str
    status_counts: dict[str, int]
    problems: list[tuple[str, str]]
    seconds: float
    kernel_parallel: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    backends: dict[str, int] = field(default_factory=dict)  # chunks computed now per backend
    notice: str | None = None  # e.g. "auto" found no GPU worker

    def task_seconds(self) -> dict[str, float]:
        return {k: float(sum(r[k] for r in self.records)) for k in ("read_s", "compute_s", "write_s")}

    def describe(self) -> str:
        verb = {"created": "computed", "overwritten": "recomputed (--overwrite)", "resumed": "resumed",
                "complete": "already complete"}[self.action]
        lines = [
            f"results {self.results}: {self.n_symbols} symbols x {self.n_time} bars, {verb}",
            f"  {self.n_chunks} chunks of {self.chunk_symbols} symbols: {self.computed} computed now, "
            f"{self.already_done} already done; {self.seconds:.1f} s",
            "  status: " + ", ".join(f"{n} {name}" for name, n in self.status_counts.items() if n),
        ]
        if self.backends.get("cuda"):
            lines.insert(2, "  backends: " + ", ".join(f"{n} chunks on {b}" for b, n in sorted(self.backends.items())))
        for sym, why in self.problems:
            lines.append(f"    {sym}: {why}")
        lines.append(f"  fingerprint {self.fingerprint}")
        return "\n".join(lines)


def _is_url(p: str) -> bool:
    return "://" in p


def _abs(p: str | os.PathLike) -> str:
    s = str(p)
    return s if _is_url(s) else str(Path(s).expanduser().resolve())


def _status_summary(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Counts per status name and the first non-ok reasons (reads only the per-symbol variables)."""
    import zarr

    from pipeline.chunk_io import read_whole

    g = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    status = np.asarray(read_whole(g["status"]))
    counts = {rs.STATUS_FLAGS[c]: int(np.count_nonzero(status == c)) for c in sorted(rs.STATUS_FLAGS)}
    bad = np.flatnonzero((status != OK) & (status != rs.NOT_COMPUTED))[:MAX_REPORTED]
    problems = []
    if bad.size:
        symbols = g["symbol"]
        reason = g["reason"]
        problems = [(str(symbols[int(i)]), str(reason[int(i)])) for i in bad]
    return counts, problems


def _normalise(params: ATCParams | None, dtype: Any, backend: str, prices: Any, results: Any
               ) -> tuple[ATCParams, str, str, Path]:
    params = ATCParams() if params is None else params
    if not isinstance(params, ATCParams):
        raise ATCUserError(f"params must be an ATCParams, got {type(params).__name__}")
    if backend not in BACKENDS:
        raise ATCUserError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    prices_path, results_path = resolve_output(prices, results, "results store")
    return params, resolve_dtype(dtype), prices_path, results_path


def resolve_dtype(dtype: Any) -> str:
    """The float type's name, or a clear error (shared by `atc run` and `atc sweep`)."""
    try:
        dtype = np.dtype(dtype).name
    except TypeError:
        pass
    if dtype not in rs.DTYPES:
        raise ATCUserError(f"dtype must be one of {', '.join(rs.DTYPES)}, got {dtype!r}")
    return dtype


def resolve_output(prices: Any, out: Any, what: str) -> tuple[str, Path]:
    """Absolute price-store location and output path; an output must be a local path and must
    not be the price store itself."""
    prices_path = _abs(prices)
    if _is_url(str(out)):
        raise ATCUserError(f"{out}: {what}s are written to local (or shared) paths only")
    out_path = Path(_abs(out))
    if not _is_url(prices_path) and Path(prices_path) == out_path:
        raise ATCUserError(f"{out}: the {what} cannot be the price store")
    return prices_path, out_path


def _existing_state(results: Any, results_path: Path, identity: rs.RunIdentity, shape: tuple[int, int],
                    chunk_symbols: int | None, overwrite: bool) -> rs.ResultsState | None:
    """The state of a results store to resume, None to create one; refuses what must not be mixed."""
    if not (results_path.exists() or results_path.is_symlink()):
        return None
    if overwrite:
        if not rs.is_results_store(results_path):
            raise rs.ResultsError(f"{results} exists and is not an atc results store; refusing to overwrite it")
        return None
    state = rs.read_state(results_path)
    diffs = identity.differences(state.attrs)
    grew = shape[1] - state.n_time
    if (diffs and state.n_symbols == shape[0] and grew > 0 and state.complete
            and not identity.differences({**state.attrs, "prices_fingerprint": identity.prices_fingerprint,
                                          "fingerprint": identity.fingerprint()})):
        raise rs.ResultsError(
            f"{results}: the price store has {grew} more time(s) than this results store; if bars were appended, "
            f"`atc update PRICES {results}` adds just those (use --overwrite to recompute everything)")
    if diffs:
        raise rs.ResultsError(
            f"{results}: this results store was computed from " + "; ".join(diffs)
            + ". Use --overwrite to replace it, or choose another results path")
    if (state.n_symbols, state.n_time) != shape:
        raise rs.ResultsError(f"{results}: shape {state.n_symbols} x {state.n_time} does not match the "
                              f"price store ({shape[0]} x {shape[1]}); use --overwrite")
    if chunk_symbols is not None and int(chunk_symbols) != state.chunk_symbols:
        raise rs.ResultsError(
            f"{results}: stored with {state.chunk_symbols} symbols per chunk, not {chunk_symbols}; "
            f"rerun without --chunk-symbols to resume, or use --overwrite")
    return state


def _outputs(outputs: str) -> str:
    if outputs not in rs.OUTPUT_CHOICES:
        raise rs.ResultsError(f"--outputs must be one of {', '.join(rs.OUTPUT_CHOICES)}, got {outputs!r}")
    return outputs


def _backtest_json(settings: Mapping[str, Any] | None) -> str:
    import json

    return json.dumps(dict(settings), sort_keys=True) if settings else ""


def preflight(
    prices: str | os.PathLike,
    results: str | os.PathLike,
    params: ATCParams | None = None,
    *,
    chunk_symbols: int | None = None,
    overwrite: bool = False,
    dtype: str = "float64",
    backend: str = "cpu",
    backtest: Any = None,
    outputs: str = "all",
) -> tuple[int, int, bool]:
    """Every check :func:`run_atc` makes before computing, without writing anything: lets the CLI
    refuse (other parameters, changed prices, a store in use, bad options) before it starts a
    cluster. :func:`run_atc` checks again under its lock. Returns (symbols, bars, complete): the
    size that decides in-process or cluster, and whether there is nothing left to compute (then no
    cluster is worth starting)."""
    from pipeline.store import open_prices

    params, dtype, prices_path, results_path = _normalise(params, dtype, backend, prices, results)
    ds = open_prices(prices_path)
    try:
        identity = rs.RunIdentity(params, str(ds.attrs.get("fingerprint")), dtype, rs.code_version(),
                                  _backtest_json(backtest_settings(backtest, ds)), _outputs(outputs))
        shape = (ds.sizes["symbol"], ds.sizes["time"])
        state = _existing_state(results, results_path, identity, shape, chunk_symbols, overwrite)
        if state is None and chunk_symbols is not None:
            check_alignment(int(chunk_symbols), price_chunk(ds))
    finally:
        ds.close()
    with rs.ResultsLock(results_path):
        pass
    return shape[0], shape[1], bool(state is not None and state.complete)


def run_atc(
    prices: str | os.PathLike,
    results: str | os.PathLike,
    params: ATCParams | None = None,
    *,
    client: Any = None,
    threads: int | None = None,
    chunk_symbols: int | None = None,
    overwrite: bool = False,
    dtype: str = "float64",
    backend: str = "cpu",
    progress: bool | None = None,
    report: str | os.PathLike | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    options: Mapping[str, Any] | None = None,
    backtest: Any = None,
    gpu_chunk_symbols: int | None = None,
    on_notice: Callable[[str], None] | None = None,
    verbose: bool = False,
    portfolio: Mapping[str, Any] | None = None,
    outputs: str = "all",
) -> RunSummary:
    """Compute ATC for every symbol of the price store ``prices`` into the results store ``results``
    on the cluster of ``client``, or, with ``client`` None, on ``threads`` threads of this process
    (:mod:`pipeline.executor`; default one per core; CPU backend, serial kernels): the same tasks
    write the same store. See the module docstring for resume, refusal, locking and the
    routing of ``backend`` "auto"/"cuda" to GPU workers (``gpu_chunk_symbols``: symbols per GPU
    task, a multiple of the store's chunk). ``on_notice`` receives one-line notices (default: stderr).
    Each failed chunk gets one line on stderr (``verbose``: with its traceback; the tracebacks always
    go to :func:`failure_log_path`).

    ``backtest`` (a ``kernels.backtest.BacktestParams``) also backtests ``Average_Signal`` and adds
    ``position``, ``strategy_return``, ``equity`` and the per-symbol metrics to the store, and every
    symbol's trades; ``portfolio`` (``pipeline.portfolio_store.portfolio_settings``) a portfolio,
    computed after the chunks (pipeline/portfolio_store.py)."""
    from pipeline.cluster import kernel_parallel
    from pipeline.store import open_prices

    t_start = time.perf_counter()
    params, dtype, prices_path, results_path = _normalise(params, dtype, backend, prices, results)
    lock = rs.ResultsLock(results_path)
    lock.acquire()
    try:
        workers = _run_workers(client, threads)
        kinds, notice = route_kinds(backend, workers)  # refuses "cuda" without GPU workers, before any work
        if client is None:
            notice = None  # in-process is chosen only where there is no GPU to use (flows/run_cmd.py)
        if notice:
            (on_notice or to_stderr)(notice)
        ds = open_prices(prices_path)
        try:
            price_fp = str(ds.attrs.get("fingerprint"))
            price_k = price_chunk(ds)
            n_sym, n_time = ds.sizes["symbol"], ds.sizes["time"]
            bt_settings = backtest_settings(backtest, ds)
            identity = rs.RunIdentity(params, price_fp, dtype, rs.code_version(), _backtest_json(bt_settings),
                                      _outputs(outputs))
            existed = results_path.exists() or results_path.is_symlink()
            state = _existing_state(results, results_path, identity, (n_sym, n_time), chunk_symbols, overwrite)
            if state is not None:
                k = state.chunk_symbols
                if gpu_chunk_symbols is not None and "cuda" in kinds:
                    gpu_group(gpu_chunk_symbols, k)
                done = state.chunk_done
                action = "complete" if state.complete else "resumed"
            else:
                if chunk_symbols is None:
                    slots = sum(int(w.get("nthreads", 1)) for w in workers.values())
                    k = default_chunk_symbols(price_k, n_sym, slots)
                else:
                    k = int(chunk_symbols)
                    check_alignment(k, price_k)
                k = min(k, max(1, n_sym))
                if gpu_chunk_symbols is not None and "cuda" in kinds:
                    gpu_group(gpu_chunk_symbols, k)
                rs.create_results(results_path, ds, identity, k, prices_path=prices_path,
                                  backend="+".join(sorted(kinds)), replace=overwrite)
                from pipeline.stream_store import create_stream_group

                create_stream_group(results_path, n_sym, k, params, dtype, n_time, price_fp)
                if bt_settings is not None:
                    from pipeline.trades_store import create_trades

                    create_trades(results_path, n_sym, k)
                action = "overwritten" if existed else "created"
                done = np.zeros(len(rs.chunk_bounds(n_sym, k)), bool)
        finally:
            ds.close()

        bounds = rs.chunk_bounds(n_sym, k)
        todo = [c for c in range(len(bounds)) if not done[c]]
        # in-process: always the serial kernel (threads must not share a parallel one, and a small job
        # should not compile a second variant)
        parallel = client is not None and kernel_parallel(workers)
        task_options = dict(options or {})
        task_options["outputs"] = identity.outputs
        if bt_settings is not None:
            task_options["backtest"] = bt_settings
        routes, _ = plan_routes(backend, workers, n_todo=len(todo), chunk_symbols=k, n_time=n_time,
                                gpu_chunk_symbols=gpu_chunk_symbols)

        def make_task(task_backend: str, chunks: list[int]) -> ChunkTask:
            return ChunkTask(prices_path, str(results_path), chunks[0], bounds[chunks[0]][0], bounds[chunks[-1]][1],
                             params, price_fp, dtype, task_backend, parallel, task_options,
                             k if len(chunks) > 1 else 0)

        feed = Feed(todo, routes, make_task)
        if client is None:
            from pipeline.executor import run_tasks

            tasks = [make_task("cpu", [c]) for c in todo]
            records, failures = run_tasks(run_chunk, tasks, threads=threads, progress=progress, desc="atc run",
                                          unit="chunk", parts=lambda t: [p[0] for p in t.parts()],
                                          on_record=on_record)
        else:
            records, failures = _execute(client, feed, progress=progress, report=report, on_record=on_record)
        wait_discarded()  # an --overwrite's old store, deleted while the tasks ran (timed with the run)
        if failures:
            describe = lambda c: f"chunk {c} (symbols {bounds[c][0]}..{bounds[c][1] - 1})"  # noqa: E731
            log = report_failures(failures, results_path, describe, verbose=verbose)
            first = failures[0]
            saved = len(bounds) - len(failures)
            if any(f.prices_changed for f in failures):
                raise RunError(
                    f"{len(failures)} of {len(todo)} chunks failed: the price store {prices} changed during the run, "
                    f"so {results} no longer matches it and a plain rerun is refused; recompute it from the new "
                    f"prices with --overwrite (details: {log})", prices_changed=True, log=log)
            raise RunError(
                f"{len(failures)} of {len(todo)} chunks failed (first: chunk {first.index}, symbols "
                f"{bounds[first.index][0]}..{bounds[first.index][1] - 1}: {first.message}); the {saved} finished "
                f"chunks are saved in {results}: rerun the same command to compute the rest (details: {log})",
                log=log)
        state = rs.read_state(results_path)
        if not state.complete:  # pragma: no cover - every task succeeded, so every chunk is marked
            raise RunError(f"{results}: {int((~state.chunk_done).sum())} chunks are not marked done; rerun")
        counts, problems = _status_summary(results_path)
        if action != "complete" or "completed" not in state.attrs:
            import json

            rs.finalize_results(results_path, {
                "completed": rs.utc_now(),
                "status_counts": json.dumps({n: c for n, c in counts.items() if n != "not computed"}),
            })
        if bt_settings is not None:  # trades (if missing) and the portfolio post-pass, on the complete store
            from pipeline.portfolio_store import finish_backtest

            finish_backtest(results_path, prices_path, portfolio, on_notice=on_notice or to_stderr)
        return RunSummary(
            results=results_path, prices=prices_path, n_symbols=n_sym, n_time=n_time, n_chunks=len(bounds),
            chunk_symbols=k, computed=len(todo), already_done=len(bounds) - len(todo), action=action,
            fingerprint=identity.fingerprint(), status_counts=counts, problems=problems,
            seconds=time.perf_counter() - t_start, kernel_parallel=parallel, records=records,
            backends=_chunks_per_backend(records), notice=notice,
        )
    finally:
        try:
            wait_discarded()
        finally:
            lock.release()


def _run_workers(client: Any, threads: int | None) -> dict[str, dict]:
    """The cluster's workers as the scheduler describes them; in-process (``client`` None), one
    pseudo-worker with ``threads`` threads, so that planning (chunk sizes, routes, serial kernels)
    is the same code on both paths."""
    if client is not None:
        return client.scheduler_info(n_workers=-1).get("workers", {})
    from pipeline.executor import default_threads

    n = int(threads or default_threads())
    if n < 1:
        raise ATCUserError(f"threads must be >= 1, got {n}")
    return {"in-process": {"nthreads": n, "host": "in-process"}}


def _chunks_per_backend(records: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r["backend"]] = out.get(r["backend"], 0) + len(r.get("chunks") or [r["chunk"]])
    return out


def _execute(client: Any, feed: Feed, *, progress: bool | None, report: Any,
             on_record: Callable[[dict[str, Any]], None] | None) -> tuple[list[dict], list[TaskFailure]]:
    """Submit the feed's tasks (each route keeps at most its ``in_flight`` tasks submitted, and gets
    the next one when one of its own finishes), follow them with a progress bar (in chunks), collect
    the small records; a failed task gives a failure for every chunk it covers."""
    from contextlib import nullcontext

    from distributed import as_completed, performance_report
    from tqdm import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    records: list[dict] = []
    failures: list[TaskFailure] = []
    ctx = performance_report(filename=str(report)) if report else nullcontext()
    token = uuid.uuid4().hex[:8]
    with ctx:
        futures: dict[Any, tuple[ChunkTask, Route]] = {}
        pending = as_completed()

        def submit(route: Route) -> bool:
            t = feed.next(route)
            if t is None:
                return False
            f = client.submit(guarded, run_chunk, t, key=f"atc-chunk-{t.index:06d}-{token}", pure=False,
                              **route.submit)
            futures[f] = (t, route)
            pending.add(f)
            return True

        for route in feed.routes:
            n = 0
            while (route.in_flight is None or n < route.in_flight) and submit(route):
                n += 1
        bar = tqdm(total=feed.n_chunks, unit="chunk", desc="atc run", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        try:
            for f in pending:
                t, route = futures.pop(f)
                parts = t.parts()
                failure = task_failure(f)
                if failure is not None:
                    failures.extend(TaskFailure(index, failure.message, failure.details, failure.prices_changed)
                                    for index, _, _ in parts)
                else:
                    rec = f.result()
                    records.append(rec)
                    if on_record is not None:
                        on_record(rec)
                f.release()
                bar.update(len(parts))
                submit(route)
        except BaseException:
            client.cancel(list(futures))
            raise
        finally:
            bar.close()
    failures.sort(key=lambda x: x.index)
    return records, failures
