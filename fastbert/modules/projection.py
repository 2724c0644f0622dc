"""How one projection of a :class:`~fastbert.modules.layer.FastBertLayer` runs.

The layer calls :func:`project` for each of its four projections (``qkv``,
``attention_output``, ``intermediate``, ``output``). An ``nn.Linear`` may carry a *plan*
in its ``_fastbert_plan`` attribute: a callable ``plan(x, weight, bias, activation)``
that computes ``activation(x @ weight.T + bias)`` another way. Pruning sets a
:class:`SparsePlan` on 2:4- and block-pruned matrices; calibration sets a plan that
records the projection's input. Without a plan the dense :func:`fastbert.ops.linear` runs.
Heads/neurons-pruned layers need no plan: their matrices are smaller dense ones.
"""

from __future__ import annotations

import torch
from torch import nn

from fastbert import ops
from fastbert.ops.sparse_linear import BlockSparseWeight, execution_path, semi_structured_linear, sparse_linear
from fastbert.ops.sparse_linear import to_semi_structured

PLAN_ATTR = "_fastbert_plan"


def project(linear: nn.Linear, x: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None):
    """``activation(x @ linear.weight.T + bias)`` on the path ``linear``'s plan chooses (dense without one).

    ``bias`` is passed explicitly because the layer fuses some biases into the following
    add + LayerNorm instead.
    """
    plan = getattr(linear, PLAN_ATTR, None)
    if plan is None:
        return ops.linear(x, linear.weight, bias, activation=activation)
    return plan(x, linear.weight, bias, activation)


def set_plan(linear: nn.Linear, plan) -> None:
    """Give ``linear`` an execution plan (None removes it)."""
    if plan is None:
        linear.__dict__.pop(PLAN_ATTR, None)
    else:
        setattr(linear, PLAN_ATTR, plan)


def plan_of(linear: nn.Linear):
    """``linear``'s execution plan, or None."""
    return getattr(linear, PLAN_ATTR, None)


class SparsePlan:
    """Runs a 2:4- or block-pruned projection on its sparse path wherever that is faster.

    ``kind`` is ``"2:4"`` or ``"block"`` (``block`` x ``block`` tiles; ``sparsity`` is the
    fraction of tiles removed). Each call asks :func:`fastbert.ops.sparse_linear.execution_path`
    (device, dtype, shape, token count, the measured table) and otherwise runs the dense
    linear; both compute the same function since the pruned weights are zero.

    The sparse form of the weight (a :class:`BlockSparseWeight` or PyTorch's
    semi-structured tensor) is built on the first call that needs it, and again when the
    weight changes (its version counter), device or dtype. While the weight is being
    trained (grad enabled and ``requires_grad``) the dense path runs: the mask is kept by
    :mod:`fastbert.prune.apply`, the sparse form is for inference. Under ``torch.compile``
    a sparse form built by an earlier eager call is reused; none is built while tracing.
    """

    def __init__(self, kind: str, block: int = 0, sparsity: float = 0.5) -> None:
        if kind not in ("2:4", "block"):
            raise ValueError(f"kind must be '2:4' or 'block', got {kind!r}")
        self.kind, self.block, self.sparsity = kind, block, sparsity
        self._key = None
        self._sparse = None

    def __repr__(self) -> str:
        return f"SparsePlan({self.kind!r}, block={self.block}, sparsity={self.sparsity:.3f})"

    def path(self, x: torch.Tensor, weight: torch.Tensor) -> str:
        """``self.kind`` or ``"dense"``: where a call with input ``x`` runs."""
        if torch.is_grad_enabled() and weight.requires_grad:
            return "dense"
        n, k = weight.shape
        return execution_path(self.kind, x.device, x.dtype, n, k, x.numel() // max(1, k), self.block, self.sparsity)

    def __call__(self, x, weight, bias=None, activation=None):
        sparse = self._sparse_weight(weight) if self.path(x, weight) != "dense" else None
        if sparse is None:
            return ops.linear(x, weight, bias, activation=activation)
        if self.kind == "block":
            return sparse_linear(x, sparse, bias, activation)
        return semi_structured_linear(x, sparse, bias, activation)

    def _sparse_weight(self, weight: torch.Tensor):
        if torch.compiler.is_compiling():
            return self._sparse if self._key is not None and self._key[:2] == (weight.device, weight.dtype) else None
        key = (weight.device, weight.dtype, weight.data_ptr(), None if weight.is_inference() else weight._version)
        if key != self._key:
            w = weight.detach()
            self._sparse = BlockSparseWeight.from_dense(w, self.block) if self.kind == "block" else to_semi_structured(w)
            self._key = key
        return self._sparse

    def __getstate__(self):  # the sparse form is a cache: rebuilt where the model lands
        return {"kind": self.kind, "block": self.block, "sparsity": self.sparsity, "_key": None, "_sparse": None}

    def __deepcopy__(self, memo):
        return SparsePlan(self.kind, self.block, self.sparsity)
