"""The streaming engine (kernels/stream.py) against the batch kernel on the extended history.

After every single update, the new outputs must equal, bit for bit, `compute_atc` run on the whole
history up to and including that time (its last column): on random panels with holes, late
listings and symbols that join mid-stream, across the 256-bar re-anchoring of running sums, for
every parameter variant and both float types, and on real daily data.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ATCParams, compute_atc
from kernels.stream import StreamState, build_stream
from kernels.synthetic import random_walk_panel

SMALL = dict(ema_len=6, hma_len=7, wma_len=5, dema_len=6, lsma_len=5, kama_len=8, robustness="Narrow")
VARIANTS = {
    "small": SMALL,
    "medium-cutout": dict(SMALL, robustness="Medium", ema_len=9, hma_len=10, wma_len=8, dema_len=9,
                          lsma_len=8, kama_len=9, cutout=25),
    "wide-length-one": dict(SMALL, robustness="Wide", ema_len=8, hma_len=8, wma_len=8, dema_len=8,
                            lsma_len=8, kama_len=8),
    "weights-thresholds": dict(SMALL, ema_w=0.1, hma_w=0.2, wma_w=2.0, dema_w=0.24, lsma_w=1.0,
                               kama_w=0.5, long_threshold=0.3, short_threshold=-0.05, La=0.5, De=1.5),
    "strategy": dict(SMALL, strategy_mode=True, cutout=3),
}


def ragged(n_sym: int, n_bars: int, seed: int, holes: float = 0.2) -> np.ndarray:
    x = random_walk_panel(n_sym, n_bars, seed=seed, vol=0.02)
    rng = np.random.default_rng(seed)
    x[rng.random(x.shape) < holes] = np.nan
    x[1, : n_bars // 2] = np.nan                 # lists mid-history (before the stream starts)
    x[2, :] = np.nan                             # lists after the stream starts: joins
    x[2, n_bars - 90:] = random_walk_panel(1, 90, seed=seed + 1)[0]
    x[3, n_bars - 30:] = np.nan                  # delists: no bars any more
    return x


def check_every_bar(x: np.ndarray, params: ATCParams, start: int, dtype=np.float64, state=None) -> int:
    """Build on x[:, :start], advance to the end; compare each new time with the batch on the prefix."""
    if state is None:
        _, state = build_stream(x[:, :start], params, dtype=dtype)
    checked = 0
    for tau in range(start, x.shape[1]):
        out = state.advance(x[:, tau])
        ref = compute_atc(x[:, : tau + 1], params, dtype=dtype, on_bad="status")
        for name, v in out.items():
            assert v.dtype == np.dtype(dtype)
            assert np.array_equal(v, ref[name][:, tau], equal_nan=True), (tau, name, v, ref[name][:, tau])
        checked += int(np.count_nonzero(~np.isnan(out["Average_Signal"])))
    return checked


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.slow)])  # float32: CI's slow step
def test_every_update_equals_the_batch(name, dtype):
    x = ragged(5, 330, seed=len(name))
    assert check_every_bar(x, ATCParams(**VARIANTS[name]), start=60, dtype=dtype) > 500


def test_across_the_anchor_and_window_shifts():
    """Long enough that every running sum is re-anchored (every 256 bars) and the window of closes
    shifts several times while streaming."""
    x = random_walk_panel(3, 700, seed=4, vol=0.01)
    x[1, ::5] = np.nan
    assert check_every_bar(x, ATCParams(**SMALL), start=30) > 1500


def test_from_the_first_bar_and_after_a_round_trip_through_arrays():
    """A stream can start empty (every symbol joins), and a state saved as plain arrays continues
    identically."""
    x = ragged(4, 200, seed=9)
    p = ATCParams(**VARIANTS["strategy"])
    state = StreamState.empty(4, p)
    for tau in range(120):
        state.advance(x[:, tau])
    again = StreamState.from_arrays({k: v.copy() for k, v in state.to_arrays().items()}, p, np.float64)
    assert check_every_bar(x[:, :200], p, start=120, state=again) > 100


def test_real_daily_data():
    arch_data = pytest.importorskip("arch.data.sp500")
    closes = arch_data.load()["Adj Close"].to_numpy()[-900:]
    x = np.vstack([closes, closes[::-1].copy()])
    assert check_every_bar(x, ATCParams(), start=600) == 600


def test_bad_close_and_shape_errors():
    x = ragged(4, 120, seed=3)
    p = ATCParams(**SMALL)
    _, state = build_stream(x[:, :100], p)
    new = x[:, 100].copy()
    new[0] = -1.0
    out = state.advance(new)
    assert np.isnan(out["Average_Signal"][0]) and state.status[0] == 3
    out = state.advance(x[:, 101])  # bad data stays bad, as a batch over the whole history says
    assert np.isnan(out["Average_Signal"][0])
    with pytest.raises(Exception, match="3 closes for a stream of 4 symbols"):
        state.advance(x[:3, 102])
    with pytest.raises(Exception, match="stream state array 'x'"):
        StreamState.from_arrays(state.to_arrays(), ATCParams(), np.float64)


def test_lane_blocks_are_as_wide_as_the_universe_fills_them():
    """One calendar: the widest blocks (4x the batch kernel's lanes). Listed on as many dates as
    symbols: the batch kernel's lanes, not 4x as many lanes computed as needed. In between, the same
    numbers as a batch over the extended history at every bar (exactness does not depend on it)."""
    from kernels.cpu import LANES

    lanes = LANES["float64"]
    x = random_walk_panel(512, 330, seed=5)
    _, one = build_stream(x[:, :320])
    one.advance(x[:, 320])
    assert one._lanes.nb == 4 * lanes
    for i in range(40):
        x[i, :i + 1] = np.nan                    # 40 own bar counts among 40 symbols
    _, spread = build_stream(x[:40, :320])
    spread.advance(x[:40, 320])
    assert spread._lanes.nb == lanes
    assert int(spread._lanes.meta[0]) == 40
    assert check_every_bar(x[:40], ATCParams(), start=321, state=spread) > 0


def test_symbols_with_different_bar_counts_share_lane_blocks():
    """Enough symbols for several lane blocks and the threaded path, with own bar counts that differ:
    by 256 (such symbols share blocks once past the warm-up, their HMA rings rotated), by a few bars,
    by holes that move symbols between blocks at every update, plus listings while streaming and a
    bad close. Mid-stream the blocks are written back to the arrays, and the stream goes on."""
    n, n_bars, start = 260, 410, 380
    x = random_walk_panel(n, n_bars, seed=11, vol=0.02)
    rng = np.random.default_rng(11)
    x[:100, :256] = np.nan                      # 256 bars fewer than symbols 100..199
    for i in range(200, 230):                   # a few bars fewer, each its own count
        x[i, : i - 199] = np.nan
    x[230:][rng.random((30, n_bars)) < 0.3] = np.nan
    x[240:250, : n_bars - 20] = np.nan          # list while streaming
    x[5, 395] = -2.0                            # bad data while streaming
    p = ATCParams(**VARIANTS["small"])
    _, state = build_stream(x[:, :start], p)
    state.advance(x[:, start])
    lanes = state._lanes
    counts = [{int(state._t[i]) for i in lanes.blocks[7][b] if i >= 0} for b in range(int(lanes.meta[0]))]
    assert any(len(c) > 1 for c in counts)      # symbols 256 bars apart in one block
    t_mid = state.t.copy()                      # reading the arrays writes the blocks back
    assert state._lanes is None
    assert np.array_equal(t_mid, np.count_nonzero(~np.isnan(x[:, : start + 1]), axis=1))
    assert check_every_bar(x, p, start=start + 1, state=state) > 4000
