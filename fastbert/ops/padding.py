"""Padding removal and restoration: (batch, seq, ...) <-> packed (tokens, ...) with cu_seqlens.

``unpad(x, keep)`` gathers the real tokens of a padded batch into one packed tensor and
returns what :func:`pad` needs to scatter them back. ``cu_seqlens`` (int32, length
``batch + 1``) holds the cumulative sequence lengths: sequence ``b`` is packed rows
``cu_seqlens[b]:cu_seqlens[b+1]``. Tokens keep their order, so left padding and holes
in the mask work too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastbert.ops import dispatch


class Unpadded(NamedTuple):
    """A packed batch and what is needed to restore its padded shape."""

    packed: torch.Tensor  # (tokens, ...)
    indices: torch.Tensor  # (tokens,) int64: flat positions in (batch * seq)
    cu_seqlens: torch.Tensor  # (batch + 1,) int32
    max_seqlen: int
    batch: int
    seq: int


def unpad(x: torch.Tensor, keep: torch.Tensor) -> Unpadded:
    """Pack the rows of ``x`` (``(batch, seq, ...)``) where ``keep`` (``(batch, seq)`` bool) is True."""
    if keep.dtype != torch.bool or keep.shape != x.shape[:2]:
        raise ValueError(f"keep must be a bool tensor of shape {tuple(x.shape[:2])}, got {keep.dtype} {tuple(keep.shape)}")
    lengths = keep.sum(dim=1, dtype=torch.int32)
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    indices = torch.nonzero(keep.reshape(-1), as_tuple=False).flatten()
    max_seqlen = int(lengths.max()) if lengths.numel() else 0
    packed = gather_rows(x.reshape(-1, *x.shape[2:]), indices)
    return Unpadded(packed, indices, cu_seqlens, max_seqlen, x.shape[0], x.shape[1])


def pad(packed: torch.Tensor, indices: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """Scatter packed rows back to ``(batch, seq, ...)``, zeros at padded positions."""
    out = dispatch.implementation("scatter_rows", packed.device)(packed, indices, batch * seq)
    return out.view(batch, seq, *packed.shape[1:])


def gather_rows(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` of ``x`` along dim 0."""
    return dispatch.implementation("gather_rows", x.device)(x, indices)


def varlen_indices(cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Flat positions in a ``(batch, max_seqlen)`` grid of the packed rows described by ``cu_seqlens``."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    keep = torch.arange(max_seqlen, device=cu_seqlens.device)[None, :] < lengths[:, None]
    return torch.nonzero(keep.reshape(-1), as_tuple=False).flatten()


@dispatch.register("gather_rows", "torch")
def gather_rows_reference(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``x[indices]`` along dim 0 (differentiable)."""
    return x.index_select(0, indices)


@dispatch.register("scatter_rows", "torch")
def scatter_rows_reference(packed: torch.Tensor, indices: torch.Tensor, rows: int) -> torch.Tensor:
    """A ``(rows, ...)`` zero tensor with ``packed`` written at ``indices`` (differentiable)."""
    out = packed.new_zeros(rows, *packed.shape[1:])
    return out.index_copy(0, indices, packed)
