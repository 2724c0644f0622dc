"""Magnitude pruning of an encoder's projection matrices, in one pass, for every pattern.

Called by :func:`fastbert.prune.pruning.prune` (``method="magnitude"``).

Unstructured, block and 2:4 patterns zero the smallest weights (blocks by their mean
magnitude) and keep them zero through training (:mod:`fastbert.prune.apply`); ``heads``
and ``neurons`` remove whole attention heads / FFN neurons by their weights' L2 norm,
leaving smaller dense matrices (:mod:`fastbert.prune.structured`). ``scope="layer"`` (the
default) prunes each matrix to the target; ``"global"`` ranks every chosen matrix against
one threshold, and is refused (ValueError, no weight changed) where that threshold would
remove a matrix whole.
"""

from __future__ import annotations

import torch

from fastbert.prune.apply import apply_mask, keep_mask
from fastbert.prune.checks import nm_of
from fastbert.prune.masks import block_mask, block_scores, expand_blocks, nm_mask, unstructured_mask
from fastbert.prune.structured import head_scores, keep_heads, keep_neurons, neuron_scores
from fastbert.prune.targets import encoder_of


def prune_magnitude(chosen, sparsity, pattern, scope, block_size) -> None:
    """Zero the smallest weights (blocks: by mean magnitude; N:M: per group) of the chosen matrices.

    ``sparsity``: one fraction (``scope="global"``, N:M) or, with ``scope="layer"``, a fraction per matrix name."""
    nm = nm_of(pattern)
    if nm is not None:
        for t in chosen:
            apply_mask(t.module, nm_mask(t.module.weight.detach().abs(), *nm))
        return

    def scores_of(t):
        s = t.module.weight.detach().abs().float()
        old = keep_mask(t.module)
        return s if old is None else s.masked_fill(~old, 0.0)

    if scope == "layer":
        for t in chosen:
            s, fraction = scores_of(t), sparsity[t.name]
            keep = unstructured_mask(s, fraction) if pattern == "unstructured" else block_mask(s, fraction, block_size)
            apply_mask(t.module, keep)
        return
    # global: one threshold over every matrix (blocks compared by mean magnitude)
    units = [scores_of(t) if pattern == "unstructured" else _block_means(scores_of(t), block_size) for t in chosen]
    flat = torch.cat([u.flatten() for u in units])
    n_prune = int(round(sparsity * flat.numel()))
    keep_flat = torch.ones_like(flat, dtype=torch.bool)
    if n_prune:
        keep_flat[torch.topk(flat, n_prune, largest=False).indices] = False
    keeps = [k.view(u.shape) for k, u in zip(keep_flat.split([u.numel() for u in units]), units)]
    wiped = [t.name for t, k in zip(chosen, keeps) if not k.any()]
    if wiped:  # refused before any weight changes: a matrix with no weight left is a broken projection
        raise ValueError(
            f"scope='global' at sparsity {sparsity:g} would remove every weight of {len(wiped)} matrix(es) "
            f"({', '.join(wiped[:4])}{', ...' if len(wiped) > 4 else ''}): use scope='layer' (each matrix pruned "
            "to the target, the default) or a lower sparsity")
    for t, keep in zip(chosen, keeps):
        if pattern == "block":
            keep = expand_blocks(keep, block_size, t.module.weight.shape)
        apply_mask(t.module, keep)


def _block_means(scores: torch.Tensor, block: int) -> torch.Tensor:
    counts = block_scores(torch.ones_like(scores), block)
    return block_scores(scores, block) / counts


def prune_structured(model, chosen, sparsity, pattern, scope) -> None:
    """Remove the heads/neurons with the smallest weight norms (per layer, or normalized across layers)."""
    encoder = encoder_of(model)
    layer_ids = sorted({t.layer for t in chosen})
    score_fn = head_scores if pattern == "heads" else neuron_scores
    keeps = choose_units({i: score_fn(encoder.layers[i]) for i in layer_ids}, sparsity, scope)
    for i, keep in keeps.items():
        (keep_heads if pattern == "heads" else keep_neurons)(encoder.layers[i], keep)


def choose_units(scores: dict[int, torch.Tensor], sparsity: float, scope: str) -> dict[int, torch.Tensor]:
    """Keep-mask of heads/neurons per layer from their scores: each layer at the target
    (``scope="layer"``) or one ranking of scores normalized by their layer's mean; a layer
    always keeps its best unit."""
    if scope == "layer":
        keeps = {i: unstructured_mask(s, sparsity) for i, s in scores.items()}
    else:
        layer_ids = list(scores)
        keep_flat = unstructured_mask(torch.cat([scores[i] / scores[i].mean() for i in layer_ids]), sparsity)
        keeps = dict(zip(layer_ids, keep_flat.split([scores[i].numel() for i in layer_ids])))
    for i, keep in keeps.items():
        if not keep.any():  # never remove a whole block: keep the best unit
            keeps[i] = keep.clone()
            keeps[i][scores[i].argmax()] = True
    return keeps
