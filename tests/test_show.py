"""`atc show` and `backtest_summary`: what they print agrees with the stores read independently."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from flows.cli import main
from flows.show_cmd import backtest_summary, describe_store, sweep_table
from test_plot import built_stores


@pytest.fixture(scope="session")
def stores():
    return built_stores()


def _row(text: str, first: str) -> list[str]:
    (line,) = [ln for ln in text.splitlines() if ln.split() and ln.split()[0] == first]
    return line.split()


def test_show_results_store_with_backtest(stores, capsys):
    assert main(["show", str(stores["results"])]) == 0
    out = capsys.readouterr().out
    res = xr.open_zarr(stores["results"])
    assert out.startswith(f"results store {stores['results']}")
    assert "symbol 6, time 400" in out and "status (symbols): 6 ok" in out
    assert res.attrs["prices_fingerprint"] in out and res.attrs["fingerprint"] in out
    assert "fee_bps=5" in out and "La=0.02" in out and "chunks done: 1 of 1" in out
    # the backtest summary follows
    assert "Backtest across symbols" in out
    tr, bh = res["total_return"].values, res["buy_hold_return"].values
    beat = int((tr > bh).sum())
    assert f"beats buy and hold: {beat} of 6 symbols" in out


def test_backtest_summary_matches_the_store(stores):
    text = backtest_summary(stores["results"])
    res = xr.open_zarr(stores["results"])
    for m in ("sharpe", "max_drawdown", "total_return", "n_trades"):
        v = res[m].values
        row = _row(text, m)
        assert float(row[1]) == pytest.approx(np.nanmedian(v), rel=1e-3)
        assert float(row[2]) == pytest.approx(np.nanquantile(v, 0.25), rel=1e-3, abs=1e-6)
        assert float(row[4]) == pytest.approx(np.nanquantile(v, 0.75), rel=1e-3, abs=1e-6)
        assert int(row[5]) == np.isfinite(v).sum()


def test_sweep_table_ranks_with_spread_baseline_and_fixed(stores):
    sw = xr.open_zarr(stores["sweep"])
    text = sweep_table(stores["sweep"], "sharpe", top=3)
    med = sw["sharpe"].median("symbol")
    flat = med.stack(c=list(med.dims)).dropna("c")
    order = np.argsort(-flat.values, kind="stable")
    best = flat.isel(c=int(order[0]))
    lines = text.splitlines()
    first = lines[3].split()  # title, header, index name, then rank 1
    assert first[0] == "1"
    assert float(first[1]) == best["ema_len"].item() and float(first[2]) == pytest.approx(best["long_threshold"].item())
    assert float(first[3]) == best["fee_bps"].item()
    sel = {d: best[d].item() for d in ("ema_len", "long_threshold", "fee_bps")}
    vals = sw["sharpe"].sel(sel).values
    assert float(first[4]) == pytest.approx(np.nanmedian(vals), rel=1e-3)
    iqr = re.search(r"\[(\S+), (\S+)\]", lines[3])
    assert float(iqr.group(1)) == pytest.approx(np.nanquantile(vals, 0.25), rel=1e-3)
    assert float(iqr.group(2)) == pytest.approx(np.nanquantile(vals, 0.75), rel=1e-3)
    tr, bh = sw["total_return"].sel(sel).values, sw["buy_hold_return"].sel(sel).values
    assert f"{(tr > bh).mean():.0%}" in lines[3]
    assert "buy and hold (same bars, every combination): median total return" in text
    fixed = [ln for ln in lines if ln.startswith("fixed: ")][0]
    assert "La=0.02" in fixed and "long_only=False" in fixed and "periods_per_year=" in fixed
    for swept in ("ema_len", "long_threshold", "fee_bps"):
        assert not re.search(rf"(^|[ ,]){swept}=", fixed[len("fixed:"):]), swept


def test_show_sweep_and_price_store(stores, capsys):
    assert main(["show", str(stores["sweep"]), "--rank-by", "calmar", "--top", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep store") and "grid (18 combinations)" in out
    assert "ema_len = 14, 28, 50" in out and "tasks done: 1 of 1" in out
    assert "Best 4 combinations by median calmar" in out and "status (symbol x combination pairs): 108 ok" in out
    assert main(["show", str(stores["prices"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("price store") and "history:" in out and "synth(" in out
    assert "symbol 6, time 400" in out


def test_show_errors(stores, tmp_path, capsys):
    assert main(["show", str(tmp_path / "none.zarr")]) == 2
    assert "no such store" in capsys.readouterr().err
    tmp_path.joinpath("plain").mkdir()
    assert main(["show", str(tmp_path / "plain")]) == 2
    assert "not an atc store" in capsys.readouterr().err
    assert main(["show", str(stores["sweep"]), "--rank-by", "sharp"]) == 2
    assert "did you mean 'sharpe'" in capsys.readouterr().err


def test_describe_store_is_text(stores):
    assert "fingerprint: sha256:" in describe_store(stores["prices"])


@pytest.fixture(scope="module")
def portfolio_sweep(tmp_path_factory):
    """A small sweep store with an equal-weight portfolio per combination, computed in-process."""
    from kernels import ATCParams
    from kernels.sweep import make_grid
    from pipeline.store import write_prices
    from pipeline.sweep import run_sweep
    from pipeline.synth import synth_prices

    root = tmp_path_factory.mktemp("show-pf")
    prices, store = root / "prices.zarr", root / "sweep.zarr"
    write_prices(synth_prices(4, 300, seed=5, freq="B"), prices, chunk_symbols=4)
    base = ATCParams(ema_len=10, hma_len=10, wma_len=10, dema_len=10, lsma_len=10, kama_len=10, cutout=5)
    grid = make_grid({"La": [0.02, 0.5], "fee_bps": [0.0, 25.0]}, base)
    run_sweep(prices, store, grid, threads=1, progress=False, portfolio="equal", rebalance=5)
    return store


def _table_rows(text: str, n: int) -> list[list[str]]:
    lines = text.splitlines()
    assert lines[2].split() == ["rank"]  # title, header, index name, then the rows
    return [ln.split() for ln in lines[3:3 + n]]


@pytest.mark.parametrize("rank_by,higher_better", [("sharpe", True), ("fees_paid", False)])
def test_sweep_table_of_a_portfolio_sweep_ranks_by_the_portfolio(portfolio_sweep, rank_by, higher_better):
    sw = xr.open_zarr(portfolio_sweep)
    pm = sw["portfolio_metrics"].sel(portfolio_metric=rank_by).load()  # (La, fee_bps)
    flat = pm.stack(c=["La", "fee_bps"])
    want = flat.values if higher_better else -flat.values
    order = np.argsort(-want, kind="stable")
    text = sweep_table(portfolio_sweep, rank_by, top=4)
    title = text.splitlines()[0]
    assert title.startswith(f"Best 4 combinations by the equal portfolio's {rank_by} (rebalanced every 5 times)")
    assert text.splitlines()[1].split()[:3] == ["La", "fee_bps", "portfolio"]
    rows = _table_rows(text, 4)
    for row, k in zip(rows, order):
        c = flat.isel(c=int(k))
        assert [float(row[1]), float(row[2])] == [pytest.approx(c["La"].item()), c["fee_bps"].item()]
        assert float(row[3]) == pytest.approx(c.item(), rel=1e-3, abs=1e-9)
        # the across-symbol columns stay: the per-symbol median of sharpe for this combination
        sel = {"La": c["La"].item(), "fee_bps": c["fee_bps"].item()}
        med = np.nanmedian(sw["sharpe"].sel(sel).values)
        assert f"{med:.4g} [" in " ".join(row)
    # the same order as atc sweep's own summary
    from pipeline.sweep import summarize_sweep

    summary = summarize_sweep(portfolio_sweep, rank_by, top=4)
    assert [(float(r[1]), float(r[2])) for r in rows] == [
        (pytest.approx(a), b) for a, b in zip(summary["La"], summary["fee_bps"])]
    # fees grow with the fee: the zero-fee combinations pay nothing
    fees = sw["portfolio_metrics"].sel(portfolio_metric="fees_paid")
    assert (fees.sel(fee_bps=0.0).values == 0).all() and (fees.sel(fee_bps=25.0).values > 0).all()


def test_show_portfolio_sweep_accepts_portfolio_metrics_only_there(portfolio_sweep, stores, capsys):
    assert main(["show", str(portfolio_sweep), "--rank-by", "turnover", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "Best 2 combinations by the equal portfolio's turnover (rebalanced every 5 times)" in out
    assert main(["show", str(stores["sweep"]), "--rank-by", "turnover"]) == 2  # no portfolio: per-symbol metrics
    assert "turnover" in capsys.readouterr().err
