"""`atc update` and `atc scan`: the daily routine after appending today's bars."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


def update(
    prices: Annotated[Path, typer.Argument(help="Price store that gained new bars (atc ingest --append).",
                                           show_default=False)],
    results: Annotated[Path, typer.Argument(help="Complete results store computed from it before.",
                                            show_default=False)],
) -> None:
    """Extend RESULTS by the bars PRICES gained since it was computed: only the new times are
    computed (from the streaming state kept in the store) and written, with exactly the numbers a
    full `atc run` would give. Symbols whose past bars were revised are recomputed and named.
    Runs in this process (no cluster)."""
    from pipeline.update import update_results

    typer.echo(update_results(prices, results).describe())


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def scan(
    store: Annotated[Path, typer.Argument(help="Results store (from atc run / atc update), or a price store "
                                               "(computed first, in this process).", show_default=False)],
    top: Annotated[int, typer.Option("--top", help="Rows in each of the LONG and SHORT tables.")] = 10,
    min_signal: Annotated[float, typer.Option("--min-signal", help="Only symbols with |signal| >= this.")] = 0.0,
    fmt: Annotated[Format, typer.Option("--format", help="table, csv or json (csv/json: both sides, a "
                                                         "'side' column).")] = Format.table,
    prices: Annotated[Optional[Path], typer.Option("--prices", help="Price store for the last close (default: "
                                                   "the one the results store was computed from).")] = None,
) -> None:
    """Rank symbols by their newest Average_Signal, each at its own last bar: a LONG table (strongest
    first) and a SHORT table with trend, families long/short of 6, last close, bar time and bars since
    the last change of trend; symbols whose last bar is older than the store's last time are stale."""
    from pipeline.atomic import store_format
    from pipeline.results import FORMAT_NAME
    from pipeline.scan import rank

    if store_format(store) == FORMAT_NAME:
        from pipeline.scan import newest_signals

        df = newest_signals(store, prices)
    else:
        df = _scan_prices(store)
    long, short = rank(df, top, min_signal)
    typer.echo(format_tables(long, short, fmt.value, n_symbols=len(df)))


def _scan_prices(path: Path):
    """`atc scan PRICES`: compute every symbol in this process, keep only what the table needs."""
    import numpy as np

    from kernels import compute_atc
    from kernels.params import ATCParams
    from pipeline.scan import signals_from_arrays
    from pipeline.store import open_prices

    ds = open_prices(path)
    try:
        close = np.asarray(ds["close"].values, np.float64)
        symbols = [str(s) for s in ds["symbol"].values]
        times = np.asarray(ds["time"].values)
    finally:
        ds.close()
    params = ATCParams()
    res = compute_atc(close, params, on_bad="status", symbols=symbols)
    return signals_from_arrays(res, close, symbols, times, params)


def format_tables(long, short, fmt: str, n_symbols: int) -> str:
    """The two tables as text, CSV or JSON (one place, so `atc demo` prints the same)."""
    import pandas as pd

    if fmt in ("csv", "json"):
        both = pd.concat([long.assign(side="long"), short.assign(side="short")], ignore_index=True)
        if fmt == "csv":
            return both.to_csv(index=False).rstrip("\n")
        return both.to_json(orient="records", date_format="iso", indent=1)
    out = []
    for title, df in (("LONG", long), ("SHORT", short)):
        out.append(f"{title} ({len(df)} of {n_symbols} symbols)")
        if len(df):
            shown = df.assign(stale=df["stale"].map({True: "stale", False: ""}))
            out.append(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        out.append("")
    return "\n".join(out).rstrip("\n")
