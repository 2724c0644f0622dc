"""Magnitude pruning of an encoder's projection matrices, in one pass, for every pattern.

Unstructured, block and 2:4 patterns zero the smallest weights (blocks by their mean
magnitude) and keep them zero through training (:mod:`fastbert.prune.apply`); ``heads``
and ``neurons`` remove whole attention heads / FFN neurons by their weights' L2 norm,
leaving smaller dense matrices (:mod:`fastbert.prune.structured`). ``scope="global"``
ranks every chosen matrix against one threshold, ``"layer"`` prunes each to the target.
"""

from __future__ import annotations

import torch
from torch import nn

from fastbert.prune.apply import apply_mask, keep_mask
from fastbert.prune.checks import check_options
from fastbert.prune.masks import block_mask, block_scores, expand_blocks, two_four_mask, unstructured_mask
from fastbert.prune.report import PruneReport, build_report
from fastbert.prune.structured import head_scores, keep_heads, keep_neurons, neuron_scores
from fastbert.prune.targets import encoder_of, targets


def prune(
    model: nn.Module,
    sparsity: float,
    pattern: str = "unstructured",
    method: str = "magnitude",
    scope: str = "global",
    layers=None,
    block_size: int = 32,
) -> PruneReport:
    """Prune the encoder projections of an optimized model (or a FastBertEncoder) in place.

    ``sparsity`` is the fraction of weights (or blocks, heads, neurons) to remove, in
    [0, 1); ``layers`` restricts pruning to those layer indices. Returns a
    :class:`PruneReport`. Structured patterns replace the affected ``nn.Linear`` modules
    with smaller ones: create optimizers after pruning. Their checkpoints have smaller
    matrices than the HF config says, so plain ``transformers`` cannot load them.
    """
    check_options(sparsity, pattern, method, scope, block_size)
    chosen = targets(model, layers)
    if pattern in ("heads", "neurons"):
        _prune_structured(model, chosen, sparsity, pattern, scope)
    elif pattern == "2:4":
        for t in chosen:
            apply_mask(t.module, two_four_mask(t.module.weight.detach().abs()))
    else:
        _prune_magnitude(chosen, sparsity, pattern, scope, block_size)
    return build_report(model, chosen, sparsity, pattern, f"{method} ({scope})")


def _prune_magnitude(chosen, sparsity, pattern, scope, block_size) -> None:
    def scores_of(t):
        s = t.module.weight.detach().abs().float()
        old = keep_mask(t.module)
        return s if old is None else s.masked_fill(~old, 0.0)

    if scope == "layer":
        for t in chosen:
            s = scores_of(t)
            keep = unstructured_mask(s, sparsity) if pattern == "unstructured" else block_mask(s, sparsity, block_size)
            apply_mask(t.module, keep)
        return
    # global: one threshold over every matrix (blocks compared by mean magnitude)
    units = [scores_of(t) if pattern == "unstructured" else _block_means(scores_of(t), block_size) for t in chosen]
    flat = torch.cat([u.flatten() for u in units])
    n_prune = int(round(sparsity * flat.numel()))
    keep_flat = torch.ones_like(flat, dtype=torch.bool)
    if n_prune:
        keep_flat[torch.topk(flat, n_prune, largest=False).indices] = False
    offset = 0
    for t, u in zip(chosen, units):
        keep = keep_flat[offset : offset + u.numel()].view(u.shape)
        offset += u.numel()
        if pattern == "block":
            keep = expand_blocks(keep, block_size, t.module.weight.shape)
        apply_mask(t.module, keep)


def _block_means(scores: torch.Tensor, block: int) -> torch.Tensor:
    counts = block_scores(torch.ones_like(scores), block)
    return block_scores(scores, block) / counts


def _prune_structured(model, chosen, sparsity, pattern, scope) -> None:
    encoder = encoder_of(model)
    layer_ids = sorted({t.layer for t in chosen})
    score_fn = head_scores if pattern == "heads" else neuron_scores
    scores = {i: score_fn(encoder.layers[i]) for i in layer_ids}
    if scope == "layer":
        keeps = {i: unstructured_mask(s, sparsity) for i, s in scores.items()}
    else:
        flat = torch.cat([scores[i] / scores[i].mean() for i in layer_ids])  # normalized across layers
        keep_flat = unstructured_mask(flat, sparsity)
        keeps, offset = {}, 0
        for i in layer_ids:
            n = scores[i].numel()
            keeps[i] = keep_flat[offset : offset + n]
            offset += n
    for i, keep in keeps.items():
        if not keep.any():  # never remove a whole block: keep the best unit
            keep = keep.clone()
            keep[scores[i].argmax()] = True
        (keep_heads if pattern == "heads" else keep_neurons)(encoder.layers[i], keep)
