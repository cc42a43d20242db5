"""The reuse engine (kernels/sweep.py): every combination equals compute_atc + run_backtest with its
parameters, bit for bit; grids are validated before any work."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ATCParams, compute_atc
from kernels import status as st
from kernels.backtest import BacktestParams, run_backtest
from kernels.errors import ATCInputError
from kernels.metrics import METRIC_NAMES
from kernels.sweep import SweepGridError, make_grid, sweep_grid, sweep_panel
from kernels.synthetic import random_walk_panel

SHORT = ATCParams(ema_len=10, hma_len=12, wma_len=9, dema_len=14, lsma_len=11, kama_len=10)


def _panel():
    x = random_walk_panel(20, 160, seed=3, vol=0.02)
    x[3, :30] = np.nan  # late listing
    x[5, 120:] = np.nan  # delisting
    x[7, :137] = np.nan  # 23 bars: enough for ema_len=10 without cutout only
    x[9, :] = np.nan  # no data
    x[11, 100] = -1.0  # bad data
    x[13, 60:75] = np.nan  # no bars for a while (a trading halt): computed on its own bars
    x[15, ::3] = np.nan  # every third time without a bar
    return x


def _assert_combination(x, p, b, res, c, ppy):
    exp = compute_atc(x, p, parallel=False, on_bad="status")
    np.testing.assert_array_equal(res.status[c], exp.status)
    a = exp["Average_Signal"]
    assert np.array_equal(res.average_signal[c], a, equal_nan=True), (p, b)
    bt = run_backtest(x, a, p, b, periods_per_year=ppy, ok=exp.status == st.OK)
    for m, name in enumerate(METRIC_NAMES):
        assert np.array_equal(res.metrics[c, m], bt.metrics[name], equal_nan=True), (name, p, b)


def test_every_combination_equals_compute_atc_and_backtest():
    x = _panel()
    grid = make_grid({
        "ema_len": [10, 16], "La": [0.02, 0.8], "De": [0.0, 2.0], "cutout": [0, 25],
        "long_threshold": [0.1, 0.3], "strategy_mode": [False, True], "kama_w": [1.0, 3.0],
        "fee_bps": [0, 10], "long_only": [False, True],
    }, base_atc=SHORT)
    combos = grid.all_params()
    res = sweep_panel(x, combos, periods_per_year=252.0, save_signals=True, parallel=False)
    assert res.metrics.shape == (grid.size, len(METRIC_NAMES), 20)
    assert set(np.unique(res.status)) == {st.OK, st.INSUFFICIENT_HISTORY, st.NO_DATA, st.BAD_DATA}
    rng = np.random.default_rng(0)
    picks = sorted(set(rng.choice(grid.size, 24, replace=False)) | {0, grid.size - 1})
    for c in picks:
        _assert_combination(x, *combos[c], res, c, 252.0)
    # the sweep really differs across combinations
    assert len({res.metrics[c, 0, 0] for c in range(grid.size)}) > grid.size // 4


def test_order_of_combinations_does_not_matter_and_blocks_of_a_grid():
    x = _panel()
    grid = make_grid({"De": [0.5, 0.0], "La": [0.1, 0.02], "lsma_len": [11, 8]}, base_atc=SHORT)
    combos = grid.all_params()
    full = sweep_panel(x, combos, periods_per_year=12.0, parallel=False)
    rev = sweep_panel(x, combos[::-1], periods_per_year=12.0, parallel=False)
    assert np.array_equal(full.metrics, rev.metrics[::-1], equal_nan=True)
    part = sweep_grid(x, grid, 3, 7, periods_per_year=12.0, parallel=False, lanes=4)
    assert np.array_equal(part.metrics, full.metrics[3:7], equal_nan=True)
    assert full.average_signal is None


@pytest.mark.slow  # compiles the float32 kernels: ~30 s more
def test_float32_matches_compute_atc_float32():
    x = random_walk_panel(3, 120, seed=5)
    combos = make_grid({"De": [0.0, 1.0]}, base_atc=SHORT).all_params()
    res = sweep_panel(x, combos, dtype=np.float32, save_signals=True, parallel=False)
    for c, (p, _) in enumerate(combos):
        exp = compute_atc(x, p, dtype=np.float32, parallel=False)["Average_Signal"]
        assert res.average_signal.dtype == np.float32
        assert np.array_equal(res.average_signal[c], exp, equal_nan=True)


def test_bad_data_raise_option():
    x = _panel()
    with pytest.raises(ATCInputError, match="index 11"):
        sweep_panel(x, [(SHORT, BacktestParams())], on_bad="raise", parallel=False)
    res = sweep_panel(x, [(SHORT, BacktestParams())], parallel=False, symbols=[f"S{i}" for i in range(20)],
                      index_offset=100)
    assert res.messages[11] == "symbol 'S11' (index 111) has a close <= 0 (-1.0) at bar 100"
    assert res.messages[9] == "symbol 'S9' (index 109) has no valid close"


@pytest.mark.parametrize("grid,match", [
    ({"ema_length": [10]}, "unknown parameter 'ema_length'"),
    ({"periods_per_year": [252]}, "cannot be swept"),
    ({"La": []}, "La has an empty list"),
    ({"De": [0.1, 200]}, "De=200 is invalid"),
    ({"ema_len": [10, 2.5]}, "ema_len=2.5 is invalid"),
    ({"fee_bps": [-1]}, "fee_bps=-1 is invalid"),
    ({"long_only": ["sometimes"]}, "long_only='sometimes' is invalid"),
    ({"robustness": ["Medium", "Huge"]}, "robustness='Huge' is invalid"),
    ({"La": [0.1, 0.1]}, "more than once"),
    ({"La": {"a": 1}}, "must be a list"),
    ({"long_threshold": [0.0, 0.2], "short_threshold": [0.1]}, "combination long_threshold=0.0, short_threshold=0.1"),
    ({"lsma_len": [6, 8], "robustness": ["Narrow", "Medium"]}, "combination lsma_len=6, robustness='Medium'"),
    ({"short_threshold": [0.2]}, "combination short_threshold=0.2 is invalid"),
    ({"ema_len": [True]}, "ema_len=True is invalid"),
    ({}, "empty"),
    ([1, 2], "must map"),
])
def test_bad_grids(grid, match):
    with pytest.raises(SweepGridError, match=match):
        make_grid(grid)


def test_values_valid_only_together_are_accepted():
    g = make_grid({"short_threshold": [0.2, -0.1], "long_threshold": [0.5]})
    assert g.params(0)[0].short_threshold == 0.2


def test_grid_values_are_coerced_and_scalars_accepted():
    g = make_grid({"ema_len": ["12", 14], "strategy_mode": "true", "fee_bps": [1]})
    assert g.dims == ("ema_len", "strategy_mode", "fee_bps")
    assert g.values == ((12, 14), (True,), (1.0,)) and g.shape == (2, 1, 1) and g.size == 2
    p, b = g.params(1)
    assert (p.ema_len, p.strategy_mode, b.fee_bps) == (14, True, 1.0)
    assert g.point(0) == {"ema_len": 12, "strategy_mode": True, "fee_bps": 1.0}


def test_fold_statistics_are_sums_of_the_backtest_returns_per_block():
    """Per block of the time axis: count and sums of r..r^4 of each symbol's strategy returns over
    its own bars (not the first, which carries no return), straight from run_backtest's series."""
    x = _panel()
    combos = [(SHORT, BacktestParams(fee_bps=f)) for f in (0.0, 10.0)]
    folds = 6
    res = sweep_panel(x, combos, periods_per_year=252.0, parallel=False, folds=folds)
    assert res.fold_stats.shape == (2, folds, 5, x.shape[0])
    n_times = x.shape[1]
    block = np.arange(n_times) * folds // n_times
    for c, (p, b) in enumerate(combos):
        exp = compute_atc(x, p, parallel=False, on_bad="status")
        bt = run_backtest(x, exp["Average_Signal"], p, b, periods_per_year=252.0, ok=exp.status == st.OK)
        for i in range(x.shape[0]):
            want = np.zeros((folds, 5))
            own = np.flatnonzero(~np.isnan(bt["strategy_return"][i]))[1:]
            for col in own:
                r = bt["strategy_return"][i, col]
                want[block[col]] += [1.0, r, r**2, r**3, r**4]
            np.testing.assert_allclose(res.fold_stats[c, :, :, i], want, rtol=1e-12, atol=1e-300)
    assert res.fold_stats[:, :, 0, :].sum() > 0
    with pytest.raises(Exception, match="folds must be"):
        sweep_panel(x, combos, folds=-1)
