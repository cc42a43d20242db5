"""CUDA backend (kernels/cuda.py) against the CPU backend: every output, every parameter variant.

Without a GPU this runs under numba-cuda's simulator: the switch must be set before numba.cuda is
first imported, which tests/conftest.py does for the whole session (and restores the environment,
so subprocesses of other tests do not inherit it). The simulator runs the kernels as plain Python:
panels are tiny. On a machine with a GPU, run the same tests for real with

    NUMBA_ENABLE_CUDASIM=0 python -m pytest tests/test_cuda.py      (or scripts/gpu_check.sh)

which also checks the PTX for FMA contraction and bit identity with the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# numba.cuda is already loaded in simulator mode by tests/conftest.py (unless NUMBA_ENABLE_CUDASIM=0)
try:  # a module global: the simulator swaps the `cuda` globals of kernel functions
    from numba import cuda
except ImportError:
    cuda = None

from kernels import ATCBackendError, ATCParams, OUTPUT_NAMES, compute_atc  # noqa: E402
from kernels.api import cuda_status  # noqa: E402
from kernels.synthetic import random_walk_panel  # noqa: E402

USABLE, SIMULATED, WHAT = cuda_status()
ROOT = Path(__file__).resolve().parent.parent

needs_cuda = pytest.mark.skipif(not USABLE, reason=f"CUDA backend not usable: {WHAT}")
real_gpu_only = pytest.mark.skipif(not USABLE or SIMULATED, reason="needs a real GPU (not the simulator)")

SMALL = dict(ema_len=6, hma_len=7, wma_len=5, dema_len=6, lsma_len=5, kama_len=8, robustness="Narrow")


def ragged_panel(n_sym: int, n_bars: int, seed: int, vol: float = 0.02) -> np.ndarray:
    """Random walks with late starts and early ends (spec section 7)."""
    x = random_walk_panel(n_sym, n_bars, seed=seed, vol=vol)
    rng = np.random.default_rng(seed + 100)
    for i in range(1, n_sym):
        a = int(rng.integers(0, n_bars // 5))
        b = int(rng.integers(0, n_bars // 5))
        x[i, :a] = np.nan
        if b:
            x[i, n_bars - b:] = np.nan
    return x


def assert_same(cpu, gpu, atol: float = 1e-12) -> None:
    """Every output equal within atol, NaN exactly where the CPU has NaN, statuses equal."""
    np.testing.assert_array_equal(gpu.status, cpu.status)
    assert gpu.messages == cpu.messages
    for name in OUTPUT_NAMES:
        a = np.asarray(cpu[name], np.float64)
        b = np.asarray(gpu[name], np.float64)
        assert a.shape == b.shape, name
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        assert np.array_equal(nan_a, nan_b), f"{name}: NaN positions differ at {np.argwhere(nan_a != nan_b)[:5]}"
        if (~nan_a).any():
            err = np.max(np.abs(a[~nan_a] - b[~nan_a]))
            assert err <= atol, f"{name}: max |cpu - gpu| = {err:.3g} > {atol:g}"


def both(close, params, **kw):
    return compute_atc(close, params, backend="cpu", **kw), compute_atc(close, params, backend="cuda", **kw)


# ---- no GPU needed -------------------------------------------------------------------------------


def test_import_kernels_loads_no_gpu_module_and_cuda_fails_clearly():
    """`import kernels` must not import numba.cuda or cupy; without a GPU, backend='cuda' raises a
    one-line ATCBackendError and backend='auto' resolves to the CPU (fresh interpreter, no simulator)."""
    code = (
        "import sys\n"
        "import kernels, flows.cli\n"
        "bad = [m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda', 'cupy'))]\n"
        "assert not bad, bad\n"
        "import numpy as np\n"
        "from kernels.api import _resolve_backend, cuda_status\n"
        "usable, sim, what = cuda_status()\n"
        "assert not sim\n"
        "if not usable:\n"
        "    assert _resolve_backend('auto') == 'cpu'\n"
        "    try:\n"
        "        kernels.compute_atc(np.ones(100), backend='cuda')\n"
        "    except kernels.ATCBackendError as e:\n"
        "        msg = str(e)\n"
        "        assert 'cuda' in msg and 'GPU' in msg and '\\n' not in msg, msg\n"
        "    else:\n"
        "        raise AssertionError('no error without a GPU')\n"
        "else:\n"
        "    assert _resolve_backend('auto') == 'cuda'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_ring_limit_is_a_clear_error():
    pytest.importorskip("numba.cuda")
    from kernels import cuda as gpu
    from kernels.cpu import line_tables

    lens, _ = line_tables(ATCParams(hma_len=5000), np.float64)
    with pytest.raises(ATCBackendError, match="HMA length"):
        gpu.ring_size(lens)
    lens, _ = line_tables(ATCParams(), np.float64)  # L = 22..34: isqrt 4..5 -> 8 slots
    assert gpu.ring_size(lens) == 8


def test_kernels_compile_with_the_real_cuda_compiler():
    """The simulator runs Python and accepts what real compilation rejects: type and lower both
    kernels for sm_90 with numba-cuda's compiler (no GPU, but libNVVM); float32 code must not promote
    to float64. Where NVRTC is installed too, the PTX has no FMA unless contraction is allowed."""
    pytest.importorskip("numba.cuda")
    import json

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "cuda_compile_check.py")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    assert len(report["lowered"]) == 4
    for row in report["lowered"]:
        if row["dtype"] == "float32":
            assert row["fpext"] == 0 and row["double_ops"] == 0, row
    for row in report["ptx"]:
        assert (row["fma"] > 0) if row["allow_fma"] else (row["fma"] == 0 and row["mul_rn"] > 0), row


# ---- the step functions as device functions --------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_steps_compile_as_device_functions(dtype):
    """Every step function called from a kernel gives what plain Python (numpy scalars) gives."""
    from kernels.steps import build_steps

    ft = np.dtype(dtype).type
    dev = build_steps(cuda.jit(device=True), ft)
    py = build_steps(lambda f: f, ft)

    # jitted code cannot look up attributes of a Python object: bind the functions to names
    ema_step, dema_value, weighted_slide = dev.ema_step, dev.dema_value, dev.weighted_slide
    wma_value, hma_diff, lsma_value, kama_step = dev.wma_value, dev.hma_diff, dev.lsma_value, dev.kama_step
    cross_step, equity_step, start_equity = dev.cross_step, dev.equity_step, dev.start_equity
    round2, cut, ratio_or_zero = dev.round2, dev.cut, dev.ratio_or_zero
    ZERO, ONE, FIVE, TEN, FIFTY = ft(0.0), ft(1.0), ft(5.0), ft(10.0), ft(50.0)
    KEEP, LO, HI = ft(0.97), ft(-0.1), ft(0.1)

    @cuda.jit
    def k(a, out):
        i = cuda.grid(1)
        if i < a.shape[0]:
            x = a[i, 0]
            y = a[i, 1]
            z = a[i, 2]
            w = a[i, 3]
            out[i, 0] = ema_step(x, y, z, w)
            out[i, 1] = dema_value(x, y)
            s, v = weighted_slide(x, y, z, w, FIVE)
            out[i, 2] = s
            out[i, 3] = v
            out[i, 4] = wma_value(x, w)
            out[i, 5] = hma_diff(x, y)
            out[i, 6] = lsma_value(x, y, FIVE, TEN, FIFTY)
            out[i, 7] = lsma_value(x, y, ONE, ZERO, ZERO)
            out[i, 8] = kama_step(x, y, z, w)
            out[i, 9] = cross_step(ZERO, x, y, z, w)
            out[i, 10] = equity_step(x, y - ONE, z - ONE, KEEP)
            out[i, 11] = start_equity(w - ONE)
            out[i, 12] = round2((x - y) / w)
            out[i, 13] = cut(x - y, LO, HI)
            out[i, 14] = ratio_or_zero(x - y, w - ONE)

    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 1.5, size=(8, 4)).astype(dtype)
    a[0, 3] = 1.0  # ratio_or_zero with a zero denominator
    a[1, 1] = np.nan
    out = np.zeros((8, 15), dtype)
    k[1, 8](a, out)
    for i in range(8):
        x, y, z, w = (ft(v) for v in a[i])
        s, v = py.weighted_slide(x, y, z, w, ft(5.0))
        want = [py.ema_step(x, y, z, w), py.dema_value(x, y), s, v, py.wma_value(x, w), py.hma_diff(x, y),
                py.lsma_value(x, y, ft(5.0), ft(10.0), ft(50.0)), py.lsma_value(x, y, ft(1.0), ft(0.0), ft(0.0)),
                py.kama_step(x, y, z, w), py.cross_step(ft(0.0), x, y, z, w),
                py.equity_step(x, y - ft(1.0), z - ft(1.0), ft(0.97)), py.start_equity(w - ft(1.0)),
                py.round2((x - y) / w), py.cut(x - y, ft(-0.1), ft(0.1)), py.ratio_or_zero(x - y, w - ft(1.0))]
        np.testing.assert_array_equal(out[i], np.array(want, dtype), err_msg=f"row {i}")


# ---- GPU == CPU ------------------------------------------------------------------------------


VARIANTS = {
    "narrow": dict(SMALL),
    "medium_cutout": dict(SMALL, robustness="Medium", ema_len=8, hma_len=8, wma_len=7, dema_len=8,
                          lsma_len=7, kama_len=9, cutout=17),
    # Wide with base 8 reaches length 1: one-bar windows, LSMA L <= 2, HMA half = sq = 1
    "wide_length_one": dict(SMALL, robustness="Wide", ema_len=8, hma_len=8, wma_len=8, dema_len=8,
                            lsma_len=8, kama_len=8),
    "weights_thresholds": dict(SMALL, ema_w=0.1, hma_w=0.2, wma_w=2.0, dema_w=0.24, lsma_w=1.0, kama_w=0.5,
                               long_threshold=0.3, short_threshold=-0.05, La=0.5, De=1.5),
    "strategy_mode": dict(SMALL, strategy_mode=True, cutout=3, long_threshold=0.0, short_threshold=-0.2),
}


@needs_cuda
@pytest.mark.parametrize("name", list(VARIANTS))
def test_gpu_equals_cpu(name):
    close = ragged_panel(3, 72, seed=len(name))
    cpu, gpu = both(close, ATCParams(**VARIANTS[name]))
    assert (cpu.status == 0).all()
    assert_same(cpu, gpu)


@needs_cuda
def test_gpu_equals_cpu_past_anchor_with_src():
    """One long history crosses the ANCHOR (256 bars) re-anchoring of every window sum; `src` feeds
    the MAs while returns come from `close`."""
    close = random_walk_panel(2, 300, seed=7, vol=0.02)
    close[1, :30] = np.nan
    src = close * np.exp(random_walk_panel(2, 300, seed=8, vol=0.002) / 100.0 - 1.0)
    cpu, gpu = both(close, ATCParams(**dict(SMALL, cutout=5)), src=src)
    assert_same(cpu, gpu)


@needs_cuda
@pytest.mark.slow  # ~30 s in the simulator; CI runs it in its slow step
def test_float32_and_statuses_and_slices(monkeypatch):
    """float32; symbols with too little history, no data and bad data keep their status and NaN;
    symbols sent to the device in slices of 2 (ragged columns trimmed per slice)."""
    from kernels import cuda as gpu

    close = ragged_panel(6, 64, seed=11)
    close[2, :50] = np.nan  # 14 bars: insufficient history
    close[3, :] = np.nan  # no data
    close[4, 30] = -1.0  # bad data
    params = ATCParams(**SMALL)
    monkeypatch.setattr(gpu, "SLICE_SYMBOLS", 2)
    cpu, dev = both(close, params, on_bad="status")
    assert list(cpu.status) == [0, 0, 1, 2, 3, 0]
    assert_same(cpu, dev)
    cpu32, dev32 = both(close, params, on_bad="status", dtype=np.float32)
    assert dev32["EMA_S"].dtype == np.float32
    assert_same(cpu32, dev32, atol=1e-6)


@needs_cuda
def test_one_dimensional_input():
    x = random_walk_panel(1, 40, seed=5, vol=0.02)[0]
    cpu, gpu = both(x, ATCParams(**SMALL))
    assert gpu["Average_Signal"].shape == (40,) and gpu.status.shape == ()
    assert_same(cpu, gpu)


def test_bench_cuda_refuses_cleanly_without_a_gpu(monkeypatch):
    from kernels import api
    from kernels.errors import ATCUserError
    from flows.bench_cmd import _bench_cuda

    monkeypatch.setattr(api, "cuda_status", lambda: (False, False, "no GPU here"))
    with pytest.raises(ATCUserError, match="needs an NVIDIA GPU: no GPU here"):
        _bench_cuda("2x50", "float64", 1, False, False, False, None)


@needs_cuda
def test_bench_cuda_path_runs(monkeypatch, tmp_path):
    """The benchmark's GPU path, on a tiny panel (under the simulator it pretends to be a GPU)."""
    import json

    from kernels import api
    from flows.bench_cmd import _bench_cuda

    monkeypatch.setattr(api, "cuda_status", lambda: (True, False, WHAT))
    out = tmp_path / "bench.json"
    _bench_cuda("2x40", "float64", 1, False, True, True, out)
    row = json.loads(out.read_text())["kernel"][0]
    assert row["symbols"] == 2 and row["kernel_symbol_bars_per_s"] > 0 and row["end_to_end_seconds"] > 0
    assert row["max_abs_diff_vs_cpu"] <= 1e-12 and row["fma_max_abs_diff_vs_cpu"] <= 1e-12


# ---- real GPU only -------------------------------------------------------------------------------


@real_gpu_only
def test_ptx_has_no_fma_and_results_are_bit_identical():
    """With contraction off (the default) the PTX has no fused multiply-add and GPU == CPU bit for bit."""
    from kernels import cuda as gpu

    assert not gpu.fma_contraction()
    close = random_walk_panel(64, 600, seed=2, vol=0.02)
    cpu, dev = both(close, ATCParams())
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(dev[name], cpu[name], err_msg=name)
    kern = gpu.build_cuda_kernels("float64", 8, False)
    for disp in (kern.family_kernel, kern.layer2_kernel):
        for sig in disp.signatures:
            ptx = disp.inspect_asm(sig)
            assert "fma.rn.f64" not in ptx, f"{disp.py_func.__name__} still contracts a*b+c"
