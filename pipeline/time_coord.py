"""The CF-encoded ``time`` coordinate of price and results stores, read and written with numpy.

xarray writes a datetime64 axis as integers "<unit> since <date>" in the proleptic Gregorian
calendar. Decoding and re-encoding that common case is plain integer arithmetic, so the daily
commands (`atc update`, `atc scan`) need not import xarray or pandas for it; anything else goes
through xarray's CF coder, exactly as before.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


CF_UNITS = {"days": "D", "hours": "h", "minutes": "m", "seconds": "s", "milliseconds": "ms",
            "microseconds": "us", "nanoseconds": "ns"}
"""The CF time units xarray writes for a datetime64 axis, as numpy timedelta units."""


def simple_cf_units(units: object, calendar: object) -> tuple[np.datetime64, str] | None:
    """``(origin in ns, numpy unit)`` for the CF encodings xarray writes for a datetime64 axis
    ("<unit> since <date>", proleptic Gregorian calendar), else None. Lets the store readers and
    `atc update`'s time coordinate skip xarray's CF machinery (and its import) on the common case."""
    if not units or str(calendar) not in ("proleptic_gregorian", "standard", "gregorian"):
        return None
    unit, _, origin = str(units).partition(" since ")
    if unit not in CF_UNITS:
        return None
    try:
        return np.datetime64(origin.strip().replace(" ", "T"), "ns"), CF_UNITS[unit]
    except ValueError:
        return None


def write_time_coord(arr: Any, times: np.ndarray) -> None:
    """Rewrite a Zarr ``time`` coordinate (CF-encoded int64) with ``times`` (int64 ns), keeping its
    units when they represent every time exactly and choosing finer ones otherwise (hourly bars
    may follow daily ones). Used by appends to price stores and by ``results_time.grow_time``."""
    units, calendar = arr.attrs.get("units"), arr.attrs.get("calendar", "proleptic_gregorian")
    dt = np.asarray(times).astype(np.int64).view("datetime64[ns]")
    simple = simple_cf_units(units, calendar) if arr.dtype.kind in "iu" else None
    if simple is not None:  # the usual case: every time a whole number of the stored unit past its origin
        base, unit = simple
        vals = (dt - base).astype(f"timedelta64[{unit}]")
        if np.array_equal(base + vals, dt):
            arr.resize((dt.size,))
            arr[:] = vals.astype(np.int64).astype(arr.dtype)
            return
    from xarray.coding.times import decode_cf_datetime, encode_cf_datetime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            vals, units2, cal2 = encode_cf_datetime(dt, units, calendar, dtype=np.dtype(np.int64))
            exact = np.array_equal(np.asarray(decode_cf_datetime(vals, units2, cal2), "datetime64[ns]"), dt)
        except (ValueError, OverflowError, TypeError):
            exact = False
        if not exact:
            vals, units2, cal2 = encode_cf_datetime(dt, None, calendar)
    arr.resize((dt.size,))
    arr[:] = np.asarray(vals, dtype=arr.dtype)
    arr.attrs.update({"units": units2, "calendar": cal2})


def read_time_coord(g: Any) -> np.ndarray:
    """The decoded ``time`` coordinate of an open Zarr group, as int64 ns.

    The CF encodings xarray writes for a datetime64 axis ("<unit> since <date>", integer values,
    the proleptic Gregorian calendar) are decoded with numpy; anything else goes through xarray's
    decoder."""
    t = g["time"]
    raw = np.asarray(t[:])
    units = t.attrs.get("units")
    if not units:
        return np.asarray(raw, dtype="datetime64[ns]").astype(np.int64)
    calendar = t.attrs.get("calendar", "proleptic_gregorian")
    simple = simple_cf_units(units, calendar)
    if simple is not None and raw.dtype.kind in "iu":
        base, unit = simple
        return (base + raw.astype(np.int64).astype(f"timedelta64[{unit}]")).astype(np.int64)
    from xarray.coding.times import decode_cf_datetime

    return np.asarray(decode_cf_datetime(raw, units, calendar), dtype="datetime64[ns]").astype(np.int64)
