"""Each moving average of the kernel against an independent textbook computation (numbagg-style
table: one row per family, many lengths), and crossover states against a vectorised rule."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kernels import ATCParams
from kernels.lines import line_series
from kernels.synthetic import random_walk_panel

X = random_walk_panel(1, 400, seed=21, vol=0.015)[0]


def textbook_ema(x, L):
    out = np.full(len(x), np.nan)
    seeded = np.concatenate([[x[:L].mean()], x[L:]])
    out[L - 1:] = pd.Series(seeded).ewm(alpha=2 / (L + 1), adjust=False).mean().to_numpy()
    return out


def textbook_wma(x, L):
    w = np.arange(1, L + 1, dtype=float)
    return pd.Series(x).rolling(L).apply(lambda v: np.dot(v, w) / w.sum(), raw=True).to_numpy()


def textbook_hma(x, L):
    inner = 2 * textbook_wma(x, max(L // 2, 1)) - textbook_wma(x, L)
    out = np.full(len(x), np.nan)
    out[L - 1:] = textbook_wma(inner[L - 1:], math.isqrt(L))
    return out


def textbook_dema(x, L):
    e1 = textbook_ema(x, L)
    e2 = np.full(len(x), np.nan)
    e2[L - 1:] = pd.Series(e1[L - 1:]).ewm(alpha=2 / (L + 1), adjust=False).mean().to_numpy()
    return 2 * e1 - e2


def textbook_lsma(x, L):
    out = np.full(len(x), np.nan)
    pos = np.arange(L)
    for t in range(L - 1, len(x)):
        if L == 1:
            out[t] = x[t]
            continue
        slope, intercept = np.polyfit(pos, x[t - L + 1:t + 1], 1)
        out[t] = intercept + slope * (L - 1)
    return out


def textbook_kama(x, L):
    change = pd.Series(x).diff(L).abs()
    noise = pd.Series(x).diff().abs().rolling(L).sum()
    er = (change / noise).fillna(0.0).to_numpy()
    sc = (er * (0.666 - 0.064) + 0.064) ** 2
    out = np.empty(len(x))
    out[:L] = x[0]
    for t in range(L, len(x)):
        out[t] = out[t - 1] + sc[t] * (x[t] - out[t - 1])
    return out


TEXTBOOK = {"EMA": textbook_ema, "WMA": textbook_wma, "HMA": textbook_hma, "DEMA": textbook_dema,
            "LSMA": textbook_lsma, "KAMA": textbook_kama}
FIRST_DEFINED = {"EMA": lambda L: L - 1, "WMA": lambda L: L - 1, "DEMA": lambda L: L - 1,
                 "LSMA": lambda L: L - 1, "KAMA": lambda L: 0,
                 "HMA": lambda L: L - 1 + math.isqrt(L) - 1}


@pytest.mark.parametrize("family", list(TEXTBOOK))
@pytest.mark.parametrize("base", [5, 9, 28, 61])
def test_moving_average_matches_textbook(family, base):
    params = ATCParams(**{f"{family.lower()}_len": base}, robustness="Narrow")
    lines = line_series(X, params)[family]["ma"]
    for j, L in enumerate(params.lengths(family)):
        expected = TEXTBOOK[family](X, L)
        got = lines[j]
        first = FIRST_DEFINED[family](L)
        assert np.isnan(got[:first]).all(), f"{family}({L}) defined before bar {first}"
        assert not np.isnan(got[first:]).any(), f"{family}({L}) undefined after bar {first}"
        np.testing.assert_allclose(got[first:], expected[first:], rtol=1e-11, err_msg=f"{family}({L})")


def test_hull_first_defined_bar_for_28():
    lines = line_series(X)["HMA"]["ma"]
    assert np.isnan(lines[0, 30]) and not np.isnan(lines[0, 31])


def test_one_and_two_bar_windows_equal_the_close_exactly():
    params = ATCParams(wma_len=5, lsma_len=6, hma_len=5, robustness="Narrow")  # lengths 1 and 2
    lines = line_series(X, params)
    np.testing.assert_array_equal(lines["WMA"]["ma"][8], X)          # WMA(1)
    np.testing.assert_array_equal(lines["LSMA"]["ma"][8][1:], X[1:])  # LSMA(2)
    assert (lines["WMA"]["signal"][8] == 0).all()  # a permanent tie never crosses


@pytest.mark.parametrize("family", list(TEXTBOOK))
def test_crossover_states_follow_the_rule(family):
    lines = line_series(X)[family]
    for j in range(9):
        m = lines["ma"][j]
        up = (X[1:] > m[1:]) & (X[:-1] <= m[:-1])
        down = (X[1:] < m[1:]) & (X[:-1] >= m[:-1])
        expected = pd.Series(np.where(up, 1.0, np.where(down, -1.0, np.nan))).ffill().fillna(0.0).to_numpy()
        np.testing.assert_array_equal(lines["signal"][j][1:], expected)
        assert lines["signal"][j][0] == 0


def test_running_sums_do_not_drift_over_long_histories():
    """Prices that fall by 1000x: window sums are re-anchored, so late values stay exact."""
    x = np.exp(np.linspace(np.log(5000.0), np.log(5.0), 6000)) * (1 + 0.01 * np.sin(np.arange(6000)))
    lines = line_series(x, ATCParams(wma_len=34, lsma_len=34))
    for fam, fn in (("WMA", textbook_wma), ("LSMA", textbook_lsma)):
        tail = slice(5900, 6000)
        np.testing.assert_allclose(lines[fam]["ma"][0][tail], fn(x, 34)[tail], rtol=1e-12)
