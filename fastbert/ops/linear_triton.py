"""Triton path of :func:`fastbert.ops.linear`: fused GEMM + epilogue, autograd, torch.compile.

Forward: the fused Triton GEMM (bias and activation in its epilogue), or, where the
measured table (:mod:`fastbert.kernels.linear_table`, empty until a GPU run fills it)
says cuBLAS is faster for the shape, ``torch.addmm`` followed by one elementwise
activation kernel.

Backward: ``dZ = dY * act'(z)`` by a fused elementwise kernel from the **saved
pre-activation** ``z`` (the forward writes it from its epilogue when a gradient will
be needed: one extra write instead of a recomputed GEMM; the same memory HF's eager
code keeps, which stores the GEMM output as the activation's input). Then
``dX = dZ @ W`` and ``dW = dZᵀ @ X`` with the same Triton GEMM kernel read through
transposed strides (no copies), and ``db = sum_rows dZ`` accumulated in fp32.

Wrapped as ``torch.library`` custom ops (``fastbert::linear_fwd``/``linear_bwd``) with
fake implementations, so ``torch.compile(fullgraph=True)`` traces through them.
"""

from __future__ import annotations

import torch

from fastbert.kernels import launch, linear_table
from fastbert.kernels.activations import ACTIVATIONS, activation_backward, activation_forward
from fastbert.kernels.dtypes import TRITON_NAMES
from fastbert.kernels.linear import check_supported, linear_forward, matmul
from fastbert.ops import dispatch
from fastbert.ops.linear import canonical_activation

_NAMES = {code: name for name, code in ACTIVATIONS.items()}


def _path(x2: torch.Tensor, n: int, activation: str | None) -> str:
    """``"triton"`` or ``"cublas"`` for this GEMM, from the measured table (Triton without an entry)."""
    if x2.device.type != "cuda" or x2.dtype not in TRITON_NAMES:
        return "triton"
    return linear_table.choose(launch.arch(x2.device), x2.shape[0], n, x2.shape[1], TRITON_NAMES[x2.dtype], activation)


def _gemm(a, w, bias, activation, save_pre):
    """``act(a @ w.T + bias)`` and the pre-activation (when saved), on the table's path."""
    if _path(a, w.shape[0], activation) == "cublas":
        pre = torch.addmm(bias, a, w.t()) if bias is not None else a @ w.t()
        if activation is None:
            return pre, None
        return activation_forward(pre, activation), (pre if save_pre else None)
    return linear_forward(a, w, bias, activation, save_pre)


@torch.library.custom_op("fastbert::linear_fwd", mutates_args=())
def linear_fwd_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: int, save_pre: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, pre)`` for 2D ``x``; ``pre`` is empty unless ``save_pre`` (and an activation)."""
    y, pre = _gemm(x, weight, bias, _NAMES[activation], save_pre and activation != 0)
    return y, (pre if pre is not None else x.new_empty((0,)))


@linear_fwd_op.register_fake
def _(x, weight, bias, activation, save_pre):
    y = x.new_empty((x.shape[0], weight.shape[0]))
    return y, (torch.empty_like(y) if save_pre and activation != 0 else x.new_empty((0,)))


@torch.library.custom_op("fastbert::linear_bwd", mutates_args=())
def linear_bwd_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    pre: torch.Tensor,
    activation: int,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight, dbias)``, each empty when not needed; ``pre`` is the forward's pre-activation."""
    dz = dy if activation == 0 else activation_backward(dy, pre, _NAMES[activation])
    dx = dw = db = None
    if need_dx:  # dX = dZ (M, N) @ W (N, K)
        dx = dz @ weight if _path(dz, weight.shape[1], None) == "cublas" else matmul(dz, weight)[0]
    if need_dw:  # dW = dZ.T (N, M) @ X (M, K)
        dw = matmul(dz.t(), x)[0]
    if need_db:
        db = dz.sum(0, dtype=torch.float32).to(dy.dtype)
    # Outputs of a custom op may not alias each other: a fresh empty tensor for each unused one.
    return tuple(t if t is not None else x.new_empty((0,)) for t in (dx, dw, db))


@linear_bwd_op.register_fake
def _(dy, x, weight, pre, activation, need_dx, need_dw, need_db):
    return (
        x.new_empty(x.shape if need_dx else (0,)),
        weight.new_empty(weight.shape if need_dw else (0,)),
        dy.new_empty((weight.shape[0],) if need_db else (0,)),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, save_pre = inputs
    _, pre = output
    ctx.mark_non_differentiable(pre)
    ctx.save_for_backward(x, weight, pre)
    ctx.activation = activation
    ctx.has_bias = bias is not None


def _backward(ctx, dy, _dpre):
    x, weight, pre = ctx.saved_tensors
    if ctx.activation != 0 and pre.numel() != dy.numel():
        raise RuntimeError("linear backward needs the pre-activation, which the forward did not save")
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    needs = ctx.needs_input_grad
    dx, dw, db = linear_bwd_op(dy, x, weight, pre, ctx.activation, needs[0], needs[1], ctx.has_bias and needs[2])
    return (dx if needs[0] else None), (dw if needs[1] else None), (db if ctx.has_bias and needs[2] else None), None, None


linear_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@dispatch.register("linear", "triton")
def triton_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """Fused Triton linear; same contract as ``fastbert.ops.linear.linear_reference``
    (arguments checked by ``fastbert.ops.linear``).

    ``x`` may have any leading dimensions; they are flattened (a view when the layout
    allows, and any 2D strides are read in place).
    """
    check_supported(x)
    code = ACTIVATIONS[canonical_activation(activation)]
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # a view when the layout allows
    params = (x, weight) if bias is None else (x, weight, bias)
    save_pre = code != 0 and torch.is_grad_enabled() and any(t.requires_grad for t in params)
    y, _ = linear_fwd_op(x2, weight, bias, code, save_pre)
    return y if x.dim() == 2 else y.view(*x.shape[:-1], weight.shape[0])
