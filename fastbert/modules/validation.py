"""Input checks that read tensor values (and so synchronize with the GPU)."""

from __future__ import annotations

import os

import torch


def value_checks_enabled() -> bool:
    """Whether value checks (index ranges) run: not while tracing/compiling or capturing a CUDA graph,
    and not when ``FASTBERT_CHECK_INPUTS=0`` (for latency-critical serving)."""
    if os.environ.get("FASTBERT_CHECK_INPUTS", "1") == "0":
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False
    return True


def check_index_range(name: str, ids: torch.Tensor, size: int, table: str) -> None:
    """ValueError if any entry of ``ids`` is outside ``[0, size)``."""
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains {bad}, outside {table}: expected values in [0, {size})")
