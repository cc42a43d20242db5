"""`atc bench pipeline`: the end-to-end run against the kernel alone, and the client's memory.

On one synthetic price store (default 2000 x 5000) in the same process and run:

* end to end: ``run_atc`` on a local cluster (already started, kernels compiled on the workers by
  a warm-up; both reported separately) from the price store to a complete results store;
* kernel alone: ``compute_atc`` on the same close panel already in memory (parallel kernel on
  every core), i.e. no reading, no writing, no scheduling;
* client memory: the peak of Python-level allocations (``tracemalloc``, numpy buffers included)
  in the client process during a run, for a small and the full universe. The client only plans
  and collects small records, so the two should be about equal.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def warm_kernel(parallel: bool) -> float:
    """Compile the kernel variant tasks will use (run on every worker with ``client.run``)."""
    from kernels import compute_atc
    from kernels.synthetic import random_walk_panel

    t0 = time.perf_counter()
    compute_atc(random_walk_panel(40, 200, seed=1), parallel=parallel)
    return time.perf_counter() - t0


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def bench_pipeline(
    symbols: Annotated[int, typer.Option("--symbols", help="Symbols of the main store.")] = 2000,
    bars: Annotated[int, typer.Option("--bars", help="Bars per symbol.")] = 5000,
    small: Annotated[int, typer.Option("--small", help="Symbols of the second store (client memory).")] = 500,
    repeat: Annotated[int, typer.Option("--repeat", help="Timed runs of each kind (best is reported).")] = 1,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Local worker processes (default: cores).")] = None,
    threads_per_worker: Annotated[Optional[int], typer.Option("--threads-per-worker", help="Threads per worker.")] = None,
    dir_: Annotated[Optional[Path], typer.Option("--dir", help="Keep the stores here (default: a temporary dir).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Time `atc run` end to end against the kernel alone on a synthetic store, and show the
    client's peak memory for two universe sizes."""
    import numpy as np

    from kernels import compute_atc
    from pipeline.cluster import connect, kernel_parallel
    from pipeline.run import run_atc
    from pipeline.store import open_prices, write_prices
    from pipeline.synth import synth_prices

    load_start = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="atc-bench-")) if dir_ is None else dir_
    base.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"symbols": symbols, "bars": bars, "small": small, "cores": os.cpu_count()}
    try:
        stores = {}
        for n in sorted({small, symbols}):
            p = base / f"prices-{n}x{bars}.zarr"
            if not p.exists():
                write_prices(synth_prices(n, bars, seed=0), p, source=f"bench {n}x{bars}")
            stores[n] = p
        typer.echo(f"atc bench pipeline: stores in {base} ({', '.join(f'{n} x {bars}' for n in stores)})")

        t0 = time.perf_counter()
        with connect(None, workers=workers, threads_per_worker=threads_per_worker, dashboard_address=None) as cl:
            parallel = kernel_parallel(cl.workers())
            cl.client.run(warm_kernel, parallel)
            t_start = time.perf_counter() - t0
            typer.echo(f"  {cl.describe()}, {'parallel' if parallel else 'serial'} kernels; "
                       f"start + compile on workers {t_start:.1f} s")
            out.update(cluster=cl.describe(), kernel_parallel=parallel, cluster_start_s=t_start)

            def one_run(n: int, traced: bool) -> tuple[float, int, Any]:
                if traced:
                    tracemalloc.start()
                t = time.perf_counter()
                s = run_atc(stores[n], base / f"results-{n}x{bars}.zarr", client=cl.client, overwrite=True,
                            progress=False)
                dt = time.perf_counter() - t
                peak = 0
                if traced:
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                return dt, peak, s

            mem = {}
            for n in stores:
                _, peak, _ = one_run(n, traced=True)
                mem[n] = peak
            e2e = float("inf")
            summary = None
            for _ in range(max(1, repeat)):
                dt, _, summary = one_run(symbols, traced=False)
                e2e = min(e2e, dt)
        ts = summary.task_seconds()

        close = np.asarray(open_prices(stores[symbols])["close"].values)
        warm_kernel(True)
        kern = float("inf")
        for _ in range(max(1, repeat)):
            t = time.perf_counter()
            compute_atc(close, parallel=True)
            kern = min(kern, time.perf_counter() - t)
        load_end = os.getloadavg()

        sb = symbols * bars
        typer.echo(f"  end to end (atc run, {summary.n_chunks} tasks of {summary.chunk_symbols} symbols): {e2e:8.2f} s "
                   f"{sb / e2e / 1e6:7.2f} M symbol-bars/s")
        typer.echo(f"  kernel alone (compute_atc, parallel, in memory):  {kern:8.2f} s {sb / kern / 1e6:7.2f} M symbol-bars/s")
        typer.echo(f"  end to end / kernel alone: {e2e / kern:.2f} x")
        typer.echo(f"  inside the tasks (seconds summed over workers): read {ts['read_s']:.2f}, kernel "
                   f"{ts['compute_s']:.2f}, write {ts['write_s']:.2f}")
        for n, peak in mem.items():
            typer.echo(f"  client peak memory during the run, {n:5d} x {bars}: {_mib(peak)} (tracemalloc)")
        typer.echo(f"  load average (1 min) {load_start[0]:.2f} at start, {load_end[0]:.2f} at end, "
                   f"{os.cpu_count()} cores")
        out.update(e2e_s=e2e, kernel_s=kern, ratio=e2e / kern, task_seconds=ts,
                   client_peak_bytes={str(n): p for n, p in mem.items()},
                   loadavg_start=load_start, loadavg_end=load_end, n_chunks=summary.n_chunks,
                   chunk_symbols=summary.chunk_symbols)
        if json_out is not None:
            json_out.write_text(json.dumps(out, indent=2))
    finally:
        if dir_ is None:
            shutil.rmtree(base, ignore_errors=True)
