"""Pure ATC compute: arrays in, arrays out. No I/O, no Dask; pandas only in the drop-in API.

Importing this package never imports numba.cuda or cupy (the GPU backend loads on demand), nor
Numba or pandas themselves until a name that needs them is used (`compute_atc`,
`compute_atc_signals`): commands that only read stores (`atc scan`, `atc show`) start faster.
"""

from kernels.errors import ATCInputError, ATCUserError
from kernels.params import FAMILIES, OUTPUT_NAMES, ATCParamError, ATCParams
from kernels.status import STATUS_NAMES, ATCResult

_LAZY = {"ATCBackendError": "kernels.api", "compute_atc": "kernels.api", "compute_atc_signals": "kernels.pandas_api"}

__all__ = [
    "ATCBackendError", "ATCInputError", "ATCParamError", "ATCParams", "ATCResult", "ATCUserError",
    "FAMILIES", "OUTPUT_NAMES", "STATUS_NAMES", "compute_atc", "compute_atc_signals",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
