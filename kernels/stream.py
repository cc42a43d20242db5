"""Streaming ATC: advance many symbols by one bar, with exactly the batch kernel's numbers.

A daily user appends today's bars and wants the newest outputs without recomputing years of
history. `StreamState` holds, per symbol, everything the recurrences need to continue: its own bar
count `t`, a window of its last max(L) + 1 closes (the sliding window sums, KAMA's noise sum and
the exact re-anchoring every 256 bars read back that far), the per-line state of the 54 lines
(previous MA, crossover state, equity, running sums; see `kernels.cpu.family_steps`), the HMA
inner-series rings, the previous bar's 13 outputs (Layer 2 starts from them) and the unshifted
average of the previous bar (strategy mode).

Exactness is by construction, not by re-derivation: the batch kernel, the sweep engine and this
engine all call the same two functions, `family_steps` (Layer 1) and `layer2_steps` (Layer 2 and
the average), which resume from a state and a window. `build_stream` is the batch kernel run with
capture on (the state is copied out at each symbol's own last bar, at no extra compute), and
`advance` calls those functions for one bar of a block of symbols, in the batch kernel's own lane
layout: symbols whose bar counts are compatible share the SIMD lanes of a block (see `_Lanes` and
`route`), so one update costs about what one bar costs the batch, instead of a call of the step
functions per symbol. The growth factors come from the same host function as the batch
(`kernels.api.growth_factors`). Symbols too short for the batch are fed through the same blocks.

Where the time of an update goes (10,000 symbols, float64): the state the steps touch is about
3 KB per symbol and is read and written once per update (about 60 MB of memory traffic at this
size, which does not fit any cache), plus the batch kernel's arithmetic for one bar.

Semantics follow ATC_SPEC.md section 7: a NaN among the new closes is a time without a bar of that
symbol (it does not advance and its outputs are NaN); a symbol without history joins when its
first close arrives; a symbol's outputs are NaN until it has `max(54 lengths) + 2` bars of its
own (and more than `cutout`), exactly where the batch would report insufficient history; a close
<= 0 or infinite marks it bad data for good. Everything is plain arrays (`to_arrays` /
`from_arrays`) so a store can keep it without pickles.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import prange

from kernels import status as st
from kernels.errors import ATCUserError
from kernels.jitcache import KernelSet
from kernels.params import FAMILIES, OUTPUT_NAMES, ATCParams

WINDOW_SLACK = 64
"""Extra rows in each symbol's window of closes, so it is shifted once per this many bars."""

BLOCK_LANES = 30
"""The fixed cost of advancing one lane block, in lanes' worth of work (see `_Lanes.lanes_for`)."""

STATE_ARRAYS = ("t", "xo", "x", "fam", "ring", "prev", "avg", "status")
"""The arrays of a `StreamState`, by name (the symbol is always the first axis)."""

_KERNELS = KernelSet()
_kernel = _KERNELS.kernel

# bound per float type by build_stream_kernel (see kernels.cpu for the pattern)
ft = NAN = ZERO = ONE = ANCHOR = None
family_steps = layer2_steps = None


# ---- lane blocks: many symbols advanced by one call of the step functions ------------------
# The in-memory layout of a state while it is being advanced (see `_Lanes`). Block b holds up to
# nb symbols in the lanes of the batch kernel's own buffers: closes b_x[b] (window, nb), per-line
# state b_st[b] (6, 9, 9*nb), HMA rings b_ring[b] (9, sq, nb), the previous outputs b_prev[b]
# (13, 2, nb) and b_avg[b] (nb,). `family_steps` is called with the block's bar count b_t[b] for
# all its lanes, which is exact when every lane has that count, or, past every warm-up and the
# cutout (t >= steady), a count equal to it modulo ANCHOR: then every branch of the step functions
# goes the same way for the lane as at its own count (the re-anchoring of running sums included),
# except the HMA ring slot t % sq, which is why a lane's ring is stored rotated by its offset
# d = (own count - block count).


@_kernel()
def lane_in(i, b, k, c_t, c_xo, c_x, c_fam, c_ring, c_prev, c_avg, b_t, b_xo, b_x, b_st, b_ring, b_prev,
            b_avg, lens, lmax):
    """Copy symbol i's state (symbol-first arrays) into lane k of block b."""
    nb = b_x.shape[2]
    ti = c_t[i]
    d = ti - b_t[b]
    for u in range(max(0, ti - lmax - 1), ti):  # the closes the steps read back, aligned to the block
        b_x[b, u - d - b_xo[b], k] = c_x[i, u - c_xo[i], 0]
    for f in range(6):
        for kind in range(9):
            for j in range(9):
                b_st[b, f, kind, j * nb + k] = c_fam[i, f, kind, j]
    for j in range(9):
        sq = lens[9 + j, 2]
        for s in range(sq):
            b_ring[b, j, ((s - d) % sq + sq) % sq, k] = c_ring[i, 1, j, s, 0]
    for c in range(13):
        b_prev[b, c, 0, k] = c_prev[i, c, 0, 0]
    b_avg[b, k] = c_avg[i, 0]


@_kernel()
def lane_out(i, b, k, c_t, c_xo, c_x, c_fam, c_ring, c_prev, c_avg, b_t, b_xo, b_x, b_st, b_ring, b_prev,
             b_avg, lens, lmax):
    """Copy lane k of block b back to symbol i's state (the inverse of `lane_in`)."""
    nb = b_x.shape[2]
    ti = c_t[i]
    d = ti - b_t[b]
    xo = max(0, ti - lmax - 1)
    c_xo[i] = xo
    for u in range(xo, ti):
        c_x[i, u - xo, 0] = b_x[b, u - d - b_xo[b], k]
    for f in range(6):
        for kind in range(9):
            for j in range(9):
                c_fam[i, f, kind, j] = b_st[b, f, kind, j * nb + k]
    for j in range(9):
        sq = lens[9 + j, 2]
        for s in range(sq):
            c_ring[i, 1, j, s, 0] = b_ring[b, j, ((s - d) % sq + sq) % sq, k]
    for c in range(13):
        c_prev[i, c, 0, 0] = b_prev[b, c, 0, k]
    c_avg[i, 0] = b_avg[b, k]


@_kernel()
def new_block(b, tb, b_t, b_xo, b_sym, b_occ, lmax):
    b_t[b] = tb
    b_xo[b] = max(0, tb - lmax - 1)
    b_occ[b] = 0
    for k in range(b_sym.shape[1]):
        b_sym[b, k] = -1


@_kernel()
def pack_lanes(order, keys, c, b, sym_blk, sym_lane, lens, lmax):
    """Fill blocks 0.. with the symbols `order` (sorted by `keys`: equal keys may share a block)."""
    c_t = c[0]
    b_t, b_xo, b_x, b_st, b_ring, b_prev, b_avg, b_sym, b_occ = b
    nb = b_x.shape[2]
    blk = -1
    k = nb
    for q in range(order.shape[0]):
        i = order[q]
        if k == nb or keys[i] != keys[order[q - 1]]:
            blk += 1
            new_block(blk, c_t[i], b_t, b_xo, b_sym, b_occ, lmax)
            k = 0
        lane_in(i, blk, k, *c, b_t, b_xo, b_x, b_st, b_ring, b_prev, b_avg, lens, lmax)
        b_sym[blk, k] = i
        b_occ[blk] += 1
        sym_blk[i] = blk
        sym_lane[i] = k
        k += 1
    return blk + 1


@_kernel()
def unpack_lanes(n_used, c, b, lens, lmax):
    """Write every symbol in a block back to the symbol-first arrays."""
    b_t, b_xo, b_x, b_st, b_ring, b_prev, b_avg, b_sym, _ = b
    for blk in range(n_used):
        for k in range(b_sym.shape[1]):
            i = b_sym[blk, k]
            if i >= 0:
                lane_out(i, blk, k, *c, b_t, b_xo, b_x, b_st, b_ring, b_prev, b_avg, lens, lmax)


@_kernel()
def route(closes, status, c, b, sym_blk, sym_lane, meta, adv, work, out, lens, lmax, steady):
    """Decide who advances at this time and move symbols between blocks; returns the number of
    blocks to advance (listed in work[0]).

    A symbol without a bar (NaN) stays in its block only if nobody there advances; otherwise it
    leaves (its state goes back to the symbol-first arrays). Bad data leaves for good. A symbol
    outside any block that has a bar joins a block whose lanes are compatible with its bar count
    (same count, or both steady and equal modulo ANCHOR), or a free or new one.
    """
    c_t = c[0]
    b_t, b_xo, b_x, b_st, b_ring, b_prev, b_avg, b_sym, b_occ = b
    nb = b_x.shape[2]
    n = closes.shape[0]
    n_used = meta[0]
    for blk in range(n_used):
        adv[blk] = 0
    waiting = work[1]
    joining = work[2]
    nw = 0
    nj = 0
    for i in range(n):
        v = closes[i]
        blk = sym_blk[i]
        if status[i] == 0 and not np.isnan(v):
            if not (v > 0.0) or np.isinf(v):
                status[i] = 3  # bad data, for good (as a batch over the extended history would say)
            elif blk >= 0:
                adv[blk] += 1
                continue
            else:
                joining[nj] = i
                nj += 1
                continue
        for cc in range(13):
            out[cc, i] = NAN
        if blk >= 0:
            waiting[nw] = i
            nw += 1
    for q in range(nw):  # leave a block that advances without them (or leave for good: bad data)
        i = waiting[q]
        blk = sym_blk[i]
        if adv[blk] > 0 or status[i] != 0:
            k = sym_lane[i]
            lane_out(i, blk, k, *c, b_t, b_xo, b_x, b_st, b_ring, b_prev, b_avg, lens, lmax)
            b_sym[blk, k] = -1
            b_occ[blk] -= 1
            sym_blk[i] = -1
    for q in range(nj):
        i = joining[q]
        ti = c_t[i]
        found = -1
        free = -1
        hint = meta[1]
        for s in range(-1, n_used):
            blk = hint if s < 0 else s
            if blk < 0 or blk >= n_used:
                continue
            if b_occ[blk] == 0 and adv[blk] == 0:
                if free < 0:
                    free = blk
                continue
            if b_occ[blk] < nb and adv[blk] > 0:
                tb = b_t[blk]
                if tb == ti or (ti >= steady and tb >= steady and (ti - tb) % ANCHOR == 0):
                    found = blk
                    break
        if found < 0:
            found = free
            if found < 0:
                found = n_used
                n_used += 1
            new_block(found, ti, b_t, b_xo, b_sym, b_occ, lmax)
            adv[found] = 0
        k = 0
        while b_sym[found, k] >= 0:
            k += 1
        lane_in(i, found, k, *c, b_t, b_xo, b_x, b_st, b_ring, b_prev, b_avg, lens, lmax)
        b_sym[found, k] = i
        b_occ[found] += 1
        adv[found] += 1
        sym_blk[i] = found
        sym_lane[i] = k
        meta[1] = found
    meta[0] = n_used
    todo = work[0]
    nt = 0
    for blk in range(n_used):
        if adv[blk] > 0:
            todo[nt] = blk
            nt += 1
    return nt


@_kernel()
def advance_block(blk, closes, c_t, b, growth, lens, coef, weights, cutout, keep, short_thr, long_thr,
                  strategy, need, lmax, out, r, scr, no_sig, no_ma):
    """One bar for every lane of block blk: the batch kernel's step functions on nb lanes."""
    b_t, b_xo, b_x, b_st, b_ring, b_prev, b_avg, b_sym, _ = b
    nb = b_x.shape[2]
    tb = b_t[blk]
    x = b_x[blk]
    w = x.shape[0]
    if tb - b_xo[blk] >= w:  # window full: keep the last max(L) + 1 closes
        drop = w - lmax - 1
        for row in range(lmax + 1):
            for k in range(nb):
                x[row, k] = x[row + drop, k]
        b_xo[blk] += drop
    xo = b_xo[blk]
    row = tb - xo
    for k in range(nb):
        i = b_sym[blk, k]
        r[0, k] = NAN
        if i < 0:  # a free lane computes on a flat series; nothing of it is read
            x[row, k] = ONE
            r[1, k] = ZERO
            continue
        x[row, k] = closes[i]
        ti = c_t[i]
        if ti == 0:
            r[1, k] = NAN
        else:
            r[1, k] = ((x[row, k] - x[row - 1, k]) / x[row - 1, k]) * growth[ti]
    obuf = b_prev[blk]
    st_b = b_st[blk]
    ring = b_ring[blk]  # only HMA lines use a ring: one per block serves every family
    for f in range(6):
        family_steps(f, x, xo, r, tb - 1, tb, tb + 1, nb, lens, coef, cutout, keep, obuf[f], st_b[f], ring,
                     no_sig, False, no_ma, False, scr)
    layer2_steps(obuf, tb - 1, r, tb, tb + 1, nb, weights, cutout, keep, short_thr, long_thr, strategy,
                 b_avg[blk], scr)
    for k in range(nb):
        i = b_sym[blk, k]
        if i >= 0:
            ti = c_t[i]
            for c in range(13):
                out[c, i] = obuf[c, 1, k] if ti + 1 >= need else NAN
            c_t[i] = ti + 1
    for c in range(13):
        for k in range(nb):
            obuf[c, 0, k] = obuf[c, 1, k]
    b_t[blk] = tb + 1


@_kernel(parallel=True)
def advance_blocks(todo, nt, closes, c_t, b, growth, lens, coef, weights, cutout, keep, short_thr, long_thr,
                   strategy, need, lmax, out, n_parts):
    """The blocks listed in todo[:nt], split over threads (blocks are independent)."""
    nb = b[2].shape[2]
    for part in prange(n_parts):
        r = np.empty((2, nb), ft)
        scr = np.empty((3, nb), ft)
        no_sig = np.zeros((1, 1, 1), np.int8)
        no_ma = np.zeros((1, 1, 1), ft)
        for q in range(part * nt // n_parts, (part + 1) * nt // n_parts):
            advance_block(todo[q], closes, c_t, b, growth, lens, coef, weights, cutout, keep, short_thr,
                          long_thr, strategy, need, lmax, out, r, scr, no_sig, no_ma)


@cache
def build_stream_kernel(dtype_name: str) -> SimpleNamespace:
    """Compile the streaming engine for one float type, on top of the batch kernel's functions."""
    from kernels import cpu

    f = np.dtype(dtype_name).type
    base = cpu.build_cpu_kernel(dtype_name)
    env = cpu._float_env(f)
    env.update(family_steps=base.family_steps, layer2_steps=base.layer2_steps, ANCHOR=cpu.ANCHOR)
    return _KERNELS.compile(globals(), env, ft=f)


def _sq_slots(line_lens: np.ndarray) -> int:
    return max(1, int(line_lens[:, 2].max()))


class _Lanes:
    """A state laid out in lane blocks while it is advanced (see `advance_block`).

    The symbol-first arrays of `StreamState` stay the state's form at rest (what a store keeps and
    the batch kernel captures into); this layout is built from them at the first `advance` and
    written back when they are read. Symbols join blocks by compatible bar counts: a universe
    whose symbols all have a bar at every time stays in the same blocks update after update, and
    a symbol that misses a bar, lists late or turns bad moves on its own without disturbing the
    rest. The blocks are repacked when there are twice as many as the last packing made.
    """

    def __init__(self, state: StreamState):
        from kernels.cpu import LANES

        f = state.dtype
        lens = state._lens
        self.lmax = int(lens[:, 0].max())
        hma = lens[9:18]
        # past every warm-up and the cutout, the step functions depend on the bar count only modulo
        # ANCHOR (and the HMA ring slot, see `advance_block`)
        self.steady = int(max(self.lmax + 2, int((hma[:, 0] + hma[:, 2]).max()), state.params.cutout + 2))
        n = state.n_symbols
        member = np.flatnonzero((state._status == 0) & (state._t > 0))
        keys = np.zeros(n, np.int64)
        keys[member] = self.key(state._t[member])
        self.nb = self.lanes_for(keys[member], LANES[f.name])
        self.sym_blk = np.full(n, -1, np.int64)
        self.sym_lane = np.zeros(n, np.int64)
        self.meta = np.zeros(2, np.int64)  # blocks in use, last block joined
        self.work = np.zeros((3, n), np.int64)
        self.shape_x = state._x.shape[1]
        self.sq = state._ring.shape[3]
        self.blocks = self._alloc(0, f)
        order = member[np.lexsort((member, keys[member]))].astype(np.int64)
        self.reserve(self.blocks_for(keys[member]))
        self.meta[0] = state._kern.pack_lanes(order, keys, state._c(), self.blocks, self.sym_blk, self.sym_lane,
                                              lens, self.lmax)
        self.n_in = len(member)
        self.packed = int(self.meta[0])
        self.t_top = int(state._t.max(initial=0))

    @staticmethod
    def lanes_for(keys: np.ndarray, lanes: int) -> int:
        """Lanes per block (a multiple of the batch kernel's, up to four times it) for symbols
        with these keys, by a cost model: a block holds one key, its free lanes are computed too,
        and each block costs about BLOCK_LANES lanes more for the calls of the step functions
        (10,000 symbols in one key, float64, one thread: 64 lanes 6.4 ms, 128 lanes 5.4 ms per
        update, i.e. ~13 us per block against ~0.43 us per lane). A universe of one calendar gets
        the widest blocks; one listed on many dates narrower ones (a 2,000-symbol store in 196 keys
        had 128-lane blocks: 13 lanes computed per symbol)."""
        if len(keys) == 0:
            return 4 * lanes
        _, counts = np.unique(keys, return_counts=True)
        widths = range(4 * lanes, 0, -lanes)  # widest first: it wins ties
        return min(widths, key=lambda nb: int((-(-counts // nb)).sum()) * (nb + BLOCK_LANES))

    def _alloc(self, n_blocks: int, f) -> tuple:
        nb = self.nb
        return (np.zeros(n_blocks, np.int64), np.zeros(n_blocks, np.int64),
                np.ones((n_blocks, self.shape_x, nb), f), np.zeros((n_blocks, 6, 9, 9 * nb), f),
                np.zeros((n_blocks, 9, self.sq, nb), f), np.zeros((n_blocks, 13, 2, nb), f),
                np.zeros((n_blocks, nb), f), np.full((n_blocks, nb), -1, np.int64), np.zeros(n_blocks, np.int64))

    def key(self, t: np.ndarray) -> np.ndarray:
        """Symbols with equal keys can share a block (see `route`)."""
        from kernels.cpu import ANCHOR

        return np.where(t < self.steady, t, self.steady + t % ANCHOR)

    def blocks_for(self, keys: np.ndarray) -> int:
        """How many blocks these symbols fill at most (a block holds one key)."""
        _, counts = np.unique(keys, return_counts=True)
        return int((-(-counts // self.nb)).sum())

    def reserve(self, more: int) -> None:
        """Room for `more` blocks besides those in use."""
        need = int(self.meta[0]) + more
        have = self.blocks[0].shape[0]
        if need <= have:
            return
        new = self._alloc(max(need, 2 * have, 4), self.blocks[2].dtype)
        used = int(self.meta[0])
        for a, b in zip(new, self.blocks):
            a[:used] = b[:used]
        self.blocks = new


class StreamState:
    """Per-symbol state that `advance` continues from.

    At rest (`to_arrays`, the attributes below) every array has the symbol as its first axis:
    t (int64) own bars seen so far; xo (int64) own bar index of row 0 of the window; x (n, window, 1)
    closes; fam (n, 6, 9 kinds, 9 lines) per-line state; ring (n, 6, 9, sq, 1) HMA inner series;
    prev (n, 13, 2, 1) outputs of the previous bar in row 0; avg (n, 1) unshifted Average_Signal of
    the previous bar; status (int8) 0 ok (or not yet enough bars), 3 bad data.
    While advancing, the state lives in lane blocks (`_Lanes`); reading any of these attributes
    writes the blocks back first, and the next `advance` rebuilds them, so the arrays may be
    modified in place between updates.
    """

    def __init__(self, params: ATCParams, dtype, t, xo, x, fam, ring, prev, avg, status):
        self.params = params
        self.dtype = np.dtype(dtype)
        self._t, self._xo, self._x, self._fam, self._ring = t, xo, x, fam, ring
        self._prev, self._avg, self._status = prev, avg, status
        self._lanes: _Lanes | None = None
        self._lens = None
        self._growth = None

    def _c(self) -> tuple:
        return (self._t, self._xo, self._x, self._fam, self._ring, self._prev, self._avg)

    def _settle(self) -> None:
        """Write the lane blocks back to the symbol-first arrays and drop them."""
        if self._lanes is not None:
            ln = self._lanes
            self._kern.unpack_lanes(int(ln.meta[0]), self._c(), ln.blocks, self._lens, ln.lmax)
            self._lanes = None

    def _rest(name):  # builds the properties below
        def get(self):
            self._settle()
            return getattr(self, "_" + name)
        return property(get, doc=f"`{name}` with the symbol first (see the class docstring)")

    t = _rest("t")
    xo = _rest("xo")
    x = _rest("x")
    fam = _rest("fam")
    ring = _rest("ring")
    prev = _rest("prev")
    avg = _rest("avg")
    status = _rest("status")
    del _rest

    @property
    def n_symbols(self) -> int:
        return int(self._t.shape[0])

    @property
    def _kern(self):
        return build_stream_kernel(self.dtype.name)

    @classmethod
    def empty(cls, n_symbols: int, params: ATCParams | None = None, dtype=np.float64) -> StreamState:
        """Symbols with no bar yet: each joins at its first close."""
        from kernels.cpu import line_tables

        params = ATCParams() if params is None else params
        f = np.dtype(dtype)
        if f not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ATCUserError(f"dtype must be float64 or float32, got {f}")
        line_lens, _ = line_tables(params, f)
        window = int(line_lens[:, 0].max()) + 2 + WINDOW_SLACK
        fam = np.zeros((n_symbols, 6, 9, 9), f)
        fam[:, :, 0, :] = np.nan  # no previous MA yet
        return cls(params, f, np.zeros(n_symbols, np.int64), np.zeros(n_symbols, np.int64),
                   np.zeros((n_symbols, window, 1), f), fam,
                   np.zeros((n_symbols, 6, 9, _sq_slots(line_lens), 1), f),
                   np.zeros((n_symbols, 13, 2, 1), f), np.zeros((n_symbols, 1), f),
                   np.zeros(n_symbols, np.int8))

    def capture(self) -> tuple:
        self._settle()
        return self._c()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays by name (for a store); parameters travel separately (`params.to_dict()`)."""
        return {name: getattr(self, name) for name in STATE_ARRAYS}

    @classmethod
    def from_arrays(cls, arrays, params: ATCParams, dtype) -> StreamState:
        ref = cls.empty(0, params, dtype)
        got = {}
        for name in STATE_ARRAYS:
            a = np.ascontiguousarray(np.asarray(arrays[name]))
            want = getattr(ref, name)
            if a.dtype != want.dtype or a.shape[1:] != want.shape[1:]:
                raise ATCUserError(f"stream state array {name!r} has {a.dtype} {a.shape}; expected "
                                   f"{want.dtype} (n, {', '.join(map(str, want.shape[1:]))}) for these parameters")
            got[name] = a
        n = {a.shape[0] for a in got.values()}
        if len(n) != 1:
            raise ATCUserError(f"stream state arrays disagree on the number of symbols: {sorted(n)}")
        return cls(params, np.dtype(dtype), **got)

    def _consts(self, growth_len: int):
        """Constants of the step functions, computed once per state (the growth factors grow)."""
        from kernels.api import growth_factors
        from kernels.cpu import line_tables

        p = self.params
        f = self.dtype
        if self._lens is None:
            self._lens, self._coef = line_tables(p, f)
            self._weights = np.array([p.weight(fm) for fm in FAMILIES], f)
        if self._growth is None or self._growth.shape[0] < growth_len:
            self._growth = growth_factors(p, max(growth_len, 2 * (0 if self._growth is None else len(self._growth)),
                                                 1024), f)
        need = max(p.min_bars, p.cutout + 1)
        return (need, self._growth, self._lens, self._coef, self._weights, p.cutout, f.type(1.0 - p.dec),
                f.type(p.short_threshold), f.type(p.long_threshold), p.strategy_mode)

    def advance(self, closes, parallel: bool = True) -> dict[str, np.ndarray]:
        """Advance every symbol by the new time `closes` (n_symbols,); NaN = no bar for that symbol.

        Returns the 13 outputs of the new time by name, each `(n_symbols,)`. `parallel` spreads the
        lane blocks over Numba's threads (not from inside multi-threaded Dask workers).
        """
        closes = np.ascontiguousarray(np.asarray(closes, np.float64).reshape(-1))
        n = self.n_symbols
        if closes.shape[0] != n:
            raise ATCUserError(f"{closes.shape[0]} closes for a stream of {n} symbols")
        kern = self._kern
        ln = self._lanes
        # growth[t] for the largest count after this bar: a symbol's count only ever grows by one
        t_top = ln.t_top if ln is not None else int(self._t.max(initial=0))
        consts = self._consts(t_top + 2)
        need, growth, lens, coef, weights, cutout, keep, sthr, lthr, strat = consts
        if ln is None or ln.meta[0] > 2 * ln.packed + 8:  # repack when joins and leaves spread symbols thin
            self._settle()
            ln = self._lanes = _Lanes(self)
        if ln.n_in < n:  # symbols outside the blocks that have a bar now join one
            joining = np.flatnonzero((ln.sym_blk < 0) & (self._status == 0) & ~np.isnan(closes))
            if len(joining):
                ln.reserve(ln.blocks_for(ln.key(self._t[joining])))
        out = np.empty((13, n), self.dtype)
        nt = kern.route(closes, self._status, self._c(), ln.blocks, ln.sym_blk, ln.sym_lane, ln.meta,
                        np.empty(ln.blocks[0].shape[0], np.int64), ln.work, out, lens, ln.lmax, ln.steady)
        threads = numba.get_num_threads()
        parts = max(1, min(threads, nt)) if parallel and nt * ln.nb >= 256 else 1
        if parts == 1:  # else every thread of the pool is woken, and waited for, for nothing
            numba.set_num_threads(1)
        try:
            kern.advance_blocks(ln.work[0], nt, closes, self._t, ln.blocks, growth, lens, coef, weights, cutout,
                                keep, sthr, lthr, strat, need, ln.lmax, out, parts)
        finally:
            numba.set_num_threads(threads)
        ln.t_top = t_top + 1
        ln.n_in = int(np.count_nonzero(ln.sym_blk >= 0))
        return {name: out[c] for c, name in enumerate(OUTPUT_NAMES)}


def build_stream(close, params: ATCParams | None = None, *, dtype=np.float64, on_bad: str = "status",
                 symbols=None, parallel: bool = True, index_offset: int = 0,
                 replay: bool = True) -> tuple[st.ATCResult, StreamState]:
    """`compute_atc` on a history `(n_symbols, n_times)` plus the state to continue it bar by bar.

    The outputs are the batch kernel's; the state is copied out by the same kernel at each symbol's
    own last bar. Symbols too short for the batch are fed to the stream one bar at a time (they
    join the computed outputs once they have enough bars); bad data stays bad. With
    `replay=False` their state is left empty (the caller rebuilds them later), and the streaming
    kernel is not even compiled.
    """
    from kernels.api import _as_panel, compute_atc

    params = ATCParams() if params is None else params
    panel = _as_panel(close, "close")
    state = StreamState.empty(panel.shape[0], params, dtype)
    res = compute_atc(panel, params, dtype=dtype, on_bad=on_bad, symbols=symbols, parallel=parallel,
                      index_offset=index_offset, capture=state.capture())
    state.status[res.status == st.BAD_DATA] = st.BAD_DATA
    short = np.flatnonzero(res.status == st.INSUFFICIENT_HISTORY)
    if len(short) and replay:  # fed to a stream of their own, one own bar at a time
        own = [panel[i][~np.isnan(panel[i])] for i in short]
        cols = np.full((len(short), max(len(o) for o in own)), np.nan)
        for r, o in enumerate(own):
            cols[r, :len(o)] = o
        sub = StreamState.empty(len(short), params, dtype)
        for j in range(cols.shape[1]):
            sub.advance(cols[:, j], parallel=False)
        for name in STATE_ARRAYS:
            getattr(state, name)[short] = getattr(sub, name)
    return res, state
