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
    import gc

    # Python's cyclic collector off for this short command: it ran every few hundred allocations
    # through the imports of NumPy, Zarr and Numba, and once more over all of them when turned on
    # again and at interpreter exit (0.06 + 0.07 s), ~0.2 of ~2.7 CPU s of a fresh update of a
    # 2,000 x 5,000 store (2026-11-29). What the update allocates is freed by reference counting;
    # what it leaves (modules, compiled kernels) is frozen: no later collection walks it again.
    gc.disable()
    try:
        from pipeline.update import update_results

        typer.echo(update_results(prices, results).describe())
    finally:
        gc.freeze()
        gc.enable()


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
    from pipeline.scan import rank_columns

    if store_format(store) == FORMAT_NAME:
        from pipeline.scan import newest_columns

        cols = newest_columns(store, prices)
    else:
        cols = _scan_prices(store)
    long, short = rank_columns(cols, top, min_signal)
    typer.echo(format_tables(long, short, fmt.value, n_symbols=len(cols["symbol"])))


def _scan_prices(path: Path):
    """`atc scan PRICES`: compute every symbol in this process, keep only what the table needs."""
    import numpy as np

    from kernels import compute_atc
    from kernels.params import ATCParams
    from pipeline.scan import columns_from_arrays
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
    return columns_from_arrays(res, close, symbols, times, params)


def format_tables(long, short, fmt: str, n_symbols: int) -> str:
    """The two tables (numpy columns from `pipeline.scan.rank_columns`, or pandas tables) as text,
    CSV or JSON (one place, so `atc demo` prints the same). The text table is laid out here, as
    pandas' ``to_string`` would (columns right-aligned, floats to 4 significant digits), so the
    default `atc scan` does not import pandas; CSV and JSON are pandas' writers."""
    long, short = _columns(long), _columns(short)
    if fmt in ("csv", "json"):
        import pandas as pd

        both = pd.concat([pd.DataFrame(long).assign(side="long"), pd.DataFrame(short).assign(side="short")],
                         ignore_index=True)
        if fmt == "csv":
            return both.to_csv(index=False).rstrip("\n")
        return both.to_json(orient="records", date_format="iso", indent=1)
    out = []
    for title, cols in (("LONG", long), ("SHORT", short)):
        n = len(cols["symbol"])
        out.append(f"{title} ({n} of {n_symbols} symbols)")
        if n:
            out.extend(_text_table(cols))
        out.append("")
    return "\n".join(out).rstrip("\n")


def _columns(table) -> dict:
    if isinstance(table, dict):
        return table
    return {c: table[c].to_numpy() for c in table.columns}


def _text_table(cols: dict) -> list[str]:
    """Lines of a plain table: a header and one line per row, every column right-aligned."""
    import numpy as np

    cells = []
    for name, v in cols.items():
        v = np.asarray(v)
        if name == "stale":
            text = ["stale" if x else "" for x in v]
        elif v.dtype.kind == "f":
            text = ["NaN" if x != x else f"{x:.4g}" for x in v.tolist()]
        elif v.dtype.kind == "M":
            t = v.astype("datetime64[ns]")
            unit = "D" if (t.astype(np.int64) % (86_400 * 10**9) == 0).all() else "s"
            text = [str(x).replace("T", " ") for x in t.astype(f"datetime64[{unit}]")]
        else:
            text = [str(x) for x in v.tolist()]
        width = max(len(name), *(len(x) for x in text))
        cells.append([name.rjust(width)] + [x.rjust(width) for x in text])
    return [" ".join(row) for row in zip(*cells)]
