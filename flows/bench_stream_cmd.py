"""`atc bench stream`: the cost of keeping a universe up to date bar by bar.

Times, in one process and one run (so the ratios survive this shared machine's swings):
the batch kernel on a history, the same batch with the stream state captured (the by-product the
daily update continues from), and advancing every symbol by one new bar, repeated.
"""

from __future__ import annotations

import json
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
) -> None:
    """Build a stream state from a synthetic history, then advance every symbol one bar at a time."""
    from kernels import compute_atc
    from kernels.stream import build_stream
    from kernels.synthetic import random_walk_panel

    ft = np.dtype(dtype)
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
    if json_out is not None:
        json_out.write_text(json.dumps({
            "symbols": symbols, "bars": bars, "updates": updates, "dtype": ft.name,
            "batch_s": batch, "build_s": build, "update_median_s": per, "update_best_s": best,
        }, indent=2))
