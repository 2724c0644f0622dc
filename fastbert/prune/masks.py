"""Pruning masks for one weight matrix, per pattern, chosen by magnitude scores.

Each function takes a score matrix (``|w|`` for magnitude pruning) and a sparsity in
[0, 1) and returns a bool keep-mask of the same shape.
"""

from __future__ import annotations

import torch

PATTERNS = ("unstructured", "block", "2:4", "heads", "neurons")
BLOCK_SIZES = (16, 32, 64)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the largest ``(1 - sparsity)`` fraction of each row (the same count per row)."""
    n_prune = int(round(sparsity * scores.shape[1]))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune:
        keep.scatter_(1, torch.topk(scores, n_prune, dim=1, largest=False).indices, False)
    return keep


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the largest ``(1 - sparsity)`` fraction of entries."""
    n_prune = int(round(sparsity * scores.numel()))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune:
        idx = torch.topk(scores.flatten(), n_prune, largest=False).indices
        keep.view(-1)[idx] = False
    return keep


def block_scores(scores: torch.Tensor, block: int) -> torch.Tensor:
    """Sum of scores per ``block x block`` tile (edge tiles are partial)."""
    rows, cols = scores.shape
    pad_r, pad_c = (-rows) % block, (-cols) % block
    padded = torch.nn.functional.pad(scores, (0, pad_c, 0, pad_r))
    tiles = padded.view(padded.shape[0] // block, block, padded.shape[1] // block, block)
    return tiles.sum(dim=(1, 3))


def expand_blocks(block_keep: torch.Tensor, block: int, shape) -> torch.Tensor:
    """Per-block keep flags -> element mask of ``shape``."""
    full = block_keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return full[: shape[0], : shape[1]].contiguous()


def block_mask(scores: torch.Tensor, sparsity: float, block: int) -> torch.Tensor:
    """Remove whole ``block x block`` tiles with the smallest total score."""
    if block not in BLOCK_SIZES:
        raise ValueError(f"block size must be one of {BLOCK_SIZES}, got {block}")
    return expand_blocks(unstructured_mask(block_scores(scores, block), sparsity), block, scores.shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Semi-structured N:M: in every group of ``m`` consecutive inputs keep the ``n`` largest."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{n}:{m} sparsity needs in_features divisible by {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    top = groups.topk(n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.view(rows, cols)


def two_four_mask(scores: torch.Tensor) -> torch.Tensor:
    """Semi-structured 2:4: in every group of 4 consecutive inputs keep the 2 largest (50 %)."""
    return nm_mask(scores, 2, 4)
