"""Issue 9 acceptance, ingest half: every symbol is stored on its own bars.

Real daily data (S&P 500, NASDAQ, WTI from the `arch` package), the same resampled to month ends,
and a synthetic series on business hours go through `atc ingest` together. The union of those
calendars holds month ends on weekends and intraday hours, so any filling or re-alignment would
show up as extra bars. `write_calendar_csvs` / the `calendar_csvs` fixture are meant for reuse
(e.g. by the `atc run` half of this test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from pipeline.store import open_prices, to_frames


def write_calendar_csvs(directory: Path) -> dict[str, pd.Series]:
    """Write one ``<symbol>.csv`` (columns Date, Close) per symbol into ``directory`` and return
    ``{symbol: close Series}`` with exactly the rows written (index: naive UTC times).

    Daily ^GSPC, ^IXIC, WTI (its holiday NaNs left out: those are days without a bar), their
    month-end resamples (``resample('ME').last()``; some month ends fall on weekends) and HOURLY,
    a seeded random walk on business hours (09:00-16:00, Mon-Fri).
    """
    from arch.data import nasdaq, sp500, wti

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    daily = {
        "^GSPC": sp500.load()["Close"],
        "^IXIC": nasdaq.load()["Close"],
        "WTI": wti.load()["DCOILWTICO"].dropna(),
    }
    series: dict[str, pd.Series] = {}
    for sym, s in daily.items():
        s = s.astype(float)
        s.index = pd.DatetimeIndex(s.index).as_unit("ns")
        series[sym] = s
        series[f"{sym}_M"] = s.resample("ME").last().dropna()
    rng = np.random.default_rng(9)
    hours = pd.date_range("2018-06-01 09:00", periods=1500, freq="bh", unit="ns")
    series["HOURLY"] = pd.Series(100 * np.exp(np.cumsum(rng.normal(0, 0.003, hours.size))), index=hours)
    for sym, s in series.items():
        s = s.rename("Close")
        s.index.name = "Date"
        s.to_csv(directory / f"{sym}.csv")
        series[sym] = s
    return series


@pytest.fixture
def calendar_csvs(tmp_path) -> tuple[Path, dict[str, pd.Series]]:
    """(directory of CSV files, {symbol: close Series}) from :func:`write_calendar_csvs`."""
    src = tmp_path / "calendars"
    return src, write_calendar_csvs(src)


def test_every_symbol_keeps_exactly_its_own_bars(tmp_path, calendar_csvs):
    src, series = calendar_csvs
    store = tmp_path / "p.zarr"
    assert main(["ingest", str(src), str(store)]) == 0
    ds = open_prices(store, verify=True)
    assert sorted(str(s) for s in ds["symbol"].values) == sorted(series)
    assert ds.attrs["fill"] == "none" and int(ds["filled_gaps"].sum()) == 0
    union = pd.DatetimeIndex(sorted(set().union(*(s.index for s in series.values()))))
    assert ds.sizes["time"] == union.size
    frames = to_frames(ds)
    for sym, s in series.items():
        rows_in_file = len(pd.read_csv(src / f"{sym}.csv"))
        close = ds["close"].sel(symbol=sym)
        assert int(close.notnull().sum()) == rows_in_file == len(s), sym
        got = frames[sym]["close"]
        assert got.index.equals(s.index.rename("time")), sym
        # exactly the file's values, at exactly the file's times
        np.testing.assert_array_equal(got.to_numpy(), s.to_numpy(), err_msg=sym)
        np.testing.assert_array_equal(close.sel(time=s.index).values, s.to_numpy(), err_msg=sym)


def test_no_weekday_symbol_gets_weekend_bars(tmp_path, calendar_csvs):
    src, series = calendar_csvs
    weekday = [sym for sym, s in series.items() if (s.index.day_of_week < 5).all()]
    weekend_month_ends = [sym for sym, s in series.items() if (s.index.day_of_week >= 5).any()]
    # the data must actually test something: weekday symbols next to ones with weekend times
    assert {"^GSPC", "^IXIC", "WTI", "HOURLY"} <= set(weekday) and weekend_month_ends
    store = tmp_path / "p.zarr"
    assert main(["ingest", str(src), str(store)]) == 0
    ds = open_prices(store)
    weekend = pd.DatetimeIndex(ds["time"].values).day_of_week >= 5
    assert weekend.any()
    for sym in weekday:
        assert np.isnan(ds["close"].sel(symbol=sym).values[weekend]).all(), sym
    # and the intraday hours of HOURLY give the daily symbols no bar either
    intraday = pd.DatetimeIndex(ds["time"].values).hour != 0
    for sym in ("^GSPC", "^IXIC", "WTI", "^GSPC_M"):
        assert np.isnan(ds["close"].sel(symbol=sym).values[intraday]).all(), sym
