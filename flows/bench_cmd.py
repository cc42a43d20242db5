"""`atc bench kernel`: throughput of the batch kernel in symbol-bars per second.

Each figure is the best of `--repeat` timed runs after one warm-up run (which also compiles), on
seeded geometric random walks. The slow reference implementation (tests/reference.py, the literal
reading of ATC_SPEC.md) is timed on a small case in the same run, so the ratio is like for like.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

DEFAULT_SIZES = "99x1500,2000x5000"


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    from kernels.errors import ATCUserError

    sizes = []
    for part in text.split(","):
        try:
            n, t = part.lower().split("x")
            sizes.append((int(n), int(t)))
        except ValueError:
            raise ATCUserError(f"--sizes wants SYMBOLSxBARS[,...], e.g. 99x1500, got {part!r}") from None
    return sizes


def _time_best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _reference_rate(n_bars: int = 600) -> float | None:
    """Symbol-bars/s of tests/reference.py (None when run from an installed package without tests/)."""
    ref_dir = Path(__file__).resolve().parent.parent / "tests"
    if not (ref_dir / "reference.py").exists():
        return None
    sys.path.insert(0, str(ref_dir))
    try:
        from reference import reference_atc
    finally:
        sys.path.remove(str(ref_dir))
    from kernels.synthetic import random_walk_panel

    x = random_walk_panel(1, n_bars, seed=1)[0]
    return n_bars / _time_best(lambda: reference_atc(x), 1)


def bench_kernel(
    backend: Annotated[str, typer.Option("--backend", help="cpu (cuda: not in this build yet).")] = "cpu",
    sizes: Annotated[str, typer.Option("--sizes", help="Panels to time, SYMBOLSxBARS, comma-separated.")] = DEFAULT_SIZES,
    dtypes: Annotated[str, typer.Option("--dtypes", help="float64, float32 or both.")] = "float64,float32",
    repeat: Annotated[int, typer.Option("--repeat", help="Timed runs per case (best is reported).")] = 3,
    lanes: Annotated[Optional[int], typer.Option("--lanes", help="Symbols per SIMD block (tuning).")] = None,
    threads: Annotated[bool, typer.Option("--threads/--single-thread", help="Use all Numba threads.")] = True,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="Also time the slow reference.")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Time the full 13-output ATC computation on synthetic random walks."""
    import numba

    from kernels import compute_atc
    from kernels.synthetic import random_walk_panel

    rows = []
    typer.echo(f"atc bench kernel: backend={backend}, numba threads={numba.get_num_threads() if threads else 1}")
    for name in [d.strip() for d in dtypes.split(",") if d.strip()]:
        dtype = np.dtype(name)
        compute_atc(random_walk_panel(4, 200), backend=backend, dtype=dtype, parallel=threads, lanes=lanes)
        for n_sym, n_bars in _parse_sizes(sizes):
            panel = random_walk_panel(n_sym, n_bars, seed=0)
            run = lambda: compute_atc(panel, backend=backend, dtype=dtype, parallel=threads, lanes=lanes)  # noqa: E731
            secs = _time_best(run, max(1, repeat))
            rate = n_sym * n_bars / secs
            rows.append({"backend": backend, "dtype": name, "symbols": n_sym, "bars": n_bars,
                         "seconds": secs, "symbol_bars_per_s": rate})
            typer.echo(f"  {name:8s} {n_sym:6d} x {n_bars:<6d} {secs:8.3f} s  {rate / 1e6:8.2f} M symbol-bars/s")
    ref = _reference_rate() if reference else None
    if ref is not None:
        typer.echo(f"  reference (tests/reference.py, 1 x 600): {ref:,.0f} symbol-bars/s")
        for row in rows:
            row["x_reference"] = row["symbol_bars_per_s"] / ref
        best = max(rows, key=lambda r: r["symbol_bars_per_s"])
        typer.echo(f"  fastest case is {best['x_reference']:,.0f} x the reference")
    if json_out is not None:
        json_out.write_text(json.dumps({"kernel": rows, "reference_symbol_bars_per_s": ref}, indent=2))
