"""When the encoder removes padding: detection of padding masks and the per-device policy.

A mask is a *padding mask* when every query row of every head sees the same set of keys
(a 2D ``(batch, seq)`` mask, or a 4D one built from it). Only then can the encoder run on
packed tokens without changing results (the outputs at padded positions become zeros).
"""

from __future__ import annotations

import torch

from fastbert.modules.validation import value_checks_enabled

UNPAD_MODES = (True, False, "auto")

# Padding fraction above which "auto" unpads, per device type. CPU: measured with
# `python benchmarks/unpad_threshold_cpu.py` (see its docstring for the result). CUDA: not
# yet measured on a GPU; until it is, any padding at all triggers unpadding, which is the
# choice that does not compute on padding.
AUTO_PADDING_THRESHOLD = {"cpu": 0.05, "cuda": 0.0}


def check_unpad_mode(mode) -> None:
    """ValueError unless ``mode`` is True, False or "auto"."""
    if mode not in UNPAD_MODES or (mode not in (True, False) and not isinstance(mode, str)):
        raise ValueError(f"unpad must be True, False or 'auto', got {mode!r}")


def padding_keep_mask(mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """``(batch, seq)`` bool of real tokens if ``mask`` (normalized 4D) is a padding mask, else None."""
    if mask is None or mask.dim() != 4:
        return None
    if mask.dtype == torch.bool:
        keep = mask
    else:
        keep = mask == 0
        if not bool(((mask == 0) | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
            return None  # a general additive bias, not a padding mask
    if keep.shape[1] != 1 or keep.shape[2] != 1:
        if not bool((keep == keep[:, :1, :1, :]).all()):
            return None
    return keep[:, 0, 0, :].expand(batch, -1)


def should_unpad(mode, keep: torch.Tensor | None) -> bool:
    """Whether to run on packed tokens for this batch, given the mode and the padding mask."""
    if keep is None or mode is False:
        return False
    if mode is True:
        return True
    if not value_checks_enabled():  # compiling or capturing: keep static shapes
        return False
    threshold = AUTO_PADDING_THRESHOLD.get(keep.device.type, 0.0)
    padding_fraction = 1.0 - keep.float().mean().item()
    return padding_fraction > threshold
