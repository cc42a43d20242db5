"""`atc bench kernel`: throughput of the batch kernel in symbol-bars per second.

Each figure is the best of `--repeat` timed runs after one warm-up run (which also compiles), on
seeded geometric random walks. The slow reference implementation (tests/reference.py, the literal
reading of ATC_SPEC.md) is timed on a small case in the same run, so the ratio is like for like.

`--literal` (default on, CPU) also times, per case and in the same run, kernels/literal.py: a literal
Numba transcription of the spec (one symbol at a time, O(L) windows, plain loops), compute bound like
the kernel, so the ratio kernel/literal survives the swings of a shared machine far better than the
absolute figures. It runs on the first LITERAL_SYMBOLS symbols of the panel (all of its bars) and is
scaled per symbol-bar; it is timed single-threaded against the kernel single-threaded, and with the
kernel's threads (prange over symbols) against the kernel as timed above.

`--backend cuda` (default 10,000 x 5,000 float64) reports, per case: the kernels alone with the
panel already on the device ("kernel"), `compute_atc(..., backend="cuda")` from host arrays to host
arrays including transfers ("end-to-end"), the CPU backend on the same panel, and the largest
difference between the GPU and CPU outputs; with `--fma-compare` also the kernels compiled with FMA
contraction allowed (see kernels/cuda.py). It needs a real GPU.
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
DEFAULT_DTYPES = "float64,float32"
CUDA_SIZES = "10000x5000"
CUDA_DTYPES = "float64"
LITERAL_SYMBOLS = 100


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


def _time_best(fn, repeat: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
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
    backend: Annotated[str, typer.Option("--backend", help="cpu, or cuda (needs a GPU; also times the CPU beside it).")] = "cpu",
    sizes: Annotated[Optional[str], typer.Option("--sizes", help=f"Panels to time, SYMBOLSxBARS, comma-separated (default: {DEFAULT_SIZES} for cpu, {CUDA_SIZES} for cuda).")] = None,
    dtypes: Annotated[Optional[str], typer.Option("--dtypes", help=f"float64, float32 or both (default: {DEFAULT_DTYPES} for cpu, {CUDA_DTYPES} for cuda).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", help="Timed runs per case (best is reported).")] = 3,
    lanes: Annotated[Optional[int], typer.Option("--lanes", help="Symbols per SIMD block (tuning).")] = None,
    threads: Annotated[bool, typer.Option("--threads/--single-thread", help="Use all Numba threads.")] = True,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="Also time the slow reference.")] = True,
    cpu_beside: Annotated[bool, typer.Option("--cpu/--no-cpu", help="cuda: also time the CPU backend on the same panels.")] = True,
    fma_compare: Annotated[bool, typer.Option("--fma-compare/--no-fma-compare", help="cuda: also time kernels compiled with FMA contraction.")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
    holes: Annotated[str, typer.Option("--holes", help="cpu: shares of times without a bar (NaN closes at random places), comma-separated; each is timed in the same run.")] = "0,0.3",
    literal: Annotated[bool, typer.Option("--literal/--no-literal", help=f"cpu: also time kernels/literal.py (literal Numba transcription of the spec, on the first {LITERAL_SYMBOLS} symbols) single-threaded and with the kernel's threads, and print kernel/literal.")] = True,
) -> None:
    """Time the full 13-output ATC computation on synthetic random walks.

    With holes, a share of each symbol's times has no bar (a NaN close, computed on the symbol's
    own compacted bars): `M symbol-bars/s` counts panel cells (symbols x times), `own` only the
    bars the symbols have.

    With `--literal`, each case also reports the literal transcription (kernels/literal.py) on at
    most the first 100 symbols of the same panel, scaled per symbol-bar, and the ratio kernel/literal
    single-threaded (the kernel timed again with one thread) and with the kernel's threads.
    """
    import numba

    from kernels import compute_atc
    from kernels.errors import ATCUserError
    from kernels.synthetic import random_walk_panel

    if backend == "cuda":
        _bench_cuda(sizes or CUDA_SIZES, dtypes or CUDA_DTYPES, repeat, threads, cpu_beside, fma_compare, json_out)
        return
    if backend != "cpu":
        raise ATCUserError(f"--backend must be cpu or cuda, got {backend!r}")
    sizes = sizes or DEFAULT_SIZES
    dtypes = dtypes or DEFAULT_DTYPES
    try:
        shares = [float(h) for h in holes.split(",") if h.strip()]
    except ValueError:
        raise ATCUserError(f"--holes wants shares between 0 and 1, comma-separated, got {holes!r}") from None
    if not shares or any(not 0.0 <= h < 1.0 for h in shares):
        raise ATCUserError(f"--holes wants shares between 0 and 1 (0 <= share < 1), got {holes!r}")
    rows = []
    n_threads = numba.get_num_threads() if threads else 1
    typer.echo(f"atc bench kernel: backend={backend}, numba threads={n_threads}")
    if literal:
        from kernels.literal import literal_panel

        for par in {False, n_threads > 1}:  # compile, or load from the cache, before timing
            literal_panel(random_walk_panel(2, 200), parallel=par)
    for name in [d.strip() for d in dtypes.split(",") if d.strip()]:
        dtype = np.dtype(name)
        # warm-up (compiles or loads the kernels): enough symbols for more than one block, so the
        # multi-threaded path is compiled too, and one symbol on the calling thread
        warm = random_walk_panel(2 * max(lanes or 32, 1) + 1, 200)
        compute_atc(warm, backend=backend, dtype=dtype, parallel=threads, lanes=lanes)
        compute_atc(warm[:1], backend=backend, dtype=dtype, parallel=False, lanes=lanes)
        for n_sym, n_bars in _parse_sizes(sizes):
            for share in shares:
                panel = random_walk_panel(n_sym, n_bars, seed=0)
                if share:
                    panel[np.random.default_rng(1).random(panel.shape) < share] = np.nan
                own = int(np.count_nonzero(~np.isnan(panel)))
                run = lambda: compute_atc(panel, backend=backend, dtype=dtype, parallel=threads, lanes=lanes)  # noqa: E731
                secs = _time_best(run, max(1, repeat))
                rate = n_sym * n_bars / secs
                rows.append({"backend": backend, "dtype": name, "symbols": n_sym, "bars": n_bars, "holes": share,
                             "seconds": secs, "symbol_bars_per_s": rate, "own_bars_per_s": own / secs})
                typer.echo(f"  {name:8s} {n_sym:6d} x {n_bars:<6d} holes {share:4.0%} {secs:8.3f} s  "
                           f"{rate / 1e6:8.2f} M symbol-bars/s  ({own / secs / 1e6:.2f} M own bars/s)")
                if literal:
                    _time_literal(rows[-1], panel, dtype, repeat, n_threads, lanes, literal_panel)
    ref = _reference_rate() if reference else None
    if ref is not None:
        typer.echo(f"  reference (tests/reference.py, 1 x 600): {ref:,.0f} symbol-bars/s")
        for row in rows:
            row["x_reference"] = row["symbol_bars_per_s"] / ref
        best = max(rows, key=lambda r: r["symbol_bars_per_s"])
        typer.echo(f"  fastest case is {best['x_reference']:,.0f} x the reference")
    if json_out is not None:
        json_out.write_text(json.dumps({"kernel": rows, "reference_symbol_bars_per_s": ref,
                                        "literal_symbols": LITERAL_SYMBOLS if literal else None}, indent=2))


def _time_literal(row: dict, panel: np.ndarray, dtype, repeat: int, n_threads: int, lanes, literal_panel) -> None:
    """Time kernels/literal.py on the first LITERAL_SYMBOLS symbols of `panel` (float64, all bars),
    single-threaded and with `n_threads`, and add the rates and kernel/literal ratios to `row`.

    The single-threaded ratio times the kernel again with one thread on the whole panel; the other
    uses the kernel figure already in `row` (timed with `n_threads`). Rates count panel cells.
    Both single-threaded figures are CPU seconds of this process (time.process_time): on a shared,
    loaded machine wall time also counts the time others held the core, and the load changes
    between the two measurements."""
    from kernels import compute_atc

    n_sym, n_bars = panel.shape
    sub = np.ascontiguousarray(panel[:LITERAL_SYMBOLS])
    k = sub.shape[0]
    repeat = max(1, repeat)
    scope = f"{k} of {n_sym} symbols x {n_bars} bars, scaled per symbol-bar" if k < n_sym else f"all {k} symbols"
    cpu = time.process_time
    lit1 = sub.size / _time_best(lambda: literal_panel(sub, parallel=False), repeat, cpu)
    kern1 = panel.size / _time_best(lambda: compute_atc(panel, dtype=dtype, parallel=False, lanes=lanes), repeat, cpu)
    row.update(literal_symbols=k, literal_threads=n_threads,
               kernel_1thread_symbol_bars_per_s=kern1, literal_1thread_symbol_bars_per_s=lit1,
               x_literal_1thread=kern1 / lit1)
    typer.echo(f"  {'':8s} literal ({scope}):")
    typer.echo(f"  {'':8s}   1 thread (CPU s): kernel {kern1 / 1e6:8.2f} M/s, literal {lit1 / 1e6:6.3f} M/s  "
               f"-> kernel/literal {kern1 / lit1:6.1f}x")
    if n_threads > 1:
        litn = sub.size / _time_best(lambda: literal_panel(sub, parallel=True), repeat)
        kern = row["symbol_bars_per_s"]
        row.update(literal_symbol_bars_per_s=litn, x_literal=kern / litn)
        typer.echo(f"  {'':8s}   {n_threads} threads: kernel {kern / 1e6:8.2f} M/s, literal {litn / 1e6:6.3f} M/s  "
                   f"-> kernel/literal {kern / litn:6.1f}x")
    else:
        row.update(literal_symbol_bars_per_s=lit1, x_literal=kern1 / lit1)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Largest |a - b| where both are numbers, and how many elements differ at all (NaN == NaN)."""
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    both = ~np.isnan(a64) & ~np.isnan(b64)
    differ = int(np.count_nonzero(np.isnan(a64) != np.isnan(b64)) + np.count_nonzero(both & (a64 != b64)))
    err = float(np.max(np.abs(a64[both] - b64[both]))) if both.any() else 0.0
    return err, differ


def _bench_cuda(sizes: str, dtypes: str, repeat: int, threads: bool, cpu_beside: bool, fma_compare: bool,
                json_out: Path | None) -> None:
    """Kernel-only and end-to-end GPU throughput beside the CPU backend (see the module docstring)."""
    import numba

    from kernels import OUTPUT_NAMES, ATCParams, compute_atc
    from kernels.api import cuda_status
    from kernels.errors import ATCUserError
    from kernels.synthetic import random_walk_panel

    usable, simulated, what = cuda_status()
    if not usable:
        raise ATCUserError(f"atc bench kernel --backend cuda needs an NVIDIA GPU: {what}")
    if simulated:
        raise ATCUserError("atc bench kernel --backend cuda does not run under the CUDA simulator "
                           "(NUMBA_ENABLE_CUDASIM=1): unset it on a machine with a GPU")
    from kernels import cuda as gpu

    params = ATCParams()
    repeat = max(1, repeat)
    typer.echo(f"atc bench kernel: backend=cuda on {what}; FMA contraction "
               f"{'on' if gpu.fma_contraction() else 'off'} (default); CPU beside it with "
               f"{numba.get_num_threads() if threads else 1} Numba threads")
    rows = []
    for name in [d.strip() for d in dtypes.split(",") if d.strip()]:
        dtype = np.dtype(name)
        compute_atc(random_walk_panel(4, 200), backend="cuda", dtype=dtype)  # compile
        for n_sym, n_bars in _parse_sizes(sizes):
            panel = random_walk_panel(n_sym, n_bars, seed=0)
            sb = n_sym * n_bars
            row = {"backend": "cuda", "device": what, "dtype": name, "symbols": n_sym, "bars": n_bars}
            dev = gpu.DevicePanel(panel, params, dtype)
            dev.run()
            row["kernel_seconds"] = _time_best(dev.run, repeat)
            row["kernel_symbol_bars_per_s"] = sb / row["kernel_seconds"]
            gpu_out = dev.outputs()
            del dev
            row["end_to_end_seconds"] = _time_best(lambda: compute_atc(panel, backend="cuda", dtype=dtype), repeat)
            row["end_to_end_symbol_bars_per_s"] = sb / row["end_to_end_seconds"]
            typer.echo(f"  {name:8s} {n_sym:6d} x {n_bars:<6d} kernel      {row['kernel_seconds']:8.4f} s  "
                       f"{row['kernel_symbol_bars_per_s'] / 1e6:10.1f} M symbol-bars/s")
            typer.echo(f"  {'':8s} {'':6s}   {'':6s} end-to-end  {row['end_to_end_seconds']:8.4f} s  "
                       f"{row['end_to_end_symbol_bars_per_s'] / 1e6:10.1f} M symbol-bars/s (with transfers)")
            cpu_res = None
            if cpu_beside:
                compute_atc(panel[:4, :200], backend="cpu", dtype=dtype, parallel=threads)
                t0 = time.perf_counter()
                cpu_res = compute_atc(panel, backend="cpu", dtype=dtype, parallel=threads)
                row["cpu_seconds"] = time.perf_counter() - t0
                row["cpu_symbol_bars_per_s"] = sb / row["cpu_seconds"]
                typer.echo(f"  {'':8s} {'':6s}   {'':6s} cpu         {row['cpu_seconds']:8.4f} s  "
                           f"{row['cpu_symbol_bars_per_s'] / 1e6:10.1f} M symbol-bars/s (1 run)")
                diffs = [_max_abs_diff(gpu_out[c], cpu_res[o]) for c, o in enumerate(OUTPUT_NAMES)]
                row["max_abs_diff_vs_cpu"] = max(d[0] for d in diffs)
                row["elements_differing_from_cpu"] = sum(d[1] for d in diffs)
                typer.echo(f"  {'':8s} {'':6s}   {'':6s} gpu vs cpu: max |diff| {row['max_abs_diff_vs_cpu']:.3g}, "
                           f"{row['elements_differing_from_cpu']} of {13 * sb} values differ")
            del gpu_out
            if fma_compare:
                dev = gpu.DevicePanel(panel, params, dtype, allow_fma=True)
                dev.run()
                row["fma_kernel_seconds"] = _time_best(dev.run, repeat)
                row["fma_kernel_symbol_bars_per_s"] = sb / row["fma_kernel_seconds"]
                line = (f"  {'':8s} {'':6s}   {'':6s} kernel+FMA  {row['fma_kernel_seconds']:8.4f} s  "
                        f"{row['fma_kernel_symbol_bars_per_s'] / 1e6:10.1f} M symbol-bars/s")
                if cpu_res is not None:
                    fma_out = dev.outputs()
                    diffs = [_max_abs_diff(fma_out[c], cpu_res[o]) for c, o in enumerate(OUTPUT_NAMES)]
                    row["fma_max_abs_diff_vs_cpu"] = max(d[0] for d in diffs)
                    row["fma_elements_differing_from_cpu"] = sum(d[1] for d in diffs)
                    line += (f"; vs cpu: max |diff| {row['fma_max_abs_diff_vs_cpu']:.3g}, "
                             f"{row['fma_elements_differing_from_cpu']} values differ")
                    del fma_out
                typer.echo(line)
                del dev
            rows.append(row)
    if json_out is not None:
        json_out.write_text(json.dumps({"kernel": rows}, indent=2))
