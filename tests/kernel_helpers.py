"""Comparison helpers for kernel tests: spec section 7 tolerances and the exact-tie rule."""

from __future__ import annotations

import numpy as np

from kernels import OUTPUT_NAMES
from reference import reference_atc, reference_tie_bars

SIGNALS = OUTPUT_NAMES[:6]
EQUITIES_AND_AVERAGE = OUTPUT_NAMES[6:]


def mismatch_bars(fast: dict, ref: dict, atol: float = 1e-9) -> np.ndarray:
    """Bars where any output differs: *_Signal exactly, *_S and Average_Signal beyond atol."""
    n = len(ref[OUTPUT_NAMES[0]])
    bad = np.zeros(n, bool)
    for name in OUTPUT_NAMES:
        a = np.asarray(fast[name], np.float64)
        b = np.asarray(ref[name], np.float64)
        nan_diff = np.isnan(a) != np.isnan(b)
        both = ~np.isnan(a) & ~np.isnan(b)
        if name in SIGNALS:
            diff = both & (a != b)
        else:
            diff = both & (np.abs(a - b) > atol)
        bad |= nan_diff | diff
    return np.flatnonzero(bad)


def assert_matches_reference(fast: dict, close: np.ndarray, params: dict, *, allow_ties: bool = False) -> None:
    """All 13 outputs of one symbol equal the reference (spec section 7).

    With `allow_ties`, outputs may diverge from the first bar where the reference finds an exact
    tie (|x - m| <= 1e-12 |x| for some MA), as the spec allows on real data; before it they must
    agree completely.
    """
    ref = reference_atc(close, **params)
    bad = mismatch_bars(fast, ref)
    if bad.size == 0:
        return
    first = int(bad[0])
    if allow_ties:
        own = np.flatnonzero(~np.isnan(close))  # the symbol's own bars (spec section 7)
        ties = reference_tie_bars(close[own], **{k: v for k, v in params.items()
                                                 if k.endswith("_len") or k == "robustness"})
        local = int(np.searchsorted(own, first))
        if local < len(own) and own[local] == first and ties[local]:
            return
    details = {name: (fast[name][first], ref[name][first]) for name in OUTPUT_NAMES
               if not (np.isnan(fast[name][first]) and np.isnan(ref[name][first]))
               and fast[name][first] != ref[name][first]}
    raise AssertionError(f"first mismatch at bar {first} of {len(close)}: {details}")
