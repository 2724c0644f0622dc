"""Test-session set-up shared by every test directory.

Without a GPU, Triton kernels run through its CPU interpreter, which must be switched on
before ``triton`` is first imported (hence here, the first conftest pytest loads).
With the interpreter on, automatic dispatch would send every op to Triton; outside
``tests/kernels`` (the kernels' own tests, and the encoder-on-Triton tests there) the
suite pins the plain-PyTorch reference unless a test or the caller sets
``FASTBERT_BACKEND`` itself. On a GPU nothing is pinned: every test runs the
automatic choice, i.e. the Triton kernels.
"""

import os
from pathlib import Path

import pytest
import torch

CPU_ONLY = not torch.cuda.is_available()
if CPU_ONLY:
    os.environ.setdefault("TRITON_INTERPRET", "1")

_KERNEL_TESTS = Path(__file__).parent / "kernels"
_USER_BACKEND = os.environ.get("FASTBERT_BACKEND")


@pytest.fixture(autouse=True)
def _reference_backend_outside_kernel_tests(request, monkeypatch):
    if CPU_ONLY and _USER_BACKEND is None and _KERNEL_TESTS not in Path(str(request.fspath)).parents:
        monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    yield


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests skip, with the reason, where there is no CUDA."""
    if CPU_ONLY:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
