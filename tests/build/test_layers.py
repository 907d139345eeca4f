"""The layers point down only: the kernel library never imports the reference model or the
tools, and the model never imports the tools (README, "Architecture").

Checked twice: statically (every import statement in every file of a layer, lazy imports inside
functions included) and at run time (importing every module of the library loads neither the
model nor the tools).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: layer -> (its source folder, the top-level packages it must never import)
LAYERS = {
    "lmini_kernels": (ROOT / "lmini_kernels", ("llava_mini", "lmini_tools")),
    "llava_mini": (ROOT / "python" / "llava_mini", ("lmini_tools",)),
}


def imported_modules(path: Path, *, at_import_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in a Python file, relative imports resolved to absolute;
    ``at_import_only``: only the module-level statements (what importing the file runs)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in tree.body if at_import_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def back_edges(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for line, mod in imported_modules(path):
            if mod.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(folder.parent)}:{line} imports {mod}")
    return found


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_no_import_points_up(layer):
    folder, forbidden = LAYERS[layer]
    assert back_edges(folder, forbidden) == []


def test_the_static_check_sees_lazy_imports(tmp_path):
    """The checker itself: a lazy import inside a function is a back edge too."""
    (tmp_path / "m.py").write_text("def f():\n    from llava_mini import LlavaMini\n    import lmini_tools.cli\n")
    assert len(back_edges(tmp_path, ("llava_mini", "lmini_tools"))) == 2


def python_lines(code: str) -> list[str]:
    """The stdout lines of ``code`` run in a fresh interpreter (a clean sys.modules)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_importing_the_library_loads_neither_model_nor_tools():
    code = (
        "import pkgutil, importlib, sys, lmini_kernels\n"
        "for m in pkgutil.walk_packages(lmini_kernels.__path__, 'lmini_kernels.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'llava_mini', 'lmini_tools'}))\n"
    )
    assert python_lines(code)[-1] == "[]"


def test_only_kernel_files_import_triton_at_import_time():
    """Triton is imported by the kernel files (ops/<op>/triton.py) alone, so importing the
    library (and registering every op) needs no Triton and compiles nothing."""
    folder = LAYERS["lmini_kernels"][0]
    offenders = [
        str(p.relative_to(ROOT))
        for p in sorted(folder.rglob("*.py"))
        if p.name != "triton.py"
        and any(m.split(".")[0] == "triton" for _, m in imported_modules(p, at_import_only=True))
    ]
    assert offenders == []


def test_triton_ops_are_registered_at_import():
    """Every Triton torch.library op exists right after ``import lmini_kernels`` (so the first
    call may happen inside torch.compile tracing), before any kernel file is imported."""
    code = (
        "import sys, torch, lmini_kernels\n"
        "ops = ['row_softmax_triton', 'compress_folded_triton', 'compress_folded_triton_bwd',\n"
        "       'prefusion_attention_triton', 'prefusion_attention_triton_bwd']\n"
        "print([o for o in ops if not hasattr(torch.ops.lmini, o)])\n"
        "print(sorted(m for m in sys.modules if m.startswith('lmini_kernels.ops.') and m.endswith('.triton')))\n"
    )
    missing, kernel_modules = python_lines(code)[-2:]
    assert missing == "[]"
    assert kernel_modules == "[]"
