"""`atc sweep` (parameter grid -> sweep store of per-symbol backtest metrics, then the best
combinations) and `atc bench sweep` (the reuse benchmark: a 5 x 5 grid against a single run)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kernels.errors import ATCUserError


def load_grid(path: Path, base_atc=None, base_backtest=None):
    """A `SweepGrid` from a YAML mapping `parameter: [values...]`; every problem is reported, naming
    the file and the parameter, before any work starts."""
    from flows.yaml_file import load_yaml_file

    from kernels.sweep import make_grid

    from flows.run_cmd import canonical_names
    from kernels.sweep import SWEEP_PARAMS

    loaded = load_yaml_file(path, "grid")
    try:
        if isinstance(loaded, dict):  # (anything else: make_grid says what a grid must be)
            loaded = {k: v for k, v in loaded.items() if k == "periods_per_year"} | canonical_names(
                {str(k): v for k, v in loaded.items() if k != "periods_per_year"}, known=SWEEP_PARAMS,
                unknown="grid: unknown parameter {key!r}")
        return make_grid(loaded, base_atc, base_backtest)
    except ATCUserError as exc:
        raise type(exc)(f"{path}: {exc}") from None


_SCHEDULER = typer.Option("--scheduler", help="Join the Dask cluster at tcp://HOST:PORT instead of starting a local one.")
_WORKERS = typer.Option("--workers", help="Worker processes of the local cluster (default: one per core).")
_THREADS = typer.Option("--threads-per-worker", help="Threads per local worker (default 1).")


def sweep(
    prices: Annotated[Path, typer.Argument(help="Price store (from atc synth / atc ingest).", show_default=False)],
    store: Annotated[Path, typer.Argument(help="Sweep store to create or resume.", show_default=False,
                                          metavar="SWEEP")],
    grid: Annotated[Path, typer.Option("--grid", help="YAML file: parameter -> list of values, e.g. "
                                       "'La: [0.01, 0.02]'. Any ATC parameter, fee_bps, long_only.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of fixed parameters (ATC and "
                                                   "backtest) for everything the grid does not sweep.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Fix one parameter, key=value (repeatable).")] = None,
    periods_per_year: Annotated[Optional[float], typer.Option(
        "--periods-per-year", help="Bars per year for annualised metrics (default: inferred from the time axis).")] = None,
    save_signals: Annotated[bool, typer.Option("--save-signals", help="Also store the Average_Signal cube "
                                               "(combinations x symbols x time).")] = False,
    rank_by: Annotated[str, typer.Option("--rank-by", help="Metric for the summary table: the portfolio's with "
                                         "--portfolio, else the median over symbols.")] = "sharpe",
    top: Annotated[int, typer.Option("--top", help="Rows in the summary table.")] = 10,
    chunk_symbols: Annotated[Optional[int], typer.Option(
        "--chunk-symbols", help="Symbols per task, a multiple or divisor of the price store's chunk.")] = None,
    combos_per_task: Annotated[Optional[int], typer.Option(
        "--combos-per-task", help="Combinations per task (default 256; fewer with --save-signals, to keep a "
        "task's cube under 64 MiB).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a sweep store computed from another "
                                            "grid, parameters or prices.")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write Dask's performance report (HTML).")] = None,
    scheduler: Annotated[Optional[str], _SCHEDULER] = None,
    workers: Annotated[Optional[int], _WORKERS] = None,
    threads_per_worker: Annotated[Optional[int], _THREADS] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float64, or float32 (approximate).")] = "float64",
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress",
                                                     help="Progress bar (default: on a terminal).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Print each failed task's traceback under its line "
                                          "(it always goes to SWEEP.errors.log beside the store).")] = False,
    in_process: Annotated[Optional[bool], typer.Option(
        "--in-process/--cluster", help="Run on threads of this process, or on a Dask cluster (default: in-process "
        "when symbols x bars x combinations is at most 10 million or nothing is left to compute, unless "
        "--scheduler, $DASK_SCHEDULER_ADDRESS, --threads-per-worker or --report ask for a cluster).",
        show_default=False)] = None,
    folds: Annotated[int, typer.Option(
        "--folds", help="Combinatorially symmetric cross-validation over this many blocks of the time axis (even; "
        "10 is usual): probability of backtest overfitting, deflated Sharpe (docs/OVERFITTING.md). 0: none.")] = 0,
    walk_forward: Annotated[Optional[str], typer.Option(
        "--walk-forward", help="TRAIN:TEST windows in bars or durations (500:100, 2y:6m): the best combination on "
                               "each training window, measured on the test window after it.")] = None,
    portfolio: Annotated[Optional[str], typer.Option(
        "--portfolio", help="Also backtest each combination's portfolio of all symbols: equal (equal sleeves, each "
        "following its symbol's position) or signal (weights proportional to Average_Signal), as atc run "
        "--backtest --portfolio; the summary then ranks by the portfolio's metric.")] = None,
    rebalance: Annotated[Optional[int], typer.Option(
        "--rebalance", help="With --portfolio: rebalance every N times of the time axis (default 1).")] = None,
) -> None:
    """Backtest every combination of a parameter grid on every symbol of PRICES into the sweep store
    SWEEP (metrics over one dimension per swept parameter x symbol), then print the best
    combinations. The moving averages and crossovers are computed once per set of lengths and
    reused for every other parameter. Rerunning the same command resumes an interrupted sweep."""
    from flows.run_cmd import (_announce, _announce_in_process, choose_in_process, interrupted_line, load_params,
                               overwrite_command)
    from pipeline.portfolio_store import portfolio_settings
    from pipeline.run import RunError
    from pipeline.sweep import preflight_sweep, rank_metric_names, run_sweep

    # every refusal before a cluster starts: parameters, grid, options, the stores
    portfolio_settings(portfolio, rebalance)
    names = rank_metric_names(portfolio=portfolio is not None)
    if rank_by not in names:
        raise ATCUserError(f"--rank-by must be one of {', '.join(names)}, got {rank_by!r}")
    base_atc, base_bt = load_params(config, set_, backtest=True)
    if periods_per_year is not None:
        base_bt = base_bt.replace(periods_per_year=periods_per_year)
    g = load_grid(grid, base_atc, base_bt)
    size, complete = preflight_sweep(prices, store, g, save_signals=save_signals, dtype=dtype,
                                     chunk_symbols=chunk_symbols, combos_per_task=combos_per_task, overwrite=overwrite,
                                     folds=folds, walk_forward=walk_forward, portfolio=portfolio, rebalance=rebalance)
    local = choose_in_process(size, complete, in_process, scheduler, workers=workers,
                              threads_per_worker=threads_per_worker, report=report, backend="cpu")
    kw = dict(save_signals=save_signals, dtype=dtype, chunk_symbols=chunk_symbols, combos_per_task=combos_per_task,
              overwrite=overwrite, progress=progress, verbose=verbose, folds=folds, walk_forward=walk_forward,
              portfolio=portfolio, rebalance=rebalance)
    try:
        if local:
            if not complete:
                _announce_in_process(workers, size)
            summary = run_sweep(prices, store, g, threads=workers, **kw)
        else:
            from pipeline.cluster import connect

            with connect(scheduler, workers=workers, threads_per_worker=threads_per_worker) as cl:
                _announce(cl)
                summary = run_sweep(prices, store, g, client=cl.client, report=report, **kw)
    except KeyboardInterrupt:
        from flows.cli import Interrupted

        raise Interrupted(interrupted_line(store, overwrite, what="sweep tasks")) from None
    except RunError as exc:
        if exc.prices_changed:
            raise RunError(f"{exc}: {overwrite_command()}", prices_changed=True, log=exc.log) from None
        raise
    typer.echo(summary.describe())
    typer.echo("")
    typer.echo(summary_table(store, rank_by, top))


def summary_table(store: Path, rank_by: str, top: int) -> str:
    import pandas as pd

    from pipeline.sweep import summarize_sweep

    df = summarize_sweep(store, rank_by, top)
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format", "{:.4g}".format):
        body = df.to_string()
    return f"Best {len(df)} combinations by {df.attrs['ranked_by']}:\n{body}"


# --------------------------------------------------------------------------------------------
# atc bench sweep
# --------------------------------------------------------------------------------------------

def warm_kernels(n_combos: int = 2) -> float:
    """Compile (or load from the disk cache) what run and sweep tasks use; run on every worker."""
    import numpy as np

    from kernels import compute_atc
    from kernels.backtest import BacktestParams, run_backtest
    from kernels.params import ATCParams
    from kernels.synthetic import random_walk_panel
    from kernels.sweep import sweep_panel

    t0 = time.perf_counter()
    x = random_walk_panel(20, 200, seed=1)
    res = compute_atc(x, parallel=False)
    run_backtest(x, res["Average_Signal"], periods_per_year=252)
    sweep_panel(x, [(ATCParams(La=0.01 * (i + 1)), BacktestParams()) for i in range(n_combos)], parallel=False,
                save_positions=True)
    from kernels.portfolio import portfolio_equal, portfolio_signal

    portfolio_equal(x, np.where(np.isnan(x), np.nan, 1.0), fee_bps=1.0)
    portfolio_signal(x, np.where(np.isnan(x), np.nan, 0.5), fee_bps=1.0)
    return time.perf_counter() - t0


def _process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def cpu_seconds(client: Any) -> float:
    """CPU time (user + system) so far of every worker process of `client` and of this process
    (which holds a local cluster's scheduler): the numerator of the CPU utilisation."""
    return sum(client.run(_process_cpu_seconds).values()) + _process_cpu_seconds()


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ATCUserError(f"{name} wants comma-separated numbers, got {text!r}") from None


def bench_sweep(
    symbols: Annotated[int, typer.Option("--symbols", help="Symbols of the synthetic store.")] = 500,
    bars: Annotated[int, typer.Option("--bars", help="Bars per symbol.")] = 2000,
    la: Annotated[str, typer.Option("--la", help="La values of the grid.")] = "0.01,0.02,0.03,0.04,0.05",
    de: Annotated[str, typer.Option("--de", help="De values of the grid.")] = "0.01,0.02,0.03,0.04,0.05",
    repeat: Annotated[int, typer.Option("--repeat", help="Timed runs of each kind (best is reported).")] = 1,
    combos_per_task: Annotated[Optional[int], typer.Option(
        "--combos-per-task", help="Combinations per sweep task (default: as atc sweep).")] = None,
    workers: Annotated[Optional[int], _WORKERS] = None,
    kernel: Annotated[bool, typer.Option("--kernel/--no-kernel", help="Also time the kernels alone, in this "
                                         "process (no store, no cluster).")] = True,
    dir_: Annotated[Optional[Path], typer.Option("--dir", help="Keep the stores here (default: a temporary dir).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """The reuse benchmark: an La x De grid (default 5 x 5) with `atc sweep` against a single
    `atc run` (and `atc run --backtest`) on the same synthetic store and local cluster, end to end;
    then the same comparison for the kernels alone. Target: the sweep costs <= 4 x a single run.
    In the same run: the sweep with `--portfolio equal` and `--portfolio signal` against the sweep
    without, and each sweep's CPU utilisation (CPU time of the workers and this process / (wall x
    cores)), the measure of how evenly its tasks fill the cores."""
    import numpy as np

    from kernels.backtest import BacktestParams
    from kernels.sweep import make_grid
    from pipeline.cluster import connect
    from pipeline.run import run_atc
    from pipeline.store import write_prices
    from pipeline.sweep import run_sweep, task_balance
    from pipeline.synth import synth_prices

    grid_spec = {"La": _floats(la, "--la"), "De": _floats(de, "--de")}
    grid = make_grid(grid_spec)
    base = Path(tempfile.mkdtemp(prefix="atc-bench-sweep-")) if dir_ is None else dir_
    base.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"symbols": symbols, "bars": bars, "grid": grid_spec, "combinations": grid.size,
                           "cores": os.cpu_count(), "load_start": os.getloadavg()}
    best = lambda f: min(f() for _ in range(max(1, repeat)))  # noqa: E731
    try:
        prices = base / f"prices-{symbols}x{bars}.zarr"
        if not prices.exists():
            write_prices(synth_prices(symbols, bars, seed=0), prices, source=f"bench {symbols}x{bars}")
        typer.echo(f"atc bench sweep: {symbols} x {bars} synthetic store in {base}; grid "
                   + " x ".join(f"{k} {v}" for k, v in grid_spec.items()) + f" = {grid.size} combinations")
        with connect(None, workers=workers, dashboard_address=None) as cl:
            warm = cl.client.run(warm_kernels)
            # first run and sweep of a worker pay one-time costs (imports, codecs): not timed
            run_atc(prices, base / "warm.zarr", client=cl.client, overwrite=True, progress=False)
            run_sweep(prices, base / "warm-sweep.zarr", make_grid({"La": grid_spec["La"][:1]}), client=cl.client,
                      overwrite=True, progress=False)
            typer.echo(f"  {cl.describe()}; kernels warm on every worker ({max(warm.values()):.1f} s), one "
                       f"untimed run and sweep")

            util: dict[str, float] = {}
            cpu: dict[str, float] = {}

            def timed(fn, name=None):
                def go():
                    c0, t0 = cpu_seconds(cl.client), time.perf_counter()
                    fn()
                    wall = time.perf_counter() - t0
                    if name is not None:
                        used = cpu_seconds(cl.client) - c0
                        cpu[name] = min(cpu.get(name, used), used)
                        util[name] = max(util.get(name, 0.0), used / (wall * (os.cpu_count() or 1)))
                    return wall
                return go

            single = best(timed(lambda: run_atc(prices, base / "run.zarr", client=cl.client, overwrite=True,
                                                progress=False)))
            single_bt = best(timed(lambda: run_atc(prices, base / "run_bt.zarr", client=cl.client, overwrite=True,
                                                   progress=False, backtest=BacktestParams())))
            cpt = {"combos_per_task": combos_per_task}
            recs: list = []

            def keep(rec):
                if rec.get("phase", "sweep") == "sweep":
                    recs.append(rec)

            swept = best(timed(lambda: (recs.clear(), run_sweep(prices, base / "sweep.zarr", grid, client=cl.client,
                                                                overwrite=True, progress=False, on_record=keep,
                                                                **cpt)), "sweep"))
            balance = task_balance(recs)
            folded = best(timed(lambda: run_sweep(prices, base / "sweep-folds.zarr", grid, client=cl.client,
                                                  overwrite=True, progress=False, folds=10, **cpt)))
            with_pf = {kind: best(timed(lambda kind=kind: run_sweep(
                prices, base / f"sweep-{kind}.zarr", grid, client=cl.client, overwrite=True, progress=False,
                portfolio=kind, **cpt), f"sweep --portfolio {kind}")) for kind in ("equal", "signal")}
        e2e = {"run_s": single, "run_backtest_s": single_bt, "sweep_s": swept, "sweep_over_run": swept / single,
               "sweep_over_run_backtest": swept / single_bt, "sweep_folds10_s": folded,
               "folds10_over_sweep": folded / swept,
               **{f"sweep_portfolio_{k}_s": v for k, v in with_pf.items()},
               **{f"portfolio_{k}_over_sweep": v / swept for k, v in with_pf.items()}}
        out["end_to_end"] = e2e
        out["cpu_utilisation"] = util
        out["cpu_s"] = cpu
        out["task_balance"] = balance
        typer.echo(f"  end to end: atc run {single:.2f} s, atc run --backtest {single_bt:.2f} s, atc sweep "
                   f"{swept:.2f} s = {swept / single:.2f} x atc run ({swept / single_bt:.2f} x run --backtest; "
                   f"{grid.size} separate runs would be {grid.size} x)")
        typer.echo(f"  atc sweep --folds 10 (per-block statistics, CSCV, deflated Sharpe): {folded:.2f} s = "
                   f"{folded / swept:.2f} x the sweep without (target <= 1.3 x)")
        typer.echo("  atc sweep --portfolio (a portfolio per combination): " + ", ".join(
            f"{k} {v:.2f} s = {v / swept:.2f} x" for k, v in with_pf.items()) + " the sweep without; in CPU time "
            "(steadier under load): " + ", ".join(f"{k} {cpu[f'sweep --portfolio {k}'] / cpu['sweep']:.2f} x"
                                                  for k in with_pf))
        typer.echo("  CPU utilisation (CPU time of the workers and this process / (wall x "
                   f"{os.cpu_count()} cores)): " + ", ".join(f"{k} {v:.0%}" for k, v in util.items())
                   + f"; task balance of the sweep's tasks (from their CPU times, whatever the load): {balance:.0%}")
        if kernel:
            from kernels import compute_atc
            from kernels.backtest import run_backtest
            from kernels.sweep import sweep_panel
            from pipeline.store import open_prices

            ds = open_prices(prices)
            close = np.asarray(ds["close"].values, dtype=np.float64)
            ds.close()
            warm_kernels()
            compute_atc(close[:40])  # the parallel variants
            combos = grid.all_params()
            sweep_panel(close[:40], combos[:2])

            def one():
                t0 = time.perf_counter()
                res = compute_atc(close, on_bad="status")
                run_backtest(close, res["Average_Signal"], periods_per_year=252, ok=res.status == 0)
                return time.perf_counter() - t0

            def many():
                t0 = time.perf_counter()
                sweep_panel(close, combos, periods_per_year=252)
                return time.perf_counter() - t0

            k1, kn = best(one), best(many)
            out["kernel"] = {"single_s": k1, "sweep_s": kn, "sweep_over_single": kn / k1}
            typer.echo(f"  kernels alone (all cores): compute_atc + backtest {k1:.3f} s, sweep_panel {kn:.3f} s "
                       f"= {kn / k1:.2f} x")
        out["load_end"] = os.getloadavg()
        typer.echo(f"  load average {out['load_start'][0]:.2f} at start, {out['load_end'][0]:.2f} at end "
                   f"({os.cpu_count()} cores)")
        if json_out is not None:
            json_out.write_text(json.dumps(out, indent=2))
    finally:
        if dir_ is None:
            shutil.rmtree(base, ignore_errors=True)
