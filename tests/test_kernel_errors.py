"""Bad input gets a clear error naming the symbol, bar or parameter; short symbols get a status."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ATCInputError, ATCParamError, ATCParams, ATCUserError, compute_atc
from kernels import status as st
from kernels.synthetic import random_walk_panel


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(ema_len=4), "EMA family: ema_len=4 with robustness 'Medium' gives length -2"),
        (dict(lsma_len=7, robustness="Wide"), "LSMA family"),
        (dict(hma_len=2.5), "hma_len must be an integer"),
        (dict(kama_w=0.0), "kama_w"),
        (dict(ema_w=-1.0), "ema_w"),
        (dict(wma_w=float("nan")), "wma_w"),
        (dict(long_threshold=0.1, short_threshold=0.1), "long_threshold (0.1) must be greater than short_threshold"),
        (dict(robustness="medium-ish"), "robustness must be one of"),
        (dict(cutout=-1), "cutout must be an integer >= 0"),
        (dict(cutout=1.5), "cutout must be an integer >= 0"),
        (dict(De=100.0), "De is a decay in percent"),
        (dict(La=float("inf")), "La must be a finite number"),
        (dict(strategy_mode="yes"), "strategy_mode must be true or false"),
    ],
)
def test_invalid_parameters_are_named(kwargs, fragment):
    with pytest.raises(ATCParamError) as err:
        ATCParams(**kwargs)
    assert fragment in str(err.value)


def test_from_mapping_rejects_unknown_keys_and_coerces_strings():
    with pytest.raises(ATCParamError, match="unknown ATC parameter.*ema_length"):
        ATCParams.from_mapping({"ema_length": 10})
    p = ATCParams.from_mapping({"ema_len": "30", "La": "0.5", "strategy_mode": "true"})
    assert (p.ema_len, p.La, p.strategy_mode) == (30, 0.5, True)
    with pytest.raises(ATCParamError, match="ema_len must be of type int"):
        ATCParams.from_mapping({"ema_len": "thirty"})


def _panel():
    return random_walk_panel(4, 120, seed=1)


@pytest.mark.parametrize(
    "bad_value, fragment",
    [(0.0, "close <= 0"), (-3.0, "close <= 0"), (np.inf, "infinite close")],
)
def test_bad_bar_raises_naming_symbol_and_bar(bad_value, fragment):
    panel = _panel()
    panel[2, 70] = bad_value
    with pytest.raises(ATCInputError) as err:
        compute_atc(panel, symbols=["A", "B", "C/D ..", "E"])
    msg = str(err.value)
    assert fragment in msg and "'C/D ..'" in msg and "index 2" in msg and "bar 70" in msg


def test_bad_symbol_with_status_mode_does_not_sink_the_batch():
    panel = _panel()
    clean = compute_atc(panel)
    panel[1, 50] = 0.0
    res = compute_atc(panel, on_bad="status")
    assert list(res.status) == [st.OK, st.BAD_DATA, st.OK, st.OK]
    assert "bar 50" in res.messages[1]
    assert np.isnan(res["Average_Signal"][1]).all()
    for i in (0, 2, 3):
        np.testing.assert_array_equal(res["Average_Signal"][i], clean["Average_Signal"][i])


def test_insufficient_history_and_empty_symbols_get_nan_and_status():
    panel = _panel()
    need = ATCParams().min_bars  # 36 with the defaults
    panel[0, : 120 - (need - 1)] = np.nan  # one bar short
    panel[1, : 120 - need] = np.nan        # exactly enough
    panel[3, :] = np.nan
    res = compute_atc(panel)
    assert list(res.status) == [st.INSUFFICIENT_HISTORY, st.OK, st.OK, st.NO_DATA]
    assert "insufficient history, 35 bars of its own < 36" in res.messages[0]
    assert all(np.isnan(v[0]).all() and np.isnan(v[3]).all() for v in res.values())
    assert not np.isnan(res["Average_Signal"][1][120 - need:]).any()
    assert list(res.status_names()) == ["insufficient history", "ok", "ok", "no data"]


def test_cutout_beyond_a_symbols_history_is_insufficient_history():
    panel = _panel()
    panel[0, :60] = np.nan
    res = compute_atc(panel, ATCParams(cutout=80))
    assert res.status[0] == st.INSUFFICIENT_HISTORY and res.status[1] == st.OK


@pytest.mark.parametrize(
    "data, fragment",
    [(np.zeros((2, 3, 4)), "must be 1-D"), (np.array(["a", "b"]), "must be numeric")],
)
def test_bad_shapes_and_types(data, fragment):
    with pytest.raises(ATCInputError, match=fragment):
        compute_atc(data)


def test_bad_options():
    x = _panel()[0]
    with pytest.raises(ATCUserError, match="dtype must be float64 or float32"):
        compute_atc(x, dtype=np.int32)
    with pytest.raises(ATCUserError, match="backend must be one of"):
        compute_atc(x, backend="tpu")
    with pytest.raises(ATCUserError, match="on_bad"):
        compute_atc(x, on_bad="ignore")
    with pytest.raises(ATCInputError, match="src has shape"):
        compute_atc(x, src=x[:-1])
    with pytest.raises(ATCInputError, match="2 symbol names for 4 symbols"):
        compute_atc(_panel(), symbols=["a", "b"])


def test_one_dimensional_input_gives_one_dimensional_outputs():
    x = _panel()[0]
    res = compute_atc(x)
    assert all(v.shape == x.shape for v in res.values())
    assert int(res.status) == st.OK
    np.testing.assert_array_equal(res["Average_Signal"], compute_atc(x[None, :])["Average_Signal"][0])


def test_integer_prices_are_accepted():
    x = np.round(_panel()[0] * 100).astype(np.int64)
    res = compute_atc(x)
    np.testing.assert_array_equal(res["EMA_S"], compute_atc(x.astype(float))["EMA_S"])


def test_messages_can_number_symbols_in_a_larger_universe():
    panel = _panel()
    panel[1, 50] = -1.0
    res = compute_atc(panel, on_bad="status", symbols=list("abcd"), index_offset=200)
    assert "symbol 'b' (index 201)" in res.messages[1]
