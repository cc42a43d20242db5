"""`atc sweep --folds/--walk-forward`: per-block statistics kept in the sweep store, validation
figures computed from them when the sweep completes, stored and printed, refused on a mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from flows.cli import main
from flows.plot_cmd import plot_walk_forward
from kernels.metrics import periods_per_year_by_symbol
from kernels.overfit import block_stats_from_returns, coarsen_blocks, cscv, walk_forward
from kernels.sweep import make_grid, sweep_panel
from pipeline.store import open_prices, write_prices
from pipeline.sweep import SweepError, run_sweep
from pipeline.synth import synth_prices
from pipeline.validation import describe, plan_validation, validate_store
from pipeline.walk_forward import window_columns
from test_walk_forward_stitch import literal_walk_forward, stitched_by_hand

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
    # the stitched out-of-sample equity, against the chosen combinations run by hand (test_walk_forward_stitch)
    sel = val["walk_forward"]["selected"]
    cols = window_columns(wf.windows, 600, blocks)
    np.testing.assert_array_equal(ds["wf_selected"].values, sel)
    np.testing.assert_array_equal(ds["wf_bounds"].values, cols)
    avg, _, _ = stitched_by_hand(close, grid.all_params(), cols, sel)
    np.testing.assert_allclose(ds["wf_oos_return"].values, avg, rtol=1e-12, atol=1e-15)
    assert ds["time"].size == 600 and ds["wf_is_equity"].shape == (len(sel), 600)
    stitched = val["walk_forward"]["stitched"]
    assert stitched["oos"]["sharpe"] == pytest.approx(float(ds["wf_oos_metrics"].sel(wf_metric="sharpe")))
    assert "stitched out-of-sample equity" in text and "chosen:" in text
    assert str(ds["wf_selected_label"].values[0]).startswith("La=")
    fig = plot_walk_forward(store, tmp_path / "wf.png")
    ax, bx = fig.axes[:2]
    assert (tmp_path / "wf.png").stat().st_size > 10_000
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert any(lb.startswith("stitched out of sample") for lb in labels)
    assert any(lb.startswith("in sample") for lb in labels)
    assert len(bx.patches) == 2 * len(sel)  # in- and out-of-sample Sharpe bars per window
    assert sum(1 for t in ax.texts if t.get_text().startswith("La=")) >= 1
    with pytest.raises(SweepError, match="validation blocks"):
        run_sweep(prices, store, grid, threads=1, progress=False, folds=6)
    # a store with a portfolio per combination (atc sweep --portfolio writes these): its figures too
    import zarr

    rng = np.random.default_rng(5)
    pr = rng.normal(0.0, 0.01, (grid.size, 600))
    pr[7] += 0.002
    pst = np.stack([block_stats_from_returns(r, blocks) for r in pr])
    g = zarr.open_group(str(store), mode="r+", zarr_format=3, use_consolidated=False)
    g.create_array("portfolio_fold_stats", data=pst.reshape(grid.shape + (blocks, 5)),
                   dimension_names=list(grid.dims) + ["block", "stat"])
    g.create_array("portfolio_returns", data=pr.reshape(grid.shape + (600,)), dimension_names=list(grid.dims) + ["time"])
    plan = plan_validation(4, "120:60", p["time"].values)
    out = validate_store(store, grid, plan, prices=prices)
    psel, _ = literal_walk_forward(pr, blocks, 2, 1)
    assert out["portfolio"]["walk_forward"]["selected"] == psel and out["portfolio"]["selected"] == 7
    assert out["walk_forward"]["selected"] == sel  # the symbols' figures are unchanged
    by_hand = np.full(600, np.nan)
    for (_, _, b0, b1), c in zip(cols, psel):
        by_hand[b0:b1] = pr[c, b0:b1]
    ds = xr.open_zarr(store, consolidated=False)
    np.testing.assert_array_equal(ds["wf_portfolio_oos_return"].values, by_hand)
    np.testing.assert_allclose(ds["wf_portfolio_oos_equity"].values[cols[0, 2]:cols[-1, 3]],
                               np.cumprod(1 + by_hand[cols[0, 2]:cols[-1, 3]]), rtol=1e-12)
    assert "portfolio per combination" in describe(out, str)


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
    assert main(["show", str(tmp_path / "s.zarr")]) == 0  # atc show prints them too
    shown = capsys.readouterr().out
    assert "out-of-sample validation" in shown and line == [ln for ln in shown.splitlines() if "CSCV" in ln]
    assert main(args[:-2] + ["--folds", "3"]) == 2
    assert "even" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "s.zarr"), "--walk-forward", "--out", str(tmp_path / "w.png")]) == 2
    assert "no walk-forward result" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "s.zarr"), "--walk-forward", "--x", "La"]) == 2
    assert "do not apply to --walk-forward" in capsys.readouterr().err
