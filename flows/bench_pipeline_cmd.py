"""`atc bench pipeline`: `atc run` as a user runs it against the kernel alone, in one run.

On one synthetic price store (``--size SYMBOLSxBARS``, default 2000x5000; created once with
`atc synth` and kept with ``--dir``), timed in the same run, because absolute figures move 2x
with the load of a shared machine while ratios taken together survive it:

* kernel alone: ``compute_atc`` on the close panel already in memory, parallel over the cores
  the run uses (no reading, writing, scheduling or process start), in blocks of symbols so that
  memory stays bounded at any size; timed before and after the run, the mean is the reference;
* ``atc run`` as a fresh process (the console script, ``--overwrite --no-progress``), wall to wall:
  process start, imports, the cluster start where the run takes a cluster, then the run;
* its run phase: the seconds the run itself reports (``run_atc``: from taking the lock to the
  finished store), i.e. after start-up.

Both ratios are printed: run / kernel (wall to wall) and run phase / kernel; and, because wall
times on a loaded machine move 2x between runs, the CPU seconds (user + system) of both: the
kernel's in this process, the run's as a child process (its workers included).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

#: Symbols per block of the kernel-alone timing: ~0.5 GB of float64 outputs at 5000 bars.
KERNEL_BLOCK = 1000


def warm_kernel(parallel: bool) -> float:
    """Compile the kernel variant tasks will use (run on every worker with ``client.run``)."""
    from kernels import compute_atc
    from kernels.synthetic import random_walk_panel

    t0 = time.perf_counter()
    compute_atc(random_walk_panel(40, 200, seed=1), parallel=parallel)
    return time.perf_counter() - t0


def parse_size(size: str) -> tuple[int, int]:
    """``"2000x5000"`` -> (2000, 5000); a clear error otherwise."""
    m = re.fullmatch(r"\s*([0-9_,]+)\s*[xX*]\s*([0-9_,]+)\s*", size)
    if not m:
        raise typer.BadParameter(f"--size must be SYMBOLSxBARS (e.g. 2000x5000), got {size!r}")
    n, b = (int(g.replace("_", "").replace(",", "")) for g in m.groups())
    if n < 1 or b < 1:
        raise typer.BadParameter(f"--size needs at least 1 symbol and 1 bar, got {size!r}")
    return n, b


def _atc() -> str:
    exe = Path(sys.executable).with_name("atc")
    return str(exe) if exe.exists() else (shutil.which("atc") or "atc")


def _cpu(who: int) -> float:
    import resource

    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def kernel_alone(prices: Path, dtype: str) -> tuple[float, float]:
    """Seconds and CPU seconds of ``compute_atc`` (parallel kernel) over the whole close panel,
    block by block; reading the blocks is not timed."""
    import resource

    import numpy as np

    from kernels import compute_atc
    from pipeline.store import open_prices

    ds = open_prices(prices)
    try:
        n = ds.sizes["symbol"]
        total = cpu = 0.0
        for a in range(0, n, KERNEL_BLOCK):
            close = np.asarray(ds["close"][a:a + KERNEL_BLOCK].values, dtype=np.float64)
            t, c = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
            res = compute_atc(close, dtype=np.dtype(dtype), parallel=True, on_bad="status")
            total += time.perf_counter() - t
            cpu += _cpu(resource.RUSAGE_SELF) - c
            del res, close
    finally:
        ds.close()
    return total, cpu


def run_fresh(prices: Path, results: Path, extra: list[str]) -> tuple[float, float, float, str]:
    """(wall seconds, run-phase seconds, CPU seconds, stdout) of `atc run` as a new process (CPU:
    its own and its reaped children's, e.g. local workers)."""
    import resource

    c = _cpu(resource.RUSAGE_CHILDREN)
    cmd = [_atc(), "run", str(prices), str(results), "--overwrite", "--no-progress", *extra]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    m = re.search(r"already done; ([0-9.]+) s", p.stdout)
    if not m:
        raise RuntimeError(f"no run time in the output of {' '.join(cmd)}:\n{p.stdout}")
    return wall, float(m.group(1)), _cpu(resource.RUSAGE_CHILDREN) - c, p.stdout


def bench_pipeline(
    size: Annotated[str, typer.Option("--size", help="SYMBOLSxBARS of the synthetic store.")] = "2000x5000",
    dtype: Annotated[str, typer.Option("--dtype", help="float64 or float32 (the run's and the kernel's).")] = "float64",
    outputs: Annotated[str, typer.Option("--outputs", help="all, signals or average (the run's --outputs).")] = "all",
    dir_: Annotated[Optional[Path], typer.Option("--dir", help="Keep the stores here, and reuse a price store "
                                                 "of this size (default: a temporary dir, removed).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
    in_process: Annotated[Optional[bool], typer.Option("--in-process/--cluster", help="Passed to atc run (default: "
                                                       "what atc run chooses for this size).", show_default=False)] = None,
) -> None:
    """Time `atc run` (a fresh process, wall to wall, and its run phase) against the kernel alone
    on a synthetic store, in one run, and print the ratios."""
    symbols, bars = parse_size(size)
    load_start = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="atc-bench-")) if dir_ is None else dir_
    base.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"symbols": symbols, "bars": bars, "dtype": dtype, "outputs": outputs,
                           "cores": os.cpu_count()}
    try:
        prices = base / f"prices-{symbols}x{bars}.zarr"
        if not prices.exists():
            subprocess.run([_atc(), "synth", str(prices), "--symbols", str(symbols), "--bars", str(bars)],
                           check=True, capture_output=True, text=True)
        results = base / f"results-{symbols}x{bars}.zarr"
        typer.echo(f"atc bench pipeline: {symbols} x {bars} {dtype}, --outputs {outputs}; stores in {base}")

        warm_kernel(True)
        k1, kc1 = kernel_alone(prices, dtype)
        place = [] if in_process is None else ["--in-process" if in_process else "--cluster"]
        wall, phase, run_cpu, stdout = run_fresh(prices, results, ["--dtype", dtype, "--outputs", outputs, *place])
        k2, kc2 = kernel_alone(prices, dtype)
        kern, kern_cpu = (k1 + k2) / 2, (kc1 + kc2) / 2
        load_end = os.getloadavg()
        how = next((ln.strip() for ln in stdout.splitlines() if ln.startswith(("in-process", "local cluster"))), "")
        on_disk = sum(f.stat().st_size for f in results.rglob("*") if f.is_file())

        sb = symbols * bars
        typer.echo(f"  kernel alone (compute_atc, parallel, in memory): {k1:7.2f} s before, {k2:.2f} s after the "
                   f"run; mean {kern:.2f} s, {sb / kern / 1e6:.2f} M symbol-bars/s")
        typer.echo(f"  atc run, fresh process, wall to wall:            {wall:7.2f} s  {wall / kern:5.2f} x kernel"
                   + (f"  ({how})" if how else ""))
        typer.echo(f"  atc run, run phase (after start-up):             {phase:7.2f} s  {phase / kern:5.2f} x kernel")
        typer.echo(f"  start-up (process, imports, cluster):            {wall - phase:7.2f} s")
        typer.echo(f"  CPU seconds (user + system; moves far less with the load than wall time): kernel "
                   f"{kern_cpu:.2f} (mean), atc run {run_cpu:.2f} = {run_cpu / kern_cpu:.2f} x kernel")
        typer.echo(f"  results on disk: {on_disk / 2**20:.1f} MiB, {on_disk / sb:.1f} bytes per symbol-bar")
        typer.echo(f"  load average (1 min) {load_start[0]:.2f} at start, {load_end[0]:.2f} at end, "
                   f"{os.cpu_count()} cores")
        out.update(kernel_s=[k1, k2], kernel_mean_s=kern, run_wall_s=wall, run_phase_s=phase,
                   wall_ratio=wall / kern, phase_ratio=phase / kern,
                   kernel_cpu_s=[kc1, kc2], run_cpu_s=run_cpu, cpu_ratio=run_cpu / kern_cpu,
                   bytes_per_symbol_bar=on_disk / sb,
                   how=how, loadavg_start=load_start, loadavg_end=load_end)
        if json_out is not None:
            json_out.write_text(json.dumps(out, indent=2))
    finally:
        if dir_ is None:
            shutil.rmtree(base, ignore_errors=True)
