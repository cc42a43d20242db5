"""Parameter sweeps on a Dask cluster: price store -> sweep store of per-symbol backtest metrics.

A grid (``kernels.sweep.make_grid``) maps swept parameters to lists of values; every combination
of the cartesian product is backtested on every symbol. One task covers one symbol chunk x one
block of combinations (a hyper-rectangle of the grid): it reads its close slice, runs the reuse
engine ``kernels.sweep.sweep_panel`` (the 54 crossover states once per set of lengths, then every
combination from them), writes its own region of the store and returns a small record. Memory
per task is bounded by the block size, whatever the grid size; the client only plans.

Sweep store format (Zarr v3, Blosc, consolidated; ``xarray.open_zarr`` reads it):

* one dimension per swept parameter, in grid order, with the values as its coordinate, then
  ``symbol`` (and ``time`` for the signal cube);
* every metric of ``kernels.metrics.METRIC_NAMES`` as a float64 variable on
  ``(params..., symbol)``, NaN where a symbol could not be computed;
* ``status`` (int8, same dims): -1 not computed yet, else the ``kernels/status.py`` code of that
  symbol under that combination (a symbol can be long enough for short lengths only);
  ``reason`` (string on ``symbol``): bad or missing data, "" otherwise;
* with ``save_signals``, ``Average_Signal`` on ``(params..., symbol, time)`` in the compute dtype;
* ``task_done`` (int8 on ``task``): 1 once a task wrote its whole region (written last);
* with ``portfolio``, each combination's portfolio (``portfolio_*`` variables, a second phase of
  tasks: pipeline/sweep_portfolio.py);
* chunks ``(block..., chunk_symbols)``: every task writes exactly its own chunks; blocks are
  chosen so that tasks cost the same (``block_shape_for``);
* root attributes ``atc_format`` ("atc-sweep"), ``atc_format_version``, ``grid`` (JSON dims and
  values), ``params`` (JSON base ATCParams), ``backtest`` (JSON base BacktestParams with the
  periods per year used), ``prices_fingerprint``, ``prices_path``, ``fingerprint``, ``dtype``,
  ``save_signals``, ``code_version``, ``chunk_symbols``, ``block_shape``, ``n_tasks``,
  ``versions``, ``created``, and ``completed`` after a complete run.

Resume and refusal work as for ``atc run``: a rerun of the same command submits only the tasks
not marked done; a store computed from another grid, other parameters, other prices, dtype or
code is refused unless ``overwrite``; a lock keeps a second concurrent run out.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kernels.errors import ATCUserError
from kernels.metrics import HIGHER_IS_BETTER, METRIC_DESCRIPTIONS, METRIC_NAMES, periods_per_year_by_symbol
from kernels.status import OK, STATUS_NAMES
from kernels.sweep import LENGTH_PARAMS, SweepGrid
from pipeline import results as rs
from pipeline.validation import plan_validation, validate_store
from pipeline.atomic import store_format

__all__ = ["SweepError", "SweepIdentity", "SweepSummary", "SweepTask", "plan_blocks", "preflight_sweep",
           "run_sweep", "run_sweep_task", "summarize_sweep"]

FORMAT_NAME = "atc-sweep"
FORMAT_VERSION = 1
DEFAULT_COMBOS_PER_TASK = 256
SIGNAL_BUDGET_BYTES = 64 * 2**20
"""With --save-signals, combinations per task are capped so that a task's cube stays below this."""


class SweepError(rs.ResultsError):
    """A sweep store cannot be created, resumed or written as asked."""


# --------------------------------------------------------------------------------------------
# Identity and layout
# --------------------------------------------------------------------------------------------

def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


@dataclass(frozen=True)
class SweepIdentity:
    """Everything the numbers of a sweep store depend on."""

    grid: str  # JSON {"dims": [...], "values": [[...], ...]}
    params: str  # JSON of the base ATCParams
    backtest: str  # JSON of the base BacktestParams, periods_per_year resolved
    prices_fingerprint: str
    dtype: str
    save_signals: bool
    code: str
    validation: str = ""  # JSON of pipeline.validation.ValidationPlan ("" : no per-block statistics)
    portfolio: str = ""  # JSON {"kind", "rebalance_every"} ("" : no portfolio)

    @classmethod
    def of(cls, grid: SweepGrid, ppy: float | None, prices_fingerprint: str, dtype: str, save_signals: bool,
           validation: str = "", portfolio: str = ""):
        g = {"dims": list(grid.dims), "values": [[_jsonable(v) for v in vals] for vals in grid.values]}
        bt = grid.base_backtest.to_dict()
        bt["periods_per_year"] = ppy
        return cls(json.dumps(g), json.dumps(grid.base_atc.to_dict(), sort_keys=True), json.dumps(bt, sort_keys=True),
                   prices_fingerprint, dtype, bool(save_signals), rs.code_version(), validation, portfolio)

    def fingerprint(self) -> str:
        what = {"format": f"{FORMAT_NAME}/{FORMAT_VERSION}", "grid": json.loads(self.grid),
                "params": json.loads(self.params), "backtest": json.loads(self.backtest),
                "prices": self.prices_fingerprint, "dtype": self.dtype,
                "save_signals": self.save_signals, "code": self.code}
        if self.validation:  # absent otherwise: stores without it keep their fingerprint
            what["validation"] = json.loads(self.validation)
        if self.portfolio:  # likewise
            what["portfolio"] = json.loads(self.portfolio)
        return "sha256:" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def differences(self, attrs: Mapping[str, Any]) -> list[str]:
        out = []
        for key, label in (("grid", "a different grid"), ("params", "different base parameters"),
                           ("backtest", "different backtest settings")):
            if attrs.get(key) != getattr(self, key):
                out.append(f"{label} ({attrs.get(key)} -> {getattr(self, key)})")
        if attrs.get("prices_fingerprint") != self.prices_fingerprint:
            out.append("a different price store")
        if attrs.get("dtype") != self.dtype:
            out.append(f"dtype {attrs.get('dtype')} (now {self.dtype})")
        if (attrs.get("validation_plan") or "") != self.validation:
            out.append(f"validation blocks {attrs.get('validation_plan') or 'none'} (now {self.validation or 'none'})")
        if (attrs.get("portfolio") or "") != self.portfolio:
            out.append(f"portfolio {attrs.get('portfolio') or 'none'} (now {self.portfolio or 'none'})")
        if bool(attrs.get("save_signals")) != self.save_signals:
            out.append(f"save_signals={bool(attrs.get('save_signals'))} (now {self.save_signals})")
        if attrs.get("code_version") != self.code:
            out.append(f"code version {attrs.get('code_version')!r} (now {self.code!r})")
        if not out and attrs.get("fingerprint") != self.fingerprint():
            out.append("a different sweep fingerprint")
        return out


def legacy_block_shape_for(shape: tuple[int, ...], combos_per_task: int) -> tuple[int, ...]:
    """The block rule of stores written before even tasks: whole trailing dims while they fit in
    `combos_per_task`, then part of the next dim, 1 for the leading ones."""
    out = [1] * len(shape)
    prod = 1
    budget = max(1, int(combos_per_task))
    for i in reversed(range(len(shape))):
        if prod * shape[i] <= budget:
            out[i] = shape[i]
            prod *= shape[i]
        else:
            out[i] = max(1, budget // prod)
            break
    return tuple(out)


MA_PASS_COST = 2.5
"""Cost of one set of lengths' crossover pass in a task, in combinations: docs/BACKTEST.md measures
a whole `compute_atc` at ~225 ms and a new La or De at ~68 ms on the same panel, so the moving
averages and states are ~2.3 combinations. A block that repeats a set of lengths already in
another block pays it again."""
_MAX_CANDIDATES = 200_000


def block_shape_for(shape: tuple[int, ...], combos_per_task: int, *, dims: tuple[str, ...] | None = None,
                    chunk_sizes: tuple[int, ...] = (1,), slots: int = 1) -> tuple[int, ...]:
    """Block of combinations per task (a hyper-rectangle of at most `combos_per_task`), chosen so
    that the tasks cost the same.

    A task's cost is (combinations + `MA_PASS_COST` x the sets of lengths among them) x the symbols
    of its chunk (`chunk_sizes`, one per symbol chunk). Per dim, a block size is one of
    `ceil(n / m)` (m pieces); among the shapes within the budget the one with the smallest
    estimated wall time on `slots` cores wins: rounds of tasks (`ceil(tasks / slots)`) x the
    largest task, which is the wall time of equal tasks and penalises a short last block along a
    dim (the old rule's (3, 100) grid in blocks of 200 gave tasks of 200 and 100 side by side);
    ties go to less total work, then fewer blocks. Large grids (too many shapes to try) fall back
    to `legacy_block_shape_for`.
    """
    budget = max(1, int(combos_per_task))
    d = len(shape)
    if d == 0:
        return ()
    dims = tuple(dims) if dims is not None else ("",) * d
    from kernels.sweep import LENGTH_PARAMS

    is_len = [name in LENGTH_PARAMS for name in dims]
    cands = [sorted({-(-n // m) for m in range(1, n + 1)}) for n in shape]
    if math.prod(len(c) for c in cands) > _MAX_CANDIDATES:
        return legacy_block_shape_for(shape, budget)
    chunks = [int(c) for c in chunk_sizes if c > 0] or [1]
    n_chunks, big_chunk, sum_chunks = len(chunks), max(chunks), sum(chunks)
    slots = max(1, int(slots))
    best_key, best = None, None
    for b in itertools.product(*cands):
        if math.prod(b) > budget:
            continue
        # per dim: q full pieces of b and maybe one remainder r; blocks are products of the pieces
        pieces = [[(bi, n // bi)] + ([(n % bi, 1)] if n % bi else []) for n, bi in zip(shape, b)]
        n_blocks = math.prod(sum(c for _, c in p) for p in pieces)
        total = big = 0.0
        for combo in itertools.product(*pieces):
            size = math.prod(sz for sz, _ in combo)
            sets = math.prod(sz for (sz, _), ln in zip(combo, is_len) if ln)
            cost = size + MA_PASS_COST * sets
            count = math.prod(c for _, c in combo)
            total += cost * count
            big = max(big, cost)
        n_tasks = n_blocks * n_chunks
        wall = math.ceil(n_tasks / slots) * big * big_chunk
        key = (round(wall, 6), round(total * sum_chunks, 6), n_blocks, tuple(-x for x in reversed(b)))
        if best_key is None or key < best_key:
            best_key, best = key, b
    return tuple(best) if best is not None else (1,) * d


def plan_blocks(shape: tuple[int, ...], bshape: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """The blocks of a grid, as ((start, stop) per dim), in C order."""
    ranges = [[(lo, min(lo + b, n)) for lo in range(0, n, b)] for n, b in zip(shape, bshape)]
    return list(itertools.product(*ranges))


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------

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
    from pipeline.run import _worker_name, _worker_threads, read_close

    t0, c0, th0 = time.perf_counter(), time.process_time(), time.thread_time()
    close, symbols, times = read_close(task)
    t1 = time.perf_counter()
    combos = task_combinations(task.grid, task.block)
    parallel = bool(task.parallel) and _worker_threads() == 1
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
            "ok": int(np.count_nonzero(res.status == OK)), "worker": _worker_name(), "parallel": parallel,
            "read_s": t1 - t0, "compute_s": t2 - t1, "write_s": t3 - t2,
            # the task's CPU: its thread's, or with parallel kernels its process's (one task at a time then)
            "cpu_s": time.process_time() - c0 if parallel else time.thread_time() - th0,
            "slot": f"{_worker_name()}/{threading.current_thread().name}"}


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------

def is_sweep_store(path: Path) -> bool:
    return store_format(path) == FORMAT_NAME


def _coord(values: tuple) -> np.ndarray:
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    return np.array(values)


def create_sweep_store(path: Path, prices: Any, grid: SweepGrid, identity: SweepIdentity, chunk_symbols: int,
                       bshape: tuple[int, ...], n_tasks: int, *, prices_path: str, replace: bool = False,
                       portfolio_block: tuple[int, ...] | None = None) -> None:
    """Write the template (metadata, coordinates, nothing computed) beside `path`, then rename it in."""
    import dask.array as da
    import xarray as xr

    n_sym, n_time = prices.sizes["symbol"], prices.sizes["time"]
    shape = grid.shape + (n_sym,)
    chunks = bshape + (chunk_symbols,)
    dims = grid.dims + ("symbol",)
    data_vars: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}
    for name in METRIC_NAMES:
        data_vars[name] = (dims, da.zeros(shape, np.float64, chunks=chunks), {"description": METRIC_DESCRIPTIONS[name]})
        encoding[name] = {"chunks": chunks, "compressors": [rs.results_codec(name)]}
    data_vars["status"] = (dims, da.full(shape, rs.NOT_COMPUTED, dtype=np.int8, chunks=chunks), {
        "description": "outcome per combination and symbol: -1 not computed yet, "
                       + ", ".join(f"{c} {n}" for c, n in STATUS_NAMES.items())})
    # dtype given explicitly: with only a fill_value, xarray stores a float64 array with a NaN _FillValue
    encoding["status"] = {"chunks": chunks, "dtype": "int8", "fill_value": rs.NOT_COMPUTED,
                          "compressors": [rs.results_codec("status")]}
    data_vars["reason"] = (("symbol",), np.full(n_sym, "", dtype=object), {"description": "bad or missing data"})
    encoding["reason"] = {"chunks": (chunk_symbols,)}
    if identity.save_signals:
        ft = np.dtype(identity.dtype)
        data_vars["Average_Signal"] = (dims + ("time",), da.zeros(shape + (n_time,), ft, chunks=chunks + (n_time,)),
                                       {"description": "final ATC signal of every combination"})
        encoding["Average_Signal"] = {"chunks": chunks + (max(1, n_time),),
                                      "compressors": [rs.results_codec("Average_Signal")]}
    if identity.validation:
        nb = int(json.loads(identity.validation)["blocks"])
        data_vars["fold_stats"] = (
            grid.dims + ("block", "stat", "symbol"), da.zeros(grid.shape + (nb, 5, n_sym), np.float64,
                                                              chunks=bshape + (nb, 5, chunk_symbols)),
            {"description": "per block of the time axis: count and sums of r, r^2, r^3, r^4 of the strategy "
                            "returns (out-of-sample statistics; pipeline/validation.py)"})
        encoding["fold_stats"] = {"chunks": bshape + (nb, 5, chunk_symbols), "compressors": [rs.results_codec("fold_stats")]}
    data_vars["task_done"] = (("task",), np.zeros(n_tasks, np.int8), {"description": "1 once a task's region is written"})
    encoding["task_done"] = {"chunks": (1,)}
    coords = {d: _coord(v) for d, v in zip(grid.dims, grid.values)}
    coords["symbol"] = np.array([str(s) for s in prices["symbol"].values], dtype=object)
    if identity.portfolio:
        from pipeline import sweep_portfolio as sp

        nb = int(json.loads(identity.validation)["blocks"]) if identity.validation else 0
        pvars, penc, pcoords = sp.template_vars(grid, portfolio_block, n_time,
                                                len(plan_blocks(grid.shape, portfolio_block)), nb)
        data_vars.update(pvars)
        encoding.update(penc)
        coords.update(pcoords)
    if identity.save_signals or identity.portfolio:
        coords["time"] = prices["time"].values
    attrs = {
        "atc_format": FORMAT_NAME, "atc_format_version": FORMAT_VERSION, "grid": identity.grid,
        "params": identity.params, "backtest": identity.backtest, "prices_fingerprint": identity.prices_fingerprint,
        "prices_path": str(prices_path), "fingerprint": identity.fingerprint(), "dtype": identity.dtype,
        "save_signals": int(identity.save_signals), "code_version": identity.code, "chunk_symbols": int(chunk_symbols),
        "block_shape": json.dumps(list(bshape)), "n_tasks": int(n_tasks), "validation_plan": identity.validation,
        "portfolio": identity.portfolio, "portfolio_block_shape": json.dumps(list(portfolio_block or [])),
        "versions": json.dumps(rs.versions(), sort_keys=True), "created": rs.utc_now(),
    }
    template = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    rs.write_template(template, path, encoding, error=SweepError, what="sweep store")


@dataclass(frozen=True)
class SweepState:
    attrs: dict[str, Any]
    task_done: np.ndarray
    portfolio_done: np.ndarray | None = None  # phase-2 tasks of a portfolio (None: no portfolio)

    @property
    def complete(self) -> bool:
        return bool(self.task_done.all()) and (self.portfolio_done is None or bool(self.portfolio_done.all()))


def read_sweep_state(path: Path) -> SweepState:
    import zarr

    if not is_sweep_store(path):
        raise SweepError(f"{path} exists and is not an atc sweep store; choose another path")
    try:
        g = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
        attrs = dict(g.attrs)
        if attrs.get("atc_format_version") != FORMAT_VERSION:
            raise SweepError(f"{path}: sweep format version {attrs.get('atc_format_version')!r}, this code writes "
                             f"{FORMAT_VERSION}; use --overwrite")
        done = np.asarray(g["task_done"][:]) == 1
        pdone = np.asarray(g["portfolio_done"][:]) == 1 if attrs.get("portfolio") else None
    except SweepError:
        raise
    except Exception as exc:
        raise SweepError(f"{path}: unreadable sweep store ({type(exc).__name__}: {exc}); use --overwrite") from None
    return SweepState(attrs, done, pdone)


# --------------------------------------------------------------------------------------------
# The client side
# --------------------------------------------------------------------------------------------

@dataclass
class SweepSummary:
    store: Path
    n_symbols: int
    n_combinations: int
    dims: tuple[str, ...]
    n_tasks: int
    computed: int
    already_done: int
    action: str
    fingerprint: str
    periods_per_year: float | None
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    combination_label: Callable[[int], str] | None = None
    portfolio: dict[str, Any] | None = None  # kind, rebalance_every, tasks, computed (None: no portfolio)

    def describe(self) -> str:
        from pipeline.validation import describe as describe_validation

        verb = {"created": "computed", "overwritten": "recomputed (--overwrite)", "resumed": "resumed",
                "complete": "already complete"}[self.action]
        lines = [
            f"sweep {self.store}: {self.n_combinations} combinations ({' x '.join(self.dims)}) x {self.n_symbols} "
            f"symbols, {verb}",
            f"  {self.n_tasks} tasks: {self.computed} computed now, {self.already_done} already done; "
            f"{self.seconds:.1f} s; " + (f"{self.periods_per_year:.6g} periods per year" if self.periods_per_year
                                          is not None else "periods per year from each symbol's own bars"),
            f"  fingerprint {self.fingerprint}",
        ]
        if self.portfolio:
            p = self.portfolio
            lines.insert(2, f"  portfolio {p['kind']} per combination, rebalanced every {p['rebalance_every']} "
                            f"time{'s' if p['rebalance_every'] != 1 else ''}: {p['tasks']} portfolio tasks, "
                            f"{p['computed']} computed now")
        if self.validation:
            lines.append(describe_validation(self.validation, self.combination_label or str))
        return "\n".join(lines)


def combination_label(grid: SweepGrid, flat: int) -> str:
    """"La=0.02, De=0.03" for the combination at C-order position `flat` of the grid."""
    idx = np.unravel_index(int(flat), grid.shape)
    return ", ".join(f"{d}={grid.values[i][j]}" for i, (d, j) in enumerate(zip(grid.dims, idx)))


def _resolve(grid: SweepGrid, dtype: Any, prices: Any, store: Any) -> tuple[str, str, Path]:
    from pipeline.run import resolve_dtype, resolve_output

    if not isinstance(grid, SweepGrid):
        raise ATCUserError(f"grid must be a SweepGrid (kernels.sweep.make_grid), got {type(grid).__name__}")
    prices_path, store_path = resolve_output(prices, store, "sweep store")
    return resolve_dtype(dtype), prices_path, store_path


def _ppy(grid: SweepGrid, ds: Any) -> float | None:
    """The fixed periods per year, or None: each symbol's own, from the times of its own bars."""
    if grid.base_backtest.periods_per_year is not None:
        return float(grid.base_backtest.periods_per_year)
    return None


@dataclass
class _Plan:
    identity: SweepIdentity
    state: SweepState | None
    chunk_symbols: int
    bshape: tuple[int, ...]
    n_sym: int
    n_time: int
    ppy: float | None
    price_k: int


def _plan(ds: Any, grid: SweepGrid, store: Any, store_path: Path, dtype: str, save_signals: bool,
          chunk_symbols: int | None, combos_per_task: int | None, overwrite: bool, slots: int,
          validation: Any = None, portfolio: Mapping[str, Any] | None = None) -> _Plan:
    from pipeline.run import _check_alignment, _price_chunk, default_chunk_symbols
    from pipeline.sweep_portfolio import INPUT_BUDGET_BYTES, identity_json, input_dtype

    ppy = _ppy(grid, ds)
    identity = SweepIdentity.of(grid, ppy, str(ds.attrs.get("fingerprint")), dtype, save_signals,
                                validation.to_json() if validation is not None else "", identity_json(portfolio))
    n_sym, n_time = ds.sizes["symbol"], ds.sizes["time"]
    price_k = _price_chunk(ds)
    if combos_per_task is not None and combos_per_task < 1:
        raise SweepError(f"--combos-per-task must be >= 1, got {combos_per_task}")
    state = None
    if (store_path.exists() or store_path.is_symlink()) and not overwrite:
        state = read_sweep_state(store_path)
        diffs = identity.differences(state.attrs)
        if diffs:
            raise SweepError(f"{store}: this sweep store was computed from " + "; ".join(diffs)
                             + ". Use --overwrite to replace it, or choose another path")
        k = int(state.attrs["chunk_symbols"])
        bshape = tuple(json.loads(state.attrs["block_shape"]))
        if chunk_symbols is not None and int(chunk_symbols) != k:
            raise SweepError(f"{store}: stored with {k} symbols per chunk, not {chunk_symbols}; rerun without "
                             f"--chunk-symbols to resume, or use --overwrite")
        # (the stored block shape is kept, whichever rule chose it: stores from before even tasks resume)
        if combos_per_task is not None and math.prod(bshape) > combos_per_task:
            raise SweepError(f"{store}: stored with blocks of {bshape} combinations, more than {combos_per_task}; "
                             f"rerun without --combos-per-task to resume, or use --overwrite")
        return _Plan(identity, state, k, bshape, n_sym, n_time, ppy, price_k)
    if (store_path.exists() or store_path.is_symlink()) and not is_sweep_store(store_path):
        raise SweepError(f"{store} exists and is not an atc sweep store; refusing to overwrite it")
    if chunk_symbols is None:
        k = default_chunk_symbols(price_k, n_sym, slots)
    else:
        k = int(chunk_symbols)
        _check_alignment(k, price_k)
    k = min(k, max(1, n_sym))
    if combos_per_task is None:
        combos_per_task = DEFAULT_COMBOS_PER_TASK
        if save_signals:
            per_combo = k * n_time * np.dtype(dtype).itemsize
            combos_per_task = max(1, min(combos_per_task, SIGNAL_BUDGET_BYTES // max(1, per_combo)))
        if portfolio:
            per_combo = k * n_time * input_dtype(portfolio["kind"], dtype).itemsize
            combos_per_task = max(1, min(combos_per_task, INPUT_BUDGET_BYTES // max(1, per_combo)))
    sizes = tuple(b - a for a, b in rs.chunk_bounds(n_sym, k))
    bshape = block_shape_for(grid.shape, combos_per_task, dims=grid.dims, chunk_sizes=sizes, slots=slots)
    return _Plan(identity, None, k, bshape, n_sym, n_time, ppy, price_k)


def preflight_sweep(prices: Any, store: Any, grid: SweepGrid, *, save_signals: bool = False, dtype: str = "float64",
                    chunk_symbols: int | None = None, combos_per_task: int | None = None,
                    overwrite: bool = False, folds: int = 0, walk_forward: str | None = None,
                    portfolio: str | None = None, rebalance: int | None = None) -> tuple[int, bool]:
    """Every check `run_sweep` makes before computing, without writing anything (the CLI calls it
    before it starts a cluster). Returns (symbol-bars x combinations, complete): what decides
    in-process or cluster, and whether anything is left to compute."""
    from pipeline.store import open_prices

    dtype, prices_path, store_path = _resolve(grid, dtype, prices, store)
    ds = open_prices(prices_path)
    try:
        plan = _plan(ds, grid, store, store_path, dtype, save_signals, chunk_symbols, combos_per_task, overwrite, 1,
                     plan_validation(folds, walk_forward, ds["time"].values), _portfolio_settings(portfolio, rebalance))
    finally:
        ds.close()
    with rs.ResultsLock(store_path):
        pass
    return plan.n_sym * plan.n_time * grid.size, bool(plan.state is not None and plan.state.complete)


def run_sweep(prices: Any, store: Any, grid: SweepGrid, *, client: Any = None, threads: int | None = None,
              save_signals: bool = False,
              dtype: str = "float64", chunk_symbols: int | None = None, combos_per_task: int | None = None,
              overwrite: bool = False, progress: bool | None = None, report: Any = None,
              on_record: Callable[[dict[str, Any]], None] | None = None, verbose: bool = False,
              folds: int = 0, walk_forward: str | None = None, portfolio: str | None = None,
              rebalance: int | None = None) -> SweepSummary:
    """Backtest every combination of `grid` on every symbol of `prices` into the sweep store `store`.
    Failed tasks: one line each on stderr (``verbose``: with the traceback),
    details in the log beside the store (``pipeline.run.failure_log_path``). ``client`` None: on
    ``threads`` threads of this process (pipeline/executor.py), serial kernels, the same store.
    ``folds`` (CSCV's S, even) and ``walk_forward`` ("TRAIN:TEST", bars or durations such as
    "2y:6m") keep per-block return statistics and add the out-of-sample validation of
    pipeline/validation.py to the store and the summary. ``portfolio`` ("equal" / "signal", rebalanced
    every ``rebalance`` times) adds each combination's portfolio (pipeline/sweep_portfolio.py), by
    which the summary then ranks."""
    from pipeline.cluster import kernel_parallel
    from pipeline.run import RunError, _run_workers, report_failures
    from pipeline.store import open_prices

    t_start = time.perf_counter()
    dtype, prices_path, store_path = _resolve(grid, dtype, prices, store)
    lock = rs.ResultsLock(store_path)
    lock.acquire()
    try:
        workers = _run_workers(client, threads)
        slots = sum(int(w.get("nthreads", 1)) for w in workers.values())
        ds = open_prices(prices_path)
        try:
            vplan = plan_validation(folds, walk_forward, ds["time"].values)
            pset = _portfolio_settings(portfolio, rebalance)
            plan = _plan(ds, grid, store, store_path, dtype, save_signals, chunk_symbols, combos_per_task, overwrite,
                         slots, vplan, pset)
            blocks = plan_blocks(grid.shape, plan.bshape)
            bounds = rs.chunk_bounds(plan.n_sym, plan.chunk_symbols)
            n_tasks = len(blocks) * len(bounds)
            if plan.state is None:
                from pipeline.sweep_portfolio import phase2_block_shape

                pblock = phase2_block_shape(grid.shape, slots) if pset else None
                existed = store_path.exists() or store_path.is_symlink()
                create_sweep_store(store_path, ds, grid, plan.identity, plan.chunk_symbols, plan.bshape, n_tasks,
                                   prices_path=prices_path, replace=overwrite, portfolio_block=pblock)
                action = "overwritten" if existed else "created"
                done = np.zeros(n_tasks, bool)
            else:
                done = plan.state.task_done
                action = "complete" if plan.state.complete else "resumed"
            if pset and not done.all():
                from pipeline.sweep_portfolio import create_input

                create_input(str(store_path), grid, pset["kind"], dtype, plan.n_sym, plan.n_time, plan.chunk_symbols,
                             plan.bshape)
            times = ds["time"].values if pset else None
        finally:
            ds.close()
        parallel = client is not None and kernel_parallel(workers)
        fp = plan.identity.prices_fingerprint
        tasks = []
        len_dims = [d in LENGTH_PARAMS for d in grid.dims]
        for b, block in enumerate(blocks):
            size = math.prod(hi - lo for lo, hi in block)
            sets = math.prod(hi - lo for (lo, hi), ln in zip(block, len_dims) if ln)
            for c, (lo, hi) in enumerate(bounds):
                i = b * len(bounds) + c
                if not done[i]:
                    tasks.append(SweepTask(prices_path, str(store_path), i, block, lo, hi, grid, plan.ppy, fp, dtype,
                                           save_signals, b == 0, parallel, vplan.blocks,
                                           pset["kind"] if pset else "", pset["rebalance_every"] if pset else 1,
                                           (size + MA_PASS_COST * sets) * (hi - lo)))
        tasks.sort(key=lambda t: -t.cost)  # largest first: the small ones fill the tail (stable: else in order)
        if client is None:
            from pipeline.executor import run_tasks

            records, failures = run_tasks(run_sweep_task, tasks, threads=threads, progress=progress,
                                          desc="atc sweep", unit="task", on_record=on_record)
        else:
            records, failures = _execute(client, tasks, progress, report, on_record)
        if failures:
            ranges = {t.index: t for t in tasks}
            describe = lambda i: (f"task {i} (symbols {ranges[i].start}..{ranges[i].stop - 1})"  # noqa: E731
                                  if i in ranges else f"task {i}")
            log = report_failures(failures, store_path, describe, verbose=verbose)
            first = failures[0]
            if any(f.prices_changed for f in failures):
                raise RunError(
                    f"{len(failures)} of {len(tasks)} sweep tasks failed: the price store {prices} changed during the "
                    f"sweep, so {store} no longer matches it and a plain rerun is refused; recompute it from the new "
                    f"prices with --overwrite (details: {log})", prices_changed=True, log=log)
            raise RunError(f"{len(failures)} of {len(tasks)} sweep tasks failed (first: task {first.index}: "
                           f"{first.message}); the finished tasks are saved in {store}: rerun the same command "
                           f"to compute the rest (details: {log})", log=log)
        n_ptasks = n_pdone = 0
        if pset:
            state = read_sweep_state(store_path)
            precords, n_ptasks, n_pdone = _run_portfolio_phase(state, prices_path, store_path, grid, pset, plan.ppy,
                                                               times, vplan.blocks, fp, client, threads, progress,
                                                               report, on_record, verbose, prices, store)
            records = records + precords
        state = read_sweep_state(store_path)
        if not state.complete:  # pragma: no cover
            raise RunError(f"{store}: {int((~state.task_done).sum())} tasks are not marked done; rerun")
        validation = json.loads(state.attrs["validation"]) if state.attrs.get("validation") else None
        if action != "complete" or "completed" not in state.attrs or (vplan.blocks and validation is None):
            import zarr

            g = zarr.open_group(str(store_path), mode="r+", zarr_format=3, use_consolidated=False)
            new_attrs = {"completed": rs.utc_now()}
            if vplan.blocks:
                validation = validate_store(store_path, grid, vplan, prices=prices_path, dtype=dtype,
                                            periods_per_year=plan.ppy)
                new_attrs["validation"] = json.dumps(validation)
            g.attrs.update(new_attrs)
            rs._consolidate(store_path)
        return SweepSummary(store_path, plan.n_sym, grid.size, grid.dims, n_tasks, len(tasks), n_tasks - len(tasks),
                            action, plan.identity.fingerprint(), plan.ppy, time.perf_counter() - t_start, records,
                            validation, lambda flat: combination_label(grid, flat),
                            dict(pset, tasks=n_ptasks, computed=n_ptasks - n_pdone) if pset else None)
    finally:
        lock.release()


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


def _portfolio_settings(kind: str | None, rebalance: int | None) -> dict[str, Any] | None:
    from pipeline.portfolio_store import portfolio_settings

    return portfolio_settings(kind, rebalance)


def _run_portfolio_phase(state: SweepState, prices_path: str, store_path: Path, grid: SweepGrid,
                         pset: Mapping[str, Any], ppy: float | None, times: Any, folds: int, fp: str, client: Any,
                         threads: int | None, progress: bool | None, report: Any,
                         on_record: Callable[[dict[str, Any]], None] | None, verbose: bool, prices: Any,
                         store: Any) -> tuple[list[dict], int, int]:
    """Phase 2 of a sweep with a portfolio (pipeline/sweep_portfolio.py): the portfolio tasks not
    yet done, then the scratch input removed. Returns (records, tasks, tasks already done)."""
    import zarr

    from kernels.metrics import infer_periods_per_year
    from pipeline import sweep_portfolio as sp
    from pipeline.run import RunError, report_failures

    pblocks = plan_blocks(grid.shape, tuple(json.loads(state.attrs["portfolio_block_shape"])))
    pdone = state.portfolio_done if state.portfolio_done is not None else np.zeros(len(pblocks), bool)
    ppy_used = float(ppy) if ppy is not None else float(infer_periods_per_year(np.asarray(times)))
    ptasks = [sp.SweepPortfolioTask(prices_path, str(store_path), i, block, grid, pset["kind"],
                                    int(pset["rebalance_every"]), ppy_used, fp, folds)
              for i, block in enumerate(pblocks) if not pdone[i]]
    records: list[dict] = []
    if ptasks:
        if client is None:
            from pipeline.executor import run_tasks

            records, failures = run_tasks(sp.run_portfolio_task, ptasks, threads=threads, progress=progress,
                                          desc="atc sweep portfolios", unit="task", on_record=on_record)
        else:
            records, failures = _execute(client, ptasks, progress, report, on_record, fn=sp.run_portfolio_task,
                                         name="atc-sweep-portfolio", desc="atc sweep portfolios")
        if failures:
            ranges = {t.index: t for t in ptasks}
            describe = lambda i: (f"portfolio task {i} (block {list(ranges[i].block)})"  # noqa: E731
                                  if i in ranges else f"portfolio task {i}")
            log = report_failures(failures, store_path, describe, verbose=verbose)
            first = failures[0]
            if any(f.prices_changed for f in failures):
                raise RunError(
                    f"{len(failures)} of {len(ptasks)} portfolio tasks failed: the price store {prices} changed during "
                    f"the sweep; recompute it from the new prices with --overwrite (details: {log})",
                    prices_changed=True, log=log)
            raise RunError(f"{len(failures)} of {len(ptasks)} portfolio tasks failed (first: task {first.index}: "
                           f"{first.message}); the finished tasks are saved in {store}: rerun the same command "
                           f"to compute the rest (details: {log})", log=log)
    g = zarr.open_group(str(store_path), mode="r+", zarr_format=3, use_consolidated=False)
    if sp.PPY_ATTR not in g.attrs:
        g.attrs[sp.PPY_ATTR] = ppy_used
    sp.drop_input(str(store_path))
    return records, len(pblocks), len(pblocks) - len(ptasks)


def _execute(client: Any, tasks: list[Any], progress: bool | None, report: Any,
             on_record: Callable[[dict[str, Any]], None] | None, *, fn: Callable[[Any], dict] | None = None,
             name: str = "atc-sweep", desc: str = "atc sweep") -> tuple[list[dict], list]:
    from contextlib import nullcontext

    from pipeline.run import TaskFailure, guarded, task_failure

    from distributed import as_completed, performance_report
    from tqdm import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    records: list[dict] = []
    failures: list[TaskFailure] = []
    token = uuid.uuid4().hex[:8]
    with performance_report(filename=str(report)) if report else nullcontext():
        fn = run_sweep_task if fn is None else fn
        # priority: the scheduler starts the costliest first (largest-first keeps the tail short)
        futures = {client.submit(guarded, fn, t, key=f"{name}-{t.index:07d}-{token}", pure=False,
                                 priority=len(tasks) - n): t
                   for n, t in enumerate(tasks)}
        bar = tqdm(total=len(tasks), unit="task", desc=desc, disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        try:
            for f in as_completed(list(futures)):
                t = futures.pop(f)
                failure = task_failure(f)
                if failure is not None:
                    failures.append(TaskFailure(t.index, failure.message, failure.details, failure.prices_changed))
                else:
                    rec = f.result()
                    records.append(rec)
                    if on_record is not None:
                        on_record(rec)
                f.release()
                bar.update(1)
        except BaseException:
            client.cancel(list(futures))
            raise
        finally:
            bar.close()
    failures.sort(key=lambda x: x.index)
    return records, failures


# --------------------------------------------------------------------------------------------
# Summary: the best combinations
# --------------------------------------------------------------------------------------------

SUMMARY_METRICS = ("sharpe", "cagr", "max_drawdown", "win_rate", "n_trades", "exposure")
PORTFOLIO_SUMMARY_METRICS = ("sharpe", "cagr", "max_drawdown", "exposure", "turnover", "fees_paid")


def rank_metric_names(store: Any = None, portfolio: bool | None = None) -> tuple[str, ...]:
    """The metrics a sweep can be ranked by: a portfolio's (the 11 + turnover, fees_paid) when the
    store holds portfolios (or ``portfolio``), else the per-symbol ones."""
    from kernels.portfolio import PORTFOLIO_METRIC_NAMES

    if portfolio is None:
        portfolio = bool(read_sweep_state(Path(store)).attrs.get("portfolio"))
    return PORTFOLIO_METRIC_NAMES if portfolio else METRIC_NAMES


def _higher_is_better(name: str) -> bool:
    return HIGHER_IS_BETTER.get(name, name not in ("turnover", "fees_paid"))


def summarize_sweep(store: Any, rank_by: str = "sharpe", top: int = 10):
    """The `top` combinations of a sweep store, best first (lower is better for ann_volatility,
    max_drawdown, turnover and fees_paid), as a pandas DataFrame whose ``attrs["ranked_by"]`` says
    by what.

    With portfolios (`atc sweep --portfolio`), combinations are ranked by their portfolio's
    `rank_by` (any of `kernels.portfolio.PORTFOLIO_METRIC_NAMES`): columns are the swept values, the
    portfolio's `rank_by` and a few other portfolio metrics, the median over symbols of `rank_by`
    (a per-symbol metric) and the number of symbols computed. Without, by the median over symbols
    of `rank_by`, with the medians of a few other metrics. Combinations whose figure is NaN come
    last. Reads one block of combinations at a time, so memory is bounded by the block size x the
    number of symbols."""
    import pandas as pd
    import zarr

    path = Path(store)
    state = read_sweep_state(path)
    pf = json.loads(state.attrs["portfolio"]) if state.attrs.get("portfolio") else None
    names = rank_metric_names(portfolio=pf is not None)
    if rank_by not in names:
        raise ATCUserError(f"--rank-by must be one of {', '.join(names)}, got {rank_by!r}")
    grid = json.loads(state.attrs["grid"])
    dims, values = grid["dims"], grid["values"]
    shape = tuple(len(v) for v in values)
    bshape = tuple(json.loads(state.attrs["block_shape"]))
    g = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    if pf is not None:
        from pipeline.sweep_portfolio import METRICS_VAR

        shown_pf = [rank_by] + [m for m in PORTFOLIO_SUMMARY_METRICS if m != rank_by]
        pm = np.asarray(g[METRICS_VAR][...])
        pcol = {m: pm[..., names.index(m)] for m in shown_pf}
        shown = [rank_by] if rank_by in METRIC_NAMES else []
        key = pcol[rank_by].reshape(-1)
        what = (f"the {pf['kind']} portfolio's {rank_by} (rebalanced every {pf['rebalance_every']} "
                f"time{'s' if pf['rebalance_every'] != 1 else ''})")
    else:
        shown_pf, pcol = [], {}
        shown = [rank_by] + [m for m in SUMMARY_METRICS if m != rank_by]
        what = f"median {rank_by} over symbols"
    med = {m: np.full(shape, np.nan) for m in shown}
    n_ok = np.zeros(shape, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN medians
        for block in plan_blocks(shape, bshape):
            region = tuple(slice(lo, hi) for lo, hi in block)
            for m in shown:
                med[m][region] = np.nanmedian(np.asarray(g[m][region + (slice(None),)]), axis=-1)
            n_ok[region] = (np.asarray(g["status"][region + (slice(None),)]) == OK).sum(axis=-1)
    if pf is None:
        key = med[rank_by].reshape(-1)
    sign = -1.0 if _higher_is_better(rank_by) else 1.0
    order = np.lexsort((np.arange(key.size), sign * np.nan_to_num(key, nan=0.0), np.isnan(key)))[:max(0, top)]
    rows = []
    for flat in order:
        idx = np.unravel_index(int(flat), shape)
        row = {d: values[i][j] for i, (d, j) in enumerate(zip(dims, idx))}
        for m in shown_pf:
            row[f"portfolio {m}"] = pcol[m][idx]
        for m in shown:
            row[f"median {m}"] = med[m][idx]
        row["symbols ok"] = int(n_ok[idx])
        rows.append(row)
    df = pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="rank"))
    df.attrs["ranked_by"] = what
    return df
