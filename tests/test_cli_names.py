"""Names users type and read: the pandas API's `hull_len` in --set and grid files, typo hints, and
docs/BACKTEST.md's metric and status descriptions against what the stores really hold."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flows.cli import main
from flows.run_cmd import load_params
from flows.sweep_cmd import load_grid
from kernels.errors import ATCUserError
from kernels.metrics import METRIC_NAMES
from kernels.params import ATCParams

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_hull_len_is_the_hma_length_in_set_config_and_grids(tmp_path):
    assert load_params(None, ["hull_len=31"]) == ATCParams(hma_len=31)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("hull_len: 22\n")
    atc, bt = load_params(cfg, ["fee_bps=5"], backtest=True)
    assert atc.hma_len == 22 and bt.fee_bps == 5
    grid = tmp_path / "g.yaml"
    grid.write_text("hull_len: [20, 30]\nLa: [0.01]\n")
    g = load_grid(grid)
    assert g.dims == ("hma_len", "La") and g.values[0] == (20, 30)
    with pytest.raises(ATCUserError, match="hull_len and hma_len name the same parameter"):
        load_params(None, ["hull_len=20", "hma_len=30"])


def test_unknown_names_suggest_the_closest(tmp_path, capsys):
    with pytest.raises(ATCUserError, match=r"unknown ATC parameter\(s\): ema_length \(did you mean ema_len\?\)"):
        load_params(None, ["ema_length=20"])
    grid = tmp_path / "g.yaml"
    grid.write_text("hul_len: [20]\n")
    assert main(["sweep", str(tmp_path / "p.zarr"), str(tmp_path / "s.zarr"), "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown parameter 'hul_len' (did you mean hull_len?)" in err


def _table_names(text: str, header: str) -> list[str]:
    """First-column names of the markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} "))
    names = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names.append(re.fullmatch(r"\|\s*`([^`]+)`\s*\|.*", line).group(1))
    return names


def test_backtest_doc_lists_the_stored_metric_names():
    text = (DOCS / "BACKTEST.md").read_text()
    assert _table_names(text, "stored name") == list(METRIC_NAMES)


def test_sweep_store_status_has_the_documented_dtype(tmp_path):
    from kernels.sweep import make_grid
    from pipeline.store import open_prices, write_prices
    from pipeline.sweep import SweepIdentity, create_sweep_store
    from pipeline.synth import synth_prices

    doc = (DOCS / "BACKTEST.md").read_text()
    dtype = re.search(r"sweep store's `status` is (\w+)", doc).group(1)
    write_prices(synth_prices(6, 50, seed=1), tmp_path / "p.zarr", chunk_symbols=3)
    ds = open_prices(tmp_path / "p.zarr")
    g = make_grid({"La": [0.01, 0.02]})
    create_sweep_store(tmp_path / "s.zarr", ds, g, SweepIdentity.of(g, 252.0, "fp", "float64", False), 3, (2,), 2,
                       prices_path="p")
    status = xr.open_zarr(tmp_path / "s.zarr")["status"]
    assert status.dtype == np.dtype(dtype)
    assert (status.values == -1).all()  # never written: "not computed yet", not 0 ("ok") or NaN
