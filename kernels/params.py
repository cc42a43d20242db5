"""ATC parameters (ATC_SPEC.md section 1): one frozen, validated object shared by every backend.

Validation lives here, once, so that the CPU kernel, the GPU kernel, the streaming engine and the
CLI all reject the same inputs with the same message.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from kernels.errors import ATCUserError

FAMILIES: tuple[str, ...] = ("EMA", "HMA", "WMA", "DEMA", "LSMA", "KAMA")
"""The six MA families, always in this order (spec section 1)."""

ROBUSTNESS_OFFSETS: dict[str, tuple[int, int, int, int]] = {
    "Narrow": (1, 2, 3, 4),
    "Medium": (1, 2, 4, 6),
    "Wide": (1, 3, 5, 7),
}

SIGNAL_NAMES: tuple[str, ...] = tuple(f"{f}_Signal" for f in FAMILIES)
EQUITY_NAMES: tuple[str, ...] = tuple(f"{f}_S" for f in FAMILIES)
OUTPUT_NAMES: tuple[str, ...] = SIGNAL_NAMES + EQUITY_NAMES + ("Average_Signal",)
"""The 13 outputs in the order of spec section 6."""


class ATCParamError(ATCUserError, ValueError):
    """An ATC parameter is invalid; the message names the parameter."""


def length_set(base: int, robustness: str) -> tuple[int, ...]:
    """The 9 lengths of one family: [L, L+o1..L+o4, L-o1..L-o4] (spec section 1)."""
    o = ROBUSTNESS_OFFSETS[robustness]
    return (base, base + o[0], base + o[1], base + o[2], base + o[3],
            base - o[0], base - o[1], base - o[2], base - o[3])


@dataclass(frozen=True)
class ATCParams:
    """Every parameter of the ATC indicator with the spec's defaults; invalid values raise on creation."""

    ema_len: int = 28
    hma_len: int = 28
    wma_len: int = 28
    dema_len: int = 28
    lsma_len: int = 28
    kama_len: int = 28
    ema_w: float = 1.0
    hma_w: float = 1.0
    wma_w: float = 1.0
    dema_w: float = 1.0
    lsma_w: float = 1.0
    kama_w: float = 1.0
    robustness: str = "Medium"
    La: float = 0.02
    De: float = 0.03
    cutout: int = 0
    long_threshold: float = 0.1
    short_threshold: float = -0.1
    strategy_mode: bool = False

    def __post_init__(self) -> None:
        if self.robustness not in ROBUSTNESS_OFFSETS:
            raise ATCParamError(
                f"robustness must be one of {sorted(ROBUSTNESS_OFFSETS)}, got {self.robustness!r}")
        for fam in FAMILIES:
            name = f"{fam.lower()}_len"
            base = getattr(self, name)
            if isinstance(base, bool) or not isinstance(base, int):
                raise ATCParamError(f"{name} must be an integer, got {base!r}")
            lengths = length_set(base, self.robustness)
            if min(lengths) < 1:
                raise ATCParamError(
                    f"{fam} family: {name}={base} with robustness {self.robustness!r} gives length "
                    f"{min(lengths)} (< 1); use {name} >= {base - min(lengths) + 1}")
            wname = f"{fam.lower()}_w"
            w = getattr(self, wname)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
                raise ATCParamError(f"{wname} (starting equity of {fam}) must be a finite number > 0, got {w!r}")
        for name in ("La", "De", "long_threshold", "short_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ATCParamError(f"{name} must be a finite number, got {v!r}")
        if self.De < 0 or self.De >= 100:
            raise ATCParamError(f"De is a decay in percent and must be in [0, 100), got {self.De!r}")
        if isinstance(self.cutout, bool) or not isinstance(self.cutout, int) or self.cutout < 0:
            raise ATCParamError(f"cutout must be an integer >= 0, got {self.cutout!r}")
        if not self.long_threshold > self.short_threshold:
            raise ATCParamError(
                f"long_threshold ({self.long_threshold}) must be greater than short_threshold "
                f"({self.short_threshold})")
        if not isinstance(self.strategy_mode, bool):
            raise ATCParamError(f"strategy_mode must be true or false, got {self.strategy_mode!r}")

    # -- derived values the kernels use -------------------------------------------------------

    @property
    def lam(self) -> float:
        """Growth rate in kernel units (spec: lam = La / 1000)."""
        return self.La / 1000.0

    @property
    def dec(self) -> float:
        """Decay as a fraction (spec: dec = De / 100)."""
        return self.De / 100.0

    def base_length(self, family: str) -> int:
        return getattr(self, f"{family.lower()}_len")

    def weight(self, family: str) -> float:
        return float(getattr(self, f"{family.lower()}_w"))

    def lengths(self, family: str) -> tuple[int, ...]:
        """The 9 lengths of `family` in spec order."""
        return length_set(self.base_length(family), self.robustness)

    @property
    def min_bars(self) -> int:
        """Fewest valid bars a symbol needs (spec section 7: max of the 54 lengths + 2)."""
        return max(max(self.lengths(f)) for f in FAMILIES) + 2

    # -- conversions ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, **overrides: Any) -> "ATCParams":
        """Build from a config mapping, rejecting unknown keys by name (typos must not be ignored)."""
        merged = dict(values or {})
        merged.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ATCParamError(f"unknown ATC parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: _coerce(k, v) for k, v in merged.items()})

    def replace(self, **changes: Any) -> "ATCParams":
        return dataclasses.replace(self, **changes)


_FIELD_TYPES = {f.name: f.type for f in fields(ATCParams)}


def _coerce(name: str, value: Any) -> Any:
    """Turn config/CLI strings into the field's type; a bad value becomes an ATCParamError naming it."""
    kind = _FIELD_TYPES[name]
    if not isinstance(value, str):
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
    except ValueError:
        raise ATCParamError(f"{name} must be of type {kind}, got {value!r}") from None
    return text
