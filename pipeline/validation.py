"""Out-of-sample validation of a sweep: CSCV's probability of backtest overfitting, the deflated
Sharpe ratio of the chosen combination, and walk-forward selection (formulas: kernels/overfit.py,
reading guide: docs/OVERFITTING.md).

The sweep tasks keep, for every combination and symbol, sufficient statistics of the strategy
returns per block of the time axis (`fold_stats`: count and sums of r..r^4; kernels/sweep.py). One
block grid serves both analyses: `S` blocks for CSCV alone, or the walk-forward's finer grid of
gcd(train, test) bars, merged into `S` groups for CSCV. Combinations are ranked as the sweep's
summary ranks them: by the median across symbols of the Sharpe ratio. The same figures work on one
series per combination (`(N, blocks, 5)`, e.g. the `portfolio_fold_stats` of `atc sweep
--portfolio`, ranked by its own Sharpe ratio): `validate_store` adds them under "portfolio" when the
store has that variable. With a walk-forward, `validate_store` also stitches the out-of-sample
equity (pipeline/walk_forward.py: the chosen combinations rerun, `wf_*` variables).

The figures are computed once, when the sweep completes, and kept in the sweep store's `validation`
attribute (JSON), so `atc sweep` (rerun on a complete store) and `atc show` print them again
without recomputing. Memory: the whole `fold_stats` array, combinations x blocks x 5 x symbols x
8 bytes (200 combinations, 2,000 symbols, 10 blocks: 160 MB).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernels.errors import ATCUserError


@dataclass(frozen=True)
class ValidationPlan:
    """What a sweep keeps for validation: `blocks` blocks of the time axis (0: nothing)."""

    blocks: int = 0
    folds: int = 0            # CSCV's S (0: no CSCV)
    walk_forward: str = ""    # the user's TRAIN:TEST spec ("" : none)
    train_blocks: int = 0
    test_blocks: int = 0
    train_bars: int = 0
    test_bars: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True) if self.blocks else ""


def plan_validation(folds: int | None, walk_forward: str | None, times) -> ValidationPlan:
    """The block grid for `--folds S` and/or `--walk-forward TRAIN:TEST` on the axis `times`."""
    from kernels.metrics import infer_periods_per_year
    from kernels.overfit import parse_train_test, plan_walk_forward

    n_times = len(times)
    folds = int(folds or 0)
    if folds and (folds < 2 or folds % 2):
        raise ATCUserError(f"--folds must be an even number >= 2 (CSCV splits the blocks in halves), got {folds}")
    if folds > n_times:
        raise ATCUserError(f"--folds {folds} exceeds the {n_times} times of the price store")
    if not walk_forward:
        return ValidationPlan(blocks=folds, folds=folds)
    try:
        train, test = parse_train_test(walk_forward, infer_periods_per_year(np.asarray(times)))
        wf = plan_walk_forward(train, test, n_times)
    except ValueError as exc:
        raise ATCUserError(f"--walk-forward: {exc}") from None
    if folds and wf.folds < folds:
        raise ATCUserError(f"--walk-forward {walk_forward} cuts the axis into {wf.folds} blocks, fewer than "
                           f"--folds {folds}: use fewer folds or a finer walk-forward")
    return ValidationPlan(wf.folds, folds, walk_forward, wf.train_blocks, wf.test_blocks, train, test)


def compute_validation(fold_stats: np.ndarray, plan: ValidationPlan, *, periods_per_year=None,
                       portfolio_stats: np.ndarray | None = None) -> dict[str, Any]:
    """The figures kept in the store. `fold_stats` `(N combinations, blocks, 5, symbols)`: per
    symbol, ranked by the median across symbols; or `(N, blocks, 5)`: one series per combination
    (a portfolio), ranked by its own Sharpe ratio. `portfolio_stats` `(N, blocks, 5)` (the sweep
    store's `portfolio_fold_stats`, when the sweep kept a portfolio per combination) adds the same
    figures for the portfolio under "portfolio"."""
    out = _figures(fold_stats, plan)
    if portfolio_stats is not None:
        p = np.asarray(portfolio_stats, np.float64)
        want = (np.shape(fold_stats)[0], plan.blocks, 5)
        if p.shape != want:
            out["portfolio"] = {"error": f"portfolio_fold_stats has shape {list(p.shape)}, expected {list(want)}: "
                                         "not used"}
        else:
            out["portfolio"] = _figures(p, plan)
    return out


def _select(full: np.ndarray) -> int:
    """The combination a sweep reports as best: highest median across symbols of the Sharpe ratio
    over the whole axis (finite values; the sweep summary's ranking), or the highest Sharpe ratio
    of the one series per combination."""
    from kernels.overfit import _argbest

    if full.ndim == 1:
        return int(_argbest(full)) if not np.all(np.isnan(full)) else 0
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(np.where(np.isfinite(full), full, np.nan), axis=1)
    return int(np.nanargmax(med)) if np.isfinite(med).any() else 0


def _figures(fold_stats: np.ndarray, plan: ValidationPlan) -> dict[str, Any]:
    from kernels.overfit import (
        coarsen_blocks,
        cscv,
        deflated_sharpe_from_blocks,
        sharpe_from_blocks,
        walk_forward,
    )

    stats = np.asarray(fold_stats, np.float64)
    if stats.ndim not in (3, 4) or stats.shape[1:3] != (plan.blocks, 5):
        raise ATCUserError(f"block statistics must be (combinations, {plan.blocks} blocks, 5[, symbols]), "
                           f"got shape {list(stats.shape)}")
    out: dict[str, Any] = {"blocks": plan.blocks, "series": "symbols" if stats.ndim == 4 else "one"}
    n_combos = stats.shape[0]
    best = _select(sharpe_from_blocks(stats))  # (N, symbols) or (N,), per bar over the whole axis
    out["selected"] = best
    if plan.folds:
        grid = coarsen_blocks(stats, plan.folds) if plan.blocks != plan.folds else stats
        res = cscv(grid, aggregate="median")
        summ = res.summary()
        counts, edges = res.logit_histogram()
        out["cscv"] = {**{k: _num(v) for k, v in summ.items()},
                       "logit_histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]}}
    if n_combos >= 2:
        d = deflated_sharpe_from_blocks(stats, selected=np.full(stats.shape[3:], best))
        dsr = np.atleast_1d(np.asarray(d.dsr, np.float64))
        psr = np.atleast_1d(np.asarray(d.psr, np.float64))
        ok = np.isfinite(dsr)
        out["deflated_sharpe"] = {
            "n_trials": int(d.n_trials),
            "symbols": int(ok.sum()),
            "dsr_median": _num(np.median(dsr[ok])) if ok.any() else math.nan,
            "psr_median": _num(np.median(psr[np.isfinite(psr)])) if np.isfinite(psr).any() else math.nan,
            "share_dsr_above_0_95": _num(np.mean(dsr[ok] > 0.95)) if ok.any() else math.nan,
            "sr_star_median": _num(np.nanmedian(np.atleast_1d(np.asarray(d.sr_star, np.float64)))),
        }
    if plan.walk_forward:
        wf = walk_forward(stats, plan.train_blocks, plan.test_blocks, aggregate="median")
        out["walk_forward"] = {
            "spec": plan.walk_forward, "train_bars": plan.train_bars, "test_bars": plan.test_bars,
            "windows": len(wf.windows), "selected": [int(s) for s in wf.selected],
            "window_blocks": [[int(v) for v in w] for w in wf.windows],
            "is_sharpe_mean": _num(wf.is_perf_mean), "oos_sharpe": _num(wf.oos_sharpe_agg),
            "hindsight_sharpe": _num(wf.hindsight_sharpe_agg), "hindsight_selected": int(wf.hindsight_selected),
        }
    return out


def validate_store(store: str | Path, grid, plan: ValidationPlan, *, prices: str | Path, dtype: str = "float64",
                   periods_per_year: float | None = None, parallel: bool = True) -> dict[str, Any]:
    """Validation of a complete sweep store: the figures from its `fold_stats` (and from
    `portfolio_fold_stats` when the store has it), and with a walk-forward the stitched
    out-of-sample equity (pipeline/walk_forward.py), written to the store as `wf_*` variables.
    Returns the figures for the store's `validation` attribute (the caller writes it)."""
    import zarr

    g = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    n_dims = len(grid.dims)
    fs = g["fold_stats"]
    stats = np.asarray(fs[:]).reshape((grid.size,) + tuple(fs.shape[n_dims:]))
    port = None
    if "portfolio_fold_stats" in set(g.array_keys()):
        pf = g["portfolio_fold_stats"]
        port = np.asarray(pf[:])
        if port.shape[:n_dims] == tuple(grid.shape):
            port = port.reshape((grid.size,) + port.shape[n_dims:])
    out = compute_validation(stats, plan, portfolio_stats=port)
    wf = out.get("walk_forward")
    if wf:
        from pipeline.walk_forward import labels_of, stitch_store, write_stitch

        sw, times = stitch_store(prices, grid, np.array(wf["window_blocks"], np.int64).reshape(-1, 4),
                                 wf["selected"], plan.blocks, dtype=dtype, periods_per_year=periods_per_year,
                                 parallel=parallel)
        write_stitch(store, sw, times, labels_of(grid, wf["selected"]))
        wf["stitched"] = sw.figures()
        pwf = (out.get("portfolio") or {}).get("walk_forward")
        if pwf and "portfolio_returns" in set(g.array_keys()):
            from pipeline.walk_forward import stitch_series, window_columns

            pr = g["portfolio_returns"]
            rets = np.asarray(pr[:]).reshape(grid.size, -1)
            ppy = g.attrs.get("portfolio_periods_per_year", sw.periods_per_year)
            ppy = float(ppy) if ppy is not None else math.nan
            psw = stitch_series(rets, window_columns(np.array(pwf["window_blocks"], np.int64).reshape(-1, 4),
                                                     rets.shape[1], plan.blocks), pwf["selected"], ppy)
            write_stitch(store, psw, times, labels_of(grid, pwf["selected"]), prefix="wf_portfolio_",
                         what="the portfolio's returns, portfolio_returns")
            pwf["stitched"] = {**psw.figures(), "combine": "the portfolio's own returns (portfolio_returns)"}
    return out


def _num(v) -> float:
    v = float(v)
    return v if math.isfinite(v) else math.nan


def describe(validation: dict[str, Any], combination_label) -> str:
    """Lines for the sweep summary. `combination_label(flat_index)` names a combination."""
    lines = _describe(validation, combination_label, "  ")
    p = validation.get("portfolio")
    if p:
        if "error" in p:
            lines.append(f"  portfolio: {p['error']}")
        else:
            lines.append("  portfolio per combination (portfolio_fold_stats), ranked by its own Sharpe ratio:")
            lines += _describe(p, combination_label, "    ")
    return "\n".join(lines)


def _pct(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.1%}"


def _fix(v, digits=2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _describe(validation: dict[str, Any], combination_label, ind: str) -> list[str]:
    lines = []
    one = validation.get("series") == "one"
    best = validation.get("selected")
    c = validation.get("cscv")
    if c:
        lines.append(f"{ind}CSCV over {c['n_blocks']:.0f} blocks, {c['n_splits']:.0f} splits"
                     f"{'' if c['exhaustive'] else ' (random subset)'}: probability of backtest overfitting "
                     f"{c['pbo']:.2f}, probability of loss {c['prob_loss']:.2f}, degradation slope "
                     f"{c['degradation_slope']:.2f} (OOS vs IS Sharpe per bar), median logit {c['logit_median']:.2f}")
    d = validation.get("deflated_sharpe")
    if d:
        if one:
            lines.append(f"{ind}deflated Sharpe of {combination_label(best)} over {d['n_trials']} trials: "
                         f"{_fix(d['dsr_median'])}, PSR {_fix(d['psr_median'])}")
        else:
            lines.append(f"{ind}deflated Sharpe of {combination_label(best)} over {d['n_trials']} trials: median "
                         f"{d['dsr_median']:.2f} across {d['symbols']} symbols ({d['share_dsr_above_0_95']:.0%} "
                         f"above 0.95), median PSR {d['psr_median']:.2f}")
    w = validation.get("walk_forward")
    if w:
        what = "Sharpe per bar" if one else "median Sharpe per bar"
        lines.append(f"{ind}walk-forward {w['spec']} ({w['train_bars']}:{w['test_bars']} bars, {w['windows']} "
                     f"windows): out-of-sample {what} {w['oos_sharpe']:.4f} vs in-sample {w['is_sharpe_mean']:.4f}, "
                     f"hindsight best {w['hindsight_sharpe']:.4f}")
        st = w.get("stitched")
        if st:
            o, i = st["oos"], st["is_window_mean"]
            lines.append(f"{ind}  stitched out-of-sample equity ({st['combine']}, {st['bars']} bars): Sharpe "
                         f"{_fix(o['sharpe'])}, CAGR {_pct(o['cagr'])}, max drawdown {_pct(o['max_drawdown'])}, total "
                         f"{_pct(o['total_return'])}; in-sample, each window's choice on its training window (mean "
                         f"over windows): Sharpe {_fix(i['sharpe'])}, CAGR {_pct(i['cagr'])}, max drawdown "
                         f"{_pct(i['max_drawdown'])}")
            chosen = [s for s in w["selected"] if s >= 0]
            if chosen:
                counts: dict[int, int] = {}
                for s in chosen:
                    counts[s] = counts.get(s, 0) + 1
                top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
                lines.append(f"{ind}  chosen: " + "; ".join(f"{combination_label(k)} ({n} of {len(chosen)} windows)"
                                                            for k, n in top)
                             + (f"; {len(counts) - 3} more" if len(counts) > 3 else ""))
    return lines


def describe_stored(store: str | Path) -> str:
    """The summary lines of the validation kept in a sweep store ("" without one), for `atc show`."""
    import zarr

    g = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    raw = g.attrs.get("validation")
    if not raw:
        return ""
    grid = json.loads(g.attrs["grid"])
    dims, values = grid["dims"], grid["values"]
    shape = tuple(len(v) for v in values)

    def label(flat) -> str:
        idx = np.unravel_index(int(flat), shape)
        return ", ".join(f"{d}={values[i][j]}" for i, (d, j) in enumerate(zip(dims, idx)))

    return "out-of-sample validation (computed when the sweep completed):\n" + describe(json.loads(raw), label)
