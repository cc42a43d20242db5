"""`atc trades RESULTS`: every trade of a backtested results store (entry and exit times, direction,
own bars held, return and fees net of the fee model), read back from its `trades` group.

csv and json keep every digit (floats as Python's shortest repr), so what a script reads is what the
store holds; the table rounds for the eye."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from kernels.errors import ATCUserError

FORMATS = ("table", "csv", "json")


def _iso(times: np.ndarray) -> list[str | None]:
    """ISO times, as dates when every time is a midnight (daily bars), else to the second."""
    t = np.asarray(times, "datetime64[s]")
    known = t[~np.isnat(t)]
    unit = "D" if bool(np.all(known == known.astype("datetime64[D]"))) else "s"
    return [None if np.isnat(x) else str(np.datetime_as_string(x, unit=unit)) for x in t]


def trades(
    results: Annotated[Path, typer.Argument(help="Results store of atc run --backtest.", show_default=False)],
    symbol: Annotated[
        Optional[list[str]], typer.Option("--symbol", help="Only this symbol's trades (repeatable).",
                                          show_default=False)
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Print the trades of RESULTS: one line per trade, in symbol and entry order (an open trade has no
    exit time; its return is marked at the symbol's last bar, without the exit fee)."""
    from pipeline.trades_store import trades_frame

    if format_ not in FORMATS:
        raise ATCUserError(f"--format must be one of {', '.join(FORMATS)}, got {format_!r}")
    df = trades_frame(results, symbol or None)
    both = _iso(np.concatenate([df["entry_time"].to_numpy(), df["exit_time"].to_numpy()]))
    entry, exit_ = both[:len(df)], both[len(df):]
    if format_ == "json":
        out = [{"symbol": s, "direction": d, "entry_time": e, "exit_time": x, "bars": int(b), "ret": float(r),
                "fees": float(f), "is_open": bool(o)}
               for s, d, e, x, b, r, f, o in zip(df["symbol"], df["direction"], entry, exit_, df["bars"], df["ret"],
                                                 df["fees"], df["is_open"])]
        typer.echo(json.dumps(out, indent=1))
        return
    shown = df.assign(entry_time=entry, exit_time=[x or "" for x in exit_])
    if format_ == "csv":
        typer.echo(shown.to_csv(index=False, float_format=None).rstrip("\n"))
        return
    if shown.empty:
        typer.echo(f"no trades in {results}" + (f" for {', '.join(symbol)}" if symbol else ""))
        return
    shown = shown.assign(exit_time=[x or "(open)" for x in exit_], ret=df["ret"].map("{:+.4%}".format),
                         fees=df["fees"].map("{:.4%}".format)).drop(columns="is_open")
    typer.echo(shown.to_string(index=False))
    n_open = int(df["is_open"].sum())
    typer.echo(f"{len(df)} trades ({n_open} open) of {df['symbol'].nunique()} symbols")
