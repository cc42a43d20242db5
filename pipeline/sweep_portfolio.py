"""Portfolios in a sweep (`atc sweep --portfolio equal|signal [--rebalance N]`): one portfolio per
combination, exactly the one `atc run --backtest --portfolio` computes with those parameters.

**Why two phases.** A portfolio is not a reduction that per-chunk partial sums can carry: its
sleeves (or holdings) share one cash account, a rebalancing solves one equation over every symbol
with a bar (`kernels.portfolio.solve_rebalance`, the fee on `|target_i - H_i|` of all of them), and
between rebalancings each sleeve drifts with its own strategy, so the value every symbol gets at
the next rebalancing depends on all the others' paths. Partial sums per chunk would be exact only
without fees and with rebalancing every bar. So the sweep tasks (one symbol chunk x one block of
combinations) keep what the portfolio needs from their symbols, compactly, and a second phase
combines all symbols per combination with the portfolio kernel itself:

* phase 1 (the sweep tasks): `portfolio_input`, a scratch array `(params..., symbol, time)` in
  the sweep store: for `equal`, each combination's positions as int8 (+1/0/-1, `NO_POSITION` where
  the run's `position` is NaN: no bar, or the symbol not computed under that combination), 1 byte
  per combination-symbol-bar; for `signal`, `Average_Signal` in the compute dtype (NaN likewise),
  with the values at times that are not rebalancing times replaced by 0 (the kernel reads a signal
  only where it rebalances, and its NaN pattern everywhere), so with `--rebalance N` the array
  compresses by about N. Zarr shards of one task's region (one file per task), inner chunks of
  one combination x one symbol chunk, so phase 2 reads one combination without decompressing the
  others.
* phase 2 (after every phase-1 task is done): tasks of a block of combinations each read the whole
  close panel once (time-major float64, as `pipeline.portfolio_store` does) and, per combination,
  its input for all symbols, then call `portfolio_equal` / `portfolio_signal` (through
  `kernels.portfolio.portfolio_time_major`: the same numbers, its fee-free benchmark pass run
  once per pattern of bars rather than per combination) with the combination's `fee_bps` (and
  `long_only` for `signal`) and write its series and metrics. When all are done the scratch array
  is deleted.

The numbers are therefore the run's bit for bit (same inputs, same kernel, same order of symbols).

Stored per combination (data/README.md): `portfolio_equity`, `portfolio_returns` (float64 on
`(params..., time)`), `portfolio_metrics` (float64 on `(params..., portfolio_metric)`, the 11
backtest metrics, `turnover` and `fees_paid`), with validation `portfolio_fold_stats` (float64 on
`(params..., block, stat)`: per block of the time axis the count and sums of r..r^4 of the
portfolio's returns, every time of the axis counted, the first included since a portfolio's first
return is a real one: the fees of its first trades), and `portfolio_done` (int8 on
`portfolio_task`, 1 once a phase-2 task wrote its combinations). The outputs are chunked by the
phase-2 block (`portfolio_block_shape` attribute), so each phase-2 task writes each output once.
Root attribute `portfolio` (JSON: `kind`, `rebalance_every`; part of the store's identity) and,
once computed, `portfolio_periods_per_year` (the figure the metrics used: the fixed one, else the
time axis' own).

Memory and cost: a phase-1 task holds its input cube (combinations x symbols of its chunk x times,
1 byte for equal, the dtype's size for signal; the planner caps combinations per task to keep it
under `INPUT_BUDGET_BYTES`); a phase-2 task holds the close panel and three float64 panels of the
portfolio kernel, about `4 * 8 * n_symbols * n_times` bytes (320 MB at 2,000 x 5,000), and runs
one kernel pass per combination, O(symbols x times), plus one fee-free benchmark pass per
distinct pattern of bars (usually one per task).
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from kernels.sweep import NO_POSITION, SweepGrid

INPUT_VAR = "portfolio_input"
SERIES_VARS = ("portfolio_equity", "portfolio_returns")
METRICS_VAR = "portfolio_metrics"
METRIC_DIM = "portfolio_metric"
FOLD_VAR = "portfolio_fold_stats"
DONE_VAR = "portfolio_done"
TASK_DIM = "portfolio_task"
ATTR = "portfolio"
PPY_ATTR = "portfolio_periods_per_year"
INPUT_BUDGET_BYTES = 256 * 2**20
"""A phase-1 task's portfolio input cube stays below this (combinations per task are capped)."""
MAX_COMBOS_PER_PHASE2_TASK = 64


def input_dtype(kind: str, dtype: str) -> np.dtype:
    return np.dtype(np.int8) if kind == "equal" else np.dtype(dtype)


def identity_json(settings: Mapping[str, Any] | None) -> str:
    """The part of the sweep's identity a portfolio adds ("" without one: older stores keep their fingerprint)."""
    if not settings:
        return ""
    return json.dumps({"kind": settings["kind"], "rebalance_every": int(settings["rebalance_every"])}, sort_keys=True)


def phase2_block_shape(shape: tuple[int, ...], slots: int) -> tuple[int, ...]:
    """Block of combinations per phase-2 task (and chunk of the portfolio outputs, so a task writes
    each output once): every combination costs the same, so blocks of about `n / slots` (at most
    `MAX_COMBOS_PER_PHASE2_TASK`), as even as the grid allows (`pipeline.sweep.block_shape_for`)."""
    from pipeline.sweep_plan import block_shape_for

    n = math.prod(shape)
    per = max(1, min(MAX_COMBOS_PER_PHASE2_TASK, math.ceil(n / max(1, int(slots)))))
    return block_shape_for(shape, per, slots=slots)


def template_vars(grid: SweepGrid, pshape: tuple[int, ...], n_time: int, n_tasks: int, validation_blocks: int):
    """Data variables and encodings of the portfolio outputs for the sweep store's template."""
    import dask.array as da

    from kernels.portfolio import PORTFOLIO_METRIC_NAMES
    from pipeline import results as rs

    dims, shape = grid.dims, grid.shape
    ones = tuple(pshape)
    nm = len(PORTFOLIO_METRIC_NAMES)
    out: dict[str, Any] = {}
    enc: dict[str, dict[str, Any]] = {}
    desc = {"portfolio_equity": "portfolio equity per combination (cash + holdings), 1 before the first time",
            "portfolio_returns": "portfolio return over the time: equity_t / equity_(t-1) - 1"}
    for name in SERIES_VARS:
        out[name] = (dims + ("time",), da.full(shape + (n_time,), np.nan, chunks=ones + (n_time,)),
                     {"description": desc[name]})
        enc[name] = {"chunks": ones + (max(1, n_time),), "compressors": [rs.results_codec(name)]}
    out[METRICS_VAR] = (dims + (METRIC_DIM,), da.full(shape + (nm,), np.nan, chunks=ones + (nm,)),
                        {"description": "metrics of each combination's portfolio (docs/BACKTEST.md)"})
    enc[METRICS_VAR] = {"chunks": ones + (nm,), "compressors": [rs.results_codec(METRICS_VAR)]}
    if validation_blocks:
        nb = int(validation_blocks)
        out[FOLD_VAR] = (dims + ("block", "stat"), da.zeros(shape + (nb, 5), np.float64, chunks=ones + (nb, 5)),
                         {"description": "per block of the time axis: count and sums of r, r^2, r^3, r^4 of the "
                                         "portfolio's returns (every time of the axis)"})
        enc[FOLD_VAR] = {"chunks": ones + (nb, 5), "compressors": [rs.results_codec(FOLD_VAR)]}
    out[DONE_VAR] = ((TASK_DIM,), np.zeros(n_tasks, np.int8),
                     {"description": "1 once a portfolio task wrote its combinations"})
    enc[DONE_VAR] = {"chunks": (1,)}
    coords = {METRIC_DIM: np.array(PORTFOLIO_METRIC_NAMES, dtype=object)}
    return out, enc, coords


def create_input(store: str, grid: SweepGrid, kind: str, dtype: str, n_sym: int, n_time: int, chunk_symbols: int,
                 bshape: tuple[int, ...]) -> None:
    """The phase-1 scratch array (shards = one task's region, inner chunks = one combination x one
    symbol chunk); idempotent (an existing one is kept)."""
    import zarr

    from pipeline import results as rs

    g = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    if INPUT_VAR in g:
        return
    ft = input_dtype(kind, dtype)
    fill = NO_POSITION if kind == "equal" else np.nan
    t = max(1, n_time)
    g.create_array(INPUT_VAR, shape=grid.shape + (n_sym, n_time), dtype=ft, fill_value=fill,
                   chunks=(1,) * len(bshape) + (chunk_symbols, t), shards=tuple(bshape) + (chunk_symbols, t),
                   compressors=[rs.results_codec("Average_Signal")],
                   dimension_names=list(grid.dims) + ["symbol", "time"])


def drop_input(store: str) -> None:
    import zarr

    g = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    if INPUT_VAR in g:
        del g[INPUT_VAR]


def task_input(res: Any, kind: str, rebalance_every: int) -> np.ndarray:
    """A phase-1 task's input cube `(combinations, symbols, times)` from its `SweepResult`."""
    if kind == "equal":
        return res.positions
    a = res.average_signal
    if rebalance_every > 1:  # only the values at rebalancing times are read, the NaN pattern everywhere
        off = np.arange(a.shape[-1]) % rebalance_every != 0
        sub = a[..., off]
        a[..., off] = np.where(np.isnan(sub), sub, 0)
    return a


@dataclass(frozen=True)
class SweepPortfolioTask:
    """Phase 2: the portfolios of one block of combinations ((start, stop) per dim; small and picklable)."""

    prices: str
    store: str
    index: int
    block: tuple[tuple[int, int], ...]
    grid: SweepGrid
    kind: str
    rebalance_every: int
    periods_per_year: float
    prices_fingerprint: str
    folds: int = 0


def _close_panel(task: SweepPortfolioTask) -> np.ndarray:
    """The whole close panel, time-major float64 (filled chunk by chunk, as pipeline.portfolio_store)."""
    from pipeline.chunk_task import checked_prices
    from pipeline.routing import price_chunk

    with checked_prices(task.prices, task.prices_fingerprint, "sweep") as px:
        n_sym, n_time = px.sizes["symbol"], px.sizes["time"]
        k = price_chunk(px)
        closeT = np.empty((n_time, n_sym))
        for a in range(0, n_sym, k):
            b = min(n_sym, a + k)
            closeT[:, a:b] = np.asarray(px["close"][a:b].values, np.float64).T
    return closeT


def run_portfolio_task(task: SweepPortfolioTask) -> dict[str, Any]:
    """Compute and write the portfolios of one phase-2 task (its block: one chunk of each output);
    return a small record."""
    import itertools

    import zarr

    from kernels.portfolio import PORTFOLIO_METRIC_NAMES, portfolio_time_major
    from pipeline.chunk_task import worker_name

    t0, c0 = time.perf_counter(), time.thread_time()  # (serial kernels: the task's CPU is its thread's)
    closeT = _close_panel(task)
    benchmarks: dict = {}  # the fee-free benchmark pass, shared by combinations with the same bars
    n_time, n_sym = closeT.shape
    g = zarr.open_group(task.store, mode="r+", zarr_format=3, use_consolidated=False)
    inp = g[INPUT_VAR]
    otherT = np.empty((n_time, n_sym))
    bshape = tuple(hi - lo for lo, hi in task.block)
    eq = np.empty(bshape + (n_time,))
    ret = np.empty(bshape + (n_time,))
    met = np.empty(bshape + (len(PORTFOLIO_METRIC_NAMES),))
    fs = np.empty(bshape + (task.folds, 5))
    read_s = time.perf_counter() - t0
    comp_s = 0.0
    for local in itertools.product(*(range(n) for n in bshape)):
        ta = time.perf_counter()
        idx = tuple(lo + j for (lo, _), j in zip(task.block, local))
        raw = np.asarray(inp[idx])  # (symbols, times)
        otherT[...] = raw.T
        if task.kind == "equal":
            otherT[raw.T == NO_POSITION] = np.nan
        _, bt = task.grid.params(int(np.ravel_multi_index(idx, task.grid.shape)) if idx else 0)
        tb = time.perf_counter()
        pf = portfolio_time_major(task.kind, closeT, otherT, fee_bps=bt.fee_bps, rebalance_every=task.rebalance_every,
                                  long_only=bool(bt.long_only), periods_per_year=task.periods_per_year,
                                  benchmarks=benchmarks)
        eq[local] = pf.equity
        ret[local] = pf.returns
        met[local] = [pf.metrics[m] for m in PORTFOLIO_METRIC_NAMES]
        if task.folds:
            fs[local] = portfolio_block_stats(pf.returns, task.folds)
        read_s += tb - ta
        comp_s += time.perf_counter() - tb
    tw = time.perf_counter()
    region = tuple(slice(lo, hi) for lo, hi in task.block)
    g["portfolio_equity"][region] = eq
    g["portfolio_returns"][region] = ret
    g[METRICS_VAR][region] = met
    if task.folds:
        g[FOLD_VAR][region] = fs
    g[DONE_VAR][task.index] = 1
    return {"task": task.index, "phase": "portfolio", "combinations": math.prod(bshape), "symbols": n_sym,
            "worker": worker_name(), "read_s": read_s, "compute_s": comp_s, "write_s": time.perf_counter() - tw,
            "cpu_s": time.thread_time() - c0, "slot": f"{worker_name()}/{threading.current_thread().name}"}


def portfolio_block_stats(returns: np.ndarray, n_blocks: int) -> np.ndarray:
    """`(n_blocks, 5)` count and sums of r..r^4 of a portfolio's returns, time column c in block
    `c * n_blocks // n_times` (the sweep's rule, `kernels.overfit.block_stats_from_returns`)."""
    from kernels.overfit import block_stats_from_returns

    return block_stats_from_returns(np.asarray(returns, np.float64), int(n_blocks))
