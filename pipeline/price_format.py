"""What a price store is: its format name and version, variables, codec and error type.

Kept apart from the code that reads tables or writes stores so that every layer (table
normalisation, panels, writing, appending) agrees on one definition without importing each other.
"""

from __future__ import annotations

import numpy as np

from kernels.errors import ATCUserError

FORMAT_NAME = "price-store"
#: Version 2: a NaN close inside a symbol's span means "no bar" (ATC_SPEC.md section 7) and the
#: ``fill`` attribute records whether gaps were forward-filled. Version 1 stores were always
#: forward-filled and are read as ``fill="ffill"``.
#: Version 3: ``time`` is chunked too (``TIME_CHUNK`` bars per chunk, so an append rewrites only
#: the last time chunk) and the fingerprint is the block fingerprint of
#: :func:`pipeline.price_store.fingerprint_arrays` (updated from the touched blocks on append).
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: How gaps inside a symbol's span are treated at ingest: "none" (a NaN close is "no bar") or
#: "ffill" (the previous close is repeated, volume 0, and the bar is counted in ``filled_gaps``).
FILL_MODES = ("none", "ffill")
#: Price variables in their canonical order; only ``close`` is required.
PRICE_VARS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
POSITIVE_VARS = ("open", "high", "low", "close")
#: Raw values per chunk the automatic chunk size aims at (2**20 float64 = 8 MiB uncompressed).
TARGET_CHUNK_VALUES = 2**20
#: Bars per time chunk of new price and results stores. Measured on a 2000 x 5000 synthetic close
#: panel (zstd-5 bitshuffle): the compression ratio hardly moves (1.377x with whole histories,
#: 1.373x at 1024, 1.370x at 512) and a one-symbol history read stays ~10 ms, while an append
#: recompresses the last chunk of every symbol: zstd-5 takes ~0.5 s per 2000 x 900 bars on this
#: 2-core machine, so 512 (at most 512 bars per symbol to rewrite, 256 on average) keeps a
#: one-bar append well under a second; a newest-bar read touches at most 512 bars per symbol.
TIME_CHUNK = 512
#: Bars per fingerprint block (see ``fingerprint_arrays``): an append rehashes only the blocks it
#: touches. Fixed, so the fingerprint does not depend on how a store is chunked; equal to
#: ``TIME_CHUNK`` so the blocks an append rehashes are the chunks it rewrites.
FINGERPRINT_BLOCK = 512
#: Overlapping bars of an append agree when they match to this relative tolerance.
APPEND_RTOL = 1e-12


class StoreError(ATCUserError, ValueError):
    """A price store or price data the user supplied cannot be written, read or appended."""


def blosc_codec():
    """The one compressor of every price-store array."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def format_time(ns: int | np.integer | np.datetime64) -> str:
    """A time as users wrote it in their files: a bare date for daily bars, ISO otherwise, so
    error messages can be matched against the file."""
    import pandas as pd  # only for error messages: readers such as `atc update` skip pandas' import

    t = pd.Timestamp(np.datetime64(int(ns), "ns")) if not isinstance(ns, np.datetime64) else pd.Timestamp(ns)
    return t.isoformat() if (t.hour or t.minute or t.second or t.microsecond or t.nanosecond) else t.strftime("%Y-%m-%d")


