"""Every grid the API can produce fits the GPU's launch limits (axis x: 2^31 - 1 blocks, y and
z: 65,535), checked on the CPU from the kernels' own geometry functions: the Triton launch plans
(Python) and the CUDA ones (csrc/ops/*/kernel.cuh, built here with g++ against the host SIMT
layer). The largest video case, 2,048 frames x 32 heads, is 65,536 (batch, head) pairs: one
more than axis y takes, so the CUDA kernel puts them on axis x and the Triton launchers, which
keep them on y, launch over batch slices.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lmini_kernels.checks import MAX_GRID, check_grid
from lmini_kernels.ops.prefusion_attention.api import TRITON_MAX_OFFSET, _check_triton, max_element_offset

ROOT = Path(__file__).resolve().parents[2]
CUDA_INCLUDE = Path("/usr/local/cuda/include")
FRAMES, HEADS, HEAD_DIM = 2048, 32, 128  # long video through the 7B LLM's pre-fusion layers
LONG = (TRITON_MAX_OFFSET + 1) // (HEADS * HEAD_DIM)  # the longest q the Triton route indexes (524,288)

#: (B, Lq, Lk, Hq, Hkv): pre-fusion of 2,048 frames (one frame per sample), the largest video
#: batch; a single long sequence; GQA.
PREFUSION_SHAPES = [(FRAMES, 44, 621, HEADS, HEADS), (1, LONG, LONG, HEADS, 8), (FRAMES, 1, 1, 64, 8)]


def fits(grid) -> bool:
    return all(n <= limit for n, limit in zip(grid, MAX_GRID, strict=False))


@pytest.mark.parametrize("dtype", (torch.float16, torch.float32))
@pytest.mark.parametrize("shape", PREFUSION_SHAPES)
def test_triton_prefusion_grids_fit(shape, dtype):
    from lmini_kernels.ops.prefusion_attention.triton import backward_grids, forward_plan

    b, lq, lk, hq, hkv = shape
    for splits in (0, 1, 8):
        plan = forward_plan(b, lq, lk, hq, dtype, splits, torch.device("cpu"))
        assert plan["grids"] and all(fits(g) for g in plan["grids"].values()), plan["grids"]
    grids = backward_grids(b, lq, lk, hq, hkv, dtype)
    assert all(fits(g) for g in grids.values()), grids


def test_triton_refuses_offsets_past_int32():
    """The Triton route's only size bound is its 32-bit indexing: the largest element offset of
    q, k, v and the output (strides included), computed without allocating (meta tensors)."""
    q = torch.empty(1, LONG, HEADS, HEAD_DIM, device="meta")
    assert max_element_offset(q) == TRITON_MAX_OFFSET
    assert _check_triton(HEAD_DIM, max_offset=max_element_offset(q)) == []
    longer = torch.empty(1, LONG + 1, HEADS, HEAD_DIM, device="meta")
    assert "exceed int32" in _check_triton(HEAD_DIM, max_offset=max_element_offset(longer))[0]
    strided = torch.empty(2, 1024, 8, 2 * HEAD_DIM, device="meta")[..., :HEAD_DIM]
    assert max_element_offset(strided) == (2 * 1024 * 8 * 2 * HEAD_DIM - 1) - HEAD_DIM


def test_check_grid_names_kernel_axis_and_sizes():
    assert check_grid("k", (5, 2)) == (5, 2)
    with pytest.raises(ValueError, match=r"k: grid axis y needs 65536 blocks, more than the GPU's 65535"):
        check_grid("k", (1, 65536))
    with pytest.raises(ValueError, match="axis x"):
        check_grid("k", (2**31,))


@pytest.fixture(scope="module")
def cuda_geometry(tmp_path_factory):
    gxx = shutil.which("g++")
    assert gxx, "g++ is required to build the launch-geometry probe"
    assert (CUDA_INCLUDE / "cuda_fp16.h").exists(), f"CUDA headers not found in {CUDA_INCLUDE}"
    exe = tmp_path_factory.mktemp("geometry") / "launch_geometry"
    cmd = [gxx, "-std=c++20", "-O1", "-pthread", "-DLMINI_EMU", f"-I{ROOT / 'csrc' / 'include'}",
           f"-I{ROOT / 'csrc'}", f"-I{CUDA_INCLUDE}", str(ROOT / "tests" / "build" / "launch_geometry.cpp"),
           "-o", str(exe)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)

    def run(*args) -> list[tuple[tuple[int, int, int], bool]]:
        out = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, check=True, timeout=60)
        rows = [tuple(int(v) for v in line.split()) for line in out.stdout.splitlines()]
        return [(r[:3], bool(r[3])) for r in rows]

    return run


def test_cuda_grids_fit_the_largest_shapes(cuda_geometry):
    args = []
    for b, lq, _, hq, _ in PREFUSION_SHAPES:
        args += ["prefusion", b, lq, hq]
    args += ["compress", 4096, 1, 8, "compress", 1, 132, 16 * 16 * 8, "compress_merge", 4096, 8]
    args += ["row_softmax", FRAMES * HEADS * 44]
    for grid, ok in cuda_geometry(*args):
        assert fits(grid) and ok, grid


def test_cuda_launcher_refuses_what_a_gpu_would(cuda_geometry):
    """The C++ check (grid_error) agrees with the limits: one past them is refused."""
    (grid, ok), (grid2, ok2) = cuda_geometry("row_softmax", 2**31, "compress", 1, 1, 8 * 65536)
    assert grid[0] == 2**31 and not ok
    assert grid2[1] == 65536 and not ok2
