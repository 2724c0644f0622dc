"""Which ``B x B`` tiles of a weight matrix to remove: greedy optimal brain surgeon over tiles.

Removing a set ``R`` of input columns from the rows of one row group (the ``B`` rows of a
tile row), and refitting the rest of those rows optimally on the calibration inputs, costs

``err(R) = tr(W_R [(H^-1)_RR]^-1 W_R^T)``,

the optimal brain surgeon's error for a group of weights (``H = X^T X``; Hassibi & Stork;
for whole blocks, Kurtic et al. 2022). :func:`obs_block_mask` removes tiles one at a time,
always the one whose removal costs least *given the tiles already removed*: after each
removal the tile row's weights take the optimal update and its inverse Hessian loses the
removed columns (a Schur complement), so the next choice sees what is left. Ranking tiles
once by a sum of Wanda scores (``|W| * ||x||``) ignores both the correlation of a tile's
inputs and the compensation by the weights kept; ``benchmarks/block_allocation.py`` compares
the two on all-MiniLM-L6-v2 (results in ``benchmarks/results/block-allocation-minilm-cpu``).

Cost: each removal updates one tile row's ``cols x cols`` inverse (``2 B cols^2`` flops), and
``sparsity * rows * cols / B^2`` tiles go: ``2 * sparsity * rows * cols^3 / B`` flops in all
(all-MiniLM-L6-v2's FFN output matrix, 384 x 1536: about 45 GFLOP, seconds on a CPU; BERT-base's
768 x 3072 costs 16 times that).
"""

from __future__ import annotations

import torch


def _tile_spans(size: int, block: int) -> list[slice]:
    return [slice(start, min(start + block, size)) for start in range(0, size, block)]


class _TileRow:
    """One tile row: its weights, kept optimally refit, and the inverse Hessian of its kept columns."""

    def __init__(self, weight: torch.Tensor, H: torch.Tensor, Hinv: torch.Tensor, spans: list[slice],
                 removed: list[bool]) -> None:
        """Start with the tiles ``removed`` already gone: the weights refit on the kept columns
        (``W H[:, K] H[K, K]^-1``) and the inverse of ``H[K, K]`` (zero elsewhere)."""
        self.spans, self.removed = spans, list(removed)
        if not any(removed):
            self.W, self.Hinv = weight.clone(), Hinv.clone()
            return
        kept = torch.ones(H.shape[0], dtype=torch.bool, device=H.device)
        for c, gone in zip(spans, removed):
            kept[c] = not gone
        K = kept.nonzero().flatten()
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(H[K][:, K]))
        self.W, self.Hinv = torch.zeros_like(weight), torch.zeros_like(Hinv)
        self.W[:, K] = (weight @ H[:, K]) @ inverse
        self.Hinv[K[:, None], K] = inverse

    def costs(self) -> torch.Tensor:
        """The error of removing each remaining tile next (``inf`` for removed ones)."""
        out = torch.full((len(self.spans),), float("inf"), dtype=torch.float64, device=self.W.device)
        for i, c in enumerate(self.spans):
            if not self.removed[i]:
                Wc = self.W[:, c]
                out[i] = (Wc * torch.linalg.solve(self.Hinv[c, c], Wc.T).T).sum()
        return out

    def remove(self, i: int) -> None:
        """Remove tile ``i``: optimal update of the kept weights, the Schur complement of the inverse."""
        c = self.spans[i]
        A = torch.linalg.inv(self.Hinv[c, c])
        row = A @ self.Hinv[c, :]
        self.W -= self.W[:, c] @ row
        self.Hinv -= self.Hinv[:, c] @ row
        self.W[:, c] = 0
        self.Hinv[c, :] = 0
        self.Hinv[:, c] = 0
        self.removed[i] = True


@torch.no_grad()
def obs_block_mask(weight: torch.Tensor, H: torch.Tensor, sparsity: float, block: int,
                   old_keep: torch.Tensor | None = None, protected: int = 0) -> torch.Tensor:
    """Keep-mask removing ``round(sparsity * tiles)`` ``block x block`` tiles of ``weight``, greedily by OBS cost.

    ``weight`` ``(rows, cols)`` and ``H`` ``(cols, cols)``, symmetric positive definite
    (dampened), float64. The last ``protected`` columns (a bias column) are never removed
    and are not part of any tile. Tiles all of whose entries are already pruned in
    ``old_keep`` count as removed (the result keeps every ``old_keep`` zero); edge tiles
    may be partial. Returns a bool mask of ``weight``'s shape.
    """
    rows, cols = weight.shape
    free = cols - protected
    row_spans, col_spans = _tile_spans(rows, block), _tile_spans(free, block)
    removed = [[old_keep is not None and not bool(old_keep[r, c].any()) for c in col_spans] for r in row_spans]
    todo = int(round(sparsity * len(row_spans) * len(col_spans))) - sum(map(sum, removed))
    if todo > 0:  # otherwise no Hessian work: the mask is what old_keep already removed
        H = H.double()
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
        tile_rows = [_TileRow(weight[r].double(), H, Hinv, col_spans, gone) for r, gone in zip(row_spans, removed)]
        costs = torch.stack([t.costs() for t in tile_rows])
        for _ in range(todo):
            g, i = divmod(int(torch.argmin(costs)), len(col_spans))
            tile_rows[g].remove(i)
            costs[g] = tile_rows[g].costs()
        removed = [t.removed for t in tile_rows]
    keep = torch.ones(rows, cols, dtype=torch.bool, device=weight.device)
    for r, gone in zip(row_spans, removed):
        for c, tile_gone in zip(col_spans, gone):
            if tile_gone:
                keep[r, c] = False
    return keep if old_keep is None else keep & old_keep
