"""Per-symbol outcome codes of a batch computation (spec section 7: one bad symbol never sinks a batch)."""

from __future__ import annotations

import numpy as np

OK = 0
INSUFFICIENT_HISTORY = 1
NO_DATA = 2
BAD_DATA = 3

STATUS_NAMES: dict[int, str] = {
    OK: "ok",
    INSUFFICIENT_HISTORY: "insufficient history",
    NO_DATA: "no data",
    BAD_DATA: "bad data",
}


class ATCResult(dict):
    """The 13 outputs by name (a plain dict of arrays) plus what happened to each symbol.

    `status` is an int8 array with one code per symbol (a 0-d array for a 1-D input);
    `messages` maps a symbol index to a human-readable reason for every non-OK symbol.
    """

    def __init__(self, outputs: dict, status: np.ndarray, messages: dict[int, str]):
        super().__init__(outputs)
        self.status = status
        self.messages = messages

    def status_names(self) -> np.ndarray:
        return np.vectorize(STATUS_NAMES.__getitem__, otypes=[object])(self.status)
