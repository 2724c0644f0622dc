"""When input checks may read tensor values (and so synchronize with the GPU)."""

from __future__ import annotations

import os

import torch


def value_checks_enabled() -> bool:
    """Whether value checks (index ranges, cu_seqlens offsets) run: not while tracing/compiling
    or capturing a CUDA graph, and not when ``FASTBERT_CHECK_INPUTS=0`` (latency-critical serving)."""
    if os.environ.get("FASTBERT_CHECK_INPUTS", "1") == "0":
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False
    return True


def values_readable(tensor: torch.Tensor) -> bool:
    """Whether this call may read ``tensor``'s values on the host: value checks are enabled
    and the tensor has values (not on the ``meta`` device)."""
    return tensor.device.type != "meta" and value_checks_enabled()
