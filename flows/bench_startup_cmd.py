"""`atc bench startup`: what a user waits for before and around the work, each case a fresh process.

The kernels of a small job take milliseconds; what a new user sees is process start, imports,
Numba compilation (or loading it from the cache) and, before issue 11, a cluster start. These
cases time whole `atc` processes as a user starts them (best of ``--repeat``), so that imports
at module level, a compile that is not cached, or a cluster started for nothing show up here:

* ``demo, empty Numba cache``: `atc demo` into a new directory with a new, empty
  ``NUMBA_CACHE_DIR`` (``ATC_NUMBA_CACHE_DIR`` removed from its environment): the first command a
  new user types, compilation included;
* ``run 50 x 1000, warm``: `atc run` of a 50-symbol x 1000-bar store into a new results store,
  with the kernels already in the user's cache (warmed by one untimed run);
* ``rerun, complete store``: the same command again on the complete store (fingerprints checked,
  nothing computed);
* ``atc --help``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

#: (case, target seconds on the 2-core development machine)
CASES = {
    "demo": ("atc demo, empty Numba cache", 20.0),
    "run": ("atc run 50 x 1000, warm cache", 2.5),
    "rerun": ("atc run again, complete store", 1.5),
    "help": ("atc --help", 1.0),
}
ATC = [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())"]


def _timed(args: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(ATC + args, env=env, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"atc {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return dt


def bench_startup(
    repeat: Annotated[int, typer.Option("--repeat", help="Runs of each case; the best counts.")] = 3,
    cases: Annotated[Optional[list[str]], typer.Option(
        "--case", help="Only these cases (repeatable): demo, run, rerun, help.", show_default=False)] = None,
) -> None:
    """Startup times of fresh `atc` processes: cold demo, warm small run, rerun of a complete store, --help."""
    from kernels.errors import ATCUserError

    chosen = list(cases or CASES)
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        raise ATCUserError(f"--case must be among {', '.join(CASES)}, got {', '.join(unknown)}")
    if repeat < 1:
        raise ATCUserError(f"--repeat must be >= 1, got {repeat}")
    base = Path(tempfile.mkdtemp(prefix="atc-bench-startup-"))
    times: dict[str, list[float]] = {}
    try:
        prices = base / "prices.zarr"
        if {"run", "rerun"} & set(chosen):
            _timed(["synth", str(prices), "--symbols", "50", "--bars", "1000", "--seed", "1"])
            _timed(["run", str(prices), str(base / "warm.zarr"), "--no-progress"])  # the user's cache is warm
        for case in chosen:
            times[case] = []
            for i in range(repeat):
                if case == "demo":
                    env = {k: v for k, v in os.environ.items() if k != "ATC_NUMBA_CACHE_DIR"}
                    env["NUMBA_CACHE_DIR"] = str(base / f"numba-{i}")
                    times[case].append(_timed(["demo", "--dir", str(base / f"demo-{i}"), "--no-progress"], env))
                    shutil.rmtree(base / f"numba-{i}", ignore_errors=True)
                elif case == "run":
                    times[case].append(_timed(["run", str(prices), str(base / f"run-{i}.zarr"), "--no-progress"]))
                elif case == "rerun":
                    times[case].append(_timed(["run", str(prices), str(base / "warm.zarr"), "--no-progress"]))
                else:
                    times[case].append(_timed(["--help"]))
                typer.echo(f"  {CASES[case][0]}: {times[case][-1]:.2f} s", err=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()
    typer.echo(f"startup, fresh processes, best of {repeat} (load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
               f"{os.cpu_count()} cores)")
    typer.echo(f"  {'case':<34} {'best':>8} {'target':>8}  runs")
    for case, ts in times.items():
        name, target = CASES[case]
        mark = "ok" if min(ts) <= target else "MISSED"
        typer.echo(f"  {name:<34} {min(ts):>7.2f}s {target:>7.1f}s  {' '.join(f'{t:.2f}' for t in ts)}  {mark}")
