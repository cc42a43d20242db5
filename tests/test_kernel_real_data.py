"""Real daily closes from the `arch` package (S&P 500, NASDAQ, WTI) against the reference.

Real prices have exact ties (flat stretches), so outputs may diverge only from a bar where the
reference finds a tie (spec section 7); before that they must agree completely.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kernel_helpers import assert_matches_reference
from kernels import ATCParams, compute_atc, compute_atc_signals

arch_data = pytest.importorskip("arch.data", reason="arch is a test dependency: pip install -e .[test]")


def _closes() -> dict[str, pd.Series]:
    from arch.data import nasdaq, sp500, wti

    wti_close = wti.load()["DCOILWTICO"].ffill()  # the price store forward-fills gaps at ingest
    return {"sp500": sp500.load()["Close"], "nasdaq": nasdaq.load()["Close"], "wti": wti_close}


CLOSES = _closes()


@pytest.mark.parametrize("name", list(CLOSES))
def test_real_closes_match_reference_up_to_ties(name):
    close = CLOSES[name].to_numpy(np.float64)
    for params in ({}, dict(robustness="Wide", cutout=250, strategy_mode=True, La=0.05, De=0.1)):
        res = compute_atc(close, ATCParams(**params))
        assert_matches_reference(res, close, params, allow_ties=True)


def test_panel_of_real_closes_on_a_shared_calendar():
    """Different calendars joined on one time axis: each symbol NaN outside its own span."""
    frame = pd.DataFrame(CLOSES)
    frame = frame[frame.index >= "1995-01-01"]
    frame = frame.ffill().where(frame.bfill().notna())  # fill holidays inside each span only
    panel = frame.to_numpy(np.float64).T
    res = compute_atc(panel, symbols=list(frame.columns))
    for i, name in enumerate(frame.columns):
        alone = compute_atc(panel[i])
        np.testing.assert_array_equal(res["Average_Signal"][i], alone["Average_Signal"])
        assert not np.isnan(res["Average_Signal"][i][~np.isnan(panel[i])]).any()


@pytest.mark.slow  # compiles the float32 batch kernel (~1 min of the default run)
@pytest.mark.parametrize("name", ["sp500", "wti"])
def test_float32_sign_agrees_with_float64_on_real_data(name):
    close = CLOSES[name].to_numpy(np.float64)
    a64 = compute_atc(close)["Average_Signal"]
    a32 = compute_atc(close, dtype=np.float32)["Average_Signal"]
    assert a32.dtype == np.float32
    agree = np.mean(np.sign(a64) == np.sign(a32.astype(np.float64)))
    assert agree >= 0.99, f"sign agreement {agree:.4f}"


def test_pandas_drop_in_on_real_data():
    prices = CLOSES["sp500"]
    out = compute_atc_signals(prices)
    assert list(out) == [*(f"{f}_Signal" for f in ("EMA", "HMA", "WMA", "DEMA", "LSMA", "KAMA")),
                         *(f"{f}_S" for f in ("EMA", "HMA", "WMA", "DEMA", "LSMA", "KAMA")), "Average_Signal"]
    for name, series in out.items():
        assert series.index.equals(prices.index) and series.name == name
    np.testing.assert_array_equal(out["Average_Signal"].to_numpy(), compute_atc(prices.to_numpy())["Average_Signal"])
