"""The distributed run: price store -> one Dask task per symbol chunk -> results store.

The client only plans and watches. Each task (:func:`run_chunk`) opens the price store itself,
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
from kernels.status import INSUFFICIENT_HISTORY, OK, STATUS_NAMES
from pipeline import results as rs

__all__ = ["BACKENDS", "BACKEND_SUBMIT", "ChunkTask", "PricesChangedError", "Route", "RunError", "RunSummary",
           "TaskFailure", "default_chunk_symbols", "guarded", "plan_routes", "preflight", "run_atc", "run_chunk"]

#: backend name -> extra ``client.submit`` keywords for its tasks.
BACKEND_SUBMIT: dict[str, dict[str, Any]] = {"cpu": {}, "cuda": {"resources": {"GPU": 1}}}
#: What a run accepts: "auto" picks per worker kind (see the module docstring).
BACKENDS = ("auto", "cpu", "cuda")
#: Default size of a GPU task, in symbol-bars (rounded down to whole store chunks, at least one):
#: ~1.9 GB of float64 inputs and outputs on the GPU worker's host side.
GPU_TASK_SYMBOL_BARS = 1 << 24
#: Non-ok symbols a task reports back by name (the store has every reason).
MAX_REPORTED = 5


class RunError(ATCUserError):
    """Some chunks failed; the finished ones are saved and a rerun computes the rest.

    ``prices_changed``: a task found another price store than the run started from, so a plain
    rerun would be refused (other fingerprint) and only a rerun with overwrite helps; the CLI uses
    it to print the exact command. ``log``: the file with every failure's traceback."""

    def __init__(self, message: str, *, prices_changed: bool = False, log: Path | None = None):
        super().__init__(message)
        self.prices_changed = prices_changed
        self.log = log


class PricesChangedError(ATCUserError, ValueError):
    """The price store was replaced or appended to while a run was reading it."""


@dataclass(frozen=True)
class TaskFailure:
    """One failed task as the client reports it: a line for the terminal, the traceback for the log."""

    index: int  # chunk (run) or task (sweep) index
    message: str  # "OSError: disk on fire"
    details: str = ""  # the worker's traceback, when the task itself raised
    prices_changed: bool = False


def guarded(fn: Callable[[Any], dict[str, Any]], task: Any) -> dict[str, Any]:
    """Run a task and turn its exception into a small record. A task that raises makes every Dask
    worker log a many-line "Compute Failed" report straight to the user's terminal (on a joined
    cluster too, where we cannot quiet its logging); the client reports failures itself instead:
    one line each, the traceback in a log file."""
    import traceback

    try:
        return fn(task)
    except Exception as exc:
        return {"failed": True, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                "prices_changed": isinstance(exc, PricesChangedError)}


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------

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


def _worker_threads() -> int:
    """Threads of the Dask worker running this task (1 outside a worker)."""
    w = _get_worker()
    if w is None:
        return 1
    state = getattr(w, "state", None)
    return int(getattr(state, "nthreads", None) or getattr(w, "nthreads", 1) or 1)


def _worker_name() -> str:
    w = _get_worker()
    return str(w.address) if w is not None else f"pid {os.getpid()}"


def read_close(task: ChunkTask) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The task's ``close`` slice, symbol names and the time axis, from the price store it opens itself."""
    from pipeline.store import open_prices

    ds = open_prices(task.prices)
    try:
        fp = ds.attrs.get("fingerprint")
        if fp != task.prices_fingerprint:
            raise PricesChangedError(f"{task.prices}: the price store changed during the run (fingerprint {fp}, "
                                     f"expected {task.prices_fingerprint})")
        sl = slice(task.start, task.stop)
        close = np.asarray(ds["close"][sl].values, dtype=np.float64)
        symbols = [str(s) for s in ds["symbol"].values[sl]]
        times = np.asarray(ds["time"].values)
    finally:
        ds.close()
    return close, symbols, times


def _reasons(messages: Mapping[int, str], status: np.ndarray) -> list[str]:
    out = [""] * status.size
    for i, msg in messages.items():
        out[i] = f"{STATUS_NAMES.get(int(status[i]), 'unknown')}: {msg}"
    return out


def backtest_settings(backtest: Any, ds: Any) -> dict[str, Any] | None:
    """The backtest settings a run records and its tasks use (`atc run --backtest`): those of
    ``backtest`` (a BacktestParams, or None for no backtest). ``periods_per_year`` None means: each
    symbol's own, inferred from the times of its own bars (a monthly symbol beside daily ones gets
    about 12, not the union axis' figure)."""
    if backtest is None:
        return None
    return backtest.to_dict()


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
    from pipeline.stream_store import has_stream, history_hashes, write_stream_region
    from pipeline.trades_store import task_trades, write_trades_part

    t0 = time.perf_counter()
    close, symbols, times = read_close(task)
    t1 = time.perf_counter()
    parallel = bool(task.parallel) and _worker_threads() == 1
    stream = task.backend == "cpu" and has_stream(task.results)
    if stream:  # the same batch kernel, also capturing the state `atc update` continues from
        from kernels.stream import build_stream

        res, state = build_stream(close, task.params, dtype=np.dtype(task.dtype), symbols=symbols,
                                  parallel=parallel, index_offset=task.start, replay=False)
        state_arrays = state.to_arrays()
        # short histories are not captured (`atc update` rebuilds them: they are short)
        state_arrays["have"] = (np.asarray(res.status) != INSUFFICIENT_HISTORY).astype(np.int8)
        state_arrays["hist_hash"] = history_hashes(close)
    else:
        res = compute_atc(close, task.params, backend=task.backend, dtype=np.dtype(task.dtype), parallel=parallel,
                          on_bad="status", symbols=symbols, index_offset=task.start)
    settings = task.options.get("backtest")
    extra = backtest_outputs(close, times, res, task.params, settings) if settings else None
    trades = task_trades(task.results, close, extra, settings)  # adds the trade statistics to extra
    del close
    t2 = time.perf_counter()
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
    t3 = time.perf_counter()
    codes, counts = np.unique(status, return_counts=True)
    not_ok = [(symbols[i], reasons[i]) for i in np.flatnonzero(status != OK)[:MAX_REPORTED]]
    return {
        "chunk": task.index,
        "chunks": [p[0] for p in parts],
        "start": task.start,
        "stop": task.stop,
        "counts": {int(c): int(n) for c, n in zip(codes, counts)},
        "not_ok": not_ok,
        "worker": _worker_name(),
        "pid": os.getpid(),
        "backend": task.backend,
        "parallel": parallel,
        "read_s": t1 - t0,
        "compute_s": t2 - t1,
        "write_s": t3 - t2,
    }


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


def _price_chunk(ds: Any) -> int:
    enc = ds["close"].encoding.get("chunks") or ds["close"].encoding.get("preferred_chunks", {})
    if isinstance(enc, Mapping):
        k = enc.get("symbol")
    else:
        k = enc[0] if enc else None
    if not k:
        k = ds.attrs.get("chunk_symbols") or ds.sizes["symbol"]
    return max(1, int(k))


def default_chunk_symbols(price_k: int, n_symbols: int, slots: int, min_symbols: int = 16) -> int:
    """Symbols per task when not given.

    Preferred: the price store's chunk, or its largest divisor (>= ``min_symbols``) that gives
    every worker thread at least two tasks, so that tasks read whole price chunks. When even that
    leaves some of the ``slots`` worker threads without a task (a small store: 25 symbols in one
    price chunk on 2 workers would be one task), ``n_symbols // slots`` instead: every thread gets
    one, and tasks read parts of a price chunk (each still writes whole results-store chunks).
    """
    n = max(1, int(n_symbols))
    slots = max(1, int(slots))
    price_k = max(1, min(int(price_k), n))
    want = 2 * slots
    best = price_k
    for d in range(price_k, 0, -1):
        if price_k % d:
            continue
        if d < min_symbols:
            break
        best = d
        if -(-n // d) >= want:
            break
    if -(-n // best) >= min(slots, n):
        return best
    return max(1, n // slots)

def _check_alignment(k: int, price_k: int) -> None:
    if k < 1:
        raise rs.ResultsError(f"--chunk-symbols must be >= 1, got {k}")
    if k % price_k and price_k % k:
        raise rs.ResultsError(f"--chunk-symbols {k} is not aligned with the price store's chunks of {price_k} "
                              f"symbols: use a multiple or a divisor of {price_k}")


def _status_summary(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Counts per status name and the first non-ok reasons (reads only the per-symbol variables)."""
    import zarr

    g = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    status = np.asarray(g["status"][:])
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


@dataclass(frozen=True)
class Route:
    """How one kind of task is submitted: its backend, store chunks per task, how many may be in
    flight at once (None: all at once) and its extra ``client.submit`` keywords."""

    backend: str
    chunks_per_task: int = 1
    in_flight: int | None = None
    submit: Mapping[str, Any] = field(default_factory=dict)
    from_back: bool = False  # takes chunks from the end of the to-do list (CPU beside GPU)


def route_kinds(backend: str, workers: Mapping[str, Mapping]) -> tuple[list[str], str | None]:
    """The task backends a run uses on these workers, and a notice for the user (or None).
    Raises ``ATCBackendError`` for "cuda" without a GPU worker."""
    from kernels.api import ATCBackendError
    from pipeline.cluster import gpu_workers

    if backend == "cpu":
        return ["cpu"], None
    gpus = gpu_workers(dict(workers))
    if not gpus:
        if backend == "cuda":
            raise ATCBackendError(f"--backend cuda: none of the cluster's {len(workers)} workers has the resource "
                                  "GPU (start GPU workers with --resources GPU=1, or use --backend auto or cpu)")
        return ["cpu"], "no GPU worker in the cluster (none declares the resource GPU): every task runs on the CPU"
    if backend == "cuda" or len(gpus) == len(workers):
        return ["cuda"], None
    return ["cuda", "cpu"], None


def plan_routes(backend: str, workers: Mapping[str, Mapping], *, n_todo: int, chunk_symbols: int, n_time: int,
                gpu_chunk_symbols: int | None = None) -> tuple[list[Route], str | None]:
    """Routes of a run (see the module docstring) and its notice. GPU tasks cover
    ``gpu_chunk_symbols // chunk_symbols`` store chunks (default: about GPU_TASK_SYMBOL_BARS
    symbol-bars, and at most half of the to-do chunks per GPU so that every GPU gets two tasks)."""
    from pipeline.cluster import gpu_workers

    kinds, notice = route_kinds(backend, workers)
    if kinds == ["cpu"]:
        return [Route("cpu", 1, None, dict(BACKEND_SUBMIT["cpu"]))], notice
    gpus = gpu_workers(dict(workers))
    slots = sum(gpus.values())
    if gpu_chunk_symbols is not None:
        g = _gpu_group(gpu_chunk_symbols, chunk_symbols)
    else:
        g = max(1, GPU_TASK_SYMBOL_BARS // max(1, chunk_symbols * n_time))
        g = max(1, min(g, n_todo // (2 * slots)))
    if kinds == ["cuda"]:
        return [Route("cuda", g, None, dict(BACKEND_SUBMIT["cuda"]))], notice
    cpus = {a: w for a, w in workers.items() if a not in gpus}
    cpu_threads = sum(max(1, int(w.get("nthreads", 1))) for w in cpus.values())
    return [Route("cuda", g, slots, dict(BACKEND_SUBMIT["cuda"])),
            Route("cpu", 1, 2 * cpu_threads,
                  {**BACKEND_SUBMIT["cpu"], "workers": sorted(cpus), "allow_other_workers": True}, from_back=True),
            ], notice


def _gpu_group(gpu_chunk_symbols: int, chunk_symbols: int) -> int:
    g = int(gpu_chunk_symbols)
    if g < 1 or g % chunk_symbols:
        raise rs.ResultsError(f"--gpu-chunk-symbols {gpu_chunk_symbols} must be a multiple of the results store's "
                              f"chunk of {chunk_symbols} symbols")
    return g // chunk_symbols


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
            _check_alignment(int(chunk_symbols), _price_chunk(ds))
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
            (on_notice or _stderr)(notice)
        ds = open_prices(prices_path)
        try:
            price_fp = str(ds.attrs.get("fingerprint"))
            price_k = _price_chunk(ds)
            n_sym, n_time = ds.sizes["symbol"], ds.sizes["time"]
            bt_settings = backtest_settings(backtest, ds)
            identity = rs.RunIdentity(params, price_fp, dtype, rs.code_version(), _backtest_json(bt_settings),
                                      _outputs(outputs))
            existed = results_path.exists() or results_path.is_symlink()
            state = _existing_state(results, results_path, identity, (n_sym, n_time), chunk_symbols, overwrite)
            if state is not None:
                k = state.chunk_symbols
                if gpu_chunk_symbols is not None and "cuda" in kinds:
                    _gpu_group(gpu_chunk_symbols, k)
                done = state.chunk_done
                action = "complete" if state.complete else "resumed"
            else:
                if chunk_symbols is None:
                    slots = sum(int(w.get("nthreads", 1)) for w in workers.values())
                    k = default_chunk_symbols(price_k, n_sym, slots)
                else:
                    k = int(chunk_symbols)
                    _check_alignment(k, price_k)
                k = min(k, max(1, n_sym))
                if gpu_chunk_symbols is not None and "cuda" in kinds:
                    _gpu_group(gpu_chunk_symbols, k)
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

        feed = _Feed(todo, routes, make_task)
        if client is None:
            from pipeline.executor import run_tasks

            tasks = [make_task("cpu", [c]) for c in todo]
            records, failures = run_tasks(run_chunk, tasks, threads=threads, progress=progress, desc="atc run",
                                          unit="chunk", parts=lambda t: [p[0] for p in t.parts()],
                                          on_record=on_record)
        else:
            records, failures = _execute(client, feed, progress=progress, report=report, on_record=on_record)
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

            finish_backtest(results_path, prices_path, portfolio, on_notice=on_notice or _stderr)
        return RunSummary(
            results=results_path, prices=prices_path, n_symbols=n_sym, n_time=n_time, n_chunks=len(bounds),
            chunk_symbols=k, computed=len(todo), already_done=len(bounds) - len(todo), action=action,
            fingerprint=identity.fingerprint(), status_counts=counts, problems=problems,
            seconds=time.perf_counter() - t_start, kernel_parallel=parallel, records=records,
            backends=_chunks_per_backend(records), notice=notice,
        )
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


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _chunks_per_backend(records: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r["backend"]] = out.get(r["backend"], 0) + len(r.get("chunks") or [r["chunk"]])
    return out


class _Feed:
    """The chunks still to submit, handed out per route: a GPU route takes runs of up to
    ``chunks_per_task`` consecutive chunks from the front, a CPU route beside it single chunks from
    the back (a single route takes them in order)."""

    def __init__(self, todo: list[int], routes: list[Route], make_task: Callable[[str, list[int]], ChunkTask]):
        from collections import deque

        self.todo = deque(sorted(todo))
        self.routes = routes
        self.n_chunks = len(self.todo)
        self._make = make_task

    def next(self, route: Route) -> ChunkTask | None:
        if not self.todo:
            return None
        if route.from_back:
            chunks = [self.todo.pop()]
        else:
            chunks = [self.todo.popleft()]
            while len(chunks) < route.chunks_per_task and self.todo and self.todo[0] == chunks[-1] + 1:
                chunks.append(self.todo.popleft())
        return self._make(route.backend, chunks)


def _execute(client: Any, feed: _Feed, *, progress: bool | None, report: Any,
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


def task_failure(future: Any) -> TaskFailure | None:
    """The failure of a finished future: a :func:`guarded` task's error record, or an error Dask
    itself raised (a worker lost too often, a task that could not be unpickled); None on success."""
    if future.status == "error":
        exc = future.exception()
        return TaskFailure(-1, f"{type(exc).__name__}: {exc}")
    rec = future.result()
    if isinstance(rec, dict) and rec.get("failed"):
        return TaskFailure(-1, rec["error"], rec.get("traceback", ""), bool(rec.get("prices_changed")))
    return None


def failure_log_path(store: Path) -> Path:
    """Where a run's failure details go: beside the store (``results.zarr`` -> ``results.zarr.errors.log``),
    where the user looks for the store, and outside it, so the store's contents stay only data."""
    return store.with_name(store.name + ".errors.log")


def report_failures(failures: list[TaskFailure], store: Path, describe: Callable[[int], str], *,
                    verbose: bool = False) -> Path:
    """Write every failure's details to the log beside ``store`` and print one line per failed
    chunk or task on stderr (with ``verbose``, its traceback below it). Returns the log's path."""
    log = failure_log_path(store)
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"# {rs.utc_now()}: {len(failures)} failed in {store}\n")
        for f in failures:
            fh.write(f"\n## {describe(f.index)}: {f.message}\n{f.details or '(no traceback: Dask reported it)'}\n")
    for f in failures:
        line = f"{describe(f.index)} failed: {f.message} (details: {log})"
        if verbose and f.details:
            line += "\n" + f.details.rstrip()
        _stderr(line)
    return log
