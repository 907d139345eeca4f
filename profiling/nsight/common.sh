# Shared by the Nsight scripts: fail in one clear line when there is no GPU or no tool.
# Output goes to $LMINI_NSIGHT_OUT (default: profiling/results/nsight under the repository root).

LMINI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LMINI_NSIGHT_OUT="${LMINI_NSIGHT_OUT:-$LMINI_ROOT/profiling/results/nsight}"
PYTHON="${PYTHON:-python}"

lmini_require_gpu() {  # $1: script name
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        echo "$1: no NVIDIA GPU found (nvidia-smi -L lists none); Nsight profiling needs a CUDA GPU" >&2
        exit 2
    fi
}

lmini_require_tool() {  # $1: script name, $2: tool
    if ! command -v "$2" >/dev/null 2>&1; then
        echo "$1: '$2' not found on PATH; install Nsight ($2 ships with the CUDA toolkit or the Nsight download)" >&2
        exit 3
    fi
}
