#!/usr/bin/env bash
# Nsight Compute on each of our kernels, with the sections a kernel engineer reads first:
# SpeedOfLight, MemoryWorkloadAnalysis, LaunchStats, Occupancy.
#
#   profiling/nsight/ncu_kernels.sh [op ...]      ops: compress prefusion_attention row_softmax (default: all)
#   LMINI_NCU_BACKENDS="triton cuda"              which backends to profile (default both)
#
# Each (op, backend) runs profiling/nsight/run_kernels.py on the op's LLaVA-Mini shape; ncu
# profiles one launch of the op's kernels (name filter below) after two warm-up calls, with the
# GPU's clocks left as they are (--clock-control none: on the lent H200 machines ncu was seen
# reading counters that way; its default, locking the clocks, was not tried there).
# Writes $LMINI_NSIGHT_OUT/ncu/<op>_<backend>.ncu-rep and .txt (default profiling/results/nsight/ncu/).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
lmini_require_gpu ncu_kernels.sh
lmini_require_tool ncu_kernels.sh ncu

# kernel-name filters (Triton kernels keep their Python names, CUDA kernels their C++ names)
declare -A FILTER=(
    [compress]="regex:compress_folded"
    [prefusion_attention]="regex:prefusion_attn|prefusion_attention"
    [row_softmax]="regex:row_softmax"
)
ops=("$@")
[ ${#ops[@]} -eq 0 ] && ops=(compress prefusion_attention row_softmax)
out="$LMINI_NSIGHT_OUT/ncu"
mkdir -p "$out"
cd "$LMINI_ROOT"
for op in "${ops[@]}"; do
    if [ -z "${FILTER[$op]+x}" ]; then
        echo "ncu_kernels.sh: unknown op '$op' (expected one of: ${!FILTER[*]})" >&2
        exit 4
    fi
    for backend in ${LMINI_NCU_BACKENDS:-triton cuda}; do
        ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
            --kernel-name "${FILTER[$op]}" --launch-skip 2 --launch-count 1 \
            --force-overwrite --export "$out/${op}_${backend}" \
            "$PYTHON" profiling/nsight/run_kernels.py --op "$op" --backend "$backend" --iters 3
        ncu --import "$out/${op}_${backend}.ncu-rep" --print-summary none > "$out/${op}_${backend}.txt"
        echo "ncu_kernels.sh: $op/$backend -> $out/${op}_${backend}.ncu-rep"
    done
done
