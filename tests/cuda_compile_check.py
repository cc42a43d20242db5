"""Compile the CUDA kernels with the real numba-cuda compiler, without a GPU (run by test_cuda.py).

The simulator runs kernels as Python and accepts what real compilation rejects; this script types
and lowers both kernels (float64 and float32) to LLVM IR for compute capability 9.0 exactly as a
launch would, and prints one JSON line. It needs libNVVM (a CUDA toolkit, or `pip install
nvidia-nvvm`; no GPU), else it reports "skip". Where NVRTC is installed too (`nvidia-cuda-nvrtc`),
it also produces the PTX and counts fused multiply-adds, with and without the module's FMA switch.
Run with NUMBA_ENABLE_CUDASIM=0.
"""

from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace

import numba
import numpy as np
from numba import types

import numba.cuda.dispatcher as _dispatcher

CC = (9, 0)
# Device functions ask the current device for its compute capability while typing a kernel;
# without a GPU there is none, so give them the target's.
_dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=CC)

from numba.cuda.compiler import compile_cuda  # noqa: E402

from kernels import cuda as gpu  # noqa: E402
from kernels.cpu import line_tables  # noqa: E402
from kernels.params import ATCParams  # noqa: E402


def launch_types(ft):
    """numba types of the arguments `run_panel` passes, from arrays made the same way."""
    ft = np.dtype(ft)
    x = np.ones((2, 4), ft)
    i64 = np.zeros(2, np.int64)
    lens, coef = line_tables(ATCParams(), ft)
    vec = np.ones(4, ft)
    out = np.ones((13, 2, 4), ft)
    scal = ft.type(1.0)
    fam = (x, x, i64, i64, vec, lens, coef, 0, scal, out)
    l2 = (x, i64, i64, vec, vec[:6], 0, scal, scal, scal, False, out)
    return tuple(numba.typeof(a) for a in fam), tuple(numba.typeof(a) for a in l2)


def main() -> None:
    assert not gpu.SIMULATOR, "run with NUMBA_ENABLE_CUDASIM=0"
    report = {"lowered": [], "ptx": [], "ptx_error": None}
    try:  # lowering itself asks libNVVM for the target's data layout
        from numba.cuda.cudadrv.nvvm import NVVM

        NVVM()
    except Exception as exc:
        print(json.dumps({"skip": f"libNVVM not found ({type(exc).__name__}); install nvidia-nvvm or a CUDA toolkit"}))
        return
    have_nvvm = True
    for dt in ("float64", "float32"):
        fam_t, l2_t = launch_types(dt)
        for allow in ((False, True) if have_nvvm else (False,)):
            k = gpu.build_cuda_kernels(dt, 8, allow)
            for fn, argt in ((k.family_kernel, fam_t), (k.layer2_kernel, l2_t)):
                name = fn.py_func.__name__
                with gpu._FmaOff(not allow):
                    cres = compile_cuda(fn.py_func, types.void, argt, cc=CC, nvvm_options={"opt": 3})
                    ir = cres.library.get_llvm_str()
                    if not allow:
                        # float32 arithmetic must stay float32 (a bare float literal would promote it)
                        report["lowered"].append({"dtype": dt, "kernel": name, "ir_chars": len(ir),
                                                  "fpext": ir.count("fpext"), "double_ops": len(re.findall(
                                                      r"\bf(add|sub|mul|div) double", ir))})
                    if have_nvvm:
                        gpu._install_fma_hook()
                        try:
                            ptx = cres.library.get_asm_str(cc=CC)
                        except Exception as exc:  # libNVVM without NVRTC/libdevice, ...
                            have_nvvm = False
                            report["ptx_error"] = f"no PTX: {type(exc).__name__}: {str(exc)[:200]}"
                            continue
                        sfx = "f64" if dt == "float64" else "f32"
                        report["ptx"].append({"dtype": dt, "kernel": name, "allow_fma": allow,
                                              "fma": len(re.findall(rf"\bfma\.rn\.{sfx}\b", ptx)),
                                              "mul_rn": len(re.findall(rf"\bmul\.rn\.{sfx}\b", ptx))})
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
