#!/usr/bin/env bash
# Nsight Systems profile of the end-to-end LLaVA-Mini pipeline with lmini NVTX ranges.
#
#   profiling/nsight/nsys_pipeline.sh [run_pipeline.py options, e.g. --config llava-mini-vicuna-7b --frames 64]
#
# Writes $LMINI_NSIGHT_OUT/pipeline.nsys-rep (default profiling/results/nsight/) and
# pipeline_stats.txt (NVTX range and GPU kernel summaries). Only the profiled iterations are
# captured (cudaProfilerStart/Stop around them, warm-up excluded). Open the report in nsys-ui;
# filter the NVTX rows by "lmini": lmini.stage.* (vit, compression, projector, prefusion.i,
# llm.i, lm_head), lmini.pipeline.* (encode, prefill, decode) and lmini::<op> (public ops).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
lmini_require_gpu nsys_pipeline.sh
lmini_require_tool nsys_pipeline.sh nsys
mkdir -p "$LMINI_NSIGHT_OUT"
cd "$LMINI_ROOT"
LMINI_NVTX=1 nsys profile \
    --trace=cuda,nvtx,osrt,cublas \
    --capture-range=cudaProfilerApi --capture-range-end=stop \
    --cuda-memory-usage=true \
    --force-overwrite=true \
    --output "$LMINI_NSIGHT_OUT/pipeline" \
    "$PYTHON" profiling/nsight/run_pipeline.py "$@"
nsys stats --force-export=true --report nvtx_sum,cuda_gpu_kern_sum,cuda_gpu_mem_time_sum --format table \
    "$LMINI_NSIGHT_OUT/pipeline.nsys-rep" | tee "$LMINI_NSIGHT_OUT/pipeline_stats.txt"
echo "nsys_pipeline.sh: wrote $LMINI_NSIGHT_OUT/pipeline.nsys-rep and pipeline_stats.txt"
