"""`atc run` (price store -> results store on a Dask cluster) and `atc demo` (the whole thing on a
synthetic universe, on a local cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kernels.errors import ATCUserError

# --------------------------------------------------------------------------------------------
# Parameters from --config FILE.yaml and --set key=value
# --------------------------------------------------------------------------------------------


def load_params(config: Path | None = None, sets: list[str] | None = None, *, backtest: bool = False):
    """ATCParams from a YAML mapping of parameters (ATC_SPEC.md section 1 names, e.g.
    ``ema_len: 30``) overridden by ``key=value`` strings; unknown keys are refused by name.

    With ``backtest``, the backtest settings (``fee_bps``, ``long_only``, ``periods_per_year``) are
    accepted too and the result is ``(ATCParams, BacktestParams)``."""
    from flows.yaml_file import load_yaml_file

    from kernels.params import ATCParams

    values: dict[str, Any] = {}
    if config is not None:
        loaded = load_yaml_file(config, "config")
        if not isinstance(loaded, dict):
            raise ATCUserError(f"{config}: expected a mapping of ATC parameters (e.g. 'ema_len: 30'), "
                               f"got {type(loaded).__name__}")
        values.update({str(k): v for k, v in loaded.items()})
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ATCUserError(f"--set wants key=value (e.g. --set ema_len=30), got {item!r}")
        values[key.strip()] = value.strip()
    try:
        from kernels.backtest import BACKTEST_FIELDS, split_params

        values = canonical_names(values, backtest=backtest)

        if backtest:
            return split_params(values)
        extra = sorted(set(values) & set(BACKTEST_FIELDS))
        if extra:
            raise ATCUserError(f"{', '.join(extra)}: backtest setting(s); add --backtest to use them")
        return ATCParams.from_mapping(values)
    except ATCUserError as exc:
        where = f"{config}: " if config is not None else ""
        raise type(exc)(f"{where}{exc}") from None


#: Other names users know parameters by -> ours. ``hull_len`` is the pandas API's name (and the
#: original indicator's) for the HMA family's length (kernels/pandas_api.py).
ALIASES = {"hull_len": "hma_len"}


def canonical_names(values: dict[str, Any], *, backtest: bool = False, known: Any = None,
                    unknown: str = "unknown ATC parameter(s): {key}") -> dict[str, Any]:
    """``values`` with aliases renamed; an unknown name is refused with the closest valid one
    (a typo like ``ema_length`` should cost one glance, not a read of the whole list)."""
    import difflib

    from kernels.backtest import BACKTEST_FIELDS
    from kernels.params import ATCParams

    if known is None:
        known = [f for f in ATCParams.__dataclass_fields__] + list(BACKTEST_FIELDS)
    known = list(known)
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name in out:
            raise ATCUserError(f"{given[name]} and {key} name the same parameter ({name}); give it once")
        given[name] = key
        if name not in known:
            close = difflib.get_close_matches(name, known + list(ALIASES), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(sorted(known))}"
            raise ATCUserError(unknown.format(key=key) + hint)
        out[name] = value
    return out


# --------------------------------------------------------------------------------------------
# atc run
# --------------------------------------------------------------------------------------------

_WORKERS = typer.Option("--workers", help="Worker processes of the local cluster (default: one per core). Beside "
                        "local GPU workers (--backend auto): the CPU workers (default: one per remaining core).")
_THREADS = typer.Option(
    "--threads-per-worker",
    help="Threads per local worker (default 1). With more than one, every task runs the serial kernel.",
)
_SCHEDULER = typer.Option(
    "--scheduler",
    help="Join the Dask cluster at tcp://HOST:PORT instead of starting a local one (default: "
    "$DASK_SCHEDULER_ADDRESS if set). Its workers must see both stores at the same paths.",
)


_PLACE = typer.Option(
    "--in-process/--cluster",
    help="Run on threads of this process, or on a Dask cluster (default: in-process for a job of at most 10 "
    "million symbol-bars, or one with nothing left to compute, unless --scheduler, $DASK_SCHEDULER_ADDRESS, "
    "--threads-per-worker, --report or local GPUs ask for a cluster).", show_default=False)

_VERBOSE = typer.Option("--verbose", help="Print each failed task's traceback under its line (it always goes to "
                        "RESULTS.errors.log beside the store).")


def run(
    prices: Annotated[Path, typer.Argument(help="Price store (from atc synth / atc ingest).", show_default=False)],
    results: Annotated[Path, typer.Argument(help="Results store to create or resume.", show_default=False)],
    config: Annotated[
        Optional[Path], typer.Option("--config", help="YAML file of ATC parameters (e.g. 'ema_len: 30').")
    ] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override one parameter, key=value (repeatable), e.g. --set robustness=Wide."),
    ] = None,
    chunk_symbols: Annotated[
        Optional[int],
        typer.Option("--chunk-symbols", help="Symbols per task, a multiple or divisor of the price store's chunk "
                     "(default: its chunk, split so that every worker thread gets two tasks or more)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a results store computed from other parameters or prices.")
    ] = False,
    report: Annotated[
        Optional[Path], typer.Option("--report", help="Write Dask's performance report (HTML) to this file.")
    ] = None,
    scheduler: Annotated[Optional[str], _SCHEDULER] = None,
    workers: Annotated[Optional[int], _WORKERS] = None,
    threads_per_worker: Annotated[Optional[int], _THREADS] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float64, or float32 (approximate, half the size).")] = "float64",
    backend: Annotated[str, typer.Option(
        "--backend", help="auto: GPU tasks on GPU workers (local GPUs via dask-cuda, or workers started with "
        "--resources GPU=1), CPU tasks on the others, all CPU if there are none; cpu; cuda: GPU workers only.")
    ] = "auto",
    gpu_chunk_symbols: Annotated[
        Optional[int],
        typer.Option("--gpu-chunk-symbols", help="Symbols per GPU task, a multiple of the results store's chunk "
                     "(default: about 16 million symbol-bars).", show_default=False),
    ] = None,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal).")
    ] = None,
    backtest: Annotated[
        bool, typer.Option("--backtest", help="Also backtest Average_Signal: position, strategy_return, equity and "
                           "per-symbol metrics (settings fee_bps, long_only via --set or --config).")
    ] = False,
    outputs: Annotated[
        str, typer.Option("--outputs", help="Outputs to store: all (the 13), signals (the six Layer-1 family signals "
                          "and Average_Signal: what atc scan reads) or average (Average_Signal only). Bytes per "
                          "symbol-bar of each: docs/PIPELINE.md.")
    ] = "all",
    periods_per_year: Annotated[
        Optional[float], typer.Option("--periods-per-year", help="Bars per year for annualised backtest metrics "
                                      "(default: inferred from the time axis).")
    ] = None,
    verbose: Annotated[bool, _VERBOSE] = False,
    portfolio: Annotated[
        Optional[str], typer.Option("--portfolio", help="With --backtest, also backtest a portfolio of every symbol "
                                    "after the chunks: equal (equal-weight sleeves of the per-symbol strategies) or "
                                    "signal (weights proportional to Average_Signal). Default: none.",
                                    show_default=False)
    ] = None,
    rebalance: Annotated[
        Optional[int], typer.Option("--rebalance", help="Rebalance the portfolio every N times of the time axis "
                                    "(default 1).", show_default=False)
    ] = None,
    in_process: Annotated[Optional[bool], _PLACE] = None,
) -> None:
    """Compute ATC for every symbol of PRICES into the results store RESULTS on a Dask cluster.

    One task per symbol chunk; each reads its slice of the price store, runs the kernel and writes
    its own region of RESULTS. Rerunning the same command resumes an interrupted run."""
    from pipeline.portfolio_store import portfolio_settings
    from pipeline.run import RunError, preflight, run_atc

    bt = None
    pf = portfolio_settings(portfolio, rebalance)
    if pf is not None and not backtest:
        raise ATCUserError("--portfolio applies to backtests: add --backtest")
    if backtest:
        params, bt = load_params(config, set_, backtest=True)
        if periods_per_year is not None:
            bt = bt.replace(periods_per_year=periods_per_year)
    else:
        if periods_per_year is not None:
            raise ATCUserError("--periods-per-year applies to backtests: add --backtest")
        params = load_params(config, set_)
    # refusals (missing prices, other parameters, a store in use, bad options) before a cluster starts
    n_sym, n_time, complete = preflight(prices, results, params, chunk_symbols=chunk_symbols, overwrite=overwrite,
                                        dtype=dtype, backend=backend, backtest=bt, outputs=outputs)
    if gpu_chunk_symbols is not None and gpu_chunk_symbols < 1:
        raise ATCUserError(f"--gpu-chunk-symbols must be >= 1, got {gpu_chunk_symbols}")
    local = choose_in_process(n_sym * n_time, complete, in_process, scheduler, workers=workers,
                              threads_per_worker=threads_per_worker, report=report, backend=backend)
    kw = dict(chunk_symbols=chunk_symbols, overwrite=overwrite, dtype=dtype, backend=backend, progress=progress,
              backtest=bt, gpu_chunk_symbols=gpu_chunk_symbols, on_notice=lambda m: typer.echo(f"notice: {m}"),
              verbose=verbose, portfolio=pf, outputs=outputs)
    try:
        if local:
            if not complete:
                _announce_in_process(workers, n_sym * n_time)
            _freeze_imports()
            summary = run_atc(prices, results, params, threads=workers, **kw)
        else:
            from pipeline.cluster import connect

            _warm_before_cluster(scheduler, workers, threads_per_worker, backend, params, dtype, bt, n_time)
            with connect(scheduler, workers=workers, threads_per_worker=threads_per_worker, backend=backend) as cl:
                _announce(cl)
                _freeze_imports()
                summary = run_atc(prices, results, params, client=cl.client, report=report, **kw)
    except KeyboardInterrupt:
        from flows.cli import Interrupted

        raise Interrupted(interrupted_line(results, overwrite)) from None
    except RunError as exc:
        if exc.prices_changed:
            raise RunError(f"{exc}: {overwrite_command()}", prices_changed=True, log=exc.log) from None
        raise
    typer.echo(summary.describe())
    if report is not None:
        typer.echo(f"  performance report: {report}")
    if bt is not None:
        from flows.show_cmd import backtest_summary
        from pipeline.portfolio_store import portfolio_summary

        typer.echo("")
        typer.echo(backtest_summary(results))
        pf_lines = portfolio_summary(results)
        if pf_lines:
            typer.echo("")
            typer.echo(pf_lines)


def _freeze_imports() -> None:
    """Move every object alive now (the imported modules of numpy, numba, zarr, xarray, ...: some
    hundred thousand) out of the cyclic collector's reach before the run: the full collections
    during a run walked them all each time. Measured on a fresh `atc run` of 2,000 x 5,000
    (in-process, 2026-11-29): the oldest generation's collections took 0.24 CPU s, 0.10 with this
    (the two left happen during the imports). The process ends with the command, so nothing frozen
    outlives it."""
    import gc

    gc.freeze()


def interrupted_line(store: Path, overwrite: bool, *, what: str = "chunks") -> str:
    """What an interrupted run or sweep leaves behind, in one line: finished chunks (tasks) stay
    marked done in the store, so the same command resumes; with --overwrite it would start over."""
    from pipeline import results as rs
    from pipeline.sweep import is_sweep_store, read_sweep_state

    again = "rerun the same command without --overwrite to resume" if overwrite else \
        "rerun the same command to resume"
    try:
        if is_sweep_store(Path(store)):
            done = read_sweep_state(Path(store)).task_done
        elif rs.is_results_store(Path(store)):
            done = rs.read_state(store).chunk_done
        else:
            return f"interrupted before {store} was created: nothing saved; rerun the same command to start"
    except ATCUserError:
        return f"interrupted: {store} cannot be read back; rerun the same command with --overwrite"
    return f"interrupted: {int(done.sum())} of {done.size} {what} are complete in {store}; {again}"


def overwrite_command() -> str:
    """The command being run, with --overwrite: what recomputes a store whose prices changed
    (a plain rerun is refused, the fingerprints differ)."""
    import shlex

    from flows.cli import invoked_command

    args = invoked_command()
    if "--overwrite" not in args:
        args.append("--overwrite")
    return shlex.join(["atc", *args])


def choose_in_process(size: int, complete: bool, forced: bool | None, scheduler: str | None, *,
                      workers: int | None = None, threads_per_worker: int | None = None, report: Any = None,
                      backend: str = "cpu") -> bool:
    """Whether a run or sweep of ``size`` symbol-bars runs on threads of this process (see
    pipeline/executor.py): a cluster costs seconds to start, worth it only for work that needs it.
    ``--in-process``/``--cluster`` decide if given (conflicting options are refused); otherwise a
    store with nothing left to compute, or a small job on a machine without GPUs, runs in-process,
    and an explicit scheduler, Dask-only options (``--threads-per-worker``, ``--report``) or a GPU
    backend mean a cluster."""
    from pipeline.executor import use_in_process

    if forced:
        clash = [name for name, v in (("--scheduler", scheduler), ("--threads-per-worker", threads_per_worker),
                                      ("--report", report)) if v is not None]
        if backend == "cuda":
            clash.append("--backend cuda")
        if clash:
            raise ATCUserError(f"--in-process runs on threads of this process; {', '.join(clash)} need(s) a Dask "
                               "cluster: drop --in-process")
        if workers is not None and workers < 1:
            raise ATCUserError(f"--workers must be >= 1, got {workers}")
        return True
    if forced is False:
        return False
    if complete:
        return True  # nothing to compute: the fingerprints are checked, no cluster is worth starting
    if threads_per_worker is not None or report is not None or backend == "cuda":
        return False
    if scheduler is None:
        from pipeline.cluster import scheduler_address

        scheduler = scheduler_address(None)
    if not use_in_process(size, forced=None, scheduler=scheduler):
        return False
    if backend == "auto":
        from pipeline.cluster import local_gpu_count

        if local_gpu_count():
            return False
    if workers is not None and workers < 1:
        raise ATCUserError(f"--workers must be >= 1, got {workers}")
    return True


def _announce_in_process(threads: int | None, size: int) -> None:
    from pipeline.executor import default_threads

    n = threads or default_threads()
    typer.echo(f"in-process: {n} thread{'s' if n != 1 else ''}, serial kernel ({size:,} symbol-bars; no cluster "
               "started, --cluster for one)")


def _warm_before_cluster(scheduler: str | None, workers: int | None, threads_per_worker: int | None, backend: str,
                         params: Any, dtype: str, backtest: Any, n_time: int) -> None:
    """Compile the kernels here, once, before a local cluster's worker processes start and would
    each compile them at the same time (pipeline.executor.warm_up). Only where that happens: a local
    cluster of several single-threaded CPU workers; a joined cluster's workers have their own caches."""
    from pipeline.cluster import default_local_shape, local_gpu_count, scheduler_address

    if scheduler_address(scheduler) is not None or backend == "cuda":
        return
    n = workers if workers is not None else default_local_shape()[0]
    if n < 2 or (backend == "auto" and local_gpu_count()):
        return
    from pipeline.executor import warm_up

    warm_up(params, dtype=dtype, backtest=backtest, n_time=min(int(n_time), 2000))


def _announce(cl) -> None:
    from pipeline.cluster import kernel_parallel

    kernel = "parallel kernel per worker" if kernel_parallel(cl.workers()) else "serial kernel per worker thread"
    typer.echo(f"{cl.describe()} ({kernel})")
    if cl.notice:
        typer.echo(f"notice: {cl.notice}")
    if cl.dashboard_link:
        typer.echo(f"dashboard: {cl.dashboard_link}")


# --------------------------------------------------------------------------------------------
# atc demo
# --------------------------------------------------------------------------------------------

DEMO_SEED = 7
DEMO_CHUNK = 25


def demo(
    dir_: Annotated[Path, typer.Option("--dir", help="Where to put the demo stores.")] = Path("data/demo"),
    symbols: Annotated[int, typer.Option("--symbols", help="Symbols in the synthetic universe.")] = 300,
    bars: Annotated[int, typer.Option("--bars", help="Daily bars per symbol.")] = 2500,
    top: Annotated[int, typer.Option("--top", help="Rows in each table of strongest signals.")] = 5,
    workers: Annotated[Optional[int], _WORKERS] = None,
    threads_per_worker: Annotated[Optional[int], _THREADS] = None,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal).")
    ] = None,
    in_process: Annotated[Optional[bool], _PLACE] = None,
) -> None:
    """The whole pipeline in one command: a synthetic universe, the ATC run (in-process, or on a
    local Dask cluster for a large universe), the strongest long and short signals on the last bar,
    and how to read the results."""
    import time

    from pipeline.run import run_atc

    t0 = time.perf_counter()
    prices = dir_ / "prices.zarr"
    results = dir_ / "results.zarr"
    made = _demo_prices(prices, symbols, bars)
    typer.echo(f"prices:  {prices}  ({symbols} symbols x {bars} daily bars, synthetic, {made})")
    if choose_in_process(symbols * bars, False, in_process, None, workers=workers,
                         threads_per_worker=threads_per_worker, backend="cpu"):
        _announce_in_process(workers, symbols * bars)
        summary = run_atc(prices, results, threads=workers, progress=progress, overwrite=made == "created")
    else:
        from pipeline.cluster import connect

        _warm_before_cluster(None, workers, threads_per_worker, "cpu", None, "float64", None, bars)
        with connect(None, workers=workers, threads_per_worker=threads_per_worker) as cl:
            _announce(cl)
            summary = run_atc(prices, results, client=cl.client, progress=progress, overwrite=made == "created")
    typer.echo(f"results: {results}  ({summary.n_chunks} chunks, {summary.computed} computed now, "
               f"{summary.seconds:.1f} s)")
    typer.echo("  status: " + ", ".join(f"{n} {name}" for name, n in summary.status_counts.items() if n))
    typer.echo("")
    typer.echo(_signal_table(prices, results, top))
    typer.echo("")
    typer.echo("Open the results in Python:")
    typer.echo("    import xarray as xr")
    typer.echo(f"    res = xr.open_zarr({str(results)!r})")
    typer.echo("    res['Average_Signal'].sel(symbol='SYN0000').to_series().tail()")
    typer.echo("    res['status'].to_series().value_counts()")
    typer.echo("Run it on your own data: atc ingest CSV_DIR prices.zarr && atc run prices.zarr results.zarr")
    typer.echo(f"(demo done in {time.perf_counter() - t0:.1f} s)")


def _demo_prices(path: Path, symbols: int, bars: int) -> str:
    """Create the demo price store, or reuse it when it holds the same synthetic universe."""
    from pipeline.store import open_prices, write_prices
    from pipeline.synth import synth_prices

    if symbols < 1 or bars < 1:
        raise ATCUserError(f"--symbols and --bars must be >= 1, got {symbols} and {bars}")
    ds = None
    if path.exists():
        try:
            old = open_prices(path)
        except ATCUserError:
            old = None
        if old is not None:
            want = f"synth(n_symbols={symbols}, n_bars={bars}, seed={DEMO_SEED}, freq='B', ohlcv=False)"
            same = old.attrs.get("source") == want
            old.close()
            if same:
                return "reused"
    ds = synth_prices(symbols, bars, DEMO_SEED, "B", start="2010-01-04")
    write_prices(ds, path, chunk_symbols=min(DEMO_CHUNK, symbols), overwrite=path.exists(), source=ds.attrs["source"])
    return "created"


def _signal_table(prices: Path, results: Path, top: int) -> str:
    """The newest signals as `atc scan` prints them (one implementation: pipeline/scan.py)."""
    from flows.update_cmd import format_tables
    from pipeline.scan import newest_signals, rank

    df = newest_signals(results, prices)
    long, short = rank(df, top)
    return (f"Strongest signals at each symbol's last bar (what `atc scan {results}` prints):\n"
            + format_tables(long, short, "table", n_symbols=len(df)))
