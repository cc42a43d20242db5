"""`atc synth` and `atc ingest`: create price stores (format in data/README.md)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.table_rows import CLOSE_SPELLINGS, EPOCH_UNITS, TIME_SPELLINGS

_STORE = typer.Argument(help="Price store to create (a directory, e.g. data/prices.zarr).", show_default=False)
_CHUNK = typer.Option(
    "--chunk-symbols", help="Symbols per chunk (default: about 8 MiB of raw values per symbol history, "
    "16..512); time is chunked in 512 bars so appends and newest-bar reads stay small."
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
    drift, regime changes, jumps, late listings and a few delistings. Deterministic for a seed,
    whatever --chunk-symbols; written one symbol chunk at a time (memory does not grow with --symbols)."""
    from pipeline.price_store import write_prices_chunked
    from pipeline.store import check_target
    from pipeline.synth import synth_universe

    check_target(store, overwrite=overwrite)
    u = synth_universe(symbols, bars, seed, freq, start=start, ohlcv=ohlcv)
    summary = write_prices_chunked(store, u.symbols, u.times.as_unit("ns").values, u.variables, u.batches(),
                                   chunk_symbols=chunk_symbols, overwrite=overwrite, source=u.source)
    typer.echo(summary.describe())


class Fill(str, Enum):
    """--fill choices (pipeline.price_format.FILL_MODES)."""

    none = "none"
    ffill = "ffill"


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
    fill: Annotated[
        Optional[Fill],
        typer.Option("--fill", case_sensitive=False, show_default=False,
                     help="none: each symbol keeps exactly its file's bars (NaN where it has none); ffill: "
                     "repeat the previous close at the other symbols' times inside its span (volume 0), "
                     "counted per symbol. Recorded in the store. Default: none; with --append, the store's."),
    ] = None,
    drop_empty_close: Annotated[
        bool, typer.Option("--drop-empty-close",
                           help="Skip rows that have a time but no close (counted per file) instead of stopping "
                           "with an error naming the file and line.")
    ] = False,
    dayfirst: Annotated[
        bool, typer.Option("--dayfirst", help="Read ambiguous dates as day first: 03/04/2020 is 3 April.")
    ] = False,
) -> None:
    from pipeline.ingest import ingest as run_ingest

    summary = run_ingest(src, store, append=append, overwrite=overwrite, chunk_symbols=chunk_symbols,
                         progress=progress, fill=None if fill is None else fill.value,
                         drop_empty_close=drop_empty_close, dayfirst=dayfirst)
    typer.echo(summary.describe())


# Built from the parser's own tables so the help cannot drift from what the code accepts.
ingest.__doc__ = (
    "Ingest price files into a price store, each symbol with exactly its own bars.\n\n"
    f"Time column: {TIME_SPELLINGS} (any case). Close column: {CLOSE_SPELLINGS} (any case). "
    "Optional: Open, High, Low, Volume.\n\n"
    "Timestamps: ISO or other date strings (a time zone is converted to UTC; see --dayfirst), or numbers: "
    f"{EPOCH_UNITS}.\n\n"
    "The time axis is the union of all calendars; a symbol has no bar (NaN) at the other symbols' times "
    "unless --fill ffill. A row without a close is an error unless --drop-empty-close."
)
