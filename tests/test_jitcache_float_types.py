"""Disk-cached kernels keep their float types apart.

A kernel whose arguments do not show the float type (integers in, float arrays allocated inside)
has one Numba signature for float64 and float32; the disk cache once handed the float64 machine
code to the float32 kernel in the next process (the stream engine then rounded in float64). Each
float type now has its own cache entry; checked here with a tiny kernel set in fresh processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

MODULE = textwrap.dedent('''
    import numpy as np
    from kernels.jitcache import KernelSet

    _K = KernelSet()
    ft = None

    @_K.kernel()
    def alloc(n):
        return np.zeros(n, ft)

    def build(name):
        return _K.compile(globals(), {"ft": np.dtype(name).type}, ft=np.dtype(name).type)
''')

CHECK = textwrap.dedent('''
    import tiny_kernels as m
    got = [str(m.build(name).alloc(3).dtype) for name in ("float64", "float32")]
    print(",".join(got))
''')


def test_each_float_type_has_its_own_cache_entry(tmp_path):
    (tmp_path / "tiny_kernels.py").write_text(MODULE)
    env = {**os.environ, "ATC_NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parent.parent)])}
    env.pop("NUMBA_CACHE_DIR", None)
    runs = [subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]  # the first compiles and caches, the second loads from the cache
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "float64,float32"
    assert any((tmp_path / "cache").rglob("*.nbi"))  # really cached
