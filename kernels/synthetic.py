"""Seeded random-walk panels for benchmarks and tests (no I/O; the realistic universes for demos
live in `pipeline.synth`)."""

from __future__ import annotations

import numpy as np


def random_walk_panel(n_symbols: int, n_bars: int, seed: int = 0, vol: float = 0.01) -> np.ndarray:
    """Geometric random walks starting at 100, one row per symbol, float64."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, vol, size=(n_symbols, n_bars))
    return 100.0 * np.exp(np.cumsum(steps, axis=1))
