"""`atc bench stream`: the cost of keeping a universe up to date bar by bar.

Times, in one process and one run (so the ratios survive this shared machine's swings):
the batch kernel on a history, the same batch with the stream state captured (the by-product the
daily update continues from), and advancing every symbol by one new bar, repeated.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer


def bench_stream(
    symbols: Annotated[int, typer.Option("--symbols", help="Symbols in the universe.")] = 10_000,
    bars: Annotated[int, typer.Option("--bars", help="Bars of history the state is built from.")] = 1_000,
    updates: Annotated[int, typer.Option("--updates", help="New bars to advance by, one at a time.")] = 50,
    dtype: Annotated[str, typer.Option("--dtype", help="float64 or float32.")] = "float64",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
    store: Annotated[Optional[str], typer.Option(
        "--store", help="Also time the daily routine end to end as fresh processes on a synthetic store of "
        "SYMBOLSxBARS (e.g. 2000x5000): atc run, atc ingest --append of one bar per symbol (a CSV file each), "
        "atc update, atc scan.")] = None,
    scan_only: Annotated[Optional[str], typer.Option(
        "--scan-store", help="Also time atc scan alone on a results store of SYMBOLSxBARS (e.g. 20000x5000; "
        "computed once with --outputs signals, kept in --dir).")] = None,
    dir_: Annotated[Optional[Path], typer.Option("--dir", help="Where the stores go (default: a temporary dir).")] = None,
    backtest: Annotated[bool, typer.Option("--backtest", help="With --store: the daily routine on a backtested "
                                           "store too (atc run --backtest; the update then also extends the "
                                           "backtest and its trades).")] = False,
    advance: Annotated[bool, typer.Option("--advance/--no-advance", help="Time the in-process batch and stream "
                                          "advance (--no-advance: only --store / --scan-store).")] = True,
    repeat: Annotated[int, typer.Option("--repeat", help="With --store: append, update and scan this many times "
                                        "on fresh copies of the stores, best of them (wall and CPU).")] = 1,
) -> None:
    """Build a stream state from a synthetic history, then advance every symbol one bar at a time."""
    ft = np.dtype(dtype)
    out = {"symbols": symbols, "bars": bars, "updates": updates, "dtype": ft.name}
    if advance:
        out.update(_advance(symbols, bars, updates, ft))
    if store or scan_only:
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="atc-bench-stream-")) if dir_ is None else dir_
        base.mkdir(parents=True, exist_ok=True)
        if store:
            out["daily"] = _daily(base, *_size(store), repeat=repeat)
            if backtest:
                out["daily_backtest"] = _daily(base, *_size(store), backtest=True, repeat=repeat)
        if scan_only:
            out["scan_only"] = _scan_only(base, *_size(scan_only))
    out["load_end"] = os.getloadavg()
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=2))


def _advance(symbols: int, bars: int, updates: int, ft: np.dtype) -> dict:
    """The batch kernel, the batch with the state captured, and one-bar advances, in this process."""
    from kernels import compute_atc
    from kernels.stream import build_stream
    from kernels.synthetic import random_walk_panel

    panel = random_walk_panel(symbols, bars + updates, seed=0)
    hist, new = panel[:, :bars], panel[:, bars:]
    warm = random_walk_panel(64, 200, seed=1)  # several blocks: the parallel batch path compiles too
    warm[0, :150] = np.nan  # a short history: the stream kernel compiles too
    build_stream(warm, dtype=ft)
    compute_atc(warm, dtype=ft)
    typer.echo(f"atc bench stream: {symbols:,} symbols, {bars:,} bars of history, {updates} updates, {ft.name}")

    t0 = time.perf_counter()
    compute_atc(hist, dtype=ft)
    batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, state = build_stream(hist, dtype=ft)
    build = time.perf_counter() - t0
    typer.echo(f"  batch kernel on the history        {batch:8.3f} s")
    typer.echo(f"  batch + stream state captured      {build:8.3f} s  ({build / batch:.2f} x the batch)")

    times = []
    for j in range(updates):
        t0 = time.perf_counter()
        state.advance(new[:, j])
        times.append(time.perf_counter() - t0)
    per = float(np.median(times))
    best = float(np.min(times))
    typer.echo(f"  one update of every symbol         {per * 1e3:8.2f} ms median, {best * 1e3:.2f} ms best "
               f"({symbols / per / 1e6:.2f} M symbol-updates/s)")
    # the batch kernel's own cost of one bar of every symbol, same threads: an update does the same
    # arithmetic per symbol, so this is about the least one can cost on this machine
    typer.echo(f"  the batch's cost of one bar of all  {batch / bars * 1e3:8.2f} ms (update / that: {per / (batch / bars):.2f})")
    return {"batch_s": batch, "build_s": build, "update_median_s": per, "update_best_s": best,
            "batch_per_bar_s": batch / bars}


def _size(text: str) -> tuple[int, int]:
    from flows.bench_cmd import _parse_sizes

    return _parse_sizes(text)[0]


def _wall(args: list[str]) -> float:
    """Seconds of one `atc ...` command as a fresh process (start-up included); raises if it fails."""
    return _timed(args)[0]


def _timed(args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `atc ...` command as a fresh process (start-up included; CPU is
    the child's user + system time, which the machine's load inflates far less than wall)."""
    import resource
    import subprocess
    import sys

    atc = str(Path(sys.executable).with_name("atc"))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([atc, *args], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"atc {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return secs, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _daily(base: Path, n_sym: int, n_bars: int, backtest: bool = False, repeat: int = 1) -> dict:
    """atc run on n_bars - 1 bars, then (``repeat`` times, on fresh copies of both stores) append
    the last bar (`atc ingest DIR --append`, DIR holding one CSV file per symbol, as a data vendor
    delivers them), atc update, atc scan: each a fresh process, start-up included; best wall and
    best CPU of the repeats."""
    import shutil

    from pipeline.store import write_prices
    from pipeline.synth import synth_prices

    ds = synth_prices(n_sym, n_bars, seed=7)
    tag = f"daily{'-backtest' if backtest else ''}-{n_sym}x{n_bars}"
    prices, results = base / f"{tag}.zarr", base / f"{tag}-results.zarr"
    keep_p, keep_r = base / f"{tag}-before.zarr", base / f"{tag}-results-before.zarr"
    write_prices(ds.isel(time=slice(0, n_bars - 1)), prices, overwrite=True)
    typer.echo(f"  daily routine on {n_sym:,} x {n_bars:,}{' with --backtest (trades)' if backtest else ''} "
               f"(fresh processes, start-up included{f'; best of {repeat}' if repeat > 1 else ''}):")
    run_s = _wall(["run", str(prices), str(results), "--overwrite", "--no-progress"] + (["--backtest"] if backtest else []))
    typer.echo(f"    atc run (full)                   {run_s:8.2f} s")
    if repeat > 1:
        for src, dst in ((prices, keep_p), (results, keep_r)):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
    bar_dir = _bar_files(ds.isel(time=slice(n_bars - 1, n_bars)).load(), base / f"{tag}-new-bar")
    got: dict[str, list[tuple[float, float]]] = {"append": [], "update": [], "scan": []}
    for i in range(max(1, repeat)):
        if i:
            for src, dst in ((keep_p, prices), (keep_r, results)):
                shutil.rmtree(dst)
                shutil.copytree(src, dst)
        got["append"].append(_timed(["ingest", str(bar_dir), str(prices), "--append", "--no-progress"]))
        got["update"].append(_timed(["update", str(prices), str(results)]))
        got["scan"].append(_timed(["scan", str(results), "--top", "20"]))
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in got.items()}
    load = os.getloadavg()[0]
    typer.echo(f"    atc ingest --append (one bar)    {best['append'][0]:8.2f} s  (CPU {best['append'][1]:.2f} s)")
    typer.echo(f"    atc update (one new bar)         {best['update'][0]:8.2f} s  (CPU {best['update'][1]:.2f} s; "
               f"{best['update'][0] / run_s:.2f} x the full run)")
    typer.echo(f"    atc scan                         {best['scan'][0]:8.2f} s  (CPU {best['scan'][1]:.2f} s)")
    typer.echo(f"    1-minute load at the end         {load:8.2f}")
    return {"symbols": n_sym, "bars": n_bars, "backtest": backtest, "run_s": run_s, "repeat": repeat,
            "append_s": best["append"][0], "append_cpu_s": best["append"][1],
            "update_s": best["update"][0], "update_cpu_s": best["update"][1],
            "scan_s": best["scan"][0], "scan_cpu_s": best["scan"][1], "load": load}


def _bar_files(bar, dst: Path) -> Path:
    """One CSV file per symbol with a bar in ``bar`` (a one-time price Dataset), named after it:
    Date and the price variables, values written as Python writes floats (shortest round trip)."""
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    t = bar["time"].values[0].astype("datetime64[ns]")
    day = t.astype("datetime64[D]")
    when = str(day) if day == t else str(t.astype("datetime64[s]"))
    variables = [v for v in ("open", "high", "low", "close", "volume") if v in bar.data_vars]
    header = "Date," + ",".join(v.capitalize() for v in variables) + "\n"
    values = {v: bar[v].transpose("symbol", "time").values[:, 0] for v in variables}
    for i, sym in enumerate(bar["symbol"].values):
        if values["close"][i] == values["close"][i]:  # NaN: no bar for this symbol
            row = ",".join("" if values[v][i] != values[v][i] else repr(float(values[v][i])) for v in variables)
            (dst / f"{sym}.csv").write_text(f"{header}{when},{row}\n")
    return dst


def _scan_only(base: Path, n_sym: int, n_bars: int) -> dict:
    results = base / f"scan-{n_sym}x{n_bars}-results.zarr"
    if not results.exists():
        from pipeline.store import write_prices
        from pipeline.synth import synth_prices

        prices = base / f"scan-{n_sym}x{n_bars}.zarr"
        write_prices(synth_prices(n_sym, n_bars, seed=8), prices, overwrite=True)
        typer.echo(f"  computing the {n_sym:,} x {n_bars:,} results store for the scan (not timed) ...")
        _wall(["run", str(prices), str(results), "--outputs", "signals", "--no-progress"])
    got = [_timed(["scan", str(results), "--top", "20"]) for _ in range(3)]
    scan_s, cpu_s = min(w for w, _ in got), min(c for _, c in got)
    typer.echo(f"  atc scan on {n_sym:,} x {n_bars:,} (fresh process, best of 3) {scan_s:8.2f} s  (CPU {cpu_s:.2f} s; "
               f"load {os.getloadavg()[0]:.2f})")
    return {"symbols": n_sym, "bars": n_bars, "scan_s": scan_s, "scan_cpu_s": cpu_s}
