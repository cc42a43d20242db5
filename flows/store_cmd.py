"""`atc synth` and `atc ingest`: create price stores (format in data/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

_STORE = typer.Argument(help="Price store to create (a directory, e.g. data/prices.zarr).", show_default=False)
_CHUNK = typer.Option(
    "--chunk-symbols", help="Symbols per chunk (default: about 8 MiB of raw values per chunk)."
)
_OVERWRITE = typer.Option("--overwrite", help="Replace an existing price store.")


def synth(
    store: Annotated[Path, _STORE],
    symbols: Annotated[int, typer.Option("--symbols", help="Number of symbols.")] = 100,
    bars: Annotated[int, typer.Option("--bars", help="Number of bars per symbol.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same store).")] = 0,
    freq: Annotated[str, typer.Option("--freq", help="Bar spacing, a pandas frequency (1D, B, 1h, 5min).")] = "1D",
    start: Annotated[str, typer.Option("--start", help="Time of the first bar (UTC).")] = "2000-01-03",
    ohlcv: Annotated[bool, typer.Option("--ohlcv", help="Also generate open, high, low and volume.")] = False,
    chunk_symbols: Annotated[Optional[int], _CHUNK] = None,
    overwrite: Annotated[bool, _OVERWRITE] = False,
) -> None:
    """Create a synthetic price universe: geometric random walks with their own volatility and
    drift, regime changes, jumps, late listings and a few delistings. Deterministic for a seed."""
    from pipeline.store import check_target, write_prices
    from pipeline.synth import synth_prices

    check_target(store, overwrite=overwrite)
    ds = synth_prices(symbols, bars, seed, freq, start=start, ohlcv=ohlcv)
    summary = write_prices(ds, store, chunk_symbols=chunk_symbols, overwrite=overwrite, source=ds.attrs["source"])
    typer.echo(summary.describe())


def ingest(
    src: Annotated[
        Path,
        typer.Argument(
            help="A directory of CSV/Parquet files (one per symbol, named after it, or long format "
            "with a symbol column) or one such file.",
            show_default=False,
        ),
    ],
    store: Annotated[Path, _STORE],
    append: Annotated[
        bool, typer.Option("--append", help="Add newer bars and new symbols to an existing store.")
    ] = False,
    overwrite: Annotated[bool, _OVERWRITE] = False,
    chunk_symbols: Annotated[Optional[int], _CHUNK] = None,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal, from 20 files on).")
    ] = None,
) -> None:
    """Ingest price files into a price store. Columns Date/Datetime/timestamp and
    Open/High/Low/Close/Volume in any case; epoch seconds or milliseconds or ISO times (-> UTC).
    The time axis is the union of all calendars; gaps inside a symbol's span are forward-filled."""
    from pipeline.ingest import ingest as run_ingest

    summary = run_ingest(src, store, append=append, overwrite=overwrite, chunk_symbols=chunk_symbols,
                         progress=progress)
    typer.echo(summary.describe())
