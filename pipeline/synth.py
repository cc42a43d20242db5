"""Synthetic price universes for demos, tests and benchmarks.

Each symbol is a geometric random walk: log returns = beta * market + idiosyncratic noise, with
its own volatility and drift, regime changes (new drift and volatility multiplier at random
times), rare jumps, and optional late listings (leading NaN) and early delistings (trailing NaN).
Vectorised numpy over blocks of ``GEN_BLOCK`` symbols, each from its own stream of numpy's PCG64
generator: deterministic for a seed, and the same whatever chunk size a store is written in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.store import StoreError

__all__ = ["GEN_BLOCK", "SynthUniverse", "synth_prices", "synth_universe"]

#: Every symbol keeps at least this many valid bars (or all of them when n_bars is smaller).
MIN_VALID_BARS = 150
LATE_LISTING_FRACTION = 0.15
DELISTING_FRACTION = 0.05
#: Probability per bar that a symbol enters a new regime (about one change per 250 bars).
REGIME_SWITCH_PROB = 1 / 250
JUMP_PROB = 0.003


def _years_per_bar(times: pd.DatetimeIndex) -> float:
    if len(times) < 2:
        return 1 / 365.25
    return ((times[-1] - times[0]) / (len(times) - 1)) / pd.Timedelta(days=365.25)


#: Symbols generated together from one random stream. Fixed (not the store's chunk size), so a
#: universe is the same whatever chunk it is written in; each block's stream is
#: ``SeedSequence(seed, spawn_key=(block + 1,))`` and the market factor's ``spawn_key=(0,)``.
GEN_BLOCK = 256


def _axis(n_symbols: int, n_bars: int, freq: str, start: str) -> pd.DatetimeIndex:
    if n_symbols < 1 or n_bars < 1:
        raise StoreError(f"need at least 1 symbol and 1 bar, got {n_symbols} symbols and {n_bars} bars")
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError):
        raise StoreError(f"bad frequency {freq!r} (a pandas frequency such as 1D, B, 1h, 5min)") from None
    try:
        return pd.date_range(pd.Timestamp(start), periods=n_bars, freq=offset)
    except (ValueError, TypeError, OverflowError) as exc:
        raise StoreError(f"bad start {start!r} or too many bars for {freq!r}: {str(exc).splitlines()[0]}") from None


def _market(seed: int, m: int, dt: float) -> np.ndarray:
    """The market factor's log returns, with its own bull/bear regimes."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    sqdt = np.sqrt(dt)
    m_switch = rng.random(m) < REGIME_SWITCH_PROB / 2
    m_reg = np.cumsum(m_switch)
    m_mu = rng.normal(0.07, 0.25, m_reg[-1] + 1)
    m_vol = np.exp(rng.normal(np.log(0.15), 0.3, m_reg[-1] + 1))
    market = m_mu[m_reg] * dt + m_vol[m_reg] * sqdt * rng.standard_normal(m)
    market -= 0.5 * (m_vol[m_reg] ** 2) * dt
    return market


def _block(seed: int, block: int, n: int, m: int, dt: float, market: np.ndarray, ohlcv: bool) -> dict[str, np.ndarray]:
    """Symbols ``[block * GEN_BLOCK, block * GEN_BLOCK + n)``, from that block's own stream."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block + 1,)))
    sqdt = np.sqrt(dt)
    # per-symbol parameters (annualised)
    sigma = np.clip(np.exp(rng.normal(np.log(0.28), 0.4, n)), 0.08, 0.9)
    mu = rng.normal(0.06, 0.05, n)
    beta = np.clip(rng.normal(1.0, 0.3, n), 0.0, 2.0)
    p0 = np.exp(rng.normal(np.log(40.0), 0.9, n))

    # idiosyncratic regimes: new drift and volatility multiplier at random times
    reg = np.cumsum(rng.random((n, m), dtype=np.float32) < REGIME_SWITCH_PROB, axis=1, dtype=np.int32)
    k = int(reg.max()) + 1
    reg_mu = mu[:, None] + np.clip(rng.normal(0.0, 0.25, (n, k)), -0.75, 0.75)
    reg_vol = np.minimum(sigma[:, None] * np.exp(np.clip(rng.normal(0.0, 0.35, (n, k)), -0.7, 0.7)), 1.2)
    vol = np.take_along_axis(reg_vol, reg, axis=1)
    r = rng.standard_normal((n, m))
    r *= vol * sqdt
    r += np.take_along_axis(reg_mu, reg, axis=1) * dt - 0.5 * vol**2 * dt
    del reg
    r += beta[:, None] * market[None, :]

    # rare jumps
    ji, jj = np.nonzero(rng.random((n, m), dtype=np.float32) < JUMP_PROB)
    r[ji, jj] += rng.normal(0.0, 4.0, ji.size) * vol[ji, jj] * sqdt
    del vol

    # listings and delistings
    min_valid = min(m, MIN_VALID_BARS)
    first = np.zeros(n, np.int64)
    last = np.full(n, m, np.int64)  # exclusive
    room = m - min_valid
    if room > 0:
        late = rng.random(n) < LATE_LISTING_FRACTION
        dead = rng.random(n) < DELISTING_FRACTION
        if block == 0:  # the universe's first symbol spans the whole axis
            late[0] = dead[0] = False
        first[late] = rng.integers(1, room + 1, late.sum())
        lo = first[dead] + min_valid
        last[dead] = lo + (rng.random(dead.sum()) * (m - lo)).astype(np.int64)
    cols = np.arange(m)
    alive = (cols >= first[:, None]) & (cols < last[:, None])
    r[:, 0] = 0.0
    r[cols[None, :] <= first[:, None]] = 0.0  # the listing bar starts at p0
    np.cumsum(r, axis=1, out=r)
    r += np.log(p0)[:, None]
    close = np.exp(r, out=r)
    close[~alive] = np.nan

    if not ohlcv:
        return {"close": close}
    sd = (sigma * sqdt)[:, None]
    prev = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    prev[np.isnan(prev)] = close[np.isnan(prev)]
    open_ = prev * np.exp(0.2 * sd * rng.standard_normal((n, m)))
    del prev
    top = np.maximum(open_, close)
    high = top * np.exp(np.abs(0.5 * sd * rng.standard_normal((n, m))))
    del top
    bottom = np.minimum(open_, close)
    low = bottom * np.exp(-np.abs(0.5 * sd * rng.standard_normal((n, m))))
    del bottom
    base = np.exp(rng.normal(np.log(1e6), 1.0, n))[:, None]
    volume = np.round(base * np.exp(0.4 * rng.standard_normal((n, m))))
    for a in (open_, high, low, volume):
        a[~alive] = np.nan
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


@dataclass(frozen=True)
class SynthUniverse:
    """A synthetic universe described, not generated: ``batches()`` yields it ``GEN_BLOCK``
    symbols at a time, so ``atc synth`` writes any size in bounded memory."""

    symbols: list[str]
    times: pd.DatetimeIndex
    variables: tuple[str, ...]
    seed: int
    ohlcv: bool
    source: str

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        n, m = len(self.symbols), len(self.times)
        dt = _years_per_bar(self.times)
        market = _market(self.seed, m, dt)
        for b, lo in enumerate(range(0, n, GEN_BLOCK)):
            yield _block(self.seed, b, min(GEN_BLOCK, n - lo), m, dt, market, self.ohlcv)


def synth_universe(n_symbols: int, n_bars: int, seed: int = 0, freq: str = "1D", *, start: str = "2000-01-03",
                   ohlcv: bool = False) -> SynthUniverse:
    """The universe :func:`synth_prices` returns, to be generated block by block."""
    times = _axis(n_symbols, n_bars, freq, start)
    width = max(4, len(str(n_symbols - 1)))
    symbols = [f"SYN{i:0{width}d}" for i in range(n_symbols)]
    variables = ("open", "high", "low", "close", "volume") if ohlcv else ("close",)
    source = f"synth(n_symbols={n_symbols}, n_bars={n_bars}, seed={seed}, freq={freq!r}, ohlcv={ohlcv})"
    return SynthUniverse(symbols, times, variables, seed, ohlcv, source)


def synth_prices(
    n_symbols: int,
    n_bars: int,
    seed: int = 0,
    freq: str = "1D",
    *,
    start: str = "2000-01-03",
    ohlcv: bool = False,
) -> xr.Dataset:
    """A synthetic universe as a price Dataset ``(symbol, time)`` with ``close`` (and
    ``open/high/low/volume`` with ``ohlcv=True``), in memory (``atc synth`` streams it instead:
    :func:`synth_universe`).

    Symbols are named ``SYN0000, SYN0001, ...``; the first one spans the whole time axis.
    Prices are strictly positive, with no interior NaN; each symbol has at least
    ``min(n_bars, 150)`` valid bars. Same arguments, same dataset, bit for bit.
    """
    u = synth_universe(n_symbols, n_bars, seed, freq, start=start, ohlcv=ohlcv)
    parts = list(u.batches())
    data = {v: np.concatenate([p[v] for p in parts]) if len(parts) > 1 else parts[0][v] for v in u.variables}
    return xr.Dataset(
        {k: (("symbol", "time"), v) for k, v in data.items()},
        coords={"symbol": np.array(u.symbols, dtype=object), "time": u.times.as_unit("ns").values},
        attrs={"source": u.source},
    )
