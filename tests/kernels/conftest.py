"""Kernel tests: Triton's CPU interpreter where there is no GPU, NaN-poisoned outputs.

``tests/conftest.py`` switches the interpreter on for the session (it must be on
before ``triton`` is first imported: ``triton.jit`` reads it when a function is
decorated); this file makes sure of it for runs that load it first, and has the
launchers fill their outputs with NaN so an element a kernel fails to write shows.
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise pytest.UsageError("triton was imported before TRITON_INTERPRET=1 was set; set it in the environment")
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _poison_kernel_outputs(monkeypatch):
    monkeypatch.setenv("FASTBERT_POISON_OUTPUTS", "1")
