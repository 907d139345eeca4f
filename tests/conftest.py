"""Test-suite set-up.

The GPU kernels run here on CPU tensors through two verification routes, switched on before
anything imports Triton (the interpreter is chosen when a kernel is decorated):

* ``TRITON_INTERPRET=1``: ``backend="triton"`` runs Triton kernels through the interpreter;
* ``LMINI_CUDA_EMULATE=1``: ``backend="cuda"`` runs the CUDA kernel bodies through the host
  SIMT layer (``lmini_kernels._emu``).

On a machine with a GPU, set ``LMINI_TEST_GPU=1`` to leave both off and run the ``gpu`` tests
on the device instead.
"""

from __future__ import annotations

import os

if os.environ.get("LMINI_TEST_GPU", "0") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["LMINI_CUDA_EMULATE"] = "1"
os.environ["LMINI_POISON_OUTPUTS"] = "1"  # outputs start as NaN: unwritten elements fail

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and os.environ.get("LMINI_TEST_GPU", "0") == "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and LMINI_TEST_GPU=1; its CPU twin runs instead")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_seed():
    """A different random seed every test and every run (printed on failure by pytest's -ra)."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    yield seed


# Property-based tests (hypothesis): a fixed example budget keeps CI's time bounded; no example
# database is written; each run draws fresh examples (a failure prints its reproducing seed).
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "lmini",
        max_examples=int(os.environ.get("LMINI_HYPOTHESIS_EXAMPLES", "20")),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )
    settings.load_profile("lmini")
except ImportError:  # hypothesis is a dev requirement (.ci/requirements.txt); tests importing it say so
    pass
