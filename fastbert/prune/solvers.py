"""Calibrated pruning of one weight matrix from statistics of its inputs.

All functions take the weight ``W`` (``(rows, cols)``, ``nn.Linear`` layout) and the
input second-moment matrix ``H = X^T X`` (float64, ``(cols, cols)``) of the calibration
tokens ``X`` (``(tokens, cols)``), or its diagonal.

- :func:`wanda_scores`: Wanda's importance ``|W_ij| * ||X_:j||`` (Sun et al. 2023).
- :func:`sparsegpt`: SparseGPT (Frantar & Alistarh 2023): columns are pruned left to
  right and the error of each pruned weight is compensated on the columns not yet
  visited, with the inverse Hessian's Cholesky factor (optimal brain surgeon updates).
  The mask is chosen on the way (unstructured or N:M), or fixed in advance (any pattern).
- :func:`refit`: least-squares refit of the kept weights for a fixed mask (masked
  conjugate gradients on ``||(W_hat - W) X^T||``), the exact optimum SparseGPT approximates.
- :func:`dense_target`: the weight that maps *these* inputs best to the dense model's
  outputs (``W G^T H^-1``, ``G = X^T X_dense``), for correcting the error earlier pruned
  layers left in the inputs.

A constant input column (all ones) may be appended to ``X`` so the bias takes part:
it is never pruned (``protected`` columns) and absorbs the mean of the error.
"""

from __future__ import annotations

import torch

from fastbert.prune.checks import nm_of
from fastbert.prune.masks import block_scores, expand_blocks, nm_mask, row_mask, unstructured_mask


def dampened(H: torch.Tensor, dampening: float) -> torch.Tensor:
    """``H + dampening * mean(diag H) * I`` with dead inputs (zero diagonal) given 1 on the diagonal."""
    H = H.clone()
    diag = H.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    diag += dampening * diag.mean()
    return H


def wanda_scores(weight: torch.Tensor, col_sq: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||x_j||``: ``col_sq`` is each input column's sum of squares (``diag(H)``)."""
    return weight.detach().abs().double() * col_sq.double().clamp_min(0).sqrt()[None, :]


def keep_from_scores(scores: torch.Tensor, sparsity: float, pattern: str, block: int = 32,
                     old_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask from importance scores: per output row (``"unstructured"``, as Wanda
    compares), per group of M inputs (``"N:M"``), or whole tiles (``"block"``, ranked in the
    matrix). Entries already pruned (``~old_keep``) stay pruned."""
    if old_keep is not None:
        scores = scores.masked_fill(~old_keep, -1.0)
    if pattern == "unstructured":
        keep = row_mask(scores, sparsity)
    elif pattern == "block":
        keep = expand_blocks(unstructured_mask(block_scores(scores.clamp_min(0), block), sparsity), block, scores.shape)
    else:
        keep = nm_mask(scores, *nm_of(pattern))
    return keep if old_keep is None else keep & old_keep


def _inverse_cholesky(H: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of ``H^-1`` (H symmetric positive definite, float64)."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    return torch.linalg.cholesky(torch.cholesky_solve(eye, torch.linalg.cholesky(H)), upper=True)


@torch.no_grad()
def sparsegpt(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    pattern: str = "unstructured",
    keep: torch.Tensor | None = None,
    protected: int = 0,
    old_keep: torch.Tensor | None = None,
    chunk: int = 128,
    rowwise: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on ``weight`` with the (already dampened) ``H``; returns ``(new weight, keep)``.

    ``pattern`` ``"unstructured"`` chooses, per chunk of ``chunk`` columns, the weights
    with the smallest ``w^2 / [U]_jj^2`` (``U`` the inverse Hessian's Cholesky factor)
    over the whole chunk, or per row when ``rowwise``; ``"N:M"`` chooses N of every M
    columns as the sweep reaches them. A given ``keep`` mask fixes the choice (any pattern,
    e.g. blocks). The last ``protected`` columns are never pruned (the bias column).
    ``old_keep`` entries that are False stay pruned.
    """
    W = weight.detach().float().clone()  # the sweep in float32, as SparseGPT does; the inverse in float64
    rows, cols = W.shape
    U = _inverse_cholesky(H).float()
    nm = nm_of(pattern)
    free = cols - protected
    fixed = keep is not None
    keep = keep.clone() if fixed else torch.ones_like(W, dtype=torch.bool)
    if old_keep is not None:
        keep[:, :free] &= old_keep
    for c0 in range(0, cols, chunk):
        c1 = min(c0 + chunk, cols)
        W1, U1 = W[:, c0:c1].clone(), U[c0:c1, c0:c1]
        d = U1.diagonal()
        err = torch.zeros_like(W1)
        f1 = max(0, min(c1, free) - c0)  # prunable columns in this chunk
        if not fixed and nm is None and f1:
            saliency = W1[:, :f1] ** 2 / d[None, :f1] ** 2
            if old_keep is not None:
                saliency = saliency.masked_fill(~keep[:, c0 : c0 + f1], -1.0)
            chosen = row_mask(saliency, sparsity) if rowwise else unstructured_mask(saliency, sparsity)
            keep[:, c0 : c0 + f1] &= chosen
        for j in range(c1 - c0):
            col = c0 + j
            if not fixed and nm is not None and col < free and (col % nm[1]) == 0:
                group = slice(j, j + nm[1])
                saliency = W1[:, group] ** 2 / d[None, group] ** 2
                if old_keep is not None:
                    saliency = saliency.masked_fill(~keep[:, col : col + nm[1]], -1.0)
                keep[:, col : col + nm[1]] &= nm_mask(saliency, *nm)
            w = W1[:, j]
            q = w * keep[:, col]
            e = (w - q) / d[j]
            W1[:, j:] -= e[:, None] * U1[j, j:][None, :]
            W1[:, j] = q
            err[:, j] = e
        W[:, c0:c1] = W1
        W[:, c1:] -= err @ U[c0:c1, c1:]
    return (W * keep).double(), keep


@torch.no_grad()
def refit(weight: torch.Tensor, target: torch.Tensor, H: torch.Tensor, keep: torch.Tensor, steps: int = 30,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Kept weights minimizing ``tr((W - target) H (W - target)^T)`` over the support ``keep``.

    Conjugate gradients restricted to the kept entries, all rows at once, from ``weight``
    (already supported on ``keep``), iterating in ``dtype``; returns float64.
    """
    H, mask = H.to(dtype), keep.to(dtype)
    W, target = weight.to(dtype) * mask, target.to(dtype)
    r = -((W - target) @ H) * mask  # negative gradient / 2, per row
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    tiny = torch.finfo(dtype).tiny
    for _ in range(steps):
        Hp = (p @ H) * mask
        alpha = rs / (p * Hp).sum(1, keepdim=True).clamp_min(tiny)
        W += alpha * p
        r -= alpha * Hp
        rs_new = (r * r).sum(1, keepdim=True)
        p = r + (rs_new / rs.clamp_min(tiny)) * p
        rs = rs_new
    return (W * mask).double()


@torch.no_grad()
def dense_target(weight: torch.Tensor, H: torch.Tensor, G: torch.Tensor, prior: torch.Tensor | None = None,
                 ridge: float = 1.0) -> torch.Tensor:
    """The unpruned weight mapping the calibration inputs ``X`` closest to the dense outputs
    ``X_dense W^T`` (``H = X^T X``, ``G = X^T X_dense``), shrunk towards ``prior`` (default
    ``weight``; same shape as the result) in ``H``'s diagonal metric:
    ``argmin ||X_dense W^T - X V^T||^2 + ridge * ||(V - prior) D^1/2||^2``, ``D = diag(H)``.
    A full correction (ridge -> 0) overfits a few thousand calibration tokens; ridge -> inf
    keeps ``prior``."""
    W = weight.detach().double()
    prior = W if prior is None else prior.detach().double()
    D = H.diagonal().clamp_min(1e-12 * H.diagonal().mean())
    A = H + torch.diag(ridge * D)
    return torch.linalg.solve(A, G @ W.T + (ridge * D)[:, None] * prior.T).T


def reconstruction_error(weight: torch.Tensor, new: torch.Tensor, H: torch.Tensor) -> float:
    """``tr((new - W) H (new - W)^T) / tr(W H W^T)``: the relative output error on the calibration inputs."""
    d = new.double() - weight.double()
    w = weight.double()
    return float(((d @ H) * d).sum() / ((w @ H) * w).sum().clamp_min(1e-300))
