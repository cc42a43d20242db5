"""`atc plot`: figures built from real stores, checked for what they show (not only that a file exists).

The stores (6 symbols x 400 bars, one backtested run, one 3 x 3 x 2 sweep) are built once per test
session with the real commands; `tests/test_show.py` reuses them through `built_stores()`.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("matplotlib")

from flows.cli import main  # noqa: E402
from flows.plot_cmd import (N_BUCKETS, direction_changes, drawdown, plot_sweep, plot_symbol,  # noqa: E402
                            symbol_figure)
from kernels.params import EQUITY_NAMES, FAMILIES  # noqa: E402
from pipeline.inspect import (UnknownNameError, minmax_decimate, parse_sel, read_symbol,  # noqa: E402
                              sweep_curve, sweep_surface)

GRID = "ema_len: [14, 28, 50]\nlong_threshold: [0.0, 0.1, 0.3]\nfee_bps: [0, 10]\n"
LATE = "SYN0003"  # lists late in the seed-3 universe: NaN before its first bar


@functools.cache
def built_stores() -> dict[str, Path]:
    """Price store, backtested results store and sweep store, built once per session (each `atc
    run`/`atc sweep` starts a local Dask cluster)."""
    root = Path(tempfile.mkdtemp(prefix="atc-test-plot-"))
    prices, results, sweep = root / "prices.zarr", root / "results.zarr", root / "sweep.zarr"
    (root / "grid.yaml").write_text(GRID)
    assert main(["synth", str(prices), "--symbols", "6", "--bars", "400", "--seed", "3"]) == 0
    assert main(["run", str(prices), str(results), "--backtest", "--set", "fee_bps=5", "--workers", "1",
                 "--no-progress"]) == 0
    assert main(["sweep", str(prices), str(sweep), "--grid", str(root / "grid.yaml"), "--workers", "1",
                 "--no-progress", "--top", "2"]) == 0
    return {"root": root, "prices": prices, "results": results, "sweep": sweep}


@pytest.fixture(scope="session")
def stores():
    s = built_stores()
    yield s


def _lines(ax):
    return [ln for ln in ax.get_lines()]


def _collections(ax, kind: str):
    return [c for c in ax.collections if type(c).__name__ == kind]


# --------------------------------------------------------------------------------------------
# Symbol plots
# --------------------------------------------------------------------------------------------

def test_symbol_figure_panels_and_content(stores):
    fig = plot_symbol(stores["results"], LATE)
    axes = fig.axes
    assert len(axes) == 5  # price, Layer-1, Layer-2, equity, drawdown
    res = xr.open_zarr(stores["results"])
    px = xr.open_zarr(stores["prices"], consolidated=False)
    close = px["close"].sel(symbol=LATE).values
    own = np.isfinite(close)
    assert 0 < own.sum() < close.size  # a late listing: the test is about plotting only its own bars

    # 1. close: exactly the symbol's own bars (400 bars < 2 x buckets: not decimated), no NaN
    (line,) = _lines(axes[0])
    np.testing.assert_array_equal(line.get_ydata(), close[own])
    assert len(_collections(axes[0], "QuadMesh")) == 1  # the Average_Signal band
    band = _collections(axes[0], "QuadMesh")[0].get_array().reshape(-1)
    np.testing.assert_allclose(band, res["Average_Signal"].sel(symbol=LATE).values[own])
    assert len(_collections(axes[0], "PathCollection")) == 2  # long / short markers
    # 2. Layer-1: one row per family, each the stored signal
    (mesh,) = _collections(axes[1], "QuadMesh")
    rows = np.asarray(mesh.get_array()).reshape(len(FAMILIES), -1)
    for k, f in enumerate(FAMILIES):
        np.testing.assert_allclose(rows[k], res[f"{f}_Signal"].sel(symbol=LATE).values[own])
    assert [t.get_text() for t in axes[1].get_yticklabels()] == [f"{f}_Signal" for f in FAMILIES]
    # 3. Layer-2: six equities
    assert [ln.get_label() for ln in _lines(axes[2])] == list(EQUITY_NAMES)
    np.testing.assert_allclose(_lines(axes[2])[5].get_ydata(), res["KAMA_S"].sel(symbol=LATE).values[own])
    # 4. equity vs buy and hold, 5. drawdown
    eq, bh = _lines(axes[3])
    np.testing.assert_allclose(eq.get_ydata(), res["equity"].sel(symbol=LATE).values[own])
    np.testing.assert_allclose(bh.get_ydata(), close[own] / close[own][0])
    assert len(_collections(axes[4], "FillBetweenPolyCollection") or _collections(axes[4], "PolyCollection")) == 1
    (dd_bh,) = _lines(axes[4])
    assert np.nanmin(dd_bh.get_ydata()) == pytest.approx(-np.nanmax(drawdown(close[own])))


def test_markers_are_the_stored_position_changes(stores):
    """The markers follow the backtest's rule: with long_only false they are exactly the bars where
    the stored `position` changes."""
    view = read_symbol(stores["results"], "SYN0000")
    pos = view.series["position"]
    want = np.flatnonzero(np.diff(pos) != 0) + 1
    idx, d = direction_changes(view.series["Average_Signal"], view.params["long_threshold"],
                               view.params["short_threshold"])
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(d, pos[want])
    fig = symbol_figure(view)
    up, down = _collections(fig.axes[0], "PathCollection")
    assert len(up.get_offsets()) == (d > 0).sum() and len(down.get_offsets()) == (d < 0).sum()
    np.testing.assert_allclose(up.get_offsets()[:, 1], view.close[idx[d > 0]])


def test_without_backtest_three_panels_and_time_window(stores):
    view = read_symbol(stores["results"], "SYN0001", start="2000-03-01", end="2000-06-30")
    assert view.time[0] >= np.datetime64("2000-03-01") and view.time[-1] <= np.datetime64("2000-06-30")
    for v in ("position", "strategy_return", "equity"):
        view.series.pop(v)
    fig = symbol_figure(view)
    assert len(fig.axes) == 3
    assert "SYN0001" in fig.axes[0].get_title(loc="left")


def test_union_calendar_bars_of_other_symbols_are_not_drawn(stores, tmp_path):
    """A price store with holes (bars only other symbols have) given with --prices: those bars
    are left out, and the changed fingerprint is reported."""
    px = xr.open_zarr(stores["prices"], consolidated=False).load()
    holes = px["close"].values.copy()
    holes[0, 100:110] = np.nan
    px["close"].values[:] = holes
    px.attrs["fingerprint"] = "sha256:other"
    moved = tmp_path / "moved.zarr"
    px.to_zarr(moved, zarr_format=3, consolidated=False)
    view = read_symbol(stores["results"], "SYN0000", prices=moved)
    assert view.time.size == 390 and np.isfinite(view.close).all()
    assert not np.isin(px["time"].values[100:110], view.time).any()
    assert any("changed since the run" in n for n in view.notes)


# --------------------------------------------------------------------------------------------
# Decimation and long histories
# --------------------------------------------------------------------------------------------

def test_minmax_decimation_keeps_each_buckets_extremes():
    rng = np.random.default_rng(5)
    y = np.cumsum(rng.standard_normal(100_003))
    y[500:900] = np.nan  # a gap (whole buckets and parts of buckets)
    y[77_777] = 1e6  # a spike must survive
    n_buckets = 300
    idx, vals = minmax_decimate(y, n_buckets)
    assert vals.size <= 2 * n_buckets and np.all(np.diff(idx) >= 0)
    size = -(-y.size // n_buckets)
    for b in range(0, y.size, size):
        seg = y[b:b + size]
        mine = vals[(idx >= b) & (idx < b + size)]
        if np.isnan(seg).all():
            assert np.isnan(mine).all()
        else:
            assert np.nanmax(mine) == np.nanmax(seg) and np.nanmin(mine) == np.nanmin(seg)
    assert 1e6 in vals
    short = np.arange(10.0)
    np.testing.assert_array_equal(minmax_decimate(short, 300)[1], short)


def write_long_stores(root: Path, n_bars: int, seed: int = 3) -> Path:
    """A 1-symbol price store and backtested results store of `n_bars` minute bars, written
    directly in the results format (no cluster): the kernels' own outputs, stored as atc run does."""
    import pandas as pd

    from kernels import compute_atc
    from kernels.backtest import run_backtest
    from kernels.metrics import METRIC_NAMES
    from kernels.params import OUTPUT_NAMES, ATCParams
    from kernels.synthetic import random_walk_panel

    close = random_walk_panel(1, n_bars, seed, vol=0.002)
    params = ATCParams()
    res = compute_atc(close, params)
    bt = run_backtest(close, res["Average_Signal"], params, periods_per_year=525960.0)
    coords = {"symbol": np.array(["LONG"], dtype=object),
              "time": pd.date_range("2000-01-03", periods=n_bars, freq="1min").values}
    xr.Dataset({"close": (("symbol", "time"), close)}, coords=coords,
               attrs={"atc_format": "price-store", "atc_format_version": 1, "fingerprint": "sha256:long"}
               ).to_zarr(root / "prices.zarr", zarr_format=3, consolidated=False, mode="w")
    data = {n: (("symbol", "time"), res[n]) for n in OUTPUT_NAMES}
    data.update({n: (("symbol", "time"), bt[n]) for n in ("position", "strategy_return", "equity")})
    data.update({m: (("symbol",), bt.metrics[m]) for m in METRIC_NAMES})
    data.update(status=(("symbol",), np.zeros(1, np.int8)), reason=(("symbol",), np.array([""], dtype=object)),
                chunk_done=(("chunk",), np.ones(1, np.int8)))
    with warnings.catch_warnings():  # "consolidated metadata is not part of the Zarr v3 spec": as atc run does
        warnings.simplefilter("ignore")
        _write_results(data, coords, params, root)
    return root / "results.zarr"


def _write_results(data, coords, params, root: Path) -> None:
    xr.Dataset(data, coords=coords, attrs={
        "atc_format": "atc-results", "atc_format_version": 1, "params": json.dumps(params.to_dict()),
        "prices_path": str((root / "prices.zarr").resolve()), "prices_fingerprint": "sha256:long",
        "backtest": json.dumps({"fee_bps": 0.0, "long_only": False, "periods_per_year": 525960.0}),
    }).to_zarr(root / "results.zarr", zarr_format=3, consolidated=True, mode="w")


def test_long_history_is_decimated(tmp_path):
    """200,000 bars: every line holds at most 2 points per bucket and keeps the global extremes;
    markers are thinned. (1,000,000 bars: see docs/PLOTS.md for the measured time.)"""
    results = write_long_stores(tmp_path, 200_000)
    t0 = time.perf_counter()
    fig = plot_symbol(results, "LONG", out=tmp_path / "long.png")
    took = time.perf_counter() - t0
    view = read_symbol(results, "LONG")
    for ax in fig.axes:
        for ln in _lines(ax):
            assert len(ln.get_ydata()) <= 2 * N_BUCKETS
    (close,) = _lines(fig.axes[0])
    assert np.max(close.get_ydata()) == view.close.max() and np.min(close.get_ydata()) == view.close.min()
    up, down = _collections(fig.axes[0], "PathCollection")
    assert len(up.get_offsets()) + len(down.get_offsets()) <= 2 * N_BUCKETS
    assert (tmp_path / "long.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert took < 60  # generous: the 2-core CI machine is shared; ~1-2 s when idle


# --------------------------------------------------------------------------------------------
# Sweep plots
# --------------------------------------------------------------------------------------------

def test_heatmap_best_cell_matches_xarray(stores):
    sw = xr.open_zarr(stores["sweep"])
    surf = sweep_surface(stores["sweep"], "sharpe", x="long_threshold", y="ema_len", agg="median",
                         sel={"fee_bps": 10.0})
    ref = sw["sharpe"].sel(fee_bps=10.0).median("symbol").transpose("ema_len", "long_threshold")
    np.testing.assert_allclose(surf.values, ref.values)
    best = ref.argmax(dim=["ema_len", "long_threshold"])
    assert surf.best == (int(best["ema_len"]), int(best["long_threshold"]))
    assert len(np.unique(np.round(ref.values, 12))) > 1  # not a flat surface: the argmax means something

    # pooled: a parameter neither on an axis nor fixed is aggregated with the symbols
    pooled = sweep_surface(stores["sweep"], "cagr", x="long_threshold", y="ema_len", agg="q25")
    ref2 = sw["cagr"].stack(s=["fee_bps", "symbol"]).quantile(0.25, dim="s").transpose("ema_len", "long_threshold")
    np.testing.assert_allclose(pooled.values, ref2.values)
    assert pooled.pooled == ["fee_bps"]
    # lower is better for drawdown
    dd = sweep_surface(stores["sweep"], "max_drawdown", x="long_threshold", y="ema_len", sel={"fee_bps": 0.0})
    refd = sw["max_drawdown"].sel(fee_bps=0.0).median("symbol").transpose("ema_len", "long_threshold")
    b = refd.argmin(dim=["ema_len", "long_threshold"])
    assert dd.best == (int(b["ema_len"]), int(b["long_threshold"]))

    fig = plot_sweep(stores["sweep"], "sharpe", x="long_threshold", y="ema_len", sel=["fee_bps=10"])
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # heatmap + colour bar
    np.testing.assert_allclose(ax.images[0].get_array(), ref.values)
    (box,) = [p for p in ax.patches if type(p).__name__ == "Rectangle" and p.get_edgecolor()[:3] == (1.0, 0, 0)]
    r, c = surf.best
    assert box.get_xy() == (c - 0.5, r - 0.5)
    assert "best: long_threshold=" in ax.get_legend().get_texts()[0].get_text()
    assert len(ax.texts) == ref.size  # one number per cell


def test_robustness_curve(stores):
    sw = xr.open_zarr(stores["sweep"])
    cur = sweep_curve(stores["sweep"], "sharpe", "ema_len", sel={"fee_bps": 0.0})
    flat = sw["sharpe"].sel(fee_bps=0.0).stack(s=["long_threshold", "symbol"])
    np.testing.assert_allclose(cur["median"], flat.median("s").values)
    np.testing.assert_allclose(cur["q25"], flat.quantile(0.25, dim="s").values)
    np.testing.assert_allclose(cur["q75"], flat.quantile(0.75, dim="s").values)
    fig = plot_sweep(stores["sweep"], "sharpe", x="ema_len", sel={"fee_bps": 0.0})
    ax = fig.axes[0]
    assert len(fig.axes) == 1
    median_line = _lines(ax)[0]
    np.testing.assert_allclose(median_line.get_ydata(), cur["median"])
    np.testing.assert_allclose(median_line.get_xdata(), [14, 28, 50])
    assert len(_collections(ax, "FillBetweenPolyCollection") or _collections(ax, "PolyCollection")) == 1


# --------------------------------------------------------------------------------------------
# HTML and the command line
# --------------------------------------------------------------------------------------------

def _bokeh_doc(html: str) -> str:
    m = re.search(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', html, re.S)
    assert m, "no bokeh document in the page"
    json.loads(m.group(1))
    return m.group(1)


def test_html_holds_the_bokeh_document(stores, tmp_path):
    out = tmp_path / "sym.html"
    assert main(["plot", str(stores["results"]), "--symbol", LATE, "--out", str(out)]) == 0
    html = out.read_text()
    doc = _bokeh_doc(html)
    assert "Bokeh" in html and "Layer-1 family signals" in doc and "strategy equity vs buy and hold" in doc
    assert doc.count('"name":"Figure"') == 5
    out2 = tmp_path / "heat.html"
    assert main(["plot", str(stores["sweep"]), "--metric", "cagr", "--x", "ema_len", "--y", "long_threshold",
                 "--out", str(out2)]) == 0
    doc2 = _bokeh_doc(out2.read_text())
    assert "best: ema_len=" in doc2 and "median cagr" in doc2


def test_cli_writes_images(stores, tmp_path, capsys):
    for args, name in (([str(stores["results"]), "--symbol", "SYN0002", "--start", "2000-06-01"], "a.png"),
                       ([str(stores["sweep"]), "--x", "ema_len", "--y", "long_threshold", "--agg", "mean"], "b.svg"),
                       ([str(stores["sweep"]), "--metric", "calmar", "--x", "long_threshold"], "c.pdf")):
        out = tmp_path / name
        assert main(["plot", *args, "--out", str(out)]) == 0
        assert f"wrote {out}" in capsys.readouterr().out
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "b.svg").read_bytes()[:500]
    assert (tmp_path / "c.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize("args, message", [
    (["results", "--symbol", "SYN003"], "unknown symbol 'SYN003'"),
    (["results", "--symbol", "syn0001"], "did you mean 'SYN0001'"),
    (["results"], "give --symbol"),
    (["results", "--symbol", "SYN0001", "--x", "La"], "apply to sweep stores"),
    (["results", "--symbol", "SYN0001", "--start", "yesterday-ish"], "is not a time"),
    (["results", "--symbol", "SYN0001", "--start", "1990-01-01", "--end", "1990-02-01"], "no bars between"),
    (["results", "--symbol", "SYN0001", "--out", "x.jpg"], "unknown image type"),
    (["sweep", "--x", "ema_len", "--metric", "sharp"], "did you mean 'sharpe'"),
    (["sweep", "--x", "emalen"], "unknown parameter 'emalen' (--x); did you mean 'ema_len'"),
    (["sweep", "--x", "La"], "La is not swept in this store (fixed at 0.02)"),
    (["sweep", "--x", "ema_len", "--y", "ema_len"], "both ema_len"),
    (["sweep", "--x", "ema_len", "--sel", "fee_bps=3"], "not a swept value of fee_bps"),
    (["sweep", "--x", "ema_len", "--agg", "max"], "--agg must be one of"),
    (["sweep"], "needs --x"),
    (["sweep", "--x", "ema_len", "--symbol", "SYN0001"], "apply to results stores"),
    (["prices"], "is a price store"),
])
def test_cli_errors_are_one_line(stores, tmp_path, capsys, args, message):
    args = [str(stores[args[0]]), *args[1:]]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "x.png")]
    assert main(["plot", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "x.png").exists()


def test_unknown_symbol_error_type(stores):
    with pytest.raises(UnknownNameError):
        read_symbol(stores["results"], "NOPE")
    with pytest.raises(UnknownNameError):
        parse_sel(["emalen=14"], stores["sweep"])


def test_missing_matplotlib_is_one_line(stores, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    assert main(["plot", str(stores["results"]), "--symbol", "SYN0001", "--out", str(tmp_path / "x.png")]) == 2
    assert "pip install 'atc-pipeline[viz]'" in capsys.readouterr().err
    # HTML needs bokeh only
    assert main(["plot", str(stores["results"]), "--symbol", "SYN0001", "--out", str(tmp_path / "x.html")]) == 0


def test_help_does_not_import_matplotlib():
    code = "import sys; import flows.cli; print('matplotlib' in sys.modules, 'bokeh.plotting' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.split() == ["False", "False"]


@pytest.fixture(scope="session", autouse=True)
def _cleanup():
    yield
    if built_stores.cache_info().currsize:
        shutil.rmtree(built_stores()["root"], ignore_errors=True)
