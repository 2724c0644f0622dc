"""The floating-point dtypes fastbert's Triton kernels take, and the launchers' tensor check.

Imports no Triton: the ops read :data:`TRITON_NAMES` to pick a measured table's entries.
"""

from __future__ import annotations

import torch

from fastbert.kernels import launch

TRITON_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
"""Every dtype the kernels take -> its name in Triton signatures, autotune keys and measured tables."""


def check_float_tensor(name: str, t, dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
    """TypeError unless ``t`` is a float16/bfloat16/float32 tensor (of ``dtype``, when given);
    ValueError unless it is on ``device`` (when given) and on a device the kernels run on."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in TRITON_NAMES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32 for the Triton kernels, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (like x), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (like x), got {t.device}")
    launch.check_device(name, t)
