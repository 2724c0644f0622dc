"""Shared setup of the pytest-benchmark suites (``pytest benchmarks --benchmark-only``).

Not collected by the main test command (pyproject's ``testpaths = ["tests"]``). On a GPU
the shapes are BERT-base's (batch 32 x 128 tokens, hidden 768, fp16); on the CPU they are
small so the suites finish in seconds. Every timed call synchronizes the GPU, since
pytest-benchmark times with a wall clock. Compare runs with
``pytest benchmarks --benchmark-only --benchmark-autosave`` then ``--benchmark-compare``.
"""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = {
    "cuda": {"batch": 32, "seq": 128, "hidden": 768, "heads": 12, "inter": 3072, "vocab": 30522, "dtype": torch.float16,
             "arch": "bert-base", "rounds": 30, "warmup": 5},
    "cpu": {"batch": 2, "seq": 64, "hidden": 128, "heads": 2, "inter": 512, "vocab": 1000, "dtype": torch.float32,
            "arch": "bert-tiny", "rounds": 5, "warmup": 1},
}
# Backends each op is timed with: on a GPU the Triton path ("auto") and the plain-PyTorch
# reference ("torch") side by side; on the CPU both are the reference, so only "auto".
BACKENDS = ["auto", "torch"] if DEVICE == "cuda" else ["auto"]


@pytest.fixture
def shape() -> dict:
    """Sizes and dtype of this machine's benchmark shapes."""
    return dict(SHAPES[DEVICE])


@pytest.fixture
def device() -> torch.device:
    """The device the benchmarks run on."""
    return torch.device(DEVICE)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """fastbert's op backend for one benchmark, forced through FASTBERT_BACKEND
    (``auto`` = per-call choice: Triton on a GPU)."""
    monkeypatch.setenv("FASTBERT_BACKEND", request.param)
    return request.param


@pytest.fixture
def timed(benchmark, shape):
    """``timed(fn)``: benchmark ``fn()`` (synchronized on a GPU) with this machine's rounds."""

    def run(fn):
        def call():
            out = fn()
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            return out

        benchmark.extra_info.update(device=DEVICE, gpu=torch.cuda.get_device_name() if DEVICE == "cuda" else None,
                                    dtype=str(shape["dtype"]), rounds=shape["rounds"])
        rounds = int(os.environ.get("FASTBERT_BENCH_ROUNDS", shape["rounds"]))
        return benchmark.pedantic(call, rounds=rounds, warmup_rounds=shape["warmup"], iterations=1)

    return run
