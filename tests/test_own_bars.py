"""Every symbol on its own bars (ATC_SPEC.md section 7): a NaN close is a time without a bar.

Each backend's result on a panel with holes must equal, bit for bit, the symbol computed alone on
its compacted series (its non-NaN closes) and placed back at its own times, NaN elsewhere. The
expected values here come from running the same public function on the compacted series, so a
kernel that skipped, filled or shifted a bar anywhere would differ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels import ATCParams, compute_atc, compute_atc_signals
from kernels.backtest import BacktestParams, run_backtest
from kernels.metrics import METRIC_NAMES, periods_per_year_by_symbol
from kernels.synthetic import random_walk_panel

SMALL = dict(ema_len=6, hma_len=7, wma_len=5, dema_len=6, lsma_len=5, kama_len=8, robustness="Narrow")


def holed_panel(n_sym: int, n_bars: int, seed: int, share: float) -> np.ndarray:
    """Random walks with late listings, delistings, halts and a `share` of random missing times."""
    x = random_walk_panel(n_sym, n_bars, seed=seed, vol=0.02)
    rng = np.random.default_rng(seed + 1)
    x[rng.random(x.shape) < share] = np.nan
    x[0, : n_bars // 4] = np.nan
    if n_sym > 1:
        x[1, n_bars - n_bars // 5:] = np.nan
    if n_sym > 2:
        x[2, n_bars // 3: n_bars // 3 + 12] = np.nan  # a halt
    return x


def alone(close_row: np.ndarray, params: ATCParams, **kw) -> dict[str, np.ndarray]:
    """The symbol computed on its own compacted series, placed back at its own times."""
    own = ~np.isnan(close_row)
    res = compute_atc(close_row[own], params, **kw)
    out = {}
    for name, v in res.items():
        full = np.full(close_row.shape, np.nan, v.dtype)
        full[own] = v
        out[name] = full
    return out


def assert_bitwise_alone(res, panel, params, **kw):
    for i in range(panel.shape[0]):
        exp = alone(panel[i], params, **kw)
        for name, v in exp.items():
            assert np.array_equal(res[name][i], v, equal_nan=True), (i, name)


@given(seed=st.integers(0, 10_000), share=st.sampled_from([0.05, 0.3, 0.6]),
       variant=st.sampled_from([dict(SMALL), dict(SMALL, cutout=9, strategy_mode=True),
                                dict(SMALL, robustness="Wide", ema_len=8, hma_len=8, wma_len=8, dema_len=8,
                                     lsma_len=8, kama_len=8, La=0.5, De=1.0)]))
def test_cpu_equals_each_symbol_alone(seed, share, variant):
    panel = holed_panel(9, 160, seed, share)
    p = ATCParams(**variant)
    res = compute_atc(panel, p, on_bad="status", lanes=4)
    assert_bitwise_alone(res, panel, p, on_bad="status")


@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.slow)])  # float32: its compile
def test_holes_past_the_anchor_with_src_and_threads(dtype):
    """Long compacted series cross the 256-bar re-anchoring; `src` must have the same holes."""
    panel = holed_panel(6, 900, seed=4, share=0.3)
    src = panel * (1 + 0.002 * np.sin(np.arange(900)))
    p = ATCParams(**dict(SMALL, cutout=20))
    res = compute_atc(panel, p, src=src, dtype=dtype, parallel=True, lanes=2)
    for i in range(panel.shape[0]):
        own = ~np.isnan(panel[i])
        single = compute_atc(panel[i][own], p, src=src[i][own], dtype=dtype)
        for name, v in single.items():
            assert np.array_equal(res[name][i][own], v, equal_nan=True), (i, name)
            assert np.isnan(res[name][i][~own]).all()


def test_src_with_other_holes_is_an_error():
    panel = holed_panel(2, 120, seed=2, share=0.1)
    src = panel.copy()
    src[1, 60] = np.nan if not np.isnan(src[1, 60]) else 1.0
    with pytest.raises(Exception, match="src and close differ in missing bars"):
        compute_atc(panel, src=src)


def test_insufficient_history_counts_own_bars_only():
    p = ATCParams(**SMALL)
    need = p.min_bars
    x = random_walk_panel(1, 3 * need, seed=1)[0]
    x[::3] = np.nan  # span of 3*need times, 2*need own bars: enough
    assert int(compute_atc(x, p).status) == 0
    y = np.full(3 * need, np.nan)
    y[::3] = random_walk_panel(1, need, seed=1)[0][: len(y[::3])]
    y[3] = np.nan  # need - 1 own bars over a long span: not enough
    res = compute_atc(y, p)
    assert int(res.status) != 0 and f"{need - 1} bars of its own" in res.messages[0]


def test_pandas_api_accepts_nan_as_no_bar():
    x = random_walk_panel(1, 300, seed=9)[0]
    idx = pd.bdate_range("2020-01-01", periods=300)
    s = pd.Series(x, index=idx)
    s.iloc[np.random.default_rng(0).random(300) < 0.25] = np.nan
    out = compute_atc_signals(s, ema_len=10)
    own = compute_atc_signals(s.dropna(), ema_len=10)
    for name, series in out.items():
        assert series.index.equals(s.index)
        pd.testing.assert_series_equal(series.dropna(), own[name].dropna(), check_freq=False)
        assert series[s.isna()].isna().all()
        assert series[s.notna()].index.equals(own[name].index)
        np.testing.assert_array_equal(series[s.notna()].to_numpy(), own[name].to_numpy())


def test_backtest_trades_own_bars_only():
    """Positions are held from one own bar to the next; returns between consecutive own bars."""
    panel = holed_panel(5, 400, seed=3, share=0.3)
    p = ATCParams(**SMALL)
    res = compute_atc(panel, p)
    ppy = np.array([252.0, 12.0, 52.0, 365.0, 8760.0])
    bt = run_backtest(panel, res["Average_Signal"], p, BacktestParams(fee_bps=5), periods_per_year=ppy)
    for i in range(panel.shape[0]):
        own = ~np.isnan(panel[i])
        one = run_backtest(panel[i][own], res["Average_Signal"][i][own], p, BacktestParams(fee_bps=5),
                           periods_per_year=ppy[i])
        for name in ("position", "strategy_return", "equity"):
            np.testing.assert_array_equal(bt[name][i][own], one[name])
            assert np.isnan(bt[name][i][~own]).all()
        for name in METRIC_NAMES:
            assert np.array_equal(bt.metrics[name][i], one.metrics[name], equal_nan=True), name
    np.testing.assert_array_equal(bt.periods_per_year, ppy)


def test_periods_per_year_from_each_symbols_own_times():
    days = pd.date_range("2015-01-01", "2019-12-31", freq="D")
    close = np.full((3, len(days)), np.nan)
    close[0, :] = 1.0                                  # every calendar day: ~365
    close[1, days.day_of_week < 5] = 1.0                 # weekdays: ~261
    close[2, days.is_month_end] = 1.0                  # month ends: ~12
    ppy = periods_per_year_by_symbol(days.values, close)
    assert abs(ppy[0] - 365.25) < 1.0
    assert 258 < ppy[1] < 263
    assert abs(ppy[2] - 12.0) < 0.3


@pytest.mark.parametrize("share", [0.0, 0.3])
def test_cuda_equals_cpu_with_holes(share, monkeypatch):
    from kernels.api import cuda_status

    usable, _, what = cuda_status()
    if not usable:
        pytest.skip(f"CUDA backend not usable: {what}")
    from kernels import cuda as gpu

    monkeypatch.setattr(gpu, "SLICE_SYMBOLS", 2)  # one slice with holes, one without
    panel = holed_panel(4, 70, seed=5, share=share)
    panel[3] = random_walk_panel(1, 70, seed=6)[0]
    p = ATCParams(**SMALL)
    cpu = compute_atc(panel, p)
    dev = compute_atc(panel, p, backend="cuda")
    for name in cpu:
        assert np.array_equal(cpu[name], dev[name], equal_nan=True), name
    assert_bitwise_alone(dev, panel, p)
