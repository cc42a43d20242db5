"""The pandas drop-in keeps the widely used signature: names, defaults, Series on the index."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from kernels import ATCInputError, ATCParams, compute_atc, compute_atc_signals
from kernels.synthetic import random_walk_panel

EXPECTED_DEFAULTS = dict(
    src=None, ema_len=28, hull_len=28, wma_len=28, dema_len=28, lsma_len=28, kama_len=28,
    ema_w=1.0, hma_w=1.0, wma_w=1.0, dema_w=1.0, lsma_w=1.0, kama_w=1.0, robustness="Medium",
    La=0.02, De=0.03, cutout=0, long_threshold=0.1, short_threshold=-0.1, strategy_mode=False,
)


def test_signature_and_defaults():
    sig = inspect.signature(compute_atc_signals)
    names = list(sig.parameters)
    assert names[0] == "prices"
    assert {k: sig.parameters[k].default for k in names[1:]} == EXPECTED_DEFAULTS


def test_keywords_map_to_params_and_index_is_kept():
    idx = pd.date_range("2020-01-01", periods=300, freq="B")
    prices = pd.Series(random_walk_panel(1, 300, seed=4)[0], index=idx, name="XYZ")
    out = compute_atc_signals(prices, hull_len=20, hma_w=0.5, cutout=10, strategy_mode=True)
    expected = compute_atc(prices.to_numpy(), ATCParams(hma_len=20, hma_w=0.5, cutout=10, strategy_mode=True))
    assert len(out) == 13
    for name, series in out.items():
        assert series.index.equals(idx)
        np.testing.assert_array_equal(series.to_numpy(), expected[name])


def test_src_series_is_aligned_and_used():
    prices = pd.Series(random_walk_panel(1, 200, seed=6)[0])
    src = prices * 1.001
    out = compute_atc_signals(prices, src[::-1])  # reversed index: realigned to prices
    expected = compute_atc(prices.to_numpy(), src=src.to_numpy())
    np.testing.assert_array_equal(out["KAMA_S"].to_numpy(), expected["KAMA_S"])


def test_not_a_series_is_a_clear_error():
    with pytest.raises(ATCInputError, match="prices must be a pandas Series"):
        compute_atc_signals([1.0, 2.0])
