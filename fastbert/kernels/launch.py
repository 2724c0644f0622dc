"""Helpers shared by the kernel launchers: interpreter detection, architecture family,
output allocation (NaN-poisoned on request) and persistent-grid sizing.

Registers no kernel; the build gate imports it like every module here, harmlessly.
"""

from __future__ import annotations

import functools
import os

import torch

POISON_ENV = "FASTBERT_POISON_OUTPUTS"


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1`` runs Triton kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def arch(device: torch.device) -> int:
    """Config family for ``device``: 90 on Hopper, 80 (the conservative one) elsewhere; 0 in the interpreter."""
    if interpreting():
        return 0
    return 90 if torch.cuda.get_device_capability(device)[0] == 9 else 80


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation; NaN-filled when ``FASTBERT_POISON_OUTPUTS=1`` so unwritten elements show."""
    if os.environ.get(POISON_ENV, "0") not in ("", "0"):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def persistent_programs(device: torch.device, work_items: int, per_sm: int = 4, interpreter: int = 3) -> int:
    """Number of programs for a grid-stride kernel over ``work_items`` items (at least 1)."""
    if interpreting() or device.type != "cuda":
        cap = interpreter  # few programs: each one is slow in the interpreter
    else:
        cap = per_sm * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(cap, work_items))


def check_device(name: str, t: torch.Tensor) -> None:
    """ValueError unless ``t`` is on CUDA (or the interpreter runs kernels on the CPU)."""
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(f"{name} must be a CUDA tensor (or set TRITON_INTERPRET=1), got device {t.device}")
