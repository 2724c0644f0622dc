"""Attention-mask normalization: the masks users pass -> the form ``ops.attention`` takes."""

from __future__ import annotations

from typing import Sequence

import torch


def normalize_attention_mask(
    mask: torch.Tensor | None, batch: int, seq: int, num_heads: int | Sequence[int] | None = None
) -> torch.Tensor | None:
    """Turn a user mask into a 4D mask broadcastable to ``(batch, heads, seq, seq)``.

    - 2D ``(batch, seq)`` padding mask, any dtype, nonzero = real token -> bool ``(batch, 1, 1, seq)``.
    - 3D ``(batch, q, k)`` -> same rules as 4D with a head axis inserted.
    - 4D: bool (True = attend) and integer (nonzero = attend) become bool; floating
      masks are additive (0 = attend, large negative or -inf = masked) and kept as is.
    Raises ValueError naming the expected shape when the mask does not fit, including a
    head dimension other than 1 or ``num_heads`` when given. ``num_heads`` may list the
    head counts of the layers (after head pruning they can differ: only 1 fits them all).
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() == 2:
        if tuple(mask.shape) != (batch, seq):
            raise ValueError(f"attention_mask of shape {tuple(mask.shape)} must be (batch, seq) = {(batch, seq)}")
        return (mask != 0)[:, None, None, :]
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4:
        raise ValueError(f"attention_mask must be 2D (batch, seq), 3D or 4D, got shape {tuple(mask.shape)}")
    b, h, q, k = mask.shape
    if b not in (1, batch) or q not in (1, seq) or k != seq:
        raise ValueError(
            f"attention_mask of shape {tuple(mask.shape)} must broadcast to (batch, heads, seq, seq) with "
            f"batch={batch}, seq={seq}"
        )
    if num_heads is not None and h != 1:
        _check_head_dim(h, (num_heads,) if isinstance(num_heads, int) else tuple(num_heads))
    if mask.dtype == torch.bool or mask.is_floating_point():
        return mask
    return mask != 0


def _check_head_dim(h: int, counts: tuple[int, ...]) -> None:
    if len(set(counts)) > 1:
        raise ValueError(
            f"attention_mask's head dimension ({h}) must be 1: the layers have different head counts "
            f"{sorted(set(counts))} after head pruning"
        )
    if h != counts[0]:
        raise ValueError(f"attention_mask's head dimension ({h}) must be 1 or num_attention_heads={counts[0]}")
