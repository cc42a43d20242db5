"""Parameter sweeps with reuse: the 54 crossover states are computed once per set of lengths.

What depends on what (ATC_SPEC.md):

    lengths, robustness ──> 54 MAs ──> 54 crossover states s_j,t          (expensive; once per block)
    La, cutout          ──> growth g_t, returns r_t = R_t * g_t
    De (+ the above)    ──> 54 Layer-1 equities ──> 6 Family_Signal       (9 equity steps per family)
    weights             ──> Layer 2 (Family_S)
    thresholds, strategy_mode ──> Average_Signal
    fee_bps, long_only  ──> positions, strategy returns, metrics

`sweep_panel` sorts the combinations in that order of keys, so consecutive combinations share
as many stages as possible, and for each combination recomputes only the stages whose inputs
changed ("stage" 0..4 below). For every block of symbols and every set of lengths, the first
combination runs the fused CPU kernel's `family_pass` with `store_sig=True` (which also gives that
combination's Layer-1 signals); the other combinations rebuild Layer 1 from the stored int8 states
with the same step functions (`equity_step`, `start_equity`, `round2`) in the same order of
operations as `family_pass`, then call the kernel's own `layer2_and_average`, so every
combination's `Average_Signal` is bit-identical to `compute_atc` with those parameters. Positions
and metrics come from `kernels.backtest.simulate` and `kernels.metrics.symbol_metrics`, as in
`run_backtest`.

Memory per worker thread is one block: the int8 states `(6, 9, bars, lanes)` and the 13 outputs
`(13, bars, lanes)`; the outputs are metrics `(combination, metric, symbol)` and, only on request,
the `Average_Signal` cube `(combination, symbol, bar)`. Callers bound memory by passing blocks of
combinations and chunks of symbols.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Sequence

import numba
import numpy as np
from numba import prange

from kernels import status as st
from kernels.backtest import BacktestParams, simulate, split_params
from kernels.errors import ATCInputError, ATCUserError
from kernels.jitcache import KernelSet
from kernels.metrics import N_METRICS, per_symbol, symbol_metrics
from kernels.params import FAMILIES, ATCParamError, ATCParams
from kernels.params import _coerce as _coerce_atc

ATC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ATCParams))
SWEEP_PARAMS: tuple[str, ...] = ATC_FIELDS + ("fee_bps", "long_only")
"""Parameters a grid may sweep: every ATCParams field, `fee_bps` and `long_only`."""

LENGTH_PARAMS: tuple[str, ...] = ("robustness",) + tuple(f"{f.lower()}_len" for f in FAMILIES)
"""The parameters that select the moving averages (one crossover pass per distinct set)."""

NO_POSITION = -128
"""`SweepResult.positions` where the run's `position` is NaN (no bar, or the symbol not computed)."""

_LENGTH_KEYS = LENGTH_PARAMS
_WEIGHT_KEYS = tuple(f"{f.lower()}_w" for f in FAMILIES)
_INTERACTING = _LENGTH_KEYS + ("long_threshold", "short_threshold")
_ATC_TYPES = {"robustness": str, "long_threshold": float, "short_threshold": float,
              **{k: int for k in _LENGTH_KEYS[1:]}}


class SweepGridError(ATCParamError):
    """A parameter grid is invalid (unknown parameter, empty list, invalid value or combination)."""


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class SweepGrid:
    """The cartesian product of `values[i]` over the swept parameters `dims[i]` (in C order: the last
    dim varies fastest), on top of fixed base parameters."""

    dims: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    base_atc: ATCParams
    base_backtest: BacktestParams

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def point(self, index: int) -> dict[str, Any]:
        """The swept values of flat (C-order) combination `index`."""
        idx = np.unravel_index(index, self.shape) if self.dims else ()
        return {d: self.values[i][int(j)] for i, (d, j) in enumerate(zip(self.dims, idx))}

    def params(self, index: int) -> tuple[ATCParams, BacktestParams]:
        return split_params(self.point(index), self.base_atc, self.base_backtest)

    def all_params(self, start: int = 0, stop: int | None = None) -> list[tuple[ATCParams, BacktestParams]]:
        stop = self.size if stop is None else stop
        return [self.params(i) for i in range(start, stop)]


def make_grid(grid: Mapping[str, Any], base_atc: ATCParams | None = None,
              base_backtest: BacktestParams | None = None) -> SweepGrid:
    """Validate a grid mapping `{parameter: [values...]}` and build a `SweepGrid`.

    Rejected with a `SweepGridError` naming the parameter (before any work): a grid that is not a
    mapping or is empty, an unknown or unsweepable parameter, an empty list, a repeated value, a
    value of the wrong type or out of range, and any combination the parameters reject (e.g.
    `long_threshold <= short_threshold`, a length below 1 for some robustness). A scalar is taken as
    a one-value list.
    """
    base_atc = ATCParams() if base_atc is None else base_atc
    base_backtest = BacktestParams() if base_backtest is None else base_backtest
    if not isinstance(grid, Mapping):
        raise SweepGridError(f"a grid must map parameter names to lists of values, got {type(grid).__name__}")
    if not grid:
        raise SweepGridError("the grid is empty: give at least one parameter with a list of values")
    dims: list[str] = []
    values: list[tuple[Any, ...]] = []
    for name, vals in grid.items():
        if not isinstance(name, str) or name not in SWEEP_PARAMS:
            hint = (" (set it with --periods-per-year; it cannot be swept)" if name == "periods_per_year"
                    else f"; sweepable: {', '.join(SWEEP_PARAMS)}")
            raise SweepGridError(f"grid: unknown parameter {name!r}{hint}")
        if isinstance(vals, (str, bytes, int, float, bool)) or vals is None:
            vals = [vals]
        if isinstance(vals, Mapping) or not isinstance(vals, Iterable):
            raise SweepGridError(f"grid: {name} must be a list of values, got {vals!r}")
        vals = list(vals)
        if not vals:
            raise SweepGridError(f"grid: {name} has an empty list of values")
        coerced = []
        for v in vals:
            try:
                atc, bt = split_params({name: v}, base_atc, base_backtest)
            except ATCParamError as exc:
                if name not in _INTERACTING:
                    raise SweepGridError(f"grid: {name}={v!r} is invalid: {exc}") from None
                # may be valid with the other swept values (e.g. a short_threshold above the base
                # long_threshold): only its type is checked here, the combinations below
                try:
                    coerced.append(_coerce_atc(name, v))
                except ATCParamError as exc2:
                    raise SweepGridError(f"grid: {name}={v!r} is invalid: {exc2}") from None
                if isinstance(coerced[-1], bool) or not isinstance(coerced[-1], _ATC_TYPES[name]):
                    raise SweepGridError(f"grid: {name}={v!r} is invalid: {exc}") from None
                continue
            coerced.append(getattr(atc, name) if name in ATC_FIELDS else getattr(bt, name))
        if len(set(coerced)) != len(coerced):
            dup = next(v for v in coerced if coerced.count(v) > 1)
            raise SweepGridError(f"grid: {name} lists the value {dup!r} more than once")
        dims.append(name)
        values.append(tuple(coerced))
    g = SweepGrid(tuple(dims), tuple(values), base_atc, base_backtest)
    # combinations can fail where single values do not (thresholds, lengths x robustness)
    interacting = [i for i, d in enumerate(dims) if d in _INTERACTING]
    if interacting:
        for combo in itertools.product(*(values[i] for i in interacting)):
            point = {dims[i]: v for i, v in zip(interacting, combo)}
            try:
                split_params(point, base_atc, base_backtest)
            except ATCParamError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
                raise SweepGridError(f"grid: the combination {shown} is invalid: {exc}") from None
    return g


# --------------------------------------------------------------------------- compiled pieces


# Kernel functions, written once at module level and re-bound per float type by build_sweep_kernel
# (as in kernels/cpu.py, so that Numba's disk cache can hold them): besides their arguments they
# read `ft`, NAN/ZERO/ONE, the step functions of kernels.steps and the CPU kernel's `family_pass`,
# `layer2_and_average` and `gather` from the globals supplied there.

_KERNELS = KernelSet()
_kernel = _KERNELS.kernel

# globals bound per float type by build_sweep_kernel; placeholders at module level
ft = NAN = ZERO = ONE = None
equity_step = start_equity = round2 = family_pass = gather = scatter_row = layer2_and_average = None


@_kernel()
def layer1_from_signals(sig, r, T, nb, cutout, keep, fsig, e, num, den):
    """Family_Signal of one family from its 9 stored crossover states `sig` (9, T, nb).

    The equity and Layer-1 part of `family_pass`, operation for operation: at bar `cutout` every
    line starts at `start_equity(1)`, after it `equity_step` on the previous bar's state, and the
    9 lines are summed in spec order before `round2`.
    """
    for t in range(min(cutout, T)):
        for k in range(nb):
            fsig[t, k] = NAN
    for t in range(cutout, T):
        for k in range(nb):
            num[k] = ZERO
            den[k] = ZERO
        if t == cutout:
            for j in range(9):
                q = j * nb
                for k in range(nb):
                    e[q + k] = start_equity(ONE)
                    num[k] += ft(sig[j, t, k]) * e[q + k]
                    den[k] += e[q + k]
        else:
            for j in range(9):
                q = j * nb
                for k in range(nb):
                    en = equity_step(e[q + k], ft(sig[j, t - 1, k]), r[t, k], keep)
                    e[q + k] = en
                    num[k] += ft(sig[j, t, k]) * en
                    den[k] += en
        for k in range(nb):
            fsig[t, k] = round2(num[k] / den[k])

@_kernel()
def fold_stats(ret, close_row, s0, e0, folds, out):
    """Sufficient statistics of one symbol's strategy returns per block of the time axis.

    The axis (all of `close_row`'s times) is cut into `folds` contiguous blocks of equal length
    (block of time column c: c * folds // n_times); for each, the count and the sums of r, r^2, r^3
    and r^4 over the symbol's own bars in it that carry a return (all but its first bar), into
    out (folds, 5). Out-of-sample statistics (kernels/overfit.py) combine any union of blocks.
    """
    n_times = close_row.shape[0]
    for b in range(folds):
        for m in range(5):
            out[b, m] = 0.0
    t = 0
    for col in range(s0, e0):
        if np.isnan(close_row[col]):
            continue
        if t > 0:
            v = ret[t]
            b = col * folds // n_times
            out[b, 0] += 1.0
            out[b, 1] += v
            out[b, 2] += v * v
            out[b, 3] += v * v * v
            out[b, 4] += v * v * v * v
        t += 1


@_kernel()
def sweep_chunk(ch, n_chunks, nb, close, order, starts, ends, lens_sym, stage, out_idx, gidx, growth,
                lens, coef, cutout, keep, weights, short_ft, long_ft, strategy, short64, long64,
                long_only, fee, need, ppy, m_out, save, avg_out, folds, fold_out, save_pos, pos_out):
    """Blocks ch, ch + n_chunks, ... of the symbols in `order`, every combination of one length group.

    Combinations come sorted by their stage keys; stage[c] says what combination c recomputes:
    0 = new lengths (crossover states, and Layer 1 from `family_pass`), 1 = new La or cutout
    (returns, Layer 1), 2 = new De (Layer 1), 3 = new weights/thresholds/strategy_mode (Layer 2
    and Average_Signal), 4 = new fee_bps/long_only (backtest only).
    """
    n_valid = order.shape[0]
    n_blocks = (n_valid + nb - 1) // nb
    if ch >= n_blocks:
        return
    t_max = growth.shape[1]
    x = np.empty((t_max, nb), ft)
    xc = np.empty((t_max, nb), np.float64)  # the closes for the backtest, in full precision
    R = np.empty((t_max, nb), ft)
    r = np.empty((t_max, nb), ft)
    sig = np.zeros((6, 9, t_max, nb), np.int8)
    obuf = np.empty((13, t_max, nb), ft)
    e9 = np.empty(9 * nb, ft)
    num = np.empty(nb, ft)
    den = np.empty(nb, ft)
    pos = np.empty(t_max, np.float64)
    ret = np.empty(t_max, np.float64)
    eq = np.empty(t_max, np.float64)
    no_ma = np.zeros((1, 1, 1), ft)
    lane_len = np.zeros(nb, np.int64)
    lane_sym = np.zeros(nb, np.int64)
    for b in range(ch, n_blocks, n_chunks):
        lo = b * nb
        nk = min(nb, n_valid - lo)
        syms = order[lo:lo + nk]
        T = 0
        for k in range(nk):
            i = syms[k]
            lane_sym[k] = i
            lane_len[k] = lens_sym[i]
            T = max(T, lens_sym[i])
        gather(close, syms, starts, ends, nk, T, x)
        gather(close, syms, starts, ends, nk, T, xc)
        for k in range(nb):
            R[0, k] = NAN
        for t in range(1, T):
            for k in range(nb):
                R[t, k] = (x[t, k] - x[t - 1, k]) / x[t - 1, k]
        for c in range(stage.shape[0]):
            s = stage[c]
            if s <= 1:
                g = gidx[c]
                for k in range(nb):
                    r[0, k] = NAN
                for t in range(1, T):
                    gt = growth[g, t]
                    for k in range(nb):
                        r[t, k] = R[t, k] * gt
            if s == 0:
                for f in range(6):
                    family_pass(f, x, r, T, nb, lens, coef, cutout[c], keep[c], obuf[f], sig[f], True,
                                no_ma, False)
            elif s <= 2:
                for f in range(6):
                    layer1_from_signals(sig[f], r, T, nb, cutout[c], keep[c], obuf[f], e9, num, den)
            if s <= 3:
                layer2_and_average(obuf, r, T, nb, weights[c], cutout[c], keep[c], short_ft[c],
                                   long_ft[c], strategy[c])
            oc = out_idx[c]
            for k in range(nk):
                n = lane_len[k]
                if n < need[c]:
                    continue
                i = lane_sym[k]
                xs = xc[:n, k]
                simulate(obuf[12, :, k], xs, n, long64[c], short64[c], long_only[c], fee[c], pos, ret, eq)
                symbol_metrics(pos, ret, eq, xs, n, fee[c], ppy[i], m_out[oc, :, i])
                if folds > 0:
                    fold_stats(ret, close[i], starts[i], ends[i], folds, fold_out[oc, :, :, i])
                if save:
                    scatter_row(obuf[12, :, k], avg_out[oc, i], close[i], starts[i], ends[i])
                if save_pos:  # +1/0/-1 at the symbol's own times (pos_out is prefilled with NO_POSITION)
                    t = 0
                    for col in range(starts[i], ends[i]):
                        if not np.isnan(close[i, col]):
                            pos_out[oc, i, col] = np.int8(pos[t])
                            t += 1

@_kernel(parallel=True)
def run_parallel(n_chunks, nb, close, order, starts, ends, lens_sym, stage, out_idx, gidx, growth,
                 lens, coef, cutout, keep, weights, short_ft, long_ft, strategy, short64, long64,
                 long_only, fee, need, ppy, m_out, save, avg_out, folds, fold_out, save_pos, pos_out):
    for ch in prange(n_chunks):
        sweep_chunk(ch, n_chunks, nb, close, order, starts, ends, lens_sym, stage, out_idx, gidx, growth,
                    lens, coef, cutout, keep, weights, short_ft, long_ft, strategy, short64,
                    long64, long_only, fee, need, ppy, m_out, save, avg_out, folds, fold_out, save_pos, pos_out)


@lru_cache(maxsize=None)
def build_sweep_kernel(dtype_name: str) -> SimpleNamespace:
    """Compile the reuse engine for one float type (`float64` or `float32`), cached on disk."""
    from kernels import cpu

    ft = np.dtype(dtype_name).type
    base = cpu.build_cpu_kernel(dtype_name)
    env = cpu._float_env(ft)
    env.update(family_pass=base.family_pass, layer2_and_average=base.layer2_and_average, gather=base.gather,
               scatter_row=base.scatter_row)
    return _KERNELS.compile(globals(), env, lanes=cpu.LANES[dtype_name], ft=ft)


# --------------------------------------------------------------------------- the engine


class SweepResult:
    """Outputs of `sweep_panel` for combinations in the order given.

    - `metrics`: float64 `(n_combinations, n_metrics, n_symbols)`, names in `kernels.metrics.METRIC_NAMES`;
      NaN where the status is not OK.
    - `status`: int8 `(n_combinations, n_symbols)`, codes of `kernels.status` (a symbol can be long
      enough for short lengths/cutouts and too short for long ones).
    - `average_signal`: `(n_combinations, n_symbols, n_bars)` in the compute dtype, or None unless
      `save_signals`.
    - `messages`: symbol index -> reason, for symbols with bad data (same for every combination).
    - `fold_stats`: with `folds`, float64 `(n_combinations, folds, 5, n_symbols)`: per block of the
      time axis, the count and sums of r, r^2, r^3, r^4 of the strategy returns (0 where not OK).
    - `positions`: with `save_positions`, int8 `(n_combinations, n_symbols, n_bars)`: the backtest's
      position (+1/0/-1) at each of the symbol's own times, `NO_POSITION` at other times and for
      symbols not computed (the run's NaN `position`); what an equal-weight portfolio needs, at 1 byte.
    """

    def __init__(self, metrics, status, average_signal, messages, fold_stats=None, positions=None):
        self.fold_stats = fold_stats
        self.positions = positions
        self.metrics = metrics
        self.status = status
        self.average_signal = average_signal
        self.messages = messages


def _length_key(p: ATCParams) -> tuple:
    return tuple(getattr(p, k) for k in _LENGTH_KEYS)


def _sort_key(item) -> tuple:
    p, b = item
    return (_length_key(p), p.cutout, p.La, p.De, tuple(getattr(p, k) for k in _WEIGHT_KEYS),
            p.long_threshold, p.short_threshold, p.strategy_mode, b.fee_bps, b.long_only)


def _stage_of(prev, cur) -> int:
    (pp, _), (cp, _) = prev, cur
    if _length_key(pp) != _length_key(cp):
        return 0
    if (pp.La, pp.cutout) != (cp.La, cp.cutout):
        return 1
    if pp.De != cp.De:
        return 2
    if _sort_key(prev)[4:8] != _sort_key(cur)[4:8]:
        return 3
    return 4


def sweep_panel(close, combos: Sequence[tuple[ATCParams, BacktestParams]], *, periods_per_year: float = float("nan"),
                dtype=np.float64, parallel: bool = True, save_signals: bool = False, on_bad: str = "status",
                symbols=None, index_offset: int = 0, lanes: int | None = None, folds: int = 0,
                save_positions: bool = False) -> SweepResult:
    """Metrics of every `(ATCParams, BacktestParams)` combination for every symbol of `close`.

    `close` is `(n_symbols, n_bars)` (or one series). Symbol status follows `compute_atc` per
    combination; `on_bad="raise"` raises `ATCInputError` for a symbol with bad data instead of marking
    it BAD_DATA. `periods_per_year` (a number, or one per symbol, e.g. from
    `kernels.metrics.periods_per_year_by_symbol`) is used where a combination's
    `BacktestParams.periods_per_year` is None. A NaN close is a time without a bar of that symbol:
    signals, positions and metrics use each symbol's own bars only (as `compute_atc`).
    `parallel=False` keeps the work on the calling thread. `symbols` and `index_offset` only make
    messages name symbols as in `compute_atc`. With `folds` S > 0, the result's `fold_stats`
    `(n_combinations, S, 5, n_symbols)` holds, per block of the time axis, the count and sums of
    r..r^4 of each strategy's returns (see `fold_stats`; used by kernels/overfit.py).
    `save_positions` keeps every position (`SweepResult.positions`, int8) for portfolios.
    """
    from kernels.api import _as_panel, _bad_reason, _symbol_label
    from kernels.cpu import line_tables, scan_bars

    combos = list(combos)
    for c in combos:
        if not (isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], ATCParams)
                and isinstance(c[1], BacktestParams)):
            raise ATCUserError("combos must be (ATCParams, BacktestParams) pairs")
    if on_bad not in ("raise", "status"):
        raise ATCUserError(f"on_bad must be 'raise' or 'status', got {on_bad!r}")
    ft = np.dtype(dtype)
    if ft not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ATCUserError(f"dtype must be float64 or float32, got {ft}")
    ppys = {b.periods_per_year for _, b in combos}
    if len(ppys - {None}) > 1:
        raise ATCUserError("all combinations of a sweep must share periods_per_year")
    ppy = next(iter(ppys - {None}), None)

    panel = _as_panel(close, "close")
    n_sym, n_bars = panel.shape
    try:
        ppy = per_symbol(periods_per_year if ppy is None else ppy, n_sym)
    except ValueError as exc:
        raise ATCUserError(str(exc)) from None
    n_c = len(combos)
    starts, ends, lens, bad = scan_bars(panel)
    messages: dict[int, str] = {}
    base_status = np.full(n_sym, st.OK, np.int8)
    for i in np.flatnonzero(bad >= 0):
        t = int(bad[i])
        msg = f"{_symbol_label(int(i), symbols, index_offset)} has {_bad_reason(float(panel[i, t]), t)}"
        if on_bad == "raise":
            raise ATCInputError(msg)
        base_status[i] = st.BAD_DATA
        messages[int(i)] = msg
    base_status[(bad < 0) & (lens == 0)] = st.NO_DATA
    for i in np.flatnonzero(base_status == st.NO_DATA):
        messages[int(i)] = f"{_symbol_label(int(i), symbols, index_offset)} has no valid close"
    candidate = base_status == st.OK

    status = np.empty((n_c, n_sym), np.int8)
    for c, (p, _) in enumerate(combos):
        need = max(p.min_bars, p.cutout + 1)
        status[c] = np.where(candidate & (lens < need), st.INSUFFICIENT_HISTORY, base_status)
    metrics = np.full((n_c, N_METRICS, n_sym), np.nan)
    avg = np.full((n_c, n_sym, n_bars), np.nan, ft) if save_signals else np.empty((1, 1, 1), ft)
    if folds < 0 or (folds and n_bars < folds):
        raise ATCUserError(f"folds must be 0 (none) or between 1 and the number of times ({n_bars}), got {folds}")
    fstats = np.zeros((n_c, folds, 5, n_sym)) if folds else np.zeros((1, 1, 5, 1))
    posc = np.full((n_c, n_sym, n_bars) if save_positions else (1, 1, 1), NO_POSITION, np.int8)
    if n_c == 0 or not candidate.any():
        return SweepResult(metrics, status, avg if save_signals else None, messages,
                           fstats if folds else None, posc if save_positions else None)

    order_c = sorted(range(n_c), key=lambda i: _sort_key(combos[i]))
    kern = build_sweep_kernel(ft.name)
    nb = kern.lanes if lanes is None else int(lanes)
    # group consecutive combinations by lengths
    groups: list[list[int]] = []
    for i in order_c:
        if groups and _length_key(combos[groups[-1][0]][0]) == _length_key(combos[i][0]):
            groups[-1].append(i)
        else:
            groups.append([i])
    for grp in groups:
        p0 = combos[grp[0]][0]
        min_bars = p0.min_bars
        # symbols long enough for at least one combination of the group; `need` filters per combination
        ok = candidate & (lens >= max(min_bars, min(combos[i][0].cutout for i in grp) + 1))
        ok_idx = np.flatnonzero(ok)
        if not len(ok_idx):
            continue
        order = ok_idx[np.argsort(-lens[ok_idx], kind="stable")].astype(np.int64)
        t_max = int(lens[order].max())
        tt_base = np.maximum(np.arange(t_max, dtype=np.float64), 1.0)
        gkeys: dict[tuple, int] = {}
        gidx = np.empty(len(grp), np.int64)
        rows = []
        for c, i in enumerate(grp):
            p = combos[i][0]
            key = (p.La, p.cutout)
            if key not in gkeys:
                gkeys[key] = len(rows)
                rows.append(np.exp(p.lam * (tt_base - p.cutout)).astype(ft))  # as compute_atc does
            gidx[c] = gkeys[key]
        growth = np.ascontiguousarray(np.stack(rows))
        stage = np.array([0] + [_stage_of(combos[a], combos[b]) for a, b in zip(grp, grp[1:])], np.int64)
        line_lens, coef = line_tables(p0, ft)
        P = [combos[i][0] for i in grp]
        B = [combos[i][1] for i in grp]
        args = (
            nb, panel, order, starts, ends, lens, stage, np.array(grp, np.int64), gidx, growth, line_lens, coef,
            np.array([p.cutout for p in P], np.int64),
            np.array([1.0 - p.dec for p in P], ft),
            np.array([[p.weight(f) for f in FAMILIES] for p in P], ft),
            np.array([p.short_threshold for p in P], ft),
            np.array([p.long_threshold for p in P], ft),
            np.array([p.strategy_mode for p in P], np.bool_),
            np.array([p.short_threshold for p in P], np.float64),
            np.array([p.long_threshold for p in P], np.float64),
            np.array([b.long_only for b in B], np.bool_),
            np.array([b.fee for b in B], np.float64),
            np.array([max(p.min_bars, p.cutout + 1) for p in P], np.int64),
            ppy, metrics, bool(save_signals), avg, int(folds), fstats, bool(save_positions), posc,
        )
        n_blocks = -(-len(order) // nb)
        if parallel and n_blocks > 1:
            kern.run_parallel(min(n_blocks, 4 * numba.get_num_threads()), *args)
        else:
            kern.sweep_chunk(0, 1, *args)
    return SweepResult(metrics, status, avg if save_signals else None, messages, fstats if folds else None,
                       posc if save_positions else None)


def sweep_grid(close, grid: SweepGrid, start: int = 0, stop: int | None = None, **kw) -> SweepResult:
    """`sweep_panel` over the flat combinations `[start, stop)` of `grid` (C order)."""
    return sweep_panel(close, grid.all_params(start, stop), **kw)
