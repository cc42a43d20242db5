"""`atc run --backtest --portfolio` and `atc trades` from the command line: the closing summary
prints, and every output format of `atc trades` parses back to the trades the kernel gives for
each symbol alone, with store times."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from flows.cli import main
from kernels.trades import trade_records
from pipeline.cluster import connect
from pipeline.store import open_prices, write_prices
from pipeline.synth import synth_prices

N_SYM, N_BARS, CHUNK, FEE = 12, 240, 4, 7.0
SETS = ["--set", "ema_len=10", "--set", "hma_len=10", "--set", "wma_len=10", "--set", "dema_len=10",
        "--set", "lsma_len=10", "--set", "kama_len=10", "--set", f"fee_bps={FEE}"]


@pytest.fixture(scope="module")
def cluster():
    with connect(None, workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        yield cl


@pytest.fixture(scope="module")
def store(cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("tcli")
    ds = synth_prices(N_SYM, N_BARS, seed=8, freq="B")
    close = ds["close"].values.copy()
    close[2, 100:104] = np.nan
    close[3, :60] = np.nan
    ds["close"] = (("symbol", "time"), close)
    write_prices(ds, d / "p.zarr", chunk_symbols=CHUNK)
    return d, cluster


def run_cli(store, capsys, *extra):
    d, cl = store
    rc = main(["run", str(d / "p.zarr"), str(d / "r.zarr"), "--backtest", *SETS, "--scheduler", cl.address,
               "--no-progress", "--chunk-symbols", str(CHUNK), *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def expected(d):
    """Per symbol, from the stored positions and the price store's closes: (symbol name, entry time,
    exit time or None, direction, bars, ret, fees, is_open)."""
    px = open_prices(d / "p.zarr")
    close, times = px["close"].values, px["time"].values
    px.close()
    res = xr.open_zarr(d / "r.zarr")
    rows = []
    for i, name in enumerate(res["symbol"].values):
        for r in trade_records(close[i], res["position"].values[i], fee_bps=FEE):
            rows.append((str(name), pd.Timestamp(times[r["entry"]]),
                         None if r["exit"] < 0 else pd.Timestamp(times[r["exit"]]),
                         "long" if r["direction"] > 0 else "short", int(r["bars"]), float(r["ret"]),
                         float(r["fees"]), bool(r["is_open"])))
    return rows


def test_run_prints_summary_and_portfolio_and_trades_formats_parse(store, capsys):
    d, _ = store
    rc, out, err = run_cli(store, capsys, "--portfolio", "equal", "--rebalance", "5")
    assert rc == 0, err
    assert "Backtest across symbols" in out and "sharpe" in out
    assert "Portfolio (equal, rebalanced every 5 times" in out and "fees_paid" in out
    exp = expected(d)
    assert len(exp) > 30 and any(r[7] for r in exp)

    assert main(["trades", str(d / "r.zarr"), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == len(exp)
    for g, e in zip(got, exp):
        t = (g["symbol"], pd.Timestamp(g["entry_time"]), None if g["exit_time"] is None else pd.Timestamp(g["exit_time"]),
             g["direction"], g["bars"], g["ret"], g["fees"], g["is_open"])
        assert t == e   # floats exact: json keeps every digit

    assert main(["trades", str(d / "r.zarr"), "--format", "csv"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out), parse_dates=["entry_time", "exit_time"])
    assert list(df.columns) == ["symbol", "direction", "entry_time", "exit_time", "bars", "ret", "fees", "is_open"]
    for row, e in zip(df.itertuples(index=False), exp):
        x = None if pd.isna(row.exit_time) else row.exit_time
        assert (row.symbol, row.entry_time, x, row.direction, row.bars, row.ret, row.fees, bool(row.is_open)) == e
    assert len(df) == len(exp)

    sym = exp[0][0]
    assert main(["trades", str(d / "r.zarr"), "--symbol", sym]) == 0
    table = capsys.readouterr().out.splitlines()
    mine = [e for e in exp if e[0] == sym]
    assert table[0].split()[:4] == ["symbol", "direction", "entry_time", "exit_time"]
    body = table[1:-1]
    assert len(body) == len(mine) and all(line.split()[0] == sym for line in body)
    assert body[0].split()[2] == mine[0][1].strftime("%Y-%m-%d")
    assert table[-1].startswith(f"{len(mine)} trades")

    # a rerun is a no-op: same output, nothing recomputed
    rc, out2, _ = run_cli(store, capsys, "--portfolio", "equal", "--rebalance", "5")
    assert rc == 0 and "0 computed now" in out2 and "Portfolio (equal" in out2


def test_cli_refusals(store, capsys, tmp_path):
    d, cl = store
    p = str(d / "p.zarr")
    assert main(["run", p, str(tmp_path / "x.zarr"), "--portfolio", "equal", "--scheduler", cl.address]) == 2
    assert "add --backtest" in capsys.readouterr().err
    assert main(["run", p, str(tmp_path / "x.zarr"), "--backtest", "--portfolio", "best"]) == 2
    assert "--portfolio must be one of equal, signal" in capsys.readouterr().err
    assert main(["run", p, str(tmp_path / "x.zarr"), "--backtest", "--portfolio", "equal", "--rebalance", "0"]) == 2
    assert "--rebalance must be an integer >= 1" in capsys.readouterr().err
    assert main(["run", p, str(tmp_path / "x.zarr"), "--backtest", "--rebalance", "3"]) == 2
    assert "add --portfolio" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
    assert main(["trades", str(d / "r.zarr"), "--symbol", "NOPE"]) == 2
    assert "no symbol 'NOPE'" in capsys.readouterr().err
    assert main(["trades", str(d / "r.zarr"), "--format", "xml"]) == 2
    assert "--format must be one of" in capsys.readouterr().err
    assert main(["trades", str(tmp_path / "none.zarr")]) == 2
    capsys.readouterr()
