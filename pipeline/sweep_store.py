"""The sweep store: its format name and version, its template (`create_sweep_store`, the layout
pipeline/sweep.py describes) and its state on disk (`read_sweep_state`: attributes and the tasks
marked done), which resume and refusal read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kernels.metrics import METRIC_DESCRIPTIONS, METRIC_NAMES
from kernels.status import STATUS_NAMES
from kernels.sweep import SweepGrid
from pipeline import results as rs
from pipeline.atomic import read_store_state, store_format
from pipeline.sweep_plan import plan_blocks

if TYPE_CHECKING:
    from pipeline.sweep_identity import SweepIdentity

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SweepError", "SweepState", "create_sweep_store", "is_sweep_store",
           "read_sweep_state"]

FORMAT_NAME = "atc-sweep"
FORMAT_VERSION = 1


class SweepError(rs.ResultsError):
    """A sweep store cannot be created, resumed or written as asked."""


def is_sweep_store(path: Path) -> bool:
    return store_format(path) == FORMAT_NAME


def _coord(values: tuple) -> np.ndarray:
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    return np.array(values)


def create_sweep_store(path: Path, prices: Any, grid: SweepGrid, identity: SweepIdentity, chunk_symbols: int,
                       bshape: tuple[int, ...], n_tasks: int, *, prices_path: str, replace: bool = False,
                       portfolio_block: tuple[int, ...] | None = None) -> None:
    """Write the template (metadata, coordinates, nothing computed) beside `path`, then rename it in."""
    import dask.array as da
    import xarray as xr

    n_sym, n_time = prices.sizes["symbol"], prices.sizes["time"]
    shape = grid.shape + (n_sym,)
    chunks = bshape + (chunk_symbols,)
    dims = grid.dims + ("symbol",)
    data_vars: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}
    for name in METRIC_NAMES:
        data_vars[name] = (dims, da.zeros(shape, np.float64, chunks=chunks), {"description": METRIC_DESCRIPTIONS[name]})
        encoding[name] = {"chunks": chunks, "compressors": [rs.results_codec(name)]}
    data_vars["status"] = (dims, da.full(shape, rs.NOT_COMPUTED, dtype=np.int8, chunks=chunks), {
        "description": "outcome per combination and symbol: -1 not computed yet, "
                       + ", ".join(f"{c} {n}" for c, n in STATUS_NAMES.items())})
    # dtype given explicitly: with only a fill_value, xarray stores a float64 array with a NaN _FillValue
    encoding["status"] = {"chunks": chunks, "dtype": "int8", "fill_value": rs.NOT_COMPUTED,
                          "compressors": [rs.results_codec("status")]}
    data_vars["reason"] = (("symbol",), np.full(n_sym, "", dtype=object), {"description": "bad or missing data"})
    encoding["reason"] = {"chunks": (chunk_symbols,)}
    if identity.save_signals:
        ft = np.dtype(identity.dtype)
        data_vars["Average_Signal"] = (dims + ("time",), da.zeros(shape + (n_time,), ft, chunks=chunks + (n_time,)),
                                       {"description": "final ATC signal of every combination"})
        encoding["Average_Signal"] = {"chunks": chunks + (max(1, n_time),),
                                      "compressors": [rs.results_codec("Average_Signal")]}
    if identity.validation:
        nb = int(json.loads(identity.validation)["blocks"])
        data_vars["fold_stats"] = (
            grid.dims + ("block", "stat", "symbol"), da.zeros(grid.shape + (nb, 5, n_sym), np.float64,
                                                              chunks=bshape + (nb, 5, chunk_symbols)),
            {"description": "per block of the time axis: count and sums of r, r^2, r^3, r^4 of the strategy "
                            "returns (out-of-sample statistics; pipeline/validation.py)"})
        encoding["fold_stats"] = {"chunks": bshape + (nb, 5, chunk_symbols), "compressors": [rs.results_codec("fold_stats")]}
    data_vars["task_done"] = (("task",), np.zeros(n_tasks, np.int8), {"description": "1 once a task's region is written"})
    encoding["task_done"] = {"chunks": (1,)}
    coords = {d: _coord(v) for d, v in zip(grid.dims, grid.values)}
    coords["symbol"] = np.array([str(s) for s in prices["symbol"].values], dtype=object)
    if identity.portfolio:
        from pipeline import sweep_portfolio as sp

        nb = int(json.loads(identity.validation)["blocks"]) if identity.validation else 0
        pvars, penc, pcoords = sp.template_vars(grid, portfolio_block, n_time,
                                                len(plan_blocks(grid.shape, portfolio_block)), nb)
        data_vars.update(pvars)
        encoding.update(penc)
        coords.update(pcoords)
    if identity.save_signals or identity.portfolio:
        coords["time"] = prices["time"].values
    attrs = {
        "atc_format": FORMAT_NAME, "atc_format_version": FORMAT_VERSION, "grid": identity.grid,
        "params": identity.params, "backtest": identity.backtest, "prices_fingerprint": identity.prices_fingerprint,
        "prices_path": str(prices_path), "fingerprint": identity.fingerprint(), "dtype": identity.dtype,
        "save_signals": int(identity.save_signals), "code_version": identity.code, "chunk_symbols": int(chunk_symbols),
        "block_shape": json.dumps(list(bshape)), "n_tasks": int(n_tasks), "validation_plan": identity.validation,
        "portfolio": identity.portfolio, "portfolio_block_shape": json.dumps(list(portfolio_block or [])),
        "versions": json.dumps(rs.versions(), sort_keys=True), "created": rs.utc_now(),
    }
    template = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    rs.write_template(template, path, encoding, error=SweepError, what="sweep store")


@dataclass(frozen=True)
class SweepState:
    attrs: dict[str, Any]
    task_done: np.ndarray
    portfolio_done: np.ndarray | None = None  # phase-2 tasks of a portfolio (None: no portfolio)

    @property
    def complete(self) -> bool:
        return bool(self.task_done.all()) and (self.portfolio_done is None or bool(self.portfolio_done.all()))


def read_sweep_state(path: Path) -> SweepState:
    if not is_sweep_store(path):
        raise SweepError(f"{path} exists and is not an atc sweep store; choose another path")
    with read_store_state(path, FORMAT_VERSION, error=SweepError, what="sweep") as (g, attrs):
        done = np.asarray(g["task_done"][:]) == 1
        pdone = np.asarray(g["portfolio_done"][:]) == 1 if attrs.get("portfolio") else None
    return SweepState(attrs, done, pdone)
