"""Issue 9 acceptance, run half: real calendars from CSV files through `atc ingest` and `atc run`.

Daily (S&P 500, NASDAQ, WTI), month-end and business-hour series share one store whose time axis is
the union of their calendars. For every symbol the stored outputs at its own times must equal
`compute_atc_signals` on its raw series exactly (same kernel, same compacted series: no tie can
differ), NaN at every other time; its stored bar count must equal its file's row count; and its
backtest must use its own bars and its own periods per year.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kernels import OUTPUT_NAMES, ATCParams, compute_atc_signals
from kernels.backtest import BacktestParams, run_backtest
from kernels.metrics import METRIC_NAMES, infer_periods_per_year
from pipeline.cluster import connect
from pipeline.run import run_atc
from pipeline.ingest import ingest
from test_ingest_calendars import write_calendar_csvs

PARAMS = ATCParams(ema_len=20, hma_len=20, wma_len=20, dema_len=20, lsma_len=20, kama_len=20)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_bars")
    series = write_calendar_csvs(root / "csv")
    prices = root / "prices.zarr"
    ingest(root / "csv", prices, progress=False)
    results = root / "results.zarr"
    with connect(None, workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        run_atc(prices, results, PARAMS, client=cl.client, progress=False, backtest=BacktestParams(fee_bps=5))
    return series, xr.open_zarr(results)


def test_every_symbol_equals_its_raw_series_alone(stores):
    series, ds = stores
    times = pd.DatetimeIndex(ds["time"].values)
    assert len(times) > max(len(s) for s in series.values())  # a real union of calendars
    for sym, raw in series.items():
        row = ds.sel(symbol=sym)
        own = times.isin(raw.index)
        assert int(own.sum()) == len(raw), sym  # bar count = the file's row count
        want = compute_atc_signals(raw, ema_len=20, hull_len=20, wma_len=20, dema_len=20, lsma_len=20, kama_len=20)
        for name in OUTPUT_NAMES:
            got = row[name].values
            np.testing.assert_array_equal(got[own], want[name].to_numpy(), err_msg=f"{sym} {name}")
            assert np.isnan(got[~own]).all(), f"{sym} {name} has values at times without a bar"


def test_backtest_on_own_bars_and_own_periods_per_year(stores):
    series, ds = stores
    times = pd.DatetimeIndex(ds["time"].values)
    for sym, raw in series.items():
        row = ds.sel(symbol=sym)
        own = times.isin(raw.index)
        ppy = infer_periods_per_year(raw.index.values)
        if sym.endswith("_M"):
            assert 11.5 < ppy < 12.5, (sym, ppy)
        bt = run_backtest(raw.to_numpy(), row["Average_Signal"].values[own], PARAMS, BacktestParams(fee_bps=5),
                          periods_per_year=ppy)
        for name in ("position", "strategy_return", "equity"):
            np.testing.assert_array_equal(row[name].values[own], bt[name], err_msg=f"{sym} {name}")
            assert np.isnan(row[name].values[~own]).all()
        for name in METRIC_NAMES:
            assert np.array_equal(row[name].values, bt.metrics[name], equal_nan=True), (sym, name)
