"""Loading the cached stream kernels in a fresh `atc update` without the rest of Numba's start-up.

Before every load from its disk cache, Numba refreshes its CPU target: it imports about 70
implementation modules (`numba.np.arraymath`, `npdatetime`, the random generators, the typed
containers, ...) and installs their typing and lowering registries. That is what *compiling* needs;
loading machine code that was compiled before needs none of it, only the symbols the code links
against: Numba's C helpers and libm (installed when the target context is created), the NRT
(`rtsys.initialize`, done here) and the parallel runtime (a parallel kernel's own reload hook). In a
fresh `atc update` the refresh was 0.30-0.36 CPU s of ~2.9 (2,000 x 5,000 store, measured
2026-11-29), spent on one core while the other idled; the loaded kernels' outputs and states were
bit for bit the same. (It also spared `scipy.linalg`, which `numba.np.arraymath` imports to probe
for BLAS.)

A miss (kernels changed since they were cached) compiles as usual: Numba's compiler refreshes the
target itself. A load that fails without the registries is retried with them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def cache_loads_without_registries() -> Iterator[None]:
    """Within this block, Numba's cache loads skip the target refresh (see the module docstring)."""
    from numba.core import caching
    from numba.core.runtime import rtsys

    orig = getattr(caching.Cache, "load_overload", None)
    if orig is None or getattr(orig, "_atc_light", False) or not _known_signature(orig):
        yield  # nested (the outer block restores), or a Numba whose internals differ: the usual load
        return

    def load_overload(self, sig, target_context):
        target_context.refresh = lambda: rtsys.initialize(target_context)  # shadows the method
        try:
            return orig(self, sig, target_context)
        except Exception:  # noqa: BLE001 - whatever the light load lacked: load the usual way
            target_context.__dict__.pop("refresh", None)
            return orig(self, sig, target_context)
        finally:
            target_context.__dict__.pop("refresh", None)

    load_overload._atc_light = True
    caching.Cache.load_overload = load_overload
    try:
        yield
    finally:
        caching.Cache.load_overload = orig


def _known_signature(fn) -> bool:
    """Whether `Cache.load_overload` is the one this module was written against (Numba 0.68)."""
    import inspect

    try:
        return list(inspect.signature(fn).parameters) == ["self", "sig", "target_context"]
    except (TypeError, ValueError):
        return False


def load_stream_kernels(params, dtype) -> None:
    """Load the kernels one `StreamState.advance` and its write-back call (lane packing, routing,
    the advance, unpacking) by advancing a state of no symbols: the same argument types as a real
    state's, so the real advance finds them loaded. Call it inside `cache_loads_without_registries`,
    e.g. while another thread reads the store."""
    import numpy as np

    from kernels.stream import StreamState

    empty = StreamState.empty(0, params, dtype)
    empty.advance(np.zeros(0))
    empty.to_arrays()
