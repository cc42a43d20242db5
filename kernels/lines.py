"""The 54 per-line series of one symbol (moving averages and crossover states), as the batch
kernel computes them. The batch path never stores these; this exists for tests, plots and
debugging, so that every MA can be checked against an independent textbook computation.
"""

from __future__ import annotations

import numpy as np

from kernels.errors import ATCInputError
from kernels.params import FAMILIES, ATCParams


def line_series(close, params: ATCParams | None = None, *, dtype=np.float64) -> dict[str, dict[str, np.ndarray]]:
    """For each family, `{"ma": (9, n), "signal": (9, n)}` on the symbol's valid bars.

    `close` is one symbol's valid span (1-D, no NaN, > 0); lines are in spec order.
    """
    from kernels.cpu import build_cpu_kernel, line_tables

    params = ATCParams() if params is None else params
    ft = np.dtype(dtype)
    x = np.asarray(close, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ATCInputError("line_series needs a 1-D span of finite closes > 0")
    T = x.size
    kern = build_cpu_kernel(ft.name)
    xb = x.astype(ft).reshape(T, 1).copy()
    r = np.empty((T, 1), ft)
    r[0] = np.nan
    growth = np.exp(params.lam * (np.maximum(np.arange(T, dtype=np.float64), 1.0) - params.cutout)).astype(ft)
    r[1:, 0] = ((xb[1:, 0] - xb[:-1, 0]) / xb[:-1, 0]) * growth[1:]
    lens, coef = line_tables(params, ft)
    out: dict[str, dict[str, np.ndarray]] = {}
    for f, fam in enumerate(FAMILIES):
        fsig = np.empty((T, 1), ft)
        sig = np.zeros((9, T, 1), np.int8)
        ma = np.empty((9, T, 1), ft)
        kern.family_pass(f, xb, r, T, 1, lens, coef, params.cutout, ft.type(1.0 - params.dec), fsig,
                         sig, True, ma, True)
        out[fam] = {"ma": ma[:, :, 0], "signal": sig[:, :, 0].astype(np.float64)}
    return out
