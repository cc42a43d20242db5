"""Shared test setup: the slow reference implementation (tests/reference.py) is importable as
`reference`, hypothesis runs without deadlines (first calls compile Numba kernels), and numba.cuda
is loaded in simulator mode before any test module imports it.

numba-cuda reads NUMBA_ENABLE_CUDASIM once, at its first import; if another test module (or a
library it pulls in) imported numba.cuda first, the CUDA tests could not run on a machine without a
GPU and would be skipped. The switch is restored afterwards so subprocesses of other tests do not
inherit it. On a GPU machine, run with NUMBA_ENABLE_CUDASIM=0 to test the real device.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import settings

if "numba.cuda" not in sys.modules:
    _saved_cudasim = os.environ.get("NUMBA_ENABLE_CUDASIM")
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    try:
        import numba.cuda  # noqa: F401  (reads the switch now, once)
    except ImportError:  # numba-cuda not installed: the CUDA tests skip and say so
        pass
    finally:
        if _saved_cudasim is None:
            os.environ.pop("NUMBA_ENABLE_CUDASIM", None)

sys.path.insert(0, str(Path(__file__).resolve().parent))

settings.register_profile("default", deadline=None, max_examples=25, derandomize=True)
settings.register_profile("thorough", deadline=None, max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
