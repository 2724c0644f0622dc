"""Applying masks to weights and keeping them applied through training, also in copies.

A pruned ``nn.Linear`` carries a :class:`PrunedWeight` in its ``_fastbert_mask``
attribute: the keep-mask, the weight it belongs to and its module. While it lives, the
weight's gradient is masked (a tensor hook) and, after every optimizer step of any
optimizer, the pruned entries are zeroed again (one process-wide optimizer step hook over
the live masks).

Copies keep all of this. ``pickle``, ``torch.save``/``torch.load(weights_only=False)`` and
``copy.deepcopy`` copy the module's attributes, so the copy's linear gets its own
:class:`PrunedWeight`, pointing at the copy's weight; PyTorch drops tensor hooks when it
copies or pickles a ``Parameter``, so :meth:`PrunedWeight.__setstate__` (which both
unpickling and ``deepcopy`` call) registers the copy and hooks its weight again. Nothing in
it is a lambda or a local function, so it pickles, also into a fresh process.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

MASK_ATTR = "_fastbert_mask"
_LIVE: "weakref.WeakSet[PrunedWeight]" = weakref.WeakSet()
_HOOK = None


class PrunedWeight:
    """The keep-mask of one pruned linear, and what keeps it applied (see the module docstring)."""

    def __init__(self, module: nn.Linear, keep: torch.Tensor) -> None:
        self.module, self.weight, self.keep = module, module.weight, keep
        self._hooked = None  # weakref to the Parameter whose gradient this masks
        self._start()

    def _start(self) -> None:
        _LIVE.add(self)
        _install_optimizer_hook()
        self.follow()

    def follow(self) -> None:
        """Track the module's current weight (a ``.to()`` may have replaced it) and mask its gradient."""
        weight = self.module.__dict__.get("_parameters", {}).get("weight")
        if weight is None:  # the module is still being unpickled: its weight comes later
            weight = self.weight
        self.weight = weight
        hooked = None if self._hooked is None else self._hooked()
        if hooked is not weight and weight.requires_grad:
            weight.register_hook(self._mask_grad)
            self._hooked = weakref.ref(weight)

    def _keep_on(self, device) -> torch.Tensor:
        if self.keep.device != device:
            self.keep = self.keep.to(device)
        return self.keep

    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self._keep_on(grad.device)

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero the pruned entries of the module's weight again."""
        self.follow()
        if self.keep.shape == self.weight.shape:
            self.weight.mul_(self._keep_on(self.weight.device))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_hooked"] = None  # a weakref does not pickle; the copy hooks its own weight
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._start()


def apply_mask(module: nn.Linear, keep: torch.Tensor) -> None:
    """Zero the pruned weights of ``module`` and keep them zero: gradients of pruned entries
    are zeroed, and after every optimizer step (any optimizer) the mask is re-applied."""
    keep = keep.to(device=module.weight.device, dtype=torch.bool)
    if keep.shape != module.weight.shape:
        raise ValueError(f"mask shape {tuple(keep.shape)} does not match weight {tuple(module.weight.shape)}")
    state = module.__dict__.get(MASK_ATTR)
    if state is not None and state.keep.shape == keep.shape:
        keep = keep & state.keep.to(keep.device)  # pruning only ever removes more
    with torch.no_grad():
        module.weight.mul_(keep)
    if state is None:
        setattr(module, MASK_ATTR, PrunedWeight(module, keep))
    else:
        state.keep = keep
        state.follow()


def keep_mask(module: nn.Linear) -> torch.Tensor | None:
    """The keep-mask of a pruned module (None if it was never pruned)."""
    state = module.__dict__.get(MASK_ATTR)
    return None if state is None else state.keep


@torch.no_grad()
def reapply_masks() -> None:
    """Zero pruned weights again in every live pruned module (copies included)."""
    for state in list(_LIVE):
        state.reapply()


def _install_optimizer_hook() -> None:
    global _HOOK
    if _HOOK is None:
        _HOOK = register_optimizer_step_post_hook(_after_optimizer_step)


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    reapply_masks()
