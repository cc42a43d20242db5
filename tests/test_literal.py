"""kernels/literal.py (the benchmark anchor, a literal Numba transcription of ATC_SPEC.md) against
the slow pure-Python reference, with the tolerances of spec section 7 (tests/kernel_helpers.py):
complete agreement on random walks, divergence only from an exact tie on real data."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_helpers import assert_matches_reference
from kernels import OUTPUT_NAMES, ATCParams
from kernels.literal import literal_atc, literal_panel
from kernels.synthetic import random_walk_panel

VARIANTS = [
    {},
    dict(robustness="Narrow"),
    dict(robustness="Wide", cutout=120),
    dict(strategy_mode=True, La=0.05, De=0.1),
    dict(ema_w=0.5, hma_w=2.0, wma_w=1.5, dema_w=0.1, lsma_w=3.0, kama_w=0.2,
         long_threshold=0.3, short_threshold=-0.2),
    # short lengths: L = 1 and 2 (LSMA through the current point, HMA half length 1)
    dict(robustness="Wide", ema_len=8, hma_len=8, wma_len=9, dema_len=10, lsma_len=8, kama_len=8,
         cutout=3, long_threshold=0.0, short_threshold=-0.5),
    dict(ema_len=12, hma_len=40, wma_len=20, dema_len=33, lsma_len=15, kama_len=10, robustness="Medium",
         strategy_mode=True),
]


def _as_dict(out: np.ndarray) -> dict:
    return {name: out[k] for k, name in enumerate(OUTPUT_NAMES)}


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_random_walks_match_reference_exactly(variant):
    params = VARIANTS[variant]
    for seed in (variant, 100 + variant):
        x = random_walk_panel(1, 400, seed=seed, vol=0.02)[0]
        out = literal_atc(x, ATCParams(**params))
        assert out.shape == (13, 400) and out.dtype == np.float64
        assert_matches_reference(_as_dict(out), x, params)


@pytest.mark.parametrize("params,start", [
    ({}, 0),  # all 5031 bars, 1999-2018
    (dict(robustness="Wide", cutout=250, strategy_mode=True, La=0.05, De=0.1, long_threshold=0.2,
          short_threshold=-0.05), 2500),  # the last 2531 bars (keeps the slow reference short)
])
def test_sp500_matches_reference_up_to_ties(params, start):
    pytest.importorskip("arch.data", reason="arch is a test dependency: pip install -e .[test]")
    from arch.data import sp500

    x = sp500.load()["Adj Close"].to_numpy(np.float64)[start:]
    out = literal_atc(x, ATCParams(**params))
    assert_matches_reference(_as_dict(out), x, params, allow_ties=True)


def test_panel_own_bars_short_symbols_and_threads():
    params = ATCParams(cutout=5)
    panel = random_walk_panel(7, 300, seed=5)
    rng = np.random.default_rng(2)
    panel[rng.random(panel.shape) < 0.3] = np.nan
    panel[3, :260] = np.nan  # too few bars of its own: NaN outputs
    panel[5, :100] = np.nan  # listed late
    out = literal_panel(panel, params)
    assert out.shape == (13, 7, 300)
    for i in range(7):
        own = ~np.isnan(panel[i])
        assert np.isnan(out[:, i, ~own]).all()
        if i == 3:
            assert np.isnan(out[:, i]).all()
            continue
        np.testing.assert_array_equal(out[:, i, own], literal_atc(panel[i, own], params))
    np.testing.assert_array_equal(literal_panel(panel, params, parallel=True), out)


def test_bad_input_is_rejected():
    x = random_walk_panel(1, 200)[0]
    x[50] = -1.0
    with pytest.raises(ValueError, match="position 50"):
        literal_atc(x)
    panel = random_walk_panel(2, 200)
    panel[1, 7] = np.inf
    with pytest.raises(ValueError, match="symbol 1"):
        literal_panel(panel)
