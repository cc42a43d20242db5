"""Pure ATC compute: arrays in, arrays out. No I/O, no Dask; pandas only in the drop-in API.

Importing this package never imports numba.cuda or cupy (the GPU backend loads on demand).
"""

from kernels.api import ATCBackendError, compute_atc
from kernels.errors import ATCInputError, ATCUserError
from kernels.pandas_api import compute_atc_signals
from kernels.params import FAMILIES, OUTPUT_NAMES, ATCParamError, ATCParams
from kernels.status import ATCResult, STATUS_NAMES

__all__ = [
    "ATCBackendError", "ATCInputError", "ATCParamError", "ATCParams", "ATCResult", "ATCUserError",
    "FAMILIES", "OUTPUT_NAMES", "STATUS_NAMES", "compute_atc", "compute_atc_signals",
]
