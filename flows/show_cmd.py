"""`atc show STORE`: what a price, results or sweep store holds, and for sweeps and backtests the
tables a user decides from, read back from the store instead of recomputed.

A median alone hides how a parameter set fares across symbols, so every table gives the
interquartile range beside it and the share of symbols that beat simply holding the asset
(strategy `total_return` > `buy_hold_return` over the same bars). Reading is in
`pipeline.inspect`; this module formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Mapping

import numpy as np
import typer

__all__ = ["backtest_summary", "describe_store", "show", "sweep_table"]


def _v(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.0%}"


def _params(p: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_v(v)}" for k, v in sorted(p.items()))


def _iqr(med: float, q25: float, q75: float) -> str:
    return f"{med:.4g} [{q25:.4g}, {q75:.4g}]"


def backtest_summary(results_store_path: str | Path) -> str:
    """Each backtest metric of a results store across its symbols: median and interquartile range,
    how many symbols have a value, and how many beat buy-and-hold. Printed by `atc show` and after
    `atc run --backtest`."""
    import pandas as pd

    from pipeline.inspect import backtest_stats

    stats, beat, known = backtest_stats(results_store_path)
    table = pd.DataFrame({
        "median": stats["median"].map("{:.4g}".format),
        "IQR (q25 .. q75)": [f"{a:.4g} .. {b:.4g}" for a, b in zip(stats["q25"], stats["q75"])],
        "symbols": stats["symbols"],
    })
    table.index.name = "metric"
    share = beat / known if known else float("nan")
    bh = stats.loc["buy_hold_return"]
    return "\n".join([
        "Backtest across symbols (median and interquartile range of each metric):",
        table.to_string(),
        f"beats buy and hold: {beat} of {known} symbols ({_pct(share)}) have a higher total return than holding "
        f"(buy and hold: median {bh['median']:.4g}, IQR {bh['q25']:.4g} .. {bh['q75']:.4g})",
    ])


def sweep_table(sweep_store_path: str | Path, rank_by: str = "sharpe", top: int = 10) -> str:
    """The best combinations of a sweep store by the median of `rank_by` across symbols, with its
    interquartile range, the share of symbols beating buy-and-hold, the buy-and-hold baseline and
    the fixed (not swept) parameters. A store with portfolios (`atc sweep --portfolio`) is ranked
    by each combination's portfolio `rank_by`, as `atc sweep` ranks it, and the title says so."""
    import pandas as pd

    from pipeline.inspect import sweep_ranking, sweep_setup

    dims, _, fixed = sweep_setup(sweep_store_path)
    df, bh = sweep_ranking(sweep_store_path, rank_by, top)
    shown = pd.DataFrame(index=df.index)
    for d in dims:
        shown[d] = df[d].map(_v)
    pcols = [c for c in df.columns if c.startswith("portfolio ")]
    for c in pcols:
        shown[c] = df[c].map("{:.4g}".format)
    lead = rank_by if f"{rank_by} median" in df else "sharpe"
    shown[f"{lead} median [IQR]"] = [_iqr(*r) for r in df[[f"{lead} median", f"{lead} q25",
                                                           f"{lead} q75"]].itertuples(index=False)]
    for m, label in (("total_return", "total return"), ("max_drawdown", "max drawdown"), ("n_trades", "trades")):
        if f"{m} median" in df and m != lead:
            shown[label] = df[f"{m} median"].map("{:.4g}".format)
    shown["beats B&H"] = df["beats B&H"].map(_pct)
    shown["symbols ok"] = df["symbols ok"]
    if pcols:
        title = (f"Best {len(df)} combinations by {df.attrs['ranked_by']} (portfolio columns: each combination's "
                 f"portfolio; the others across symbols: IQR = q25, q75, other columns medians):")
    else:
        title = (f"Best {len(df)} combinations by median {rank_by} across symbols (IQR = q25, q75 across symbols; "
                 f"other columns medians):")
    return "\n".join([
        title,
        shown.to_string(),
        f"buy and hold (same bars, every combination): median total return {bh['median']:.4g} "
        f"[{bh['q25']:.4g}, {bh['q75']:.4g}] over {bh['symbols']} symbols",
        f"fixed: {_params(fixed)}",
    ])


def describe_store(path: str | Path) -> str:
    """Kind, sizes, parameters, status counts, fingerprints and history of any atc store."""
    from pipeline.inspect import KINDS, store_info

    info = store_info(path)
    kind = info["kind"]
    lines = [f"{KINDS[kind]} {info['path']}"]
    sizes = info["sizes"]
    dims = ", ".join(f"{d} {n:,}" for d, n in sizes.items())
    if "time_range" in info:
        dims += f" ({info['time_range'][0]} .. {info['time_range'][1]})"
    lines.append(f"  dims: {dims}")
    from kernels.params import OUTPUT_NAMES
    from pipeline.inspect import BACKTEST_SERIES

    names = [n for n in info["variables"] if n not in ("chunk_done", "task_done", "status", "reason")]
    first = [n for n in (*OUTPUT_NAMES, *BACKTEST_SERIES) if n in names]
    data = first + [n for n in names if n not in first]
    lines.append(f"  variables ({len(data)}): {', '.join(data)}")
    times = [f"{k} {info[k]}" for k in ("created", "modified", "completed") if k in info]
    if kind == "price-store":
        lines.append(f"  source: {info.get('source', '?')}; gaps forward-filled: {info.get('filled_gaps_total', 0)}")
    else:
        if kind == "atc-sweep":
            grid = info.get("grid", {})
            n = int(np.prod([len(v) for v in grid.get("values", [])])) if grid.get("values") else 0
            lines.append(f"  grid ({n} combinations): " + "; ".join(
                f"{d} = {', '.join(_v(v) for v in vals)}" for d, vals in zip(grid.get("dims", []), grid.get("values", []))))
            fixed = {k: v for k, v in info.get("params", {}).items() if k not in grid.get("dims", [])}
            lines.append(f"  fixed ATC parameters: {_params(fixed)}")
            done, total = info["tasks_done"]
            lines.append(f"  tasks done: {done} of {total}" + ("" if done == total else " (incomplete: rerun atc sweep "
                                                                                       "to resume)"))
        else:
            lines.append(f"  parameters: {_params(info.get('params', {}))}")
            done, total = info["chunks_done"]
            lines.append(f"  chunks done: {done} of {total}" + ("" if done == total else " (incomplete: rerun atc run "
                                                                                        "to resume)"))
        if "backtest" in info:
            bt = dict(info["backtest"])
            if bt.get("periods_per_year", 0) is None:
                bt["periods_per_year"] = "each symbol's own bars"
            lines.append(f"  backtest: {_params(bt)}")
        counts = info.get("status_counts", {})
        unit = "symbol x combination pairs" if kind == "atc-sweep" else "symbols"
        lines.append(f"  status ({unit}): " + ", ".join(f"{n:,} {name}" for name, n in counts.items()))
        lines.append(f"  price store: {info.get('prices_path', '?')} (fingerprint {info.get('prices_fingerprint', '?')})")
        lines.append(f"  computed: dtype {info.get('dtype', '?')}, {info.get('code_version', '?')}"
                     + (f", backend {info['backend']}" if "backend" in info else ""))
    lines.append(f"  fingerprint: {info.get('fingerprint') or '?'}")
    if times:
        lines.append(f"  {', '.join(times)}")
    if info.get("history"):
        lines.append("  history:")
        lines += [f"    {h}" for h in info["history"]]
    return "\n".join(lines)


def show(
    store: Annotated[Path, typer.Argument(help="Any atc store: price, results or sweep.", show_default=False,
                                          metavar="STORE")],
    rank_by: Annotated[str, typer.Option("--rank-by", help="Sweep store: metric of the ranking table "
                                                      "(with --portfolio stores, of the portfolios).")] = "sharpe",
    top: Annotated[int, typer.Option("--top", help="Sweep store: rows in the ranking table.")] = 10,
) -> None:
    """Print what STORE holds (kind, dims, parameters, status counts, fingerprints, history); for
    a sweep store also the ranking of its combinations, for a backtested results store the metrics
    across symbols. Nothing is recomputed."""
    from pipeline.inspect import check_rank_metric, store_info, store_kind

    kind = store_kind(store)
    if kind == "atc-sweep":
        check_rank_metric(store, rank_by)
    typer.echo(describe_store(store))
    if kind == "atc-sweep":
        typer.echo("")
        typer.echo(sweep_table(store, rank_by, top))
        from pipeline.validation import describe_stored

        text = describe_stored(store)
        if text:
            typer.echo("")
            typer.echo(text)
    elif kind == "atc-results" and store_info(store).get("backtested"):
        typer.echo("")
        typer.echo(backtest_summary(store))
