"""A sweep's identity: everything its numbers depend on (grid, base parameters, prices, dtype,
code, validation blocks, portfolio), its fingerprint, and labels for the grid's combinations.

A rerun compares the identity with the store's attributes (`SweepIdentity.differences`) to refuse
a store computed otherwise; the format name and version enter the fingerprint so that a new
format never resumes an old store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from kernels.sweep import SweepGrid
from pipeline import results as rs
from pipeline.sweep_store import FORMAT_NAME, FORMAT_VERSION

__all__ = ["SweepIdentity", "combination_label"]


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


@dataclass(frozen=True)
class SweepIdentity:
    """Everything the numbers of a sweep store depend on."""

    grid: str  # JSON {"dims": [...], "values": [[...], ...]}
    params: str  # JSON of the base ATCParams
    backtest: str  # JSON of the base BacktestParams, periods_per_year resolved
    prices_fingerprint: str
    dtype: str
    save_signals: bool
    code: str
    validation: str = ""  # JSON of pipeline.validation.ValidationPlan ("" : no per-block statistics)
    portfolio: str = ""  # JSON {"kind", "rebalance_every"} ("" : no portfolio)

    @classmethod
    def of(cls, grid: SweepGrid, ppy: float | None, prices_fingerprint: str, dtype: str, save_signals: bool,
           validation: str = "", portfolio: str = ""):
        g = {"dims": list(grid.dims), "values": [[_jsonable(v) for v in vals] for vals in grid.values]}
        bt = grid.base_backtest.to_dict()
        bt["periods_per_year"] = ppy
        return cls(json.dumps(g), json.dumps(grid.base_atc.to_dict(), sort_keys=True), json.dumps(bt, sort_keys=True),
                   prices_fingerprint, dtype, bool(save_signals), rs.code_version(), validation, portfolio)

    def fingerprint(self) -> str:
        what = {"format": f"{FORMAT_NAME}/{FORMAT_VERSION}", "grid": json.loads(self.grid),
                "params": json.loads(self.params), "backtest": json.loads(self.backtest),
                "prices": self.prices_fingerprint, "dtype": self.dtype,
                "save_signals": self.save_signals, "code": self.code}
        if self.validation:  # absent otherwise: stores without it keep their fingerprint
            what["validation"] = json.loads(self.validation)
        if self.portfolio:  # likewise
            what["portfolio"] = json.loads(self.portfolio)
        return "sha256:" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def differences(self, attrs: Mapping[str, Any]) -> list[str]:
        out = []
        for key, label in (("grid", "a different grid"), ("params", "different base parameters"),
                           ("backtest", "different backtest settings")):
            if attrs.get(key) != getattr(self, key):
                out.append(f"{label} ({attrs.get(key)} -> {getattr(self, key)})")
        if attrs.get("prices_fingerprint") != self.prices_fingerprint:
            out.append("a different price store")
        if attrs.get("dtype") != self.dtype:
            out.append(f"dtype {attrs.get('dtype')} (now {self.dtype})")
        if (attrs.get("validation_plan") or "") != self.validation:
            out.append(f"validation blocks {attrs.get('validation_plan') or 'none'} (now {self.validation or 'none'})")
        if (attrs.get("portfolio") or "") != self.portfolio:
            out.append(f"portfolio {attrs.get('portfolio') or 'none'} (now {self.portfolio or 'none'})")
        if bool(attrs.get("save_signals")) != self.save_signals:
            out.append(f"save_signals={bool(attrs.get('save_signals'))} (now {self.save_signals})")
        if attrs.get("code_version") != self.code:
            out.append(f"code version {attrs.get('code_version')!r} (now {self.code!r})")
        if not out and attrs.get("fingerprint") != self.fingerprint():
            out.append("a different sweep fingerprint")
        return out


def combination_label(grid: SweepGrid, flat: int) -> str:
    """"La=0.02, De=0.03" for the combination at C-order position `flat` of the grid."""
    idx = np.unravel_index(int(flat), grid.shape)
    return ", ".join(f"{d}={grid.values[i][j]}" for i, (d, j) in enumerate(zip(grid.dims, idx)))
