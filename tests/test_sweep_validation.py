"""`atc sweep --folds/--walk-forward`: per-block statistics kept in the sweep store, validation
figures computed from them when the sweep completes, stored and printed, refused on a mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from flows.cli import main
from kernels.metrics import periods_per_year_by_symbol
from kernels.overfit import coarsen_blocks, cscv, walk_forward
from kernels.sweep import make_grid, sweep_panel
from pipeline.store import open_prices, write_prices
from pipeline.sweep import SweepError, run_sweep
from pipeline.synth import synth_prices

GRID = {"La": [0.01, 0.05], "De": [0.0, 1.0, 3.0], "ema_len": [12, 20]}
BASE = dict(hma_len=12, wma_len=12, dema_len=12, lsma_len=12, kama_len=12)


@pytest.fixture(scope="module")
def prices(tmp_path_factory):
    p = tmp_path_factory.mktemp("val") / "p.zarr"
    write_prices(synth_prices(10, 600, seed=4), p, chunk_symbols=4)
    return p


def test_fold_statistics_and_figures(prices, tmp_path):
    from kernels.params import ATCParams

    grid = make_grid(GRID, ATCParams(**BASE))
    store = tmp_path / "s.zarr"
    summary = run_sweep(prices, store, grid, threads=2, progress=False, folds=4, walk_forward="120:60")
    ds = xr.open_zarr(store)
    stats = ds["fold_stats"].values.reshape((grid.size,) + ds["fold_stats"].shape[3:])
    blocks = 600 // 60  # gcd(120, 60) = 60 bars per block
    assert stats.shape == (grid.size, blocks, 5, 10)
    p = open_prices(prices)
    close, times = p["close"].values, p["time"].values
    direct = sweep_panel(close, grid.all_params(), periods_per_year=periods_per_year_by_symbol(times, close),
                         parallel=False, folds=blocks)
    np.testing.assert_array_equal(stats, direct.fold_stats)  # tasks wrote their regions in place
    val = json.loads(ds.attrs["validation"])
    want = cscv(coarsen_blocks(direct.fold_stats, 4), aggregate="median")
    assert val["cscv"]["pbo"] == pytest.approx(want.pbo) and val["cscv"]["n_splits"] == 6  # C(4, 2)
    wf = walk_forward(direct.fold_stats, 2, 1, aggregate="median")
    assert val["walk_forward"]["selected"] == [int(s) for s in wf.selected]
    assert val["deflated_sharpe"]["n_trials"] == grid.size
    text = summary.describe()
    assert "probability of backtest overfitting" in text and "deflated Sharpe" in text and "walk-forward" in text
    with pytest.raises(SweepError, match="validation blocks"):
        run_sweep(prices, store, grid, threads=1, progress=False, folds=6)


def test_cli_prints_and_keeps_the_figures(prices, tmp_path, capsys):
    (tmp_path / "g.yaml").write_text("La: [0.01, 0.05]\nDe: [0.0, 3.0]\n")
    args = ["sweep", str(prices), str(tmp_path / "s.zarr"), "--grid", str(tmp_path / "g.yaml"), "--folds", "4",
            "--no-progress", "--set", "ema_len=12"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "probability of backtest overfitting" in first
    assert main(args) == 0  # complete: answered from the stored figures
    again = capsys.readouterr().out
    line = [ln for ln in first.splitlines() if "CSCV" in ln]
    assert line and line == [ln for ln in again.splitlines() if "CSCV" in ln]
    assert main(args[:-2] + ["--folds", "3"]) == 2
    assert "even" in capsys.readouterr().err
