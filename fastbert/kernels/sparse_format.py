"""Block-sparse weight format for pruned matrices (plain PyTorch: no Triton needed).

:class:`BlockSparseWeight` stores a pruned ``(N, K)`` weight (``nn.Linear`` layout) as its
non-zero ``B x B`` blocks, B in 16/32/64, CSR over blocks; the last block row/column is
zero-padded when N or K is not a multiple of B. A block is stored when any entry is
non-zero (NaN counts as non-zero), so block-pruned weights keep exactly their kept
blocks and unstructured-pruned ones keep every block that holds a non-zero.

Besides the CSR arrays it carries the transposed index (per block column: its block
rows and where their values are), used by the input-gradient kernel, and the
weight-gradient work list: groups of up to ``DW_TILE // B`` blocks of one block column,
stacked into a 64-row tile so the gradient matmul is tall enough for wgmma on sm_90.

The kernels are in :mod:`fastbert.kernels.sparse`; the op in :mod:`fastbert.ops.sparse_linear`.
Registers no kernel (the build gate imports it harmlessly).
"""

from __future__ import annotations

import dataclasses

import torch

BLOCK_SIZES = (16, 32, 64)
DW_TILE = 64
"""Rows of a weight-gradient tile: ``64 // B`` blocks of one block column (wgmma's M)."""


@dataclasses.dataclass
class BlockSparseWeight:
    """A pruned ``(N, K)`` weight stored as its non-zero ``block x block`` tiles (CSR over blocks).

    ``values`` is the only floating-point tensor (and the trainable one: set
    ``values.requires_grad_()`` to fine-tune with the mask fixed); every index is int32
    on ``values``' device. Build it with :meth:`from_dense`.
    """

    shape: tuple[int, int]  # (N out features, K in features), unpadded
    block: int
    values: torch.Tensor  # (nnz, B, B): values[j, i, l] = W[row_idx[j] * B + i, col_idx[j] * B + l]
    row_ptr: torch.Tensor  # (N/B + 1,): blocks of block row r are row_ptr[r] .. row_ptr[r+1]-1
    col_idx: torch.Tensor  # (nnz,): block column of each block, increasing within a row
    row_idx: torch.Tensor  # (nnz,): block row of each block
    t_ptr: torch.Tensor  # (K/B + 1,): transposed index, per block column
    t_row: torch.Tensor  # (nnz,): block rows of each block column, increasing
    t_blk: torch.Tensor  # (nnz,): position in ``values`` of each transposed entry
    dw_blocks: torch.Tensor  # (groups, 64 // B): value positions per dW group, -1 = unused slot
    dw_col: torch.Tensor  # (groups,): the block column every block of a dW group shares

    @classmethod
    def from_dense(cls, weight: torch.Tensor, block: int = 32) -> "BlockSparseWeight":
        """The block-sparse form of a (pruned) dense ``(N, K)`` weight; blocks with any
        non-zero entry (NaN included) are kept. ``values`` is a detached copy."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be a 2D (out_features, in_features) tensor, got {getattr(weight, 'shape', weight)!r}")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
        if block not in BLOCK_SIZES:
            raise ValueError(f"block must be one of {BLOCK_SIZES}, got {block!r}")
        n, k = weight.shape
        nb, kb = -(-n // block), -(-k // block)
        w = weight.detach()
        padded = torch.nn.functional.pad(w, (0, kb * block - k, 0, nb * block - n))
        tiles = padded.view(nb, block, kb, block).transpose(1, 2)  # (nb, kb, B, B)
        nonzero = (tiles != 0).flatten(2).any(-1)  # (nb, kb)
        rows, cols = nonzero.nonzero(as_tuple=True)  # row-major: CSR order
        values = tiles[rows, cols].contiguous()
        return cls._build((n, k), block, values, rows, cols, nonzero.sum(1), nonzero.sum(0))

    @classmethod
    def _build(cls, shape, block, values, rows, cols, per_row, per_col) -> "BlockSparseWeight":
        device = values.device
        i32 = dict(dtype=torch.int32, device=device)
        nnz = rows.numel()
        row_ptr = torch.zeros(per_row.numel() + 1, dtype=torch.int64, device=device)
        row_ptr[1:] = per_row.cumsum(0)
        t_ptr = torch.zeros(per_col.numel() + 1, dtype=torch.int64, device=device)
        t_ptr[1:] = per_col.cumsum(0)
        order = torch.sort(cols * max(1, per_row.numel()) + rows, stable=True).indices  # by column, then row
        t_cols = cols[order]
        # dW groups: consecutive runs of up to G blocks within one block column.
        g = DW_TILE // block
        groups_per_col = (per_col + g - 1) // g
        group_start = torch.zeros_like(groups_per_col)
        group_start[1:] = groups_per_col.cumsum(0)[:-1]
        pos = torch.arange(nnz, device=device) - t_ptr[t_cols]
        gid = group_start[t_cols] + torch.div(pos, g, rounding_mode="floor")
        n_groups = int(groups_per_col.sum())
        dw_blocks = torch.full((n_groups, g), -1, **i32)
        dw_blocks[gid, pos % g] = order.to(torch.int32)
        dw_col = torch.repeat_interleave(torch.arange(per_col.numel(), device=device), groups_per_col)
        return cls(
            shape=(int(shape[0]), int(shape[1])), block=block, values=values,
            row_ptr=row_ptr.to(torch.int32), col_idx=cols.to(torch.int32), row_idx=rows.to(torch.int32),
            t_ptr=t_ptr.to(torch.int32), t_row=rows[order].to(torch.int32), t_blk=order.to(torch.int32),
            dw_blocks=dw_blocks, dw_col=dw_col.to(torch.int32),
        )  # fmt: skip

    @property
    def block_rows(self) -> int:
        return self.row_ptr.numel() - 1

    @property
    def block_cols(self) -> int:
        return self.t_ptr.numel() - 1

    @property
    def nnz_blocks(self) -> int:
        return self.values.shape[0]

    @property
    def block_sparsity(self) -> float:
        """Fraction of the ``B x B`` blocks that are not stored (0 for a dense matrix)."""
        total = self.block_rows * self.block_cols
        return 1.0 - self.nnz_blocks / total if total else 0.0

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to_dense(self) -> torch.Tensor:
        """The ``(N, K)`` dense weight (zeros outside the stored blocks); differentiable in ``values``."""
        b, (n, k) = self.block, self.shape
        rows, cols = self.row_idx.long(), self.col_idx.long()
        tiles = self.values.new_zeros(self.block_rows, self.block_cols, b, b).index_put((rows, cols), self.values)
        return tiles.transpose(1, 2).reshape(self.block_rows * b, self.block_cols * b)[:n, :k]

    def to(self, *args, **kwargs) -> "BlockSparseWeight":
        """A copy with ``values`` converted by ``Tensor.to(*args, **kwargs)`` and the indices on its device."""
        values = self.values.to(*args, **kwargs)
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, t in moved.items():
            if isinstance(t, torch.Tensor) and name != "values":
                moved[name] = t.to(values.device)
        return dataclasses.replace(self, **(moved | {"values": values}))

    def with_values(self, values: torch.Tensor) -> "BlockSparseWeight":
        """The same sparsity pattern with other ``values`` (same shape)."""
        if values.shape != self.values.shape:
            raise ValueError(f"values must have shape {tuple(self.values.shape)}, got {tuple(values.shape)}")
        return dataclasses.replace(self, values=values)
