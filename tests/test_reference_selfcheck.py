"""Fast self-checks of tests/reference.py against hand-worked numbers and independent
textbook computations (pandas ewm / rolling, numpy.polyfit)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

try:  # works whether or not tests/ is a package
    from tests import reference as ref
except ImportError:  # pragma: no cover
    import reference as ref


def random_walk(n, seed=0, start=100.0):
    rng = np.random.default_rng(seed)
    return start * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))


X = random_walk(160, seed=1)


@pytest.fixture(scope="module")
def base_out():
    return ref.reference_atc(X)


# --------------------------------------------------------------------------- section 1


def test_lengths():
    assert ref.reference_lengths(28, "Medium") == [28, 29, 30, 32, 34, 27, 26, 24, 22]
    assert ref.reference_lengths(28, "Narrow") == [28, 29, 30, 31, 32, 27, 26, 25, 24]
    assert ref.reference_lengths(20, "Wide") == [20, 21, 23, 25, 27, 19, 17, 15, 13]
    with pytest.raises(ValueError):
        ref.reference_lengths(28, "Huge")


def test_length_below_one_names_family():
    with pytest.raises(ValueError, match="LSMA"):
        ref.reference_atc(X, lsma_len=6)  # Medium: 6 - 6 = 0


# --------------------------------------------------------------------------- section 2


def _pd_wma(s: pd.Series, L: int) -> pd.Series:
    w = np.arange(1, L + 1, dtype=float)  # oldest weight 1 ... newest weight L
    return s.rolling(L).apply(lambda v: float(np.dot(v, w)) / w.sum(), raw=True)


def test_wma_hand_example():
    out = ref.ref_wma(np.array([1.0, 2.0, 3.0, 4.0]), 3)
    assert np.isnan(out[0]) and np.isnan(out[1])
    assert out[2] == pytest.approx((3 * 3 + 2 * 2 + 1 * 1) / 6, abs=1e-15)
    assert out[3] == pytest.approx((3 * 4 + 2 * 3 + 1 * 2) / 6, abs=1e-15)
    np.testing.assert_allclose(ref.ref_wma(X, 1), X, rtol=0, atol=0)


def test_wma_against_pandas_rolling():
    L = 10
    expect = _pd_wma(pd.Series(X), L).to_numpy()
    got = ref.ref_wma(X, L)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expect))
    np.testing.assert_allclose(got, expect, rtol=1e-13, equal_nan=True)


def test_ema_against_pandas_ewm_after_sma_seed():
    L = 28
    got = ref.ref_ema(X, L)
    assert np.all(np.isnan(got[: L - 1]))
    y = X[L - 1 :].copy()
    y[0] = X[:L].mean()
    expect = pd.Series(y).ewm(alpha=2.0 / (L + 1), adjust=False).mean().to_numpy()
    np.testing.assert_allclose(got[L - 1 :], expect, rtol=1e-13)


def test_dema_against_pandas():
    L = 12
    a = 2.0 / (L + 1)
    y = X[L - 1 :].copy()
    y[0] = X[:L].mean()
    e1 = pd.Series(y).ewm(alpha=a, adjust=False).mean()
    e2 = e1.ewm(alpha=a, adjust=False).mean()  # seeded with e1[L-1]
    expect = (2 * e1 - e2).to_numpy()
    got = ref.ref_dema(X, L)
    assert np.all(np.isnan(got[: L - 1]))
    assert got[L - 1] == pytest.approx(X[:L].mean(), rel=1e-14)  # DEMA[L-1] = SMA(L)
    np.testing.assert_allclose(got[L - 1 :], expect, rtol=1e-13)


def test_hma_first_defined_and_against_pandas():
    got = ref.ref_hma(X, 28)
    first = int(np.flatnonzero(~np.isnan(got))[0])
    assert first == 31
    s = pd.Series(X)
    expect = _pd_wma(2 * _pd_wma(s, 14) - _pd_wma(s, 28), 5).to_numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expect))
    np.testing.assert_allclose(got, expect, rtol=1e-12, equal_nan=True)
    # L = 1: half length 1, isqrt 1 -> HMA is the series itself
    np.testing.assert_allclose(ref.ref_hma(X, 1), X, rtol=1e-15)
    # odd L: floor half, e.g. L=7 -> WMA(3), WMA(7), outer WMA(2); first at 6 + 1 = 7
    g7 = ref.ref_hma(X, 7)
    assert int(np.flatnonzero(~np.isnan(g7))[0]) == 7


def test_lsma_against_polyfit():
    for L in (2, 5, 22, 34):
        got = ref.ref_lsma(X, L)
        assert np.all(np.isnan(got[: L - 1]))
        for t in (L - 1, L + 3, len(X) - 1):
            slope, intercept = np.polyfit(np.arange(L, dtype=float), X[t - L + 1 : t + 1], 1)
            assert got[t] == pytest.approx(slope * (L - 1) + intercept, rel=1e-12)
    # a line through a perfectly linear stretch hits the current close
    lin = 50.0 + 0.5 * np.arange(20)
    np.testing.assert_allclose(ref.ref_lsma(lin, 7)[6:], lin[6:], rtol=1e-13)


def test_kama_hand_example():
    x = np.array([1.0, 2.0, 4.0, 3.0, 3.0])
    k = ref.ref_kama(x, 2)
    assert k[0] == 1.0 and k[1] == 1.0  # x_0 for t <= L-1
    # t=2: ER = |4-1| / (1 + 2) = 1 -> sc = 0.666^2
    k2 = 1.0 + 0.666**2 * (4.0 - 1.0)
    assert k[2] == pytest.approx(k2, abs=1e-15)
    assert k[2] == pytest.approx(2.330668, abs=1e-12)
    # t=3: ER = |3-2| / (2 + 1) = 1/3
    sc3 = ((1 / 3) * 0.602 + 0.064) ** 2
    k3 = k2 + sc3 * (3.0 - k2)
    assert k[3] == pytest.approx(k3, abs=1e-14)
    # t=4: ER = |3-4| / (1 + 0) = 1
    k4 = k3 + 0.666**2 * (3.0 - k3)
    assert k[4] == pytest.approx(k4, abs=1e-14)
    # zero noise -> ER = 0 -> sc = 0.064^2; flat series stays flat
    flat = np.full(10, 7.0)
    np.testing.assert_array_equal(ref.ref_kama(flat, 3), flat)


# --------------------------------------------------------------------------- section 3


def test_crossover_hand_example():
    x = np.ones(7)
    m = np.array([np.nan, 2.0, 0.5, 0.5, 1.0, 2.0, 0.5])
    s = ref.ref_crossover_signal(x, m)
    # t1: below but previous comparison with NaN is false -> 0
    # t2: cross up; t3: stays; t4: tie keeps state; t5: x < m and x4 >= m4 -> -1;
    # t6: x > m and x5 <= m5 -> +1
    np.testing.assert_array_equal(s, [0, 0, 1, 1, 1, -1, 1])
    assert s.dtype == np.float64


# --------------------------------------------------------------------------- section 4


def test_returns():
    R = ref.ref_returns(np.array([100.0, 110.0, 99.0]))
    assert np.isnan(R[0])
    assert R[1] == pytest.approx(0.1, abs=1e-15) and R[2] == pytest.approx(-0.1, abs=1e-15)


def test_equity_hand_example():
    s = np.array([0.0, 1.0, 1.0, -1.0, 0.0, np.nan, 1.0])
    R = np.array([np.nan, 0.1, -0.1, 0.5, 0.1, 0.3, 0.2])
    E = ref.ref_equity(s, R, 1.0, 0.0, 0.0, 0)
    # t1: s0=0 -> 1; t2: long, -10% -> 0.9; t3: long, +50% -> 1.35; t4: short, +10% -> 1.215;
    # t5: s4=0 -> 1.215; t6: s5 NaN -> 1.215
    np.testing.assert_allclose(E, [1.0, 1.0, 0.9, 1.35, 1.215, 1.215, 1.215], rtol=1e-15)

    # decay and the 0.25 floor: E = max(0.25, E * (1 - dec) * (1 + a))
    E = ref.ref_equity(np.zeros(4), np.full(4, 0.0), 1.0, 0.0, 0.5, 0)
    np.testing.assert_allclose(E, [1.0, 0.5, 0.25, 0.25], rtol=0)

    # growth g_t = exp(lam * (t - cutout)) and cutout
    s = np.array([1.0, 1.0, 1.0, 1.0])
    R = np.array([np.nan, 0.1, 0.2, -0.1])
    E = ref.ref_equity(s, R, 0.1, 0.5, 0.01, 1)
    assert np.isnan(E[0])
    assert E[1] == 0.25  # max(e0, 0.25)
    e2 = 0.25 * 0.99 * (1 + 0.2 * math.exp(0.5))
    e3 = max(0.25, e2 * 0.99 * (1 - 0.1 * math.exp(1.0)))
    assert E[2] == pytest.approx(e2, rel=1e-15)
    assert E[3] == pytest.approx(e3, rel=1e-15)


def test_round2_half_even():
    assert ref.round2(0.125) == 0.12
    assert ref.round2(0.375) == 0.38
    assert ref.round2(-0.125) == -0.12
    for v in (0.333333, -0.6666, 0.005, 0.015, 1.0, -1.0):
        assert ref.round2(v) == float(np.round(v, 2))


# --------------------------------------------------------------------------- sections 5-7


def test_outputs_shape_and_invariants(base_out):
    out = base_out
    assert list(out) == list(ref.OUTPUT_NAMES)
    for name, arr in out.items():
        assert arr.shape == X.shape and arr.dtype == np.float64
        assert not np.any(np.isnan(arr)), name
    for fam in ref.FAMILIES:
        fs = out[f"{fam}_Signal"]
        assert np.all(np.abs(fs) <= 1.0)
        np.testing.assert_array_equal(fs, np.rint(fs * 100) / 100)
        assert np.all(out[f"{fam}_S"] >= 0.25)
        assert out[f"{fam}_S"][0] == 1.0
    # Average_Signal recomputed independently (vectorised numpy) from the Layer 1/2 outputs
    fsig = np.stack([out[f"{f}_Signal"] for f in ref.FAMILIES])
    S = np.stack([out[f"{f}_S"] for f in ref.FAMILIES])
    cutv = np.where(fsig > 0.1, 1.0, np.where(fsig < -0.1, -1.0, 0.0))
    np.testing.assert_allclose(out["Average_Signal"], (cutv * S).sum(0) / S.sum(0), atol=1e-14)
    # at bar 0 all signals are 0 -> Average 0
    assert out["Average_Signal"][0] == 0.0
    # some non-trivial activity on a random walk
    assert np.any(out["Average_Signal"] != 0.0)


def test_layer1_against_ma_table(base_out):
    # Layer 1 of EMA rebuilt from the public pieces, with a numpy (not loop) weighted mean.
    table = ref.reference_ma_table(X)
    assert list(table) == list(ref.FAMILIES) and all(len(v) == 9 for v in table.values())
    R = ref.ref_returns(X)
    lam, dec = 0.02 / 1000, 0.03 / 100
    sig = np.stack([ref.ref_crossover_signal(X, m) for m in table["EMA"]])
    eq = np.stack([ref.ref_equity(s, R, 1.0, lam, dec, 0) for s in sig])
    expect = np.round((sig * eq).sum(0) / eq.sum(0), 2)
    # exact 2-decimal agreement except possibly at a round-half boundary
    assert np.mean(expect == base_out["EMA_Signal"]) > 0.99
    np.testing.assert_allclose(base_out["EMA_Signal"], expect, atol=0.0100001)
    np.testing.assert_allclose(
        base_out["EMA_S"], ref.ref_equity(base_out["EMA_Signal"], R, 1.0, lam, dec, 0), rtol=0
    )


def test_weights_and_cutout():
    out = ref.reference_atc(X, ema_w=2.0, hma_w=0.1, cutout=5)
    for name in ref.OUTPUT_NAMES[:12]:
        assert np.all(np.isnan(out[name][:5])) and not np.any(np.isnan(out[name][5:]))
    assert out["EMA_S"][5] == 2.0
    assert out["HMA_S"][5] == 0.25
    np.testing.assert_array_equal(out["Average_Signal"][:5], 0.0)
    with pytest.raises(ValueError):
        ref.reference_atc(X, kama_w=0.0)
    with pytest.raises(ValueError):
        ref.reference_atc(X, cutout=len(X))  # spec: 0 <= cutout < n
    with pytest.raises(ValueError):
        ref.reference_atc(X, long_threshold=-0.2, short_threshold=-0.1)


def test_strategy_mode_shift(base_out):
    out = ref.reference_atc(X, strategy_mode=True)
    assert out["Average_Signal"][0] == 0.0
    np.testing.assert_array_equal(out["Average_Signal"][1:], base_out["Average_Signal"][:-1])
    for name in ref.OUTPUT_NAMES[:12]:
        np.testing.assert_array_equal(out[name], base_out[name])


def test_ragged_nan_padding(base_out):
    padded = np.concatenate([np.full(5, np.nan), X, np.full(7, np.nan)])
    for mode in (False, True):
        out = ref.reference_atc(padded, strategy_mode=mode)
        expect = base_out if not mode else ref.reference_atc(X, strategy_mode=True)
        for name in ref.OUTPUT_NAMES:
            arr = out[name]
            assert arr.shape == padded.shape
            assert np.all(np.isnan(arr[:5])) and np.all(np.isnan(arr[-7:]))
            np.testing.assert_array_equal(arr[5:-7], expect[name])
        if mode:
            assert out["Average_Signal"][5] == 0.0  # shift applies inside the valid span


def test_insufficient_history():
    # Medium, base 28: max length 34 -> need 36 valid bars
    short = np.concatenate([np.full(3, np.nan), X[:35]])
    out = ref.reference_atc(short)
    for arr in out.values():
        assert arr.shape == short.shape and np.all(np.isnan(arr))
    out = ref.reference_atc(X[:36])
    assert not np.any(np.isnan(out["Average_Signal"]))
    out = ref.reference_atc(np.full(50, np.nan))
    assert all(np.all(np.isnan(a)) for a in out.values())


def test_interior_nan_is_no_bar_and_nonpositive_raises():
    """Spec section 7: a NaN close is a time without a bar: the symbol is computed on its other
    closes, compacted, and its outputs are NaN at that time; a close <= 0 is an error."""
    holed = np.concatenate([np.full(2, np.nan), X.copy()])
    holed[42] = np.nan
    out = ref.reference_atc(holed)
    alone = ref.reference_atc(np.delete(holed, 42)[2:])
    for name, arr in out.items():
        assert np.isnan(arr[42]) and np.isnan(arr[:2]).all()
        np.testing.assert_array_equal(np.delete(arr, 42)[2:], alone[name])
    bad = X.copy()
    bad[17] = 0.0
    with pytest.raises(ValueError, match="17"):
        ref.reference_atc(bad)
    bad[17] = -1.0
    with pytest.raises(ValueError, match="17"):
        ref.reference_atc(bad)


def test_tie_bars():
    ties = ref.reference_tie_bars(X)
    assert ties.dtype == bool and ties.shape == X.shape
    # KAMA is x_0 at bar 0 -> exact tie there; none elsewhere on a random walk
    assert ties[0] and not ties[1:].any()
    lin = 50.0 + 0.5 * np.arange(60)
    assert ref.reference_tie_bars(lin)[40:].all()  # LSMA passes through the close
