"""When the host may read tensor values (and so synchronize with the GPU), and when input checks do."""

from __future__ import annotations

import os

import torch


def host_reads_possible(tensor: torch.Tensor | None = None) -> bool:
    """Whether the host can read tensor values now: not while tracing/compiling or capturing
    a CUDA graph (the values do not exist yet), and ``tensor``, when given, is not on ``meta``.
    What a forward *needs* to read (the unpad decision) asks this; value checks also ask
    :func:`value_checks_enabled`."""
    if tensor is not None and tensor.device.type == "meta":
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def value_checks_enabled() -> bool:
    """Whether value checks (index ranges, cu_seqlens offsets) run: when the host can read
    (:func:`host_reads_possible`) and not with ``FASTBERT_CHECK_INPUTS=0`` (latency-critical serving)."""
    return os.environ.get("FASTBERT_CHECK_INPUTS", "1") != "0" and host_reads_possible()


def values_readable(tensor: torch.Tensor) -> bool:
    """Whether a value check may read ``tensor``: value checks are enabled and the tensor has
    values (not on the ``meta`` device)."""
    return tensor.device.type != "meta" and value_checks_enabled()
