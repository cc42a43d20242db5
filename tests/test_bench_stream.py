"""`atc bench stream` end to end on a tiny universe: the figures it reports are those of commands
that really ran (the daily routine's fresh processes leave an appended, updated store behind)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from flows.cli import main


@pytest.mark.slow  # four fresh `atc` processes (run, ingest --append, update, scan): ~20 s
def test_bench_stream_reports_what_the_daily_commands_did(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "stream", "--symbols", "40", "--bars", "300", "--updates", "3", "--store", "30x700",
               "--dir", str(tmp_path), "--json", str(out)])
    assert rc in (0, None)
    got = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "one update of every symbol" in printed and "atc update (one new bar)" in printed
    assert got["symbols"] == 40 and got["updates"] == 3
    # the update is timed against the batch's cost of one bar, from the same run
    assert got["batch_per_bar_s"] == pytest.approx(got["batch_s"] / 300)
    assert 0 < got["update_best_s"] <= got["update_median_s"]
    daily = got["daily"]
    for key in ("run_s", "append_s", "update_s", "scan_s", "append_cpu_s", "update_cpu_s", "scan_cpu_s"):
        assert daily[key] > 0, key
    # the timed append and update really happened: the stores end one bar longer than the run's
    prices = zarr.open_group(str(tmp_path / "daily-30x700.zarr"), mode="r")
    results = zarr.open_group(str(tmp_path / "daily-30x700-results.zarr"), mode="r")
    assert prices["time"].shape == (700,)
    assert results["time"].shape == (700,)
    has_bar = ~np.isnan(prices["close"][:, -1])  # synthetic symbols list late and delist: NaN = no bar
    assert has_bar.sum() > 20
    newest = results["Average_Signal"][:, -1]
    np.testing.assert_array_equal(np.isfinite(newest), has_bar)
