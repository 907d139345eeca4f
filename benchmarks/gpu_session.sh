#!/usr/bin/env bash
# One call on a lent GPU machine, at most 9 minutes: build the CUDA kernels, run the GPU tests,
# the benchmarks, the auto-order timings, ncu, compute-sanitizer and the memory suite, and
# pack every result into one small folder that comes back with the call.
#
#   bash benchmarks/gpu_session.sh                              # on the GPU machine, repository root
#   LMINI_GPU_SESSION_DRY=1 bash benchmarks/gpu_session.sh      # anywhere: quick stand-ins, same stages
#
# Written for the lent H200 (16 cores; torch 2.11, triton 3.6, nvcc 13.0, ncu, compute-sanitizer;
# no network): it uses that machine's python3 and installs nothing. Each stage runs under its own
# time budget (`timeout`; STAGES below; the budgets, the kill grace and RESERVE_S add up to at
# most LIMIT_S = 540 s, and the script refuses to start otherwise); a stage that fails or runs out
# of time is recorded and the next one runs. Every stage also gets at most what is left of the
# 540 s. The benchmark and auto-order stages are stopped with SIGINT: they then write the rows
# they measured (their full GPU runs may well take longer than their budgets). Results: one folder, at most 8 files and under 16 MiB (tests/tools/test_gpu_session.py):
#   summary.json      each stage's budget, seconds, exit status (124: out of time), log tail
#   summary.txt       the same, one line per stage, for a person
#   auto_order.json   fastest backend per op and shape (python -m lmini_tools.bench.auto_order)
#   session.tgz       every log, bench JSON/CSV/PNG, ncu reports, sanitizer output, nvidia-smi
# The folder is $OUT when set (the device tool brings it back), else
# benchmarks/results/gpu-<date>-<gpu>/; LMINI_GPU_SESSION_OUT overrides both. When session.tgz
# would pass 14 MiB it is packed again without the .ncu-rep files (their text summaries stay),
# then without the PNGs; summary.json says what was dropped.
# Exit status: 0 when every stage passed, 1 when some stage failed, 2 when there is no GPU.
#
# Dry run (LMINI_GPU_SESSION_DRY=1, what the test uses on a machine without a GPU): every stage
# runs a stand-in that prints the command it replaces, under a budget of LMINI_GPU_SESSION_DRY_TIMEOUT
# seconds (default 3) instead of its own; LMINI_GPU_SESSION_DRY_FAIL and _DRY_HANG name stages
# whose stand-in fails or hangs (comma-separated); LMINI_GPU_SESSION_DRY_BIG=1 makes the ncu
# stand-in write a 20 MiB report, to exercise the size limit; a hanging ncu or sanitizer stand-in
# sleeps LMINI_GPU_SESSION_DRY_SLEEP seconds (default 600) as one of their capped runs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SELF=$ROOT/benchmarks/gpu_session.sh
PY=${PYTHON:-python3}
DRY=${LMINI_GPU_SESSION_DRY:-0}
case "$DRY" in 1 | true | yes | on) DRY=1 ;; "" | 0 | false | no | off) DRY=0 ;; *)
  echo "gpu_session: LMINI_GPU_SESSION_DRY=$DRY: expected 1/true/yes/on or 0/false/no/off" >&2
  exit 2
  ;;
esac

LIMIT_S=540     # the whole session: 9 minutes
RESERVE_S=15    # nvidia-smi, packing, writing the summary
KILL_GRACE_S=2  # timeout --kill-after: a stage that ignores SIGTERM is killed this much later
MAX_FILES=8     # in the results folder
MAX_BYTES=$((16 * 1024 * 1024))
PACK_BYTES=$((14 * 1024 * 1024)) # session.tgz above this is packed again with less
# name:budget seconds, in run order
STAGES=(
  build:130
  info:8
  gpu_tests:60
  bench_compress:47
  bench_prefusion:40
  bench_family:25
  auto_order:35
  ncu:62
  sanitizer:72
  memory:18
)
# stages stopped with SIGINT instead of SIGTERM: they write what they measured before the budget ran out
INTERRUPTIBLE=" bench_compress bench_prefusion bench_family auto_order "
# ops whose kernels ncu and compute-sanitizer see (profiling/nsight/run_kernels.py)
OPS=(compress prefusion_attention row_softmax)

# run_capped SECONDS CMD...: CMD under its own timeout (a run inside a stage). That timeout puts
# CMD in a process group of its own, which the stage's stop would miss: the trap passes it on.
run_capped() {
  timeout -k 1 "$1" "${@:2}" &
  local pid=$! rc
  trap 'kill -TERM -- -"$pid" 2>/dev/null; exit 143' TERM INT
  wait "$pid"
  rc=$?
  trap - TERM INT
  return $rc
}

# --- one stage's commands (run as `gpu_session.sh --stage NAME`, under the stage's timeout) ---
# $WORK is the folder everything is written to before packing.
run_stage() {
  case "$1" in
  build)
    # sm_90 only, 16 jobs; no host SIMT module (the GPU runs the kernels themselves)
    env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 LMINI_FORCE_CUDA=1 LMINI_BUILD_EMU=0 \
      "$PY" -m pip install --no-build-isolation --no-deps -e .
    ;;
  info) "$PY" -m lmini_tools.cli info -v ;;
  gpu_tests) env LMINI_TEST_GPU=1 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rfEs tests ;;
  bench_compress) "$PY" -m lmini_tools.cli bench compress --device cuda --min-run-time 0.1 --out "$WORK/bench" ;;
  bench_prefusion) "$PY" -m lmini_tools.cli bench prefusion --device cuda --min-run-time 0.1 --out "$WORK/bench" ;;
  bench_family) "$PY" benchmarks/bench_resampler_family.py --device cuda --dtype float16 --batch 8 --repeats 5 --out "$WORK/bench/family.json" ;;
  auto_order) "$PY" -m lmini_tools.bench.auto_order --device cuda --out "$WORK/auto_order.json" ;;
  ncu)
    # one launch of each op's kernels per backend; each of the 6 runs gets a sixth of the stage,
    # so that one slow run leaves time for the others
    local rc=0 op backend cap=$((STAGE_LIMIT / 6))
    for op in "${OPS[@]}"; do
      for backend in cuda triton; do
        echo "-- ncu $op/$backend"
        LMINI_NSIGHT_OUT="$WORK/nsight" LMINI_NCU_BACKENDS=$backend PYTHON="$PY" \
          run_capped "$cap" bash profiling/nsight/ncu_kernels.sh "$op" || rc=1
      done
    done
    return $rc
    ;;
  sanitizer)
    # memcheck and racecheck on each CUDA kernel, one call of each op (a sixth of the stage each)
    local rc=0 op tool cap=$((STAGE_LIMIT / 6))
    for tool in memcheck racecheck; do
      for op in "${OPS[@]}"; do
        echo "-- compute-sanitizer --tool $tool: $op (cuda)"
        run_capped "$cap" compute-sanitizer --tool "$tool" --error-exitcode 1 \
          "$PY" profiling/nsight/run_kernels.py --op "$op" --backend cuda --iters 1 || rc=1
      done
    done
    return $rc
    ;;
  memory) "$PY" -m lmini_tools.cli profile memory --measure-gpu ;;
  *)
    echo "gpu_session: unknown stage $1" >&2
    return 2
    ;;
  esac
}

# a stage's stand-in in a dry run
dry_stage() {
  echo "dry run: stand-in for stage $1"
  case ",${LMINI_GPU_SESSION_DRY_HANG:-}," in *",$1,"*)
    echo "dry run: $1 hangs"
    if [ "$1" = ncu ] || [ "$1" = sanitizer ]; then
      run_capped 600 sleep "${LMINI_GPU_SESSION_DRY_SLEEP:-600}" # as their runs are: the stage's stop must reach it
    else
      trap 'echo "dry run: $1 got SIGINT"; exit 130' INT
      sleep 600 &
      wait $!
    fi
    ;;
  esac
  case ",${LMINI_GPU_SESSION_DRY_FAIL:-}," in *",$1,"*)
    echo "dry run: $1 fails"
    return 1
    ;;
  esac
  case "$1" in
  bench_compress | bench_prefusion | bench_family)
    mkdir -p "$WORK/bench"
    echo '{"rows": []}' >"$WORK/bench/$1.json"
    ;;
  auto_order) echo '{"ops": {}}' >"$WORK/auto_order.json" ;;
  ncu)
    mkdir -p "$WORK/nsight/ncu"
    echo "stand-in report" >"$WORK/nsight/ncu/row_softmax_cuda.txt"
    if [ "${LMINI_GPU_SESSION_DRY_BIG:-0}" = 1 ]; then
      head -c $((20 * 1024 * 1024)) /dev/urandom >"$WORK/nsight/ncu/row_softmax_cuda.ncu-rep"
    fi
    ;;
  esac
  return 0
}

if [ "${1:-}" = "--stage" ]; then
  : "${WORK:?--stage is run by gpu_session.sh itself}"
  if [ "$DRY" = 1 ]; then dry_stage "$2"; else run_stage "$2"; fi
  exit $?
fi

# --- the session ---
total=$((RESERVE_S))
for s in "${STAGES[@]}"; do total=$((total + ${s#*:} + KILL_GRACE_S)); done
if [ "$total" -gt "$LIMIT_S" ]; then
  echo "gpu_session: the stage budgets add up to $total s, over the $LIMIT_S s limit" >&2
  exit 2
fi
if [ "$DRY" = 0 ] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_session: no NVIDIA GPU visible (nvidia-smi -L failed); run this on a machine with a GPU" >&2
  exit 2
fi
if [ "$DRY" = 1 ]; then
  gpu=dry-run
else
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
fi
DEST=${LMINI_GPU_SESSION_OUT:-${OUT:-$ROOT/benchmarks/results/gpu-$(date -u +%Y%m%d)-$gpu}}
mkdir -p "$DEST"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export WORK PYTHON="$PY" PYTHONUNBUFFERED=1
# the library and the tools from this tree, also when the build stage fails (Triton needs no _C)
export PYTHONPATH="$ROOT:$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$WORK/logs"
start=$SECONDS
if [ "$DRY" = 1 ]; then
  echo "dry run: no GPU commands" >"$WORK/nvidia-smi.txt"
else
  timeout 10 nvidia-smi >"$WORK/nvidia-smi.txt" 2>&1
fi

status=0
: >"$WORK/stages.tsv"
for s in "${STAGES[@]}"; do
  name=${s%%:*}
  budget=${s#*:}
  left=$((LIMIT_S - RESERVE_S - KILL_GRACE_S - (SECONDS - start)))
  limit=$budget
  [ "$DRY" = 1 ] && limit=${LMINI_GPU_SESSION_DRY_TIMEOUT:-3}
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$SECONDS
  skipped=0
  if [ "$limit" -lt 1 ]; then
    rc=125 skipped=1
    echo "skipped: no time left" >"$WORK/logs/$name.log"
  else
    sig=TERM
    case "$INTERRUPTIBLE" in *" $name "*) sig=INT ;; esac
    STAGE_LIMIT=$limit timeout -s "$sig" -k "$KILL_GRACE_S" "$limit" bash "$SELF" --stage "$name" \
      >"$WORK/logs/$name.log" 2>&1
    rc=$?
  fi
  took=$((SECONDS - t0))
  case $rc in 0) what=ok ;; 124 | 137) what="out of time ($limit s)" ;; *) what=failed ;; esac
  [ "$skipped" = 1 ] && what="skipped: no time left"
  [ "$rc" = 0 ] || status=1
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$budget" "$limit" "$took" "$rc" >>"$WORK/stages.tsv"
  echo "== $name: $what, rc=$rc, $took s (budget $budget s)"
  tail -n 3 "$WORK/logs/$name.log" | sed 's/^/   /'
done

# --- pack: session.tgz, auto_order.json, summary.json, summary.txt ---
dropped=""
pack() { tar -C "$WORK" -czf "$DEST/session.tgz" "$@" --exclude=stages.tsv . || echo "gpu_session: tar failed" >&2; }
pack
if [ "$(stat -c %s "$DEST/session.tgz")" -gt "$PACK_BYTES" ]; then
  dropped="*.ncu-rep"
  pack --exclude='*.ncu-rep'
fi
if [ "$(stat -c %s "$DEST/session.tgz")" -gt "$PACK_BYTES" ]; then
  dropped="$dropped *.png"
  pack --exclude='*.ncu-rep' --exclude='*.png'
fi
[ -f "$WORK/auto_order.json" ] && cp "$WORK/auto_order.json" "$DEST/auto_order.json"
"$PY" - "$WORK" "$DEST" "$LIMIT_S" "$((SECONDS - start))" "$status" "$DRY" "$dropped" \
  "$RESERVE_S" "$KILL_GRACE_S" "$MAX_FILES" "$MAX_BYTES" <<'EOF'
import json, sys
from pathlib import Path

work, dest, limit, took, status, dry, dropped, reserve, grace, max_files, max_bytes = sys.argv[1:]
stages = []
for line in (Path(work) / "stages.tsv").read_text().splitlines():
    name, budget, limit_s, secs, rc = line.split("\t")
    log = (Path(work) / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
    stages.append({"name": name, "budget_s": int(budget), "limit_s": int(limit_s), "seconds": int(secs),
                   "rc": int(rc), "timed_out": rc in ("124", "137"), "log_tail": log[-15:]})
doc = {"dry_run": dry == "1", "limit_s": int(limit), "reserve_s": int(reserve), "kill_grace_s": int(grace),
       "max_files": int(max_files), "max_bytes": int(max_bytes), "seconds": int(took), "status": int(status),
       "dropped_from_tgz": dropped.split(), "stages": stages}
Path(dest, "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
lines = [f"{s['name']:16s} rc={s['rc']:<4d} {s['seconds']:4d} s of {s['budget_s']} s" for s in stages]
lines.append(f"total {took} s of {limit} s; exit {status}" + (f"; dropped from session.tgz: {dropped}" if dropped else ""))
Path(dest, "summary.txt").write_text("\n".join(lines) + "\n")
EOF
nfiles=$(find "$DEST" -type f | wc -l)
nbytes=$(du -sb "$DEST" | cut -f1)
if [ "$nfiles" -gt "$MAX_FILES" ] || [ "$nbytes" -gt "$MAX_BYTES" ]; then
  echo "gpu_session: the results folder $DEST has $nfiles files, $nbytes bytes (limits $MAX_FILES, $MAX_BYTES)" >&2
  status=1
fi
echo "results: $DEST ($nfiles files, $nbytes bytes, $((SECONDS - start)) s)"
exit "$status"
