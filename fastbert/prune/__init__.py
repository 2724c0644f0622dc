"""Pruning fastbert encoders: ``fastbert.prune(model, sparsity=..., pattern=..., method=...)``.

Patterns: ``"unstructured"``, ``"block"`` (B x B tiles, B in 16/32/64: the sparse
kernel's unit), ``"2:4"`` (semi-structured, always 50 %), ``"heads"`` and ``"neurons"``
(structured: whole attention heads / FFN neurons removed, leaving smaller dense matrices).
Methods: ``"magnitude"`` with ``scope="global"`` (one threshold over all matrices) or
``"layer"`` (each matrix at the target sparsity); gradual pruning during fine-tuning is
:class:`GradualPruner`. Masks stay applied through training: pruned weights get zero
gradients and are re-zeroed after every optimizer step.
"""

from __future__ import annotations

import sys
import types

import torch
from torch import nn

from fastbert.prune.apply import apply_mask, keep_mask, reapply_masks
from fastbert.prune.checks import check_block_size, check_fraction
from fastbert.prune.masks import PATTERNS, block_mask, block_scores, expand_blocks, two_four_mask, unstructured_mask
from fastbert.prune.report import MatrixReport, PruneReport
from fastbert.prune.schedule import GradualPruner, cubic_sparsity
from fastbert.prune.structured import head_scores, keep_heads, keep_neurons, neuron_scores
from fastbert.prune.targets import encoder_of, targets

METHODS = ("magnitude",)
SCOPES = ("global", "layer")


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
    _check(sparsity, pattern, method, scope)
    check_block_size(pattern, block_size)
    chosen = targets(model, layers)
    if pattern in ("heads", "neurons"):
        _prune_structured(model, chosen, sparsity, pattern, scope)
    elif pattern == "2:4":
        for t in chosen:
            apply_mask(t.module, two_four_mask(t.module.weight.detach().abs()))
    else:
        _prune_magnitude(chosen, sparsity, pattern, scope, block_size)
    return build_report(model, chosen, sparsity, pattern, f"{method} ({scope})")


def _check(sparsity, pattern, method, scope) -> None:
    check_fraction("sparsity", sparsity)
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (gradual pruning: fastbert.prune.GradualPruner), got {method!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if pattern == "2:4" and abs(sparsity - 0.5) > 1e-9:
        raise ValueError("the 2:4 pattern is always 50 % sparse: pass sparsity=0.5")


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


def build_report(model, chosen, target: float, pattern: str, method: str) -> PruneReport:
    """A PruneReport of the current state of the chosen matrices (structured: vs the config's sizes)."""
    encoder = encoder_of(model)
    cfg = encoder.config
    dense_shapes = {
        "attention.qkv": (3 * cfg.hidden_size, cfg.hidden_size),
        "attention.output": (cfg.hidden_size, cfg.hidden_size),
        "ffn.in": (cfg.intermediate_size, cfg.hidden_size),
        "ffn.out": (cfg.hidden_size, cfg.intermediate_size),
    }
    report = PruneReport(pattern, method, target)
    for t in targets(model, sorted({t.layer for t in chosen})):
        rows, cols = dense_shapes[t.role]
        remaining = int(torch.count_nonzero(t.module.weight.detach()))
        report.matrices.append(MatrixReport(t.name, t.role, (rows, cols), rows * cols, remaining))
    return report


__all__ = [
    "prune", "GradualPruner", "PruneReport", "cubic_sparsity", "reapply_masks", "keep_mask", "PATTERNS",
]


class _CallableModule(types.ModuleType):
    """Lets ``fastbert.prune(model, ...)`` call :func:`prune` while ``fastbert.prune.X`` stays
    this package (the issue's API and DESIGN.md's layout name the same thing)."""

    def __call__(self, *args, **kwargs):
        return prune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
