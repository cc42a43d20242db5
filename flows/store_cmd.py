"""`atc synth` and `atc ingest` (placeholder until the price-store issue lands)."""


def synth() -> None:
    """Create a synthetic price universe (not implemented yet)."""
    raise NotImplementedError


def ingest() -> None:
    """Ingest CSV/Parquet files into a price store (not implemented yet)."""
    raise NotImplementedError
