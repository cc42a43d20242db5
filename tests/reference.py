"""Slow, literal reference implementation of /work/shared/ATC_SPEC.md.

This module is written from the specification alone (not from the kernels) so that the
fast kernels and this file can catch each other's mistakes.  It is deliberately plain:
Python loops over bars, float64 scalars, every sum taken left to right in an explicit loop,
every moving average computed directly from its definition at every bar (O(L) per bar, no
running sums).  Comments quote the section of the spec that each piece implements.

Public interface (imported by other tests):

    reference_lengths(base, robustness) -> list[int]
    ref_ema, ref_wma, ref_hma, ref_dema, ref_lsma, ref_kama   (x, L) -> float64 array
    ref_crossover_signal(x, m) -> float64 array in {-1, 0, 1}
    ref_returns(x) -> float64 array, R_0 = NaN
    ref_equity(s, R, e0, lam, dec, cutout) -> float64 array
    reference_atc(close, **params) -> dict of the 13 outputs
    reference_ma_table(close_valid, **params) -> {family: [9 MA arrays]}
    reference_tie_bars(close_valid, rel=1e-12, **params) -> bool array
"""

from __future__ import annotations

import math
import operator

import numpy as np

__all__ = [
    "FAMILIES",
    "DEFAULTS",
    "OUTPUT_NAMES",
    "reference_lengths",
    "ref_ema",
    "ref_wma",
    "ref_hma",
    "ref_dema",
    "ref_lsma",
    "ref_kama",
    "ref_crossover_signal",
    "ref_returns",
    "ref_equity",
    "round2",
    "cut",
    "reference_atc",
    "reference_ma_table",
    "reference_tie_bars",
]

NAN = float("nan")

# Spec section 1: "The six families, always in this order: EMA, HMA, WMA, DEMA, LSMA, KAMA."
FAMILIES = ("EMA", "HMA", "WMA", "DEMA", "LSMA", "KAMA")

# Spec section 1: parameter table with defaults.
DEFAULTS = {
    "ema_len": 28,
    "hma_len": 28,
    "wma_len": 28,
    "dema_len": 28,
    "lsma_len": 28,
    "kama_len": 28,
    "ema_w": 1.0,
    "hma_w": 1.0,
    "wma_w": 1.0,
    "dema_w": 1.0,
    "lsma_w": 1.0,
    "kama_w": 1.0,
    "robustness": "Medium",
    "La": 0.02,
    "De": 0.03,
    "cutout": 0,
    "long_threshold": 0.1,
    "short_threshold": -0.1,
    "strategy_mode": False,
}

# Spec section 6: "The 13 outputs are ..."
OUTPUT_NAMES = tuple(f"{f}_Signal" for f in FAMILIES) + tuple(f"{f}_S" for f in FAMILIES) + (
    "Average_Signal",
)

# Spec section 1: offsets Narrow (1,2,3,4), Medium (1,2,4,6), Wide (1,3,5,7).
_OFFSETS = {
    "Narrow": (1, 2, 3, 4),
    "Medium": (1, 2, 4, 6),
    "Wide": (1, 3, 5, 7),
}


# ---------------------------------------------------------------------------------------------
# Section 1: the 9 lengths
# ---------------------------------------------------------------------------------------------


def _canonical_robustness(robustness: str) -> str:
    if not isinstance(robustness, str):
        raise ValueError(f"robustness must be one of {sorted(_OFFSETS)}, got {robustness!r}")
    for name in _OFFSETS:
        # Accept any letter case ("medium" -> "Medium"); the spec spells them capitalised.
        if robustness.lower() == name.lower():
            return name
    raise ValueError(f"robustness must be one of {sorted(_OFFSETS)}, got {robustness!r}")


def reference_lengths(base: int, robustness: str) -> list[int]:
    """Spec section 1: "[L, L+o1, L+o2, L+o3, L+o4, L-o1, L-o2, L-o3, L-o4]".

    Does not validate that the lengths are >= 1 (it does not know the family name);
    reference_atc / reference_ma_table do that with the family named in the error.
    """
    L = operator.index(base)
    o1, o2, o3, o4 = _OFFSETS[_canonical_robustness(robustness)]
    return [L, L + o1, L + o2, L + o3, L + o4, L - o1, L - o2, L - o3, L - o4]


# ---------------------------------------------------------------------------------------------
# Section 2: the moving averages.  Input: 1-D float64 array without NaN, bar index t = 0..n-1.
# ---------------------------------------------------------------------------------------------


def _as_series(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("expected a 1-D array")
    return x


def _check_length(L) -> int:
    L = operator.index(L)
    if L < 1:
        raise ValueError(f"moving-average length must be >= 1, got {L}")
    return L


def ref_ema(x, L) -> np.ndarray:
    """Spec section 2, EMA(L):
    "NaN for t < L-1; at t = L-1 the mean of x[0..L-1]; then e_t = a*x_t + (1-a)*e_{t-1},
    a = 2/(L+1)."
    """
    x = _as_series(x)
    L = _check_length(L)
    n = len(x)
    out = np.full(n, NAN)
    if n < L:
        return out
    a = 2.0 / (L + 1)
    # seed: mean of x[0..L-1], summed left to right
    total = 0.0
    for i in range(L):
        total += float(x[i])
    e = total / L
    out[L - 1] = e
    for t in range(L, n):
        e = a * float(x[t]) + (1.0 - a) * e
        out[t] = e
    return out


def ref_wma(x, L) -> np.ndarray:
    """Spec section 2, WMA(L):
    "NaN for t < L-1; sum_{k=0}^{L-1} (L-k)*x_{t-k} / (L(L+1)/2)."
    The window sum is recomputed from scratch at every bar (k = 0, 1, ..., L-1 in order).
    """
    x = _as_series(x)
    L = _check_length(L)
    n = len(x)
    out = np.full(n, NAN)
    denom = float(L * (L + 1) // 2)  # L(L+1)/2 is always an integer
    for t in range(L - 1, n):
        num = 0.0
        for k in range(L):
            num += (L - k) * float(x[t - k])
        out[t] = num / denom
    return out


def ref_hma(x, L) -> np.ndarray:
    """Spec section 2, HMA(L) (true Hull):
    "WMA( 2*WMA(x, L//2) - WMA(x, L), isqrt(L) ), where the outer WMA runs over the inner series
    starting at its first defined value. First defined at t = L - 1 + isqrt(L) - 1 (L=28 -> 31).
    L//2 is floor division; isqrt is the integer square root. (For L=1 the half length is 1.)"
    """
    x = _as_series(x)
    L = _check_length(L)
    n = len(x)
    half = L // 2
    if half < 1:  # "For L=1 the half length is 1."
        half = 1
    sq = math.isqrt(L)
    w_half = ref_wma(x, half)
    w_full = ref_wma(x, L)
    # inner series: 2*WMA(x, L//2) - WMA(x, L); defined from t = L-1 (since half <= L)
    inner = np.full(n, NAN)
    for t in range(n):
        inner[t] = 2.0 * w_half[t] - w_full[t]
    out = np.full(n, NAN)
    first = L - 1  # first defined value of the inner series
    if n <= first:
        return out
    outer = ref_wma(inner[first:], sq)
    out[first:] = outer
    return out


def ref_dema(x, L) -> np.ndarray:
    """Spec section 2, DEMA(L):
    "2*e1 - e2, e1 = EMA(L) above, e2 = EMA of e1 with the same a, seeded at t = L-1 with
    e2 = e1[L-1] (so DEMA[L-1] = SMA(L) there), then the usual recursion. First defined at t = L-1."
    """
    x = _as_series(x)
    L = _check_length(L)
    n = len(x)
    out = np.full(n, NAN)
    if n < L:
        return out
    a = 2.0 / (L + 1)
    e1 = ref_ema(x, L)
    e2 = float(e1[L - 1])  # seed
    out[L - 1] = 2.0 * float(e1[L - 1]) - e2
    for t in range(L, n):
        e2 = a * float(e1[t]) + (1.0 - a) * e2
        out[t] = 2.0 * float(e1[t]) - e2
    return out


def ref_lsma(x, L) -> np.ndarray:
    """Spec section 2, LSMA(L):
    "least-squares line through the last L points (0..L-1, x_{t-L+1..t}), evaluated at the
    current bar (position L-1). NaN for t < L-1."

    Ordinary least squares over the window, recomputed at every bar in centred form:
        xbar = (L-1)/2,  ybar = mean(y),
        slope = sum_i (i - xbar)(y_i - ybar) / sum_i (i - xbar)^2,
        value = ybar + slope * ((L-1) - xbar).
    L = 1 (a single point): the line passes through that point, value = x_t.
    L = 2: the line through two points passes through both, so the value is exactly x_t (computing
    it by the formula would round and create spurious crossovers at this permanent tie).
    """
    x = _as_series(x)
    L = _check_length(L)
    n = len(x)
    out = np.full(n, NAN)
    xbar = (L - 1) / 2.0
    sxx = 0.0
    for i in range(L):
        sxx += (i - xbar) * (i - xbar)
    for t in range(L - 1, n):
        if L <= 2:
            out[t] = float(x[t])
            continue
        y = [float(x[t - L + 1 + i]) for i in range(L)]  # y_i at position i = 0..L-1
        sy = 0.0
        for i in range(L):
            sy += y[i]
        ybar = sy / L
        sxy = 0.0
        for i in range(L):
            sxy += (i - xbar) * (y[i] - ybar)
        slope = sxy / sxx
        out[t] = ybar + slope * ((L - 1) - xbar)
    return out


def ref_kama(x, L) -> np.ndarray:
    """Spec section 2, KAMA(L):
    "k_t = x_0 for t <= L-1 (defined from bar 0); for t >= L:
    ER = |x_t - x_{t-L}| / sum_{j=t-L+1}^{t} |x_j - x_{j-1}| (ER = 0 when that noise sum is 0),
    sc = (ER*(0.666 - 0.064) + 0.064)^2, k_t = k_{t-1} + sc*(x_t - k_{t-1})."
    """
    x = _as_series(x)
    L = _check_length(L)
    n = len(x)
    out = np.full(n, NAN)
    if n == 0:
        return out
    k = float(x[0])
    for t in range(0, min(L, n)):  # t <= L-1
        out[t] = k
    for t in range(L, n):
        noise = 0.0
        for j in range(t - L + 1, t + 1):  # left to right
            noise += abs(float(x[j]) - float(x[j - 1]))
        if noise == 0.0:
            er = 0.0
        else:
            er = abs(float(x[t]) - float(x[t - L])) / noise
        base = er * (0.666 - 0.064) + 0.064
        sc = base * base
        k = k + sc * (float(x[t]) - k)
        out[t] = k
    return out


_MA_FUNCS = {
    "EMA": ref_ema,
    "HMA": ref_hma,
    "WMA": ref_wma,
    "DEMA": ref_dema,
    "LSMA": ref_lsma,
    "KAMA": ref_kama,
}


# ---------------------------------------------------------------------------------------------
# Section 3: per-MA crossover signal
# ---------------------------------------------------------------------------------------------


def ref_crossover_signal(x, m) -> np.ndarray:
    """Spec section 3:
    "s_t is a persistent state in {-1, 0, +1}, starting at 0:
     s_t = +1 if x_t > m_t and x_{t-1} <= m_{t-1} (crossover),
     s_t = -1 if x_t < m_t and x_{t-1} >= m_{t-1} (crossunder),
     otherwise s_t = s_{t-1}.  Any comparison with NaN is false."
    At t = 0 there is no previous bar, so s_0 = 0.
    """
    x = _as_series(x)
    m = _as_series(m)
    if len(x) != len(m):
        raise ValueError("x and m must have the same length")
    n = len(x)
    out = np.zeros(n, dtype=np.float64)
    s = 0.0
    for t in range(n):
        if t >= 1:
            xt, mt = float(x[t]), float(m[t])
            xp, mp = float(x[t - 1]), float(m[t - 1])
            # Python float comparisons with NaN are False, exactly as the spec requires.
            if xt > mt and xp <= mp:
                s = 1.0
            elif xt < mt and xp >= mp:
                s = -1.0
            # otherwise keep s
        out[t] = s
    return out


# ---------------------------------------------------------------------------------------------
# Section 4: equity curve
# ---------------------------------------------------------------------------------------------


def ref_returns(x) -> np.ndarray:
    """Spec section 4: "R_t = (x_t - x_{t-1}) / x_{t-1} (R_0 = NaN)"."""
    x = _as_series(x)
    n = len(x)
    out = np.full(n, NAN)
    for t in range(1, n):
        out[t] = (float(x[t]) - float(x[t - 1])) / float(x[t - 1])
    return out


def ref_equity(s, R, e0, lam, dec, cutout) -> np.ndarray:
    """Spec section 4:
    - "Bars t < cutout: equity is NaN."
    - "Bar t = cutout: E_t = max(e0, 0.25)."
    - "Bars t > cutout: g_t = exp(lam * (max(t, 1) - cutout)), r_t = R_t * g_t,
       a_t = +r_t if s_{t-1} > 0, -r_t if s_{t-1} < 0, and 0 if s_{t-1} is 0 or NaN or r_t is NaN;
       E_t = max(0.25, E_{t-1} * (1 - dec) * (1 + a_t))."
    The product is evaluated left to right: (E_{t-1} * (1 - dec)) * (1 + a_t).
    """
    s = _as_series(s)
    R = _as_series(R)
    if len(s) != len(R):
        raise ValueError("s and R must have the same length")
    cutout = operator.index(cutout)
    if cutout < 0:
        raise ValueError(f"cutout must be >= 0, got {cutout}")
    e0 = float(e0)
    lam = float(lam)
    dec = float(dec)
    n = len(s)
    out = np.full(n, NAN)
    if cutout >= n:
        return out
    E = max(e0, 0.25)
    out[cutout] = E
    for t in range(cutout + 1, n):
        g = math.exp(lam * (max(t, 1) - cutout))
        r = float(R[t]) * g
        sp = float(s[t - 1])
        if math.isnan(r) or math.isnan(sp) or sp == 0.0:
            a = 0.0
        elif sp > 0.0:
            a = r
        else:  # sp < 0
            a = -r
        E = max(0.25, E * (1.0 - dec) * (1.0 + a))
        out[t] = E
    return out


# ---------------------------------------------------------------------------------------------
# Sections 5 and 6: the two layers and the final signal
# ---------------------------------------------------------------------------------------------


def round2(v: float) -> float:
    """Spec section 5: "round2(v) = rint(v * 100) / 100" (round half to even on v*100)."""
    return float(np.rint(v * 100.0) / 100.0)


def cut(v: float, long_threshold: float, short_threshold: float) -> float:
    """Spec section 6: "Cut(v) = +1 if v > long_threshold, -1 if v < short_threshold, else 0
    (NaN -> 0)"."""
    if v > long_threshold:  # False for NaN
        return 1.0
    if v < short_threshold:  # False for NaN
        return -1.0
    return 0.0


def _resolve_params(params: dict) -> dict:
    """Fill in the defaults of spec section 1 and reject unknown names."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown ATC parameter(s): {unknown}")
    p = dict(DEFAULTS)
    p.update(params)
    p["robustness"] = _canonical_robustness(p["robustness"])
    return p


def _family_lengths(p: dict) -> dict[str, list[int]]:
    """Spec section 1: the 9 lengths of each family; "Every length must be >= 1 (otherwise a
    clear error naming the family and length)"."""
    out = {}
    for fam in FAMILIES:
        key = f"{fam.lower()}_len"
        lengths = reference_lengths(p[key], p["robustness"])
        for L in lengths:
            if L < 1:
                raise ValueError(
                    f"{fam} length {L} (from {key}={p[key]}, robustness={p['robustness']}) "
                    "is < 1; every length must be >= 1"
                )
        out[fam] = lengths
    return out


def _validate_scalars(p: dict) -> None:
    for fam in FAMILIES:
        key = f"{fam.lower()}_w"
        w = float(p[key])
        if not (w > 0.0) or not math.isfinite(w):
            raise ValueError(f"{key} (family weight of {fam}) must be > 0, got {p[key]!r}")
    if not (float(p["long_threshold"]) > float(p["short_threshold"])):
        raise ValueError(
            f"need long_threshold > short_threshold, got {p['long_threshold']!r} "
            f"<= {p['short_threshold']!r}"
        )
    cutout = operator.index(p["cutout"])
    if cutout < 0:
        raise ValueError(f"cutout must be >= 0, got {cutout}")


def reference_ma_table(close_valid, **params) -> dict[str, list[np.ndarray]]:
    """The 54 moving averages of spec section 2, per family in spec order (section 1).

    `close_valid` is the symbol's valid span (no NaN).  Only the *_len and robustness
    parameters are used; the others are accepted and ignored.
    """
    p = _resolve_params(params)
    x = _as_series(close_valid)
    lengths = _family_lengths(p)
    table = {}
    for fam in FAMILIES:
        fn = _MA_FUNCS[fam]
        table[fam] = [fn(x, L) for L in lengths[fam]]
    return table


def reference_tie_bars(close_valid, rel: float = 1e-12, **params) -> np.ndarray:
    """Spec section 7, "Exact ties": True at bars t where |x_t - m_t| <= rel * |x_t| for some
    of the 54 MAs m (a NaN MA never ties)."""
    x = _as_series(close_valid)
    table = reference_ma_table(x, **params)
    n = len(x)
    ties = np.zeros(n, dtype=bool)
    for fam in FAMILIES:
        for m in table[fam]:
            for t in range(n):
                mt = float(m[t])
                xt = float(x[t])
                if abs(xt - mt) <= rel * abs(xt):  # False when mt is NaN
                    ties[t] = True
    return ties


def _own_bars(close: np.ndarray) -> np.ndarray:
    """Spec section 7: "A NaN close means the symbol has no bar at that time. A symbol's series is
    its non-NaN closes in time order." Returns the positions of the symbol's own bars."""
    return np.array([i for i in range(len(close)) if not math.isnan(float(close[i]))], dtype=np.int64)


def reference_atc(
    close,
    *,
    ema_len=DEFAULTS["ema_len"],
    hma_len=DEFAULTS["hma_len"],
    wma_len=DEFAULTS["wma_len"],
    dema_len=DEFAULTS["dema_len"],
    lsma_len=DEFAULTS["lsma_len"],
    kama_len=DEFAULTS["kama_len"],
    ema_w=DEFAULTS["ema_w"],
    hma_w=DEFAULTS["hma_w"],
    wma_w=DEFAULTS["wma_w"],
    dema_w=DEFAULTS["dema_w"],
    lsma_w=DEFAULTS["lsma_w"],
    kama_w=DEFAULTS["kama_w"],
    robustness=DEFAULTS["robustness"],
    La=DEFAULTS["La"],
    De=DEFAULTS["De"],
    cutout=DEFAULTS["cutout"],
    long_threshold=DEFAULTS["long_threshold"],
    short_threshold=DEFAULTS["short_threshold"],
    strategy_mode=DEFAULTS["strategy_mode"],
) -> dict[str, np.ndarray]:
    """The full ATC of one symbol (spec sections 1-7), float64.

    `close` is the symbol's row of a panel on the shared time axis; a NaN close is a time at which
    the symbol has no bar (section 7): the symbol is computed on its compacted series (its non-NaN
    closes in order) and the outputs are placed back at its own times, NaN everywhere else.

    Order of checks (parameters first, then data, then history length):
      1. parameter errors (lengths < 1, weights <= 0, long <= short, cutout < 0) -> ValueError;
      2. an infinite close or a close <= 0 -> ValueError naming the bar (both the position in
         `close` and the symbol's own bar index t);
      3. fewer than max(all 54 lengths) + 2 valid bars -> all outputs NaN (no exception);
      4. cutout >= n (the symbol's number of valid bars) -> ValueError (spec: 0 <= cutout < n).
    """
    p = _resolve_params(
        dict(
            ema_len=ema_len, hma_len=hma_len, wma_len=wma_len, dema_len=dema_len,
            lsma_len=lsma_len, kama_len=kama_len, ema_w=ema_w, hma_w=hma_w, wma_w=wma_w,
            dema_w=dema_w, lsma_w=lsma_w, kama_w=kama_w, robustness=robustness, La=La, De=De,
            cutout=cutout, long_threshold=long_threshold, short_threshold=short_threshold,
            strategy_mode=strategy_mode,
        )
    )
    close = np.asarray(close, dtype=np.float64)
    if close.ndim != 1:
        raise ValueError("reference_atc expects the 1-D close series of one symbol")
    N = len(close)

    lengths = _family_lengths(p)
    _validate_scalars(p)
    cutout = operator.index(p["cutout"])

    outputs = {name: np.full(N, NAN) for name in OUTPUT_NAMES}

    # Section 7: the symbol's own bars are its non-NaN closes; its bar index t counts only them.
    own = _own_bars(close)
    if len(own) == 0:
        return outputs  # no bar at all: insufficient history

    # Section 7: "A close <= 0 or an infinite close is bad data: a clear error naming the symbol
    # and the time."
    for t, i in enumerate(own):
        v = float(close[i])
        if not math.isfinite(v) or v <= 0.0:
            raise ValueError(
                f"invalid close {v!r} at bar {i} (symbol bar index t={t}); "
                "closes must be finite and > 0"
            )

    x = close[own].copy()
    n = len(x)

    # Section 7: "A symbol needs at least max(all 54 lengths) + 2 valid bars; a shorter one ...
    # gets NaN outputs".
    max_len = max(max(lengths[fam]) for fam in FAMILIES)
    if n < max_len + 2:
        return outputs

    # Section 1: "0 <= cutout < n".
    if cutout >= n:
        raise ValueError(f"cutout={cutout} must be < n={n} (the symbol's number of valid bars)")

    # Section 1: "the kernel uses lam = La / 1000", "dec = De / 100".
    lam = float(p["La"]) / 1000.0
    dec = float(p["De"]) / 100.0

    R = ref_returns(x)

    family_signal = {}
    family_S = {}
    for fam in FAMILIES:
        # Section 2 + 3 + 4 (Layer 1 uses e0 = 1.0 for each of the 54 per-MA signals).
        sigs = []
        eqs = []
        for L in lengths[fam]:
            m = _MA_FUNCS[fam](x, L)
            s = ref_crossover_signal(x, m)
            E = ref_equity(s, R, 1.0, lam, dec, cutout)
            sigs.append(s)
            eqs.append(E)

        # Section 5: "Family_Signal_t = round2( (sum_j s_j,t * E_j,t) / (sum_j E_j,t) ), sums
        # taken left to right in that order ... NaN where the equities are NaN (bars < cutout)."
        fs = np.full(n, NAN)
        for t in range(n):
            if t < cutout:
                continue
            num = 0.0
            den = 0.0
            for j in range(9):
                num += float(sigs[j][t]) * float(eqs[j][t])
            for j in range(9):
                den += float(eqs[j][t])
            fs[t] = round2(num / den)
        family_signal[fam] = fs

        # Section 6: "Family_S = equity curve (section 4) of Family_Signal with e0 = family
        # weight".
        w = float(p[f"{fam.lower()}_w"])
        family_S[fam] = ref_equity(fs, R, w, lam, dec, cutout)

    # Section 6: "Average_Signal_t = sum_f Cut(Family_Signal_f,t) * Family_S_f,t /
    # sum_f Family_S_f,t, families in the order of section 1. Where the ratio is not finite
    # (bars < cutout), it is 0.0."
    lt = float(p["long_threshold"])
    st = float(p["short_threshold"])
    avg = np.zeros(n)
    for t in range(n):
        num = 0.0
        den = 0.0
        for fam in FAMILIES:
            num += cut(float(family_signal[fam][t]), lt, st) * float(family_S[fam][t])
        for fam in FAMILIES:
            den += float(family_S[fam][t])
        with np.errstate(all="ignore"):
            ratio = float(np.float64(num) / np.float64(den))
        avg[t] = ratio if math.isfinite(ratio) else 0.0

    # Section 6: "strategy_mode: Average_Signal becomes [0.0, Average_Signal_0, ...,
    # Average_Signal_{n-2}]" -- on the symbol's own bars.
    if p["strategy_mode"]:
        shifted = np.zeros(n)
        for t in range(1, n):
            shifted[t] = avg[t - 1]
        avg = shifted

    for fam in FAMILIES:
        outputs[f"{fam}_Signal"][own] = family_signal[fam]
        outputs[f"{fam}_S"][own] = family_S[fam]
    outputs["Average_Signal"][own] = avg
    return outputs
