"""Helpers shared by the kernel launchers: interpreter detection, architecture family,
which architectures a kernel family runs on, output allocation (NaN-poisoned on
request) and persistent-grid sizing.

Registers no kernel; the build gate imports it like every module here, harmlessly.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

POISON_ENV = "FASTBERT_POISON_OUTPUTS"


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1`` runs Triton kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


OLDEST_ARCH = 75
"""The oldest architecture the build gate compiles for (sm_75, T4)."""
TENSOR_CORE_ARCH = 80
"""From sm_80 on Triton lowers ``tl.dot`` to tensor-core instructions; on sm_75 (both the
pinned Triton and 3.6) it emits FMA loops, slower than cuBLAS and spilling at our tiles."""
BF16_ARCH = 80
"""bfloat16 arithmetic needs sm_80 (Ampere) or newer."""


def capability(device: torch.device) -> int:
    """Compute capability of a CUDA device as one number, ``major * 10 + minor`` (90 on H100)."""
    props = torch.cuda.get_device_properties(device)  # constant-folded by torch.compile, unlike get_device_capability
    return props.major * 10 + props.minor


def arch(device: torch.device) -> int:
    """Config family for ``device``: 90 on Hopper, 80 elsewhere
    (:func:`fastbert.kernels.registry.config_family`); 0 in the interpreter."""
    if interpreting():
        return 0
    from fastbert.kernels import registry

    return registry.config_family(capability(device))


def unsupported_reason(arch: int, module: str, *, bf16: bool = False) -> str | None:
    """Why the kernels of ``module`` (``"fastbert.kernels.attention"`` ...) cannot run on CUDA
    architecture ``arch`` (``major * 10 + minor``), in ``bfloat16`` when ``bf16``; None
    when they can. The build gate compiles exactly the combinations this allows, and
    dispatch runs the PyTorch reference for the others."""
    if arch < OLDEST_ARCH:
        return f"sm_{arch} is older than sm_{OLDEST_ARCH}, the oldest architecture fastbert's kernels are built for"
    from fastbert.kernels import registry

    importlib.import_module(module)  # registers its kernels
    if arch < TENSOR_CORE_ARCH and registry.uses_matrix_instructions(module):
        return f"Triton has no tensor-core matmul on sm_{arch} (its dots become FMA loops)"
    if bf16 and arch < BF16_ARCH:
        return f"bfloat16 needs sm_{BF16_ARCH} or newer (this GPU is sm_{arch})"
    return None


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
