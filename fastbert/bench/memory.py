"""Peak memory of one variant: CUDA allocator statistics on a GPU, not measured on the CPU."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

CUDA_KIND = "cuda: model weights + torch.cuda.max_memory_allocated() growth during build and warm-up forwards"
CPU_KIND = "not measured on the CPU (null)"


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the module's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class PeakMemory:
    """Result holder for :func:`track_peak`: ``bytes`` (None on the CPU) and ``kind``."""

    def __init__(self, kind: str):
        self.kind = kind
        self.bytes: int | None = None


@contextlib.contextmanager
def track_peak(module: nn.Module, device) -> Iterator[PeakMemory]:
    """Measure the peak memory of the work done inside the block.

    On a GPU: this module's weights plus how far ``torch.cuda.max_memory_allocated``
    rose above what was allocated when the block began, i.e. what this variant would need
    alone (the other variants' models, resident at the same time, are not counted).
    """
    device = torch.device(device)
    if device.type != "cuda":
        yield PeakMemory(CPU_KIND)
        return
    result = PeakMemory(CUDA_KIND)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield result
    finally:
        torch.cuda.synchronize(device)
        result.bytes = weight_bytes(module) + max(0, torch.cuda.max_memory_allocated(device) - base)
