"""Storage and orchestration: Zarr/xarray stores, the Dask cluster and task graph. No indicator math."""
