"""benchmarks/gpu_session.sh: refuses cleanly where there is no GPU; its dry run (stand-ins for
the GPU commands) checks the structure: the stage budgets fit 9 minutes, a failing or hanging
stage does not stop the others, and the results folder stays within its limits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
STAGES = ["build", "info", "gpu_tests", "bench_compress", "bench_prefusion", "bench_family", "auto_order", "ncu",
          "sanitizer", "memory"]  # fmt: skip


def _gpu_present() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def _pids_running(argv: list[str]) -> list[int]:
    """Pids of the processes whose command line is ``argv`` (read from /proc)."""
    want = ("\0".join(argv) + "\0").encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes() == want:
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


def dry_run(out: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the script's dry run into ``out``; return the process and summary.json."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("LMINI_GPU_SESSION_") and k != "OUT"}
    full |= {"LMINI_GPU_SESSION_DRY": "1", "LMINI_GPU_SESSION_OUT": str(out), "LMINI_GPU_SESSION_DRY_TIMEOUT": "2"}
    full |= env
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full, timeout=120)
    summary = out / "summary.json"
    assert summary.is_file(), f"no summary.json:\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(summary.read_text())


def check_folder(out: Path, doc: dict) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 == doc["max_files"], [p.name for p in files]
    assert sum(p.stat().st_size for p in files) < 16 * 1024 * 1024 == doc["max_bytes"]
    assert {p.name for p in files} >= {"summary.json", "summary.txt", "session.tgz"}


def test_gpu_session_without_gpu_prints_one_line_and_exits_2():
    if _gpu_present():
        pytest.skip("a GPU is present: the script would run the full session")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMINI_GPU_SESSION_")}
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "no NVIDIA GPU visible" in out.stderr


def test_dry_run_budgets_fit_nine_minutes_and_failures_do_not_stop_the_rest(tmp_path):
    out = tmp_path / "results"
    proc, doc = dry_run(
        out, LMINI_GPU_SESSION_DRY_FAIL="gpu_tests,bench_prefusion", LMINI_GPU_SESSION_DRY_HANG="ncu,auto_order"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    stages = {s["name"]: s for s in doc["stages"]}
    assert [s["name"] for s in doc["stages"]] == STAGES
    # the budgets, with each stage's kill grace and the packing reserve, fit the 9 minutes
    assert doc["limit_s"] == 540
    assert sum(s["budget_s"] + doc["kill_grace_s"] for s in doc["stages"]) + doc["reserve_s"] <= 540
    assert all(s["budget_s"] > 0 for s in doc["stages"])
    # the failing stages fail, the hanging one is stopped by its (dry-run) budget, the rest run
    assert stages["gpu_tests"]["rc"] == 1 and stages["bench_prefusion"]["rc"] == 1
    for n in ("ncu", "auto_order"):
        assert stages[n]["timed_out"] and stages[n]["rc"] == 124 and stages[n]["seconds"] <= 5, stages[n]
    # auto_order is stopped with SIGINT (it then writes what it measured), ncu with SIGTERM
    assert stages["auto_order"]["log_tail"][-1] == "dry run: auto_order got SIGINT"
    assert stages["ncu"]["log_tail"][-1] == "dry run: ncu hangs"
    others = [n for n in STAGES if n not in ("gpu_tests", "bench_prefusion", "ncu", "auto_order")]
    assert all(stages[n]["rc"] == 0 and f"stand-in for stage {n}" in stages[n]["log_tail"][0] for n in others)
    assert doc["status"] == 1 and doc["dry_run"] and doc["seconds"] < 60
    check_folder(out, doc)
    with tarfile.open(out / "session.tgz") as tar:
        names = set(tar.getnames())
    assert {f"./logs/{n}.log" for n in STAGES} <= names
    assert "./bench/bench_compress.json" in names
    text = (out / "summary.txt").read_text()
    assert "gpu_tests        rc=1" in text and "ncu              rc=124" in text and "exit 1" in text


def test_dry_run_results_folder_has_the_auto_order(tmp_path):
    out = tmp_path / "results"
    proc, doc = dry_run(out)
    assert proc.returncode == 0 and doc["status"] == 0, proc.stdout + proc.stderr
    assert json.loads((out / "auto_order.json").read_text()) == {"ops": {}}
    with tarfile.open(out / "session.tgz") as tar:
        assert "./auto_order.json" in tar.getnames()
    check_folder(out, doc)


def test_a_stopped_stage_leaves_no_capped_run_behind(tmp_path):
    """ncu and compute-sanitizer runs have their own timeouts (own process groups); when the
    stage's budget stops the stage, they stop too instead of overlapping the next stage."""
    sleep = str(500 + os.getpid() % 97)  # a duration no other process here sleeps
    proc, doc = dry_run(
        tmp_path / "results", LMINI_GPU_SESSION_DRY_HANG="ncu,sanitizer", LMINI_GPU_SESSION_DRY_SLEEP=sleep
    )
    stages = {s["name"]: s for s in doc["stages"]}
    assert stages["ncu"]["timed_out"] and stages["sanitizer"]["timed_out"] and stages["memory"]["rc"] == 0
    for _ in range(20):  # the TERM passed on reaches the run at once; allow a loaded machine a moment
        left = _pids_running(["sleep", sleep])
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"capped runs still running: pids {left}"


def test_dry_run_keeps_the_folder_under_16_mib(tmp_path):
    """A 20 MiB ncu report does not fit: session.tgz is packed again without it, and says so."""
    out = tmp_path / "results"
    proc, doc = dry_run(out, LMINI_GPU_SESSION_DRY_BIG="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["status"] == 0 and all(s["rc"] == 0 for s in doc["stages"])
    assert doc["dropped_from_tgz"] == ["*.ncu-rep"]
    check_folder(out, doc)
    with tarfile.open(out / "session.tgz") as tar:
        names = set(tar.getnames())
    assert "./nsight/ncu/row_softmax_cuda.txt" in names
    assert not any(n.endswith(".ncu-rep") for n in names)


def test_dry_run_flag_is_checked(tmp_path):
    env = dict(os.environ, LMINI_GPU_SESSION_DRY="maybe", LMINI_GPU_SESSION_OUT=str(tmp_path))
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "LMINI_GPU_SESSION_DRY=maybe" in out.stderr
    assert not any(tmp_path.iterdir())


def test_the_session_commands_parse(tmp_path):
    """Every lmini_tools command the GPU stages run is accepted by its parser (a typo would
    waste the GPU session)."""
    import re
    import shlex

    from lmini_tools import cli
    from lmini_tools.bench import auto_order
    from lmini_tools.bench import cli as bench_cli
    from lmini_tools.profiling import cli as profile_cli

    found = re.findall(r'"\$PY" -m (lmini_tools[\w.]*) ([^\n]*?)\s*;;', SCRIPT.read_text())
    assert len(found) == 5, found
    for module, args in found:
        argv = shlex.split(args.replace("$WORK", str(tmp_path)))
        if module == "lmini_tools.bench.auto_order":
            auto_order.build_parser().parse_args(argv)
        elif argv[0] == "bench":
            bench_cli.build_parser().parse_args(argv[1:])
        elif argv[0] == "profile":
            profile_cli.build_parser().parse_args(argv[1:])
        else:
            assert argv[0] == "info", argv
            cli.build_parser().parse_args(argv)
