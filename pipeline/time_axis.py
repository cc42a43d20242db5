"""Growing a store's time axis in place: what `atc update` needs to add new bars to a results store.

Every `(symbol, time)` array is resized and its new region set to NaN (only the chunks that hold
new times are written when time is chunked), and the `time` coordinate is rewritten whole (it is
small) with units that can represent every time: the new bars may be finer than the old axis'
units (hourly bars after daily ones). The consolidated metadata is refreshed last, so a plain
`xarray.open_zarr` sees the grown store.
"""

from __future__ import annotations

import os
import warnings

import numpy as np


def extend_time(path: str | os.PathLike, new_times) -> int:
    """Append `new_times` (datetime64, after the store's last time) to the store at `path`;
    returns the new number of times."""
    import zarr
    from xarray.coding.times import encode_cf_datetime

    g = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    tarr = g["time"]
    old = np.asarray(tarr[:])
    units, calendar = tarr.attrs.get("units"), tarr.attrs.get("calendar", "proleptic_gregorian")
    from xarray.coding.times import decode_cf_datetime

    old_times = decode_cf_datetime(old, units, calendar) if units else old
    new = np.asarray(new_times, dtype="datetime64[ns]")
    if new.size == 0:
        return int(old.size)
    all_times = np.concatenate([np.asarray(old_times, "datetime64[ns]"), new])
    if np.any(np.diff(all_times.astype(np.int64)) <= 0):
        raise ValueError("new times must be increasing and after the store's last time")
    n = int(all_times.size)
    for _, arr in g.arrays():
        dims = tuple(arr.metadata.dimension_names or ())
        if dims == ("symbol", "time"):
            n_old = arr.shape[1]
            arr.resize((arr.shape[0], n))
            if arr.dtype.kind == "f":
                arr[:, n_old:] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values, new_units, new_calendar = encode_cf_datetime(all_times, calendar=calendar)
    tarr.resize((n,))
    tarr[:] = np.asarray(values, dtype=tarr.dtype)
    tarr.attrs.update({"units": new_units, "calendar": new_calendar})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the Zarr v3 spec"
        zarr.consolidate_metadata(str(path), zarr_format=3)
    return n
