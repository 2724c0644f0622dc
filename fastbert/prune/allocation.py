"""How much of each layer to prune: outlier-weighted layer sparsities (OWL, Yin et al. 2024).

Layers whose weights hold more *outliers* (Wanda scores ``|W| * ||x||`` far above their
layer's mean) lose more accuracy when pruned, so they keep more weights. Each layer's
outlier ratio is mapped linearly onto ``[target - spread, target + spread]`` (more outliers,
lower sparsity), shifted so the layers average to the target.
"""

from __future__ import annotations

import torch


def outlier_ratio(scores: list[torch.Tensor], threshold: float) -> float:
    """Fraction of a layer's scores above ``threshold`` times the layer's mean score."""
    flat = torch.cat([s.flatten() for s in scores])
    return float((flat > threshold * flat.mean()).double().mean())


def layer_sparsities(scores: dict[int, list[torch.Tensor]], target: float, threshold: float = 5.0,
                     spread: float = 0.08) -> dict[int, float]:
    """``{layer: sparsity}`` averaging (weighted by parameter count) to ``target``, within
    ``target +- spread`` and [0, 0.99]."""
    ratios = {i: outlier_ratio(s, threshold) for i, s in scores.items()}
    sizes = {i: sum(x.numel() for x in s) for i, s in scores.items()}
    lo, hi = min(ratios.values()), max(ratios.values())
    if hi - lo < 1e-12:
        return dict.fromkeys(scores, target)
    raw = {i: target + spread - 2 * spread * (r - lo) / (hi - lo) for i, r in ratios.items()}
    shift = target - sum(raw[i] * sizes[i] for i in raw) / sum(sizes.values())
    return {i: min(0.99, max(0.0, s + shift)) for i, s in raw.items()}
