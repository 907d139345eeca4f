#!/usr/bin/env bash
# One call on a lent GPU machine: build the CUDA kernels, run the GPU tests, every benchmark
# and every profiling suite, and keep all results, in one command (device time is scarce).
#
#   bash benchmarks/gpu_session.sh          # on the GPU machine, from the repository root
#
# The GPU machines here have no network: this uses that machine's own python3 (with torch,
# triton and pytest preinstalled) and installs nothing else. Results land in
# benchmarks/results/gpu-<date>-<gpu>/ (logs, bench JSON/CSV/PNG, profiles); when $OUT is set
# (the device tool) they are also packed into $OUT/gpu-session.tgz. Exit status: 0 when every
# step passed, 1 when some step failed (each step still runs), 2 when there is no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_session: no NVIDIA GPU visible (nvidia-smi -L failed); run this on a machine with a GPU" >&2
  exit 2
fi
PY=${PYTHON:-python3}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
dest="benchmarks/results/gpu-$(date -u +%Y%m%d)-${gpu}"
mkdir -p "$dest"
export PYTHONUNBUFFERED=1
status=0

step() {
  local name=$1
  shift
  local t0=$SECONDS
  "$@" >"$dest/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc ($((SECONDS - t0)) s)"
  tail -n 4 "$dest/$name.log"
  [ "$rc" = 0 ] || status=1
}

nvidia-smi >"$dest/nvidia-smi.txt" 2>&1
step build env MAX_JOBS="${MAX_JOBS:-16}" "$PY" -m pip install --no-build-isolation --no-deps -e .
step info "$PY" -m lmini_tools.cli info -v
step gpu_tests env LMINI_TEST_GPU=1 "$PY" -m pytest -q -m gpu tests
step bench_compress "$PY" -m lmini_tools.cli bench compress --device cuda --out "$dest"
step bench_prefusion "$PY" -m lmini_tools.cli bench prefusion --device cuda --out "$dest"
step profile_flops "$PY" -m lmini_tools.cli profile flops
step profile_memory "$PY" -m lmini_tools.cli profile memory --measure-gpu
shopt -s nullglob
bench_json=("$dest"/*.json)
if [ ${#bench_json[@]} -gt 0 ]; then
  step roofline "$PY" -m lmini_tools.cli profile roofline --out "$dest" "${bench_json[@]}"
fi
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/gpu-session.tgz" "$dest"
fi
echo "results: $dest"
exit "$status"
