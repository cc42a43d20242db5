"""Drop-in for the widely used pandas ATC function: same keyword names, Series in, Series out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kernels.api import compute_atc
from kernels.errors import ATCInputError
from kernels.params import ATCParams


def compute_atc_signals(
    prices: pd.Series,
    src: pd.Series | None = None,
    *,
    ema_len: int = 28,
    hull_len: int = 28,
    wma_len: int = 28,
    dema_len: int = 28,
    lsma_len: int = 28,
    kama_len: int = 28,
    ema_w: float = 1.0,
    hma_w: float = 1.0,
    wma_w: float = 1.0,
    dema_w: float = 1.0,
    lsma_w: float = 1.0,
    kama_w: float = 1.0,
    robustness: str = "Medium",
    La: float = 0.02,
    De: float = 0.03,
    cutout: int = 0,
    long_threshold: float = 0.1,
    short_threshold: float = -0.1,
    strategy_mode: bool = False,
) -> dict[str, pd.Series]:
    """The 13 ATC outputs as Series on `prices.index` (names as in ATC_SPEC.md).

    `src` feeds the moving averages (default: `prices`); returns always come from `prices`.
    `hull_len` is the HMA family's base length, named as in the original API.
    """
    if not isinstance(prices, pd.Series):
        raise ATCInputError(f"prices must be a pandas Series, got {type(prices).__name__}")
    if src is not None:
        if not isinstance(src, pd.Series):
            raise ATCInputError(f"src must be a pandas Series, got {type(src).__name__}")
        if not src.index.equals(prices.index):
            src = src.reindex(prices.index)
    params = ATCParams(
        ema_len=ema_len, hma_len=hull_len, wma_len=wma_len, dema_len=dema_len, lsma_len=lsma_len,
        kama_len=kama_len, ema_w=ema_w, hma_w=hma_w, wma_w=wma_w, dema_w=dema_w, lsma_w=lsma_w,
        kama_w=kama_w, robustness=robustness, La=La, De=De, cutout=cutout,
        long_threshold=long_threshold, short_threshold=short_threshold, strategy_mode=strategy_mode,
    )
    close = prices.to_numpy(dtype=np.float64, na_value=np.nan)
    source = None if src is None else src.to_numpy(dtype=np.float64, na_value=np.nan)
    result = compute_atc(close, params, src=source, symbols=[prices.name if prices.name is not None else "prices"])
    return {name: pd.Series(values, index=prices.index, name=name) for name, values in result.items()}
