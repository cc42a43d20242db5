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

This module plans and runs a sweep (`preflight_sweep`, `run_sweep`) and ranks its combinations
(`summarize_sweep`); the parts live beside it, their names importable from here too:
pipeline/sweep_identity.py (what a store's numbers depend on, its fingerprint, combination labels),
pipeline/sweep_plan.py (blocks of combinations per task), pipeline/sweep_task.py (the task a worker
runs), pipeline/sweep_store.py (the store's template and state), pipeline/sweep_portfolio.py (the
portfolio phase).
"""


from __future__ import annotations

import json
import math
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kernels.errors import ATCUserError
from kernels.metrics import HIGHER_IS_BETTER, METRIC_NAMES
from kernels.status import OK
from kernels.sweep import LENGTH_PARAMS, SweepGrid
from pipeline import results as rs
from pipeline.validation import plan_validation, validate_store
# The parts of a sweep live in their own modules; their names stay importable from here.
from pipeline.sweep_identity import SweepIdentity, combination_label
from pipeline.sweep_plan import (DEFAULT_COMBOS_PER_TASK, MA_PASS_COST, SIGNAL_BUDGET_BYTES,  # noqa: F401
                                 block_shape_for, legacy_block_shape_for, plan_blocks)
from pipeline.sweep_store import (FORMAT_NAME, FORMAT_VERSION, SweepError, SweepState,  # noqa: F401
                                  create_sweep_store, is_sweep_store, read_sweep_state)
from pipeline.sweep_task import SweepTask, run_sweep_task, task_balance, task_combinations  # noqa: F401

__all__ = ["SweepError", "SweepIdentity", "SweepSummary", "SweepTask", "plan_blocks", "preflight_sweep",
           "run_sweep", "run_sweep_task", "summarize_sweep"]


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
    from pipeline.run import check_alignment, default_chunk_symbols
    from pipeline.routing import price_chunk
    from pipeline.sweep_portfolio import INPUT_BUDGET_BYTES, identity_json, input_dtype

    ppy = _ppy(grid, ds)
    identity = SweepIdentity.of(grid, ppy, str(ds.attrs.get("fingerprint")), dtype, save_signals,
                                validation.to_json() if validation is not None else "", identity_json(portfolio))
    n_sym, n_time = ds.sizes["symbol"], ds.sizes["time"]
    price_k = price_chunk(ds)
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
        check_alignment(k, price_k)
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
    from pipeline.run import RunError, _run_workers
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
            _raise_failures(failures, len(tasks), "sweep tasks", prices, store, store_path, verbose,
                            lambda i: f"task {i} (symbols {ranges[i].start}..{ranges[i].stop - 1})"
                            if i in ranges else f"task {i}",
                            f", so {store} no longer matches it and a plain rerun is refused")
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


def _raise_failures(failures: list, n_tasks: int, what: str, prices: Any, store: Any, store_path: Path,
                    verbose: bool, describe: Callable[[int], str], changed_note: str) -> None:
    """One line per failed task on stderr (their tracebacks in the store's error log), then the
    RunError that says what a rerun does: resume, or be refused when the prices changed meanwhile."""
    from pipeline.run import RunError, report_failures

    log = report_failures(failures, store_path, describe, verbose=verbose)
    first = failures[0]
    if any(f.prices_changed for f in failures):
        raise RunError(
            f"{len(failures)} of {n_tasks} {what} failed: the price store {prices} changed during the sweep"
            f"{changed_note}; recompute it from the new prices with --overwrite (details: {log})",
            prices_changed=True, log=log)
    raise RunError(f"{len(failures)} of {n_tasks} {what} failed (first: task {first.index}: {first.message}); the "
                   f"finished tasks are saved in {store}: rerun the same command to compute the rest (details: {log})",
                   log=log)


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
            _raise_failures(failures, len(ptasks), "portfolio tasks", prices, store, store_path, verbose,
                            lambda i: f"portfolio task {i} (block {list(ranges[i].block)})"
                            if i in ranges else f"portfolio task {i}", "")
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


def higher_is_better(name: str) -> bool:
    """Per-symbol metrics as `kernels.metrics` says; of the portfolio's extra two, turnover and
    fees paid, less is better."""
    return HIGHER_IS_BETTER.get(name, name not in ("turnover", "fees_paid"))


def rank_order(key: np.ndarray, higher: bool, top: int) -> np.ndarray:
    """Flat indices of the best `top` entries of `key`: best first, NaN last, ties in grid order,
    +-inf ranked as the extremes they are. The one order of `atc sweep` and `atc show`."""
    sign = -1.0 if higher else 1.0
    return np.lexsort((np.arange(key.size), sign * np.nan_to_num(key, nan=0.0, posinf=1e300, neginf=-1e300),
                       np.isnan(key)))[:max(0, top)]


def portfolio_ranking_label(pf: Mapping[str, Any], rank_by: str) -> str:
    """What a sweep with portfolios is ranked by, in the words both summaries print."""
    every = int(pf.get("rebalance_every", 1))
    return f"the {pf.get('kind')} portfolio's {rank_by} (rebalanced every {every} time{'s' if every != 1 else ''})"


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
        what = portfolio_ranking_label(pf, rank_by)
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
    rows = []
    for flat in rank_order(key, higher_is_better(rank_by), top):
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
