"""Out-of-sample validation of a sweep: CSCV's probability of backtest overfitting, the deflated
Sharpe ratio of the chosen combination, and walk-forward selection (formulas: kernels/overfit.py,
reading guide: docs/OVERFITTING.md).

The sweep tasks keep, for every combination and symbol, sufficient statistics of the strategy
returns per block of the time axis (`fold_stats`: count and sums of r..r^4; kernels/sweep.py). One
block grid serves both analyses: `S` blocks for CSCV alone, or the walk-forward's finer grid of
gcd(train, test) bars, merged into `S` groups for CSCV. Combinations are ranked as the sweep's
summary ranks them: by the median across symbols of the Sharpe ratio.

The figures are computed once, when the sweep completes, and kept in the sweep store's `validation`
attribute (JSON), so `atc sweep` (rerun on a complete store) and `atc show` print them again
without recomputing. Memory: the whole `fold_stats` array, combinations x blocks x 5 x symbols x
8 bytes (200 combinations, 2,000 symbols, 10 blocks: 160 MB).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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


def compute_validation(fold_stats: np.ndarray, plan: ValidationPlan, *, periods_per_year=None) -> dict[str, Any]:
    """The figures kept in the store: `fold_stats` `(N combinations, blocks, 5, symbols)`."""
    from kernels.overfit import coarsen_blocks, cscv, deflated_sharpe_from_blocks, sharpe_from_blocks, walk_forward

    out: dict[str, Any] = {"blocks": plan.blocks}
    stats = np.asarray(fold_stats, np.float64)
    n_combos = stats.shape[0]
    full = sharpe_from_blocks(stats)  # (N, symbols) per-bar Sharpe over the whole axis
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(np.where(np.isfinite(full), full, np.nan), axis=1)
    best = int(np.nanargmax(med)) if np.isfinite(med).any() else 0
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
        dsr = np.asarray(d.dsr, np.float64)
        psr = np.asarray(d.psr, np.float64)
        ok = np.isfinite(dsr)
        out["deflated_sharpe"] = {
            "n_trials": int(d.n_trials),
            "symbols": int(ok.sum()),
            "dsr_median": _num(np.median(dsr[ok])) if ok.any() else math.nan,
            "psr_median": _num(np.median(psr[np.isfinite(psr)])) if np.isfinite(psr).any() else math.nan,
            "share_dsr_above_0_95": _num(np.mean(dsr[ok] > 0.95)) if ok.any() else math.nan,
            "sr_star_median": _num(np.nanmedian(np.asarray(d.sr_star, np.float64))),
        }
    if plan.walk_forward:
        wf = walk_forward(stats, plan.train_blocks, plan.test_blocks, aggregate="median")
        out["walk_forward"] = {
            "spec": plan.walk_forward, "train_bars": plan.train_bars, "test_bars": plan.test_bars,
            "windows": int(len(wf.windows)), "selected": [int(s) for s in wf.selected],
            "is_sharpe_mean": _num(wf.is_perf_mean), "oos_sharpe": _num(wf.oos_sharpe_agg),
            "hindsight_sharpe": _num(wf.hindsight_sharpe_agg), "hindsight_selected": int(wf.hindsight_selected),
        }
    return out


def _num(v) -> float:
    v = float(v)
    return v if math.isfinite(v) else math.nan


def describe(validation: dict[str, Any], combination_label) -> str:
    """Lines for the sweep summary. `combination_label(flat_index)` names a combination."""
    lines = []
    best = validation.get("selected")
    c = validation.get("cscv")
    if c:
        lines.append(f"  CSCV over {c['n_blocks']} blocks, {c['n_splits']} splits"
                     f"{'' if c['exhaustive'] else ' (random subset)'}: probability of backtest overfitting "
                     f"{c['pbo']:.2f}, probability of loss {c['prob_loss']:.2f}, degradation slope "
                     f"{c['degradation_slope']:.2f} (OOS vs IS Sharpe per bar), median logit {c['logit_median']:.2f}")
    d = validation.get("deflated_sharpe")
    if d:
        lines.append(f"  deflated Sharpe of {combination_label(best)} over {d['n_trials']} trials: median "
                     f"{d['dsr_median']:.2f} across {d['symbols']} symbols ({d['share_dsr_above_0_95']:.0%} above "
                     f"0.95), median PSR {d['psr_median']:.2f}")
    w = validation.get("walk_forward")
    if w:
        lines.append(f"  walk-forward {w['spec']} ({w['train_bars']}:{w['test_bars']} bars, {w['windows']} windows): "
                     f"out-of-sample median Sharpe per bar {w['oos_sharpe']:.4f} vs in-sample {w['is_sharpe_mean']:.4f}, "
                     f"hindsight best {w['hindsight_sharpe']:.4f}")
    return "\n".join(lines)
