#!/usr/bin/env bash
# GPU check for the CUDA backend, in one go, on a machine with an NVIDIA GPU:
#   1. installs the project with its [gpu] and [test] extras (plus numba-cuda's CUDA wheels for the
#      driver's CUDA major version) into $ATC_GPU_VENV (default ~/.cache/atc-gpu-venv), unless
#      --no-install (then the active Python is used);
#   2. runs tests/test_cuda.py for real (NUMBA_ENABLE_CUDASIM=0): CPU == GPU on every output, the
#      PTX without FMA, bit identity with the CPU;
#   3. runs `atc bench kernel --backend cuda` (10,000 x 5,000 float64: kernel-only, end-to-end,
#      CPU beside it, FMA on/off).
# Results go to $ATC_GPU_OUT (default: $OUT if set, else /tmp/atc-gpu-check): env.txt, pytest.log,
# bench.txt, bench.json.
# Exit status: 0 when both steps pass, else the first failing step's.
#
#   bash scripts/gpu_check.sh                # creates/reuses the venv
#   bash scripts/gpu_check.sh --no-install   # the current environment already has the extras
#   ATC_BENCH_ARGS="--sizes 20000x5000 --repeat 5" bash scripts/gpu_check.sh

set -uo pipefail
cd "$(dirname "$0")/.."

install=1
for arg in "$@"; do
  case "$arg" in
    --no-install) install=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg" >&2; exit 2 ;;
  esac
done

out="${ATC_GPU_OUT:-${OUT:-/tmp/atc-gpu-check}}"
mkdir -p "$out"

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi not found: this script needs a machine with an NVIDIA GPU and driver" >&2
  exit 3
fi
nvidia-smi | tee "$out/env.txt"
cuda_major="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)"
cuda_major="${cuda_major:-12}"
[ "$cuda_major" -ge 13 ] && cu=cu13 || cu=cu12

if [ "$install" = 1 ]; then
  py="${PYTHON:-python3}"
  venv="${ATC_GPU_VENV:-$HOME/.cache/atc-gpu-venv}"
  [ -d "$venv" ] || "$py" -m venv "$venv" || exit 4
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[gpu,test]" "numba-cuda[$cu]" || {
    echo "gpu_check: installing the [gpu] extra failed (offline? use --no-install in a ready environment)" >&2
    exit 4
  }
fi

export NUMBA_ENABLE_CUDASIM=0
python - <<'EOF' | tee -a "$out/env.txt"
from importlib.metadata import version
from kernels.api import cuda_status
from kernels import cuda as gpu
usable, simulated, what = cuda_status()
print(f"numpy {version('numpy')}, numba {version('numba')}, numba-cuda {version('numba-cuda')}; "
      f"device: {what}; usable={usable}; "
      f"FMA contraction in the ATC kernels: {'on' if gpu.fma_contraction() else 'off'}")
raise SystemExit(0 if usable and not simulated else 5)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || { echo "gpu_check: the CUDA backend is not usable here (see above)" >&2; exit 5; }

echo "== tests/test_cuda.py on the GPU"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs 2>&1 | tee "$out/pytest.log"
test_rc="${PIPESTATUS[0]}"

echo "== atc bench kernel --backend cuda"
# shellcheck disable=SC2086
python -m flows.cli bench kernel --backend cuda --json "$out/bench.json" ${ATC_BENCH_ARGS:-} 2>&1 | tee "$out/bench.txt"
bench_rc="${PIPESTATUS[0]}"

echo "== gpu_check: tests exit $test_rc, benchmark exit $bench_rc; results in $out/"
[ "$test_rc" = 0 ] || exit "$test_rc"
exit "$bench_rc"
