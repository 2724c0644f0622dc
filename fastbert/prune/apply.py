"""Applying masks to weights and keeping them applied through training."""

from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch import nn

_LIVE: "weakref.WeakSet[nn.Linear]" = weakref.WeakSet()
_HOOK = None


def apply_mask(module: nn.Linear, keep: torch.Tensor) -> None:
    """Zero the pruned weights of ``module`` and keep them zero: gradients of pruned entries
    are zeroed, and after every optimizer step (any optimizer) the mask is re-applied."""
    keep = keep.to(device=module.weight.device, dtype=torch.bool)
    if keep.shape != module.weight.shape:
        raise ValueError(f"mask shape {tuple(keep.shape)} does not match weight {tuple(module.weight.shape)}")
    old = getattr(module, "_fastbert_keep", None)
    if old is not None:
        keep = keep & old  # pruning only ever removes more
    with torch.no_grad():
        module.weight.mul_(keep)
    module._fastbert_keep = keep
    if getattr(module, "_fastbert_grad_hook", None) is None and module.weight.requires_grad:
        module._fastbert_grad_hook = module.weight.register_hook(lambda g, m=module: g * m._fastbert_keep)
    _LIVE.add(module)
    _install_optimizer_hook()


def keep_mask(module: nn.Linear) -> torch.Tensor | None:
    """The keep-mask of a pruned module (None if it was never pruned)."""
    return getattr(module, "_fastbert_keep", None)


@torch.no_grad()
def reapply_masks() -> None:
    """Zero pruned weights again in every live pruned module."""
    for module in list(_LIVE):
        keep = module._fastbert_keep
        if keep.shape == module.weight.shape:
            module.weight.mul_(keep)


def _install_optimizer_hook() -> None:
    global _HOOK
    if _HOOK is None:
        _HOOK = register_optimizer_step_post_hook(lambda *_: reapply_masks())
