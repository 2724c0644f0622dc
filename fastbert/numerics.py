"""How fastbert's outputs are held against a reference: the dtypes, the reference's dtype,
the error measure and the targets. ``fastbert check`` and ``fastbert bench`` both use it.

The reference is the Hugging Face model itself, run in float64 on the CPU (float32 on a
GPU); fastbert runs in the dtype under test. Errors are measured on real (non-padded)
tokens in float64: ``rel = ||out - ref|| / ||ref||`` and the largest absolute difference.
Targets (docs/ARCHITECTURE.md, Numerics): float32 < 1e-5 relative, float16/bfloat16 < 1e-2;
NaN never passes.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""The dtypes fastbert is checked and measured in, by their full names."""
DTYPE_ALIASES = {
    "fp32": "float32", "float32": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}  # fmt: skip
TARGETS = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
"""Largest relative error that passes, per dtype under test."""


def canonical_dtype(name: str) -> str:
    """``float32``/``float16``/``bfloat16`` for a dtype name or alias; ValueError otherwise."""
    key = name.strip().lower()
    if key not in DTYPE_ALIASES:
        raise ValueError(f"dtype must be one of fp32, fp16, bf16 (or float32, float16, bfloat16), got {name!r}")
    return DTYPE_ALIASES[key]


def reference_dtype(device) -> torch.dtype:
    """The dtype the HF reference runs in on ``device``: float64 on the CPU, float32 on a GPU."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def compare(out: torch.Tensor, ref: torch.Tensor, token_mask: torch.Tensor | None) -> tuple[float, float]:
    """(max abs, relative norm error) of ``out`` vs ``ref`` over real tokens, in float64."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if token_mask is not None and out.dim() == 3:
        keep = token_mask.bool().cpu()
        out, ref = out[keep], ref[keep]
    diff = out - ref
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    denom = ref.norm().item()
    rel = diff.norm().item() / denom if denom > 0 else diff.norm().item()
    return max_abs, rel
