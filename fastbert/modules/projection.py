"""How the projections of a :class:`~fastbert.modules.layer.FastBertLayer` run.

**The module a user sees is the module that runs.** A projection slot (``qkv``, its
:class:`~fastbert.modules.qkv_slices.QKVSlice` views ``query``/``key``/``value``,
``attention_output``, ``intermediate``, ``output``, the embedding ``projection``) holding a
plain ``nn.Linear`` without hooks runs fastbert's fused op on its weight (the bias and
activation in the GEMM's epilogue, or the bias in the following add + LayerNorm). Anything
else there — a PEFT LoRA layer wrapping the linear, a module with forward/backward hooks
(also global ones), an ``nn.Linear`` subclass, a swapped-in module — is *called*, as HF
would call it, and fastbert applies the activation after it (:func:`calls_module`).

An ``nn.Linear`` may also carry a *plan* in its ``_fastbert_plan`` attribute: a callable
``plan(x, weight, bias, activation)`` that computes ``activation(x @ weight.T + bias)``
another way. Pruning sets a :class:`SparsePlan` on 2:4- and block-pruned matrices;
calibration sets a plan that records the projection's input. Without a plan the dense
:func:`fastbert.ops.linear` runs. Heads/neurons-pruned layers need no plan: their matrices
are smaller dense ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from fastbert import ops
from fastbert.modules.qkv_slices import QKVSlice
from fastbert.ops.linear import ACTIVATIONS
from fastbert.ops.sparse_linear import BlockSparseWeight, execution_path, semi_structured_linear, sparse_linear
from fastbert.ops.sparse_linear import to_semi_structured

PLAN_ATTR = "_fastbert_plan"


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks: its own forward/backward (pre-)hooks, or global ones."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks
        or _module_globals._global_backward_hooks or _module_globals._global_backward_pre_hooks
    )  # fmt: skip


def calls_module(module: nn.Module, plain: type = nn.Linear) -> bool:
    """Whether fastbert must call ``module`` instead of running its fused op on ``module.weight``:
    anything but an instance of exactly ``plain`` without hooks (a PEFT wrapper, a subclass, a hook)."""
    return type(module) is not plain or has_hooks(module)


def project(linear: nn.Module, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
    """``activation(linear(x))``: the fused op (on ``linear``'s plan, dense without one) for a
    plain ``nn.Linear``, else ``linear`` is called and the activation applied to its output."""
    if calls_module(linear):
        y = linear(x)
        return y if activation is None else ACTIVATIONS[activation](y)
    return _fused(linear, x, linear.bias, activation)


def project_bias_later(linear: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``linear(x)`` without its bias, and the bias still to add (the layer adds it in the
    following add + LayerNorm); a called module adds its own bias, so then None."""
    if calls_module(linear):
        return linear(x), None
    return _fused(linear, x, None, None), linear.bias


def qkv_projection(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's ``(..., 3*hidden)`` q, k, v projection.

    One fused GEMM (through :func:`project`, so a wrapper on ``qkv`` itself is honoured)
    while the ``query``/``key``/``value`` slots hold their untouched slices; otherwise the
    three slot modules are called and their outputs concatenated (q, k, v)."""
    slots = [getattr(layer, name) for name in layer.qkv_names]
    if not any(calls_module(slot, QKVSlice) for slot in slots):
        return project(layer.qkv, x)
    if calls_module(layer.qkv):
        raise ValueError(
            f"both the fused qkv projection and its slices {layer.qkv_names} are wrapped or hooked: fastbert "
            "runs one or the other; adapt either qkv or the separate q/k/v projections"
        )
    return torch.cat([slot(x) for slot in slots], dim=-1)


def _fused(linear: nn.Linear, x, bias, activation):
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
