"""On-disk cache of compiled kernels, keyed by the kernels' own source code.

Compiling the batch kernel takes ~15-20 s, and every Dask worker process, CLI call and test
process would pay it again. Numba can cache compiled functions on disk, but it only checks the
source file of each function itself: a change in `kernels/steps.py` would not invalidate a cached
`kernels/cpu.py` function that inlined the old step code. So the cache lives in a directory named
by a hash of every kernels/*.py file plus the Numba and Python versions: any change selects a
fresh directory and a stale binary can never be loaded.

Where: `$NUMBA_CACHE_DIR/atc-pipeline` when Numba's own variable is set (a subdirectory, because
old kernel caches are pruned there), else `~/.cache/atc-pipeline/numba`; `ATC_NUMBA_CACHE_DIR`
overrides both. `ATC_NUMBA_CACHE=0` disables caching.

Serial kernels are compiled with `nogil=True`: the in-process path of `atc run` / `atc sweep`
(pipeline/executor.py) runs tasks on threads of one process, which then compute in parallel
instead of taking turns on the GIL. Parallel (`prange`) kernels keep the GIL: two threads must
never be inside one at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path

import numba
import numpy as np
from numba.core import config


def caching_enabled() -> bool:
    return os.environ.get("ATC_NUMBA_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


@lru_cache(maxsize=None)
def kernel_cache_dir() -> Path:
    h = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(f"numba {numba.__version__} python {sys.version}".encode())
    return cache_root() / h.hexdigest()[:16]


def cache_root() -> Path:
    """The directory holding one cache per kernel source hash (see the module docstring)."""
    own = os.environ.get("ATC_NUMBA_CACHE_DIR", "").strip()
    if own:
        return Path(own).expanduser()
    numba_dir = os.environ.get("NUMBA_CACHE_DIR", "").strip()
    if numba_dir:
        return Path(numba_dir).expanduser() / "atc-pipeline"
    return Path.home() / ".cache" / "atc-pipeline" / "numba"


def _prune_old(root: Path, keep: Path, max_age_days: float = 14.0) -> None:
    """Drop caches of older kernel sources, so that upgrades do not pile up binaries."""
    import shutil
    import time

    cutoff = time.time() - max_age_days * 86400
    for d in root.iterdir():
        if d != keep and d.is_dir() and d.stat().st_mtime < cutoff:
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def cached_compilation():
    """Within this block, `njit(cache=True)` decorations cache into `kernel_cache_dir()`.

    Numba picks a function's cache location when it is decorated, from `config.CACHE_DIR`; the
    global setting is restored afterwards so other Numba users in the process are unaffected.
    """
    if not caching_enabled():
        yield False
        return
    target = kernel_cache_dir()
    try:
        if not target.exists():
            target.mkdir(parents=True)
            _prune_old(target.parent, keep=target)
    except OSError:
        yield False  # read-only home: compile without a cache
        return
    old = config.CACHE_DIR
    config.CACHE_DIR = str(target)
    try:
        yield True
    finally:
        config.CACHE_DIR = old


class KernelSet:
    """Module-level kernel functions compiled once per float type, disk-cached.

    Kernel code is written once at module level and reads `ft`, float constants and step
    functions as globals. `compile` re-binds each function to a globals dict holding one float
    type's values (instead of closures: Numba's disk cache keys on closure contents, which differ
    in every process, so closures would never hit the cache), in registration order, so a kernel
    calling another gets the same float type's version.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[str, dict]] = []

    def kernel(self, **options):
        """Register the decorated function (Numba options such as parallel=True)."""
        def mark(fn):
            self._entries.append((fn.__name__, options))
            return fn
        return mark

    def compile(self, module_globals: dict, env: dict, **attrs):
        from types import FunctionType, SimpleNamespace

        from numba import njit

        scope = dict(module_globals)
        scope.update(env)
        ns = SimpleNamespace(**attrs)
        with cached_compilation() as cache:
            for name, options in self._entries:
                fn = module_globals[name]
                rebound = FunctionType(fn.__code__, scope, name, fn.__defaults__, fn.__closure__)
                # one cache entry per float type: a kernel whose arguments do not show the float type
                # (e.g. only integer arrays in, float arrays allocated inside) has the same signature
                # for both, and Numba's cache would hand one type's machine code to the other
                rebound.__qualname__ = f"{fn.__qualname__}__{np.dtype(attrs.get('ft', 'float64')).name}"
                rebound.__module__ = fn.__module__
                rebound.__doc__ = fn.__doc__
                opts = dict(options)
                if not opts.get("parallel"):
                    opts.setdefault("nogil", True)
                scope[name] = njit(cache=cache, **opts)(rebound)
                setattr(ns, name, scope[name])
        return ns
