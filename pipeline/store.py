"""The price store: an xarray Dataset on ``(symbol, time)`` in a Blosc-compressed Zarr v3 directory.

This module is the stable import point (``from pipeline.store import open_prices``); the work is
done in small modules, one job each: :mod:`pipeline.price_format` (names, version, codec, error),
:mod:`pipeline.tables` (user tables -> canonical frames), :mod:`pipeline.panel` (union calendar,
validation, gap filling), :mod:`pipeline.price_store` (write, open, fingerprint) and
:mod:`pipeline.price_append`.

Format version 3 (see ``data/README.md``; versions 1 and 2 are still read):

* variables ``close`` (required), ``open``, ``high``, ``low``, ``volume`` (optional), all float64
  on ``(symbol, time)``; a NaN close means the symbol has no bar at that time (ATC_SPEC.md
  section 7), and its other variables are NaN there too;
* ``filled_gaps`` (int64 on ``symbol``): how many bars were forward-filled (0 unless ``fill`` is
  ``"ffill"``);
* coordinates ``symbol`` (strings, any characters: only values, never paths) and ``time``
  (datetime64[ns], UTC, strictly increasing; the union of every symbol's calendar);
* codec ``BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")``, chunked along ``symbol``
  and ``time`` (``TIME_CHUNK`` bars), so an append rewrites only the last time chunk (versions 1
  and 2: whole histories per chunk);
* root attributes: ``atc_format``, ``atc_format_version``, ``source``, ``created``,
  ``modified``, ``history``, ``fingerprint`` (sha256 of coordinates and data hashed in blocks of
  bars, see :func:`fingerprint_prices`), ``fingerprint_blocks``, ``time_chunk``, ``fill`` (``"none"`` or ``"ffill"``), ``filled_gaps_total``,
  ``chunk_symbols``, ``timezone``; consolidated metadata, so plain ``xarray.open_zarr`` opens it.

Every write builds a complete store in a temporary sibling directory and renames it into place,
so a failure (bad data, full disk, Ctrl-C) leaves the previous store, or nothing, behind; an
append links the chunks it keeps into that sibling instead of copying them (``price_append``).
"""

from __future__ import annotations

import os  # noqa: F401  (tests patch store.os.rename to simulate a failing swap)

from pipeline.panel import fill_gaps, validate_prices
from pipeline.price_append import append_prices
from pipeline.price_format import (
    APPEND_RTOL,
    FILL_MODES,
    FORMAT_NAME,
    FORMAT_VERSION,
    POSITIVE_VARS,
    PRICE_VARS,
    READABLE_VERSIONS,
    FINGERPRINT_BLOCK,
    TARGET_CHUNK_VALUES,
    TIME_CHUNK,
    StoreError,
    blosc_codec,
)
from pipeline.price_store import (
    StoreSummary,
    auto_chunk_symbols,
    check_target,
    fingerprint_prices,
    open_prices,
    store_nbytes,
    to_frames,
    write_prices,
    write_prices_chunked,
)
from pipeline.tables import CanonicalFrames, frames_from, has_symbol_column, normalise_table, split_table

__all__ = [
    "APPEND_RTOL",
    "FILL_MODES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "POSITIVE_VARS",
    "PRICE_VARS",
    "READABLE_VERSIONS",
    "FINGERPRINT_BLOCK",
    "TARGET_CHUNK_VALUES",
    "TIME_CHUNK",
    "CanonicalFrames",
    "StoreError",
    "StoreSummary",
    "append_prices",
    "auto_chunk_symbols",
    "blosc_codec",
    "check_target",
    "fill_gaps",
    "fingerprint_prices",
    "frames_from",
    "has_symbol_column",
    "normalise_table",
    "open_prices",
    "split_table",
    "store_nbytes",
    "to_frames",
    "validate_prices",
    "write_prices",
    "write_prices_chunked",
]
