"""The stitched out-of-sample equity of a sweep's walk-forward (`atc sweep --walk-forward TRAIN:TEST`).

The walk-forward selection itself works on the per-block sums kept by the sweep
(`kernels.overfit.walk_forward`): on each training window it picks the best combination by the
ranking metric (median across symbols of the Sharpe ratio) and keeps it for the test window that
follows. Sums cannot give a return per time, so the few combinations chosen are run again here over
the whole history with the sweep's own code (`kernels.sweep.sweep_panel` with `save_signals`, then
`kernels.backtest.run_backtest`): the indicator and the backtest are causal, so the slice of a
full-history run to a window is exactly what the sweep measured in that window.

Combining symbols: at each time t of a test window the stitched return is the **equal-weight
average of the strategy returns of the symbols that have a return at t** (an own bar other than
the symbol's first, and the symbol computed under that window's combination). It is the return of
a portfolio rebalanced to equal weights at every time without a rebalancing fee (the strategies'
own trading fees are in their returns). Where no symbol has a return the stitched return is NaN and
the equity stays where it was. The equity is the product of (1 + return) from 1 before the first
test bar; NaN before the first test window and after the last one. A switch of combination at a
window boundary is free: the test window's returns are those of its combination run from the start
of the history (its position at the boundary is the one it held then), as in the per-block sums,
so the per-symbol sums of the stitched returns are `WalkForwardResult.oos_stats`.

Per window, the same average over its training window of the combination chosen on it gives the
in-sample equity (1 before the window's first bar); metrics (`kernels.metrics.series_metrics`: the
seven return-based ones) of the in-sample and out-of-sample pieces, of the whole stitched series,
and of each symbol's own stitched returns are kept. Periods per year: the sweep's fixed value, else
for the average the one inferred from the store's time axis and per symbol its own bars'.

Cost: one sweep of the distinct chosen combinations (a handful) over all symbols, in chunks of
symbols sized so that their signals and returns stay under `BUDGET_BYTES`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernels.metrics import METRIC_NAMES

WF_METRICS: tuple[str, ...] = METRIC_NAMES[:7]
"""The metrics of a stitched return series: those of `kernels.metrics.series_metrics`."""

BUDGET_BYTES = 256 * 2**20
"""Signals and returns of one chunk of symbols for all the chosen combinations stay under this."""

BOUNDS = ("train_start", "train_end", "test_start", "test_end")


def block_edges(n_times: int, n_blocks: int) -> np.ndarray:
    """First time column of each block and the end: `(n_blocks + 1,)`, by the sweep's block rule
    (column c is in block c * n_blocks // n_times, `kernels.sweep.fold_stats`)."""
    b = np.arange(n_blocks + 1, dtype=np.int64)
    return (b * n_times + n_blocks - 1) // n_blocks


def window_columns(windows: np.ndarray, n_times: int, n_blocks: int) -> np.ndarray:
    """Walk-forward windows in blocks `(W, 4)` (train start, train end, test start, test end; ends
    exclusive) as time columns."""
    return block_edges(n_times, n_blocks)[np.asarray(windows, np.int64)].reshape(-1, 4)


def combination_returns(close: np.ndarray, combos: Sequence[tuple], *, dtype: Any = np.float64,
                        parallel: bool = True) -> np.ndarray:
    """Strategy returns `(len(combos), n_symbols, n_times)` of each `(ATCParams, BacktestParams)` on
    `close`, NaN where a symbol has no return (no bar, its first bar, or not computed): the sweep's
    signals (`sweep_panel`, so the very numbers of its metrics and block sums) traded by
    `run_backtest`."""
    from kernels.backtest import run_backtest
    from kernels.status import OK
    from kernels.sweep import sweep_panel

    close = np.asarray(close, np.float64)
    res = sweep_panel(close, list(combos), dtype=np.dtype(dtype), parallel=parallel, save_signals=True,
                      on_bad="status")
    out = np.full((len(combos),) + close.shape, np.nan)
    own = ~np.isnan(close)
    first = np.argmax(own, axis=1)
    rows = np.flatnonzero(own.any(axis=1))
    for c, (p, b) in enumerate(combos):
        bt = run_backtest(close, res.average_signal[c], p, b, ok=res.status[c] == OK)
        r = bt["strategy_return"]
        r[rows, first[rows]] = np.nan  # a backtest's first bar carries no return (a placeholder 0)
        out[c] = r
    return out


def _metrics(returns: np.ndarray, ppy: float) -> tuple[np.ndarray, np.ndarray]:
    """`series_metrics` of the non-NaN returns of a series (equity 1 before the first; all NaN
    without a return: nothing was traded), and the equity at every position of `returns`
    (carried over NaN)."""
    from kernels.metrics import series_metrics

    r = np.asarray(returns, np.float64)
    ok = ~np.isnan(r)
    eq_all = np.cumprod(np.where(ok, 1.0 + np.where(ok, r, 0.0), 1.0))
    if not ok.any():
        return np.full(len(WF_METRICS), np.nan), eq_all
    ret = np.concatenate([[0.0], r[ok]])
    eq = np.concatenate([[1.0], eq_all[ok]])
    out = np.full(len(METRIC_NAMES), np.nan)
    series_metrics(ret, eq, len(ret), float(ppy), out)
    return out[:len(WF_METRICS)], eq_all


@dataclass
class StitchedWalkForward:
    """The stitched walk-forward on the store's time axis (T times, W windows, metrics `WF_METRICS`).

    `columns` `(W, 4)`: train start, train end, test start, test end (time columns, ends
    exclusive); `selected` `(W,)` the flat combination index chosen on each training window (-1:
    none, the window is left out); `oos_return`, `oos_equity`, `oos_symbols` `(T,)`: the
    equal-weight average return, its equity and how many symbols it averages (0 outside the test
    windows); `is_return`, `is_equity` `(W, T)`: each window's choice on its own training window;
    `window_metrics` `(W, 2, M)`: in-sample, out-of-sample per window; `oos_metrics` `(M,)` of the
    whole stitched series; `symbol_oos_metrics` `(n_symbols, M)` of each symbol's own stitched
    returns; `symbol_oos_sums` `(5, n_symbols)`: count and sums of r..r^4 of those returns.
    """

    columns: np.ndarray
    selected: np.ndarray
    oos_return: np.ndarray
    oos_equity: np.ndarray
    oos_symbols: np.ndarray
    is_return: np.ndarray
    is_equity: np.ndarray
    window_metrics: np.ndarray
    oos_metrics: np.ndarray
    symbol_oos_metrics: np.ndarray
    symbol_oos_sums: np.ndarray
    periods_per_year: float

    def figures(self) -> dict[str, Any]:
        """The JSON figures kept in the store's `validation` attribute."""
        def d(v):
            return {m: (float(x) if np.isfinite(x) else None) for m, x in zip(WF_METRICS, v)}

        used = self.selected >= 0
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                is_mean = np.nanmean(np.where(np.isfinite(self.window_metrics[used, 0]),
                                              self.window_metrics[used, 0], np.nan), axis=0) \
                    if used.any() else np.full(len(WF_METRICS), np.nan)
                oos_mean = np.nanmean(np.where(np.isfinite(self.window_metrics[used, 1]),
                                               self.window_metrics[used, 1], np.nan), axis=0) \
                    if used.any() else np.full(len(WF_METRICS), np.nan)
        return {"combine": "equal-weight average of the symbols' returns at each time",
                "bars": int(np.count_nonzero(~np.isnan(self.oos_return))),
                "periods_per_year": float(self.periods_per_year) if np.isfinite(self.periods_per_year) else None,
                "oos": d(self.oos_metrics), "is_window_mean": d(is_mean), "oos_window_mean": d(oos_mean)}


class _Stitcher:
    """Accumulates chunks of symbols into a `StitchedWalkForward` (sums and counts per time)."""

    def __init__(self, columns: np.ndarray, selected: np.ndarray, n_times: int, n_symbols: int):
        self.columns = np.asarray(columns, np.int64)
        self.selected = np.asarray(selected, np.int64)
        W = len(self.columns)
        self.oos_sum = np.zeros(n_times)
        self.oos_n = np.zeros(n_times, np.int64)
        self.is_sum = np.zeros((W, n_times))
        self.is_n = np.zeros((W, n_times), np.int64)
        self.sym_ret = None
        self.sym_metrics = np.full((n_symbols, len(WF_METRICS)), np.nan)
        self.sym_sums = np.zeros((5, n_symbols))

    def add(self, returns: dict[int, np.ndarray], lo: int, ppy_symbols: np.ndarray) -> None:
        """`returns[c]` `(k, T)`: the returns of symbols lo..lo+k-1 under combination c."""
        k = next(iter(returns.values())).shape[0] if returns else 0
        stitched = np.full((k, self.oos_sum.shape[0]), np.nan)
        for w, (a0, a1, b0, b1) in enumerate(self.columns):
            c = int(self.selected[w])
            if c < 0:
                continue
            r = returns[c]
            test = r[:, b0:b1]
            stitched[:, b0:b1] = test
            self.oos_sum[b0:b1] += np.nansum(test, axis=0)
            self.oos_n[b0:b1] += np.count_nonzero(~np.isnan(test), axis=0)
            train = r[:, a0:a1]
            self.is_sum[w, a0:a1] += np.nansum(train, axis=0)
            self.is_n[w, a0:a1] += np.count_nonzero(~np.isnan(train), axis=0)
        ok = ~np.isnan(stitched)
        z = np.where(ok, stitched, 0.0)
        for p in range(5):
            self.sym_sums[p, lo:lo + k] = (z ** p * ok).sum(axis=1)
        for i in range(k):
            self.sym_metrics[lo + i] = _metrics(stitched[i], ppy_symbols[i])[0]

    def finish(self, ppy: float) -> StitchedWalkForward:
        W, T = self.is_sum.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            oos = np.where(self.oos_n > 0, self.oos_sum / self.oos_n, np.nan)
            is_r = np.where(self.is_n > 0, self.is_sum / self.is_n, np.nan)
        oos_m, oos_eq = _metrics(oos, ppy)
        span = np.zeros(T, bool)
        is_eq = np.full((W, T), np.nan)
        wm = np.full((W, 2, len(WF_METRICS)), np.nan)
        for w, (a0, a1, b0, b1) in enumerate(self.columns):
            if self.selected[w] < 0:
                continue
            span[b0:b1] = True
            wm[w, 0], is_eq[w, a0:a1] = _metrics(is_r[w, a0:a1], ppy)
            wm[w, 1] = _metrics(oos[b0:b1], ppy)[0]
        if span.any():
            first, last = np.flatnonzero(span)[[0, -1]]
            oos_eq[:first] = np.nan
            oos_eq[last + 1:] = np.nan
        else:
            oos_eq[:] = np.nan
        return StitchedWalkForward(self.columns, self.selected, oos, oos_eq, self.oos_n, is_r, is_eq, wm, oos_m,
                                   self.sym_metrics, self.sym_sums, float(ppy))


def stitch_panel(close: np.ndarray, combos: dict[int, tuple], columns: np.ndarray, selected: np.ndarray, *,
                 periods_per_year: float, symbol_periods_per_year=None, dtype: Any = np.float64,
                 parallel: bool = True) -> StitchedWalkForward:
    """The stitched walk-forward of an in-memory panel `close` `(n_symbols, T)`: `combos` maps each
    flat index in `selected` to its `(ATCParams, BacktestParams)`; `columns` as
    `StitchedWalkForward.columns`. `symbol_periods_per_year` (one per symbol) for the per-symbol
    metrics, default `periods_per_year`."""
    close = np.asarray(close, np.float64)
    n_sym, T = close.shape
    st = _Stitcher(columns, selected, T, n_sym)
    ppy_s = np.full(n_sym, periods_per_year) if symbol_periods_per_year is None else \
        np.asarray(symbol_periods_per_year, np.float64)
    _add_chunk(st, close, combos, selected, 0, ppy_s, dtype, parallel)
    return st.finish(periods_per_year)


def _add_chunk(st: _Stitcher, close, combos, selected, lo, ppy_s, dtype, parallel) -> None:
    chosen = sorted({int(c) for c in selected if c >= 0})
    if not chosen:
        return
    r = combination_returns(close, [combos[c] for c in chosen], dtype=dtype, parallel=parallel)
    st.add({c: r[j] for j, c in enumerate(chosen)}, lo, ppy_s)


def stitch_store(prices: str | Path, grid, windows: np.ndarray, selected: Sequence[int], n_blocks: int, *,
                 dtype: str = "float64", periods_per_year: float | None = None,
                 parallel: bool = True) -> tuple[StitchedWalkForward, np.ndarray]:
    """The stitched walk-forward of a sweep over the price store `prices`, reading it in chunks of
    symbols; `windows` in blocks as `WalkForwardResult.windows`, `selected` flat indices of `grid`.
    Returns it and the time axis."""
    from kernels.metrics import infer_periods_per_year, periods_per_year_by_symbol
    from pipeline.store import open_prices

    selected = np.asarray(selected, np.int64)
    ds = open_prices(prices)
    try:
        times = np.asarray(ds["time"].values)
        n_sym, T = ds.sizes["symbol"], ds.sizes["time"]
        columns = window_columns(windows, T, n_blocks)
        st = _Stitcher(columns, selected, T, n_sym)
        combos = {int(c): grid.params(int(c)) for c in set(selected.tolist()) if c >= 0}
        per_sym = max(1, len(combos)) * T * (np.dtype(dtype).itemsize + 16)
        k = max(1, min(n_sym, BUDGET_BYTES // max(per_sym, 1)))
        for lo in range(0, n_sym, k):
            close = np.asarray(ds["close"][lo:lo + k].values, np.float64)
            ppy_s = np.full(close.shape[0], periods_per_year) if periods_per_year is not None else \
                periods_per_year_by_symbol(times, close)
            _add_chunk(st, close, combos, selected, lo, ppy_s, dtype, parallel)
    finally:
        ds.close()
    ppy = periods_per_year if periods_per_year is not None else infer_periods_per_year(times)
    return st.finish(ppy), times


def stitch_series(returns: np.ndarray, columns: np.ndarray, selected: Sequence[int],
                  periods_per_year: float) -> StitchedWalkForward:
    """The stitched walk-forward of one return series per combination, `returns` `(N, T)` (a
    sweep's `portfolio_returns`, flat combinations first): test window w takes `returns[selected[w]]`
    there. The same code as for symbols with one series, so the average is the series itself."""
    sel = np.asarray(selected, np.int64)
    st = _Stitcher(columns, sel, returns.shape[1], 1)
    st.add({int(c): np.asarray(returns[int(c)], np.float64)[None, :] for c in set(sel.tolist()) if c >= 0}, 0,
           np.array([periods_per_year], np.float64))
    return st.finish(periods_per_year)


def write_stitch(store: str | Path, sw: StitchedWalkForward, times: np.ndarray, labels: Sequence[str],
                 prefix: str = "wf_", what: str = "the symbols' returns (equal-weight average)") -> None:
    """Add the stitched walk-forward to a sweep store as `wf_*` variables (data/README.md); with
    `prefix="wf_portfolio_"` the one of the portfolio per combination (no per-symbol metrics)."""
    import xarray as xr
    import zarr

    g = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    have = set(g.array_keys())
    W = len(sw.selected)
    data = {
        "wf_oos_return": (("time",), sw.oos_return, {
            "description": "walk-forward stitched out-of-sample return: equal-weight average of the symbols' "
                           "returns under the combination chosen on the preceding training window (NaN outside "
                           "the test windows)"}),
        "wf_oos_equity": (("time",), sw.oos_equity, {
            "description": "equity of wf_oos_return, 1 before the first test bar"}),
        "wf_oos_symbols": (("time",), sw.oos_symbols.astype(np.int32), {
            "description": "number of symbols averaged in wf_oos_return"}),
        "wf_is_equity": (("wf_window", "time"), sw.is_equity, {
            "description": "in-sample equity of each window's choice over its training window (equal-weight "
                           "average), 1 before the window"}),
        "wf_selected": (("wf_window",), sw.selected, {
            "description": "flat (C-order) index of the combination chosen on the training window, -1 none"}),
        "wf_selected_label": (("wf_window",), np.array(list(labels), dtype=object), {
            "description": "the chosen combination's swept values"}),
        "wf_bounds": (("wf_window", "wf_bound"), sw.columns, {
            "description": "time columns of the window: train start, train end, test start, test end (ends "
                           "exclusive)"}),
        "wf_window_metrics": (("wf_window", "wf_sample", "wf_metric"), sw.window_metrics, {
            "description": "metrics of the equal-weight average over the training (in_sample) and the test "
                           "(out_of_sample) window of the window's choice"}),
        "wf_oos_metrics": (("wf_metric",), sw.oos_metrics, {
            "description": "metrics of the whole stitched out-of-sample series"}),
        "wf_symbol_oos_metrics": (("symbol", "wf_metric"), sw.symbol_oos_metrics, {
            "description": "metrics of each symbol's own stitched out-of-sample returns"}),
    }
    if prefix != "wf_":
        del data["wf_symbol_oos_metrics"]
        data = {prefix + k[3:]: (dims, v, {"description": a["description"] + f" ({what})"})
                for k, (dims, v, a) in data.items()}
    coords = {"wf_window": np.arange(W), "wf_bound": np.array(BOUNDS, dtype=object),
              "wf_sample": np.array(["in_sample", "out_of_sample"], dtype=object),
              "wf_metric": np.array(WF_METRICS, dtype=object)}
    if "time" not in have:
        coords["time"] = times
    xr.Dataset(data, coords=coords).to_zarr(str(store), mode="a", zarr_format=3, consolidated=False)


def labels_of(grid, selected: Sequence[int]) -> list[str]:
    """"La=0.02, De=0.03" for each chosen flat index ("" for -1)."""
    out = []
    for c in selected:
        if c < 0:
            out.append("")
            continue
        idx = np.unravel_index(int(c), grid.shape)
        out.append(", ".join(f"{d}={grid.values[i][j]}" for i, (d, j) in enumerate(zip(grid.dims, idx))))
    return out


@dataclass
class WalkForwardView:
    """What `atc plot --walk-forward` draws, read back from a sweep store (`read_walk_forward`)."""

    times: np.ndarray
    oos_equity: np.ndarray
    is_equity: np.ndarray
    bounds: np.ndarray
    selected: np.ndarray
    labels: list[str]
    window_metrics: np.ndarray
    oos_metrics: dict[str, float]
    spec: str
    portfolio_equity: np.ndarray | None = None
    portfolio_labels: list[str] | None = None
    portfolio_metrics: dict[str, float] | None = None


def read_walk_forward(store: str | Path) -> WalkForwardView:
    """The `wf_*` variables of a sweep store; a clear error when the sweep had no walk-forward."""
    import xarray as xr

    from kernels.errors import ATCUserError

    ds = xr.open_zarr(str(store))
    try:
        if "wf_oos_equity" not in ds:
            raise ATCUserError(f"{store} has no walk-forward result: run atc sweep ... --walk-forward TRAIN:TEST "
                               f"(a store swept before the stitched equity existed: recompute it with --overwrite)")
        v = json.loads(ds.attrs.get("validation") or "{}").get("walk_forward", {})
        port = "wf_portfolio_oos_equity" in ds
        return WalkForwardView(
            np.asarray(ds["time"].values), np.asarray(ds["wf_oos_equity"].values, np.float64),
            np.asarray(ds["wf_is_equity"].values, np.float64), np.asarray(ds["wf_bounds"].values, np.int64),
            np.asarray(ds["wf_selected"].values, np.int64), [str(s) for s in ds["wf_selected_label"].values],
            np.asarray(ds["wf_window_metrics"].values, np.float64),
            {str(m): float(x) for m, x in zip(ds["wf_metric"].values, ds["wf_oos_metrics"].values)},
            str(v.get("spec", "")),
            np.asarray(ds["wf_portfolio_oos_equity"].values, np.float64) if port else None,
            [str(s) for s in ds["wf_portfolio_selected_label"].values] if port else None,
            {str(m): float(x) for m, x in zip(ds["wf_metric"].values, ds["wf_portfolio_oos_metrics"].values)}
            if port else None)
    finally:
        ds.close()
