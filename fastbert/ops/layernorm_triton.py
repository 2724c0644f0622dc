"""Triton path of :func:`fastbert.ops.add_layernorm`: fused kernels, autograd, torch.compile.

The kernels (``fastbert.kernels.layernorm``) are wrapped as two ``torch.library``
custom ops, ``fastbert::add_layernorm_fwd`` and ``fastbert::add_layernorm_bwd``, with
fake implementations so ``torch.compile(fullgraph=True)`` traces through them, and
``register_autograd`` connects the backward kernel. Gradients flow to ``x``,
``residual``, ``weight``, ``bias`` and ``x_bias``.

Dropout draws its seed from PyTorch's default CPU generator (``torch.manual_seed``
reproduces the mask); the backward regenerates the forward's mask from the seed.
"""

from __future__ import annotations

import torch

from fastbert.kernels.dropout import draw_seed, seed_value
from fastbert.kernels.layernorm import check_supported, layernorm_backward, layernorm_forward
from fastbert.ops import dispatch


@torch.library.custom_op("fastbert::add_layernorm_fwd", mutates_args=())
def add_layernorm_fwd_op(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    x_bias: torch.Tensor | None,
    dropout_p: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward; returns ``(y, mean, rstd)`` (see ``layernorm_forward``)."""
    return layernorm_forward(x, residual, weight, bias, eps, x_bias, dropout_p, seed_value(seed))


@add_layernorm_fwd_op.register_fake
def _(x, residual, weight, bias, eps, x_bias, dropout_p, seed):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    stats = x.new_empty((rows,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


@torch.library.custom_op("fastbert::add_layernorm_bwd", mutates_args=())
def add_layernorm_bwd_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    x_bias: torch.Tensor | None,
    dropout_p: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dresidual, param_grads)``: ``dresidual`` is empty unless it differs from ``dx``
    (a residual and dropout); ``param_grads`` is float32 ``(3, hidden)``: dweight, dbias, dx_bias."""
    dx, dres, dweight, dbias, dx_bias = layernorm_backward(
        dy, x, residual, weight, mean, rstd, x_bias, dropout_p, seed_value(seed)
    )
    if dres is None or dres is dx:
        dres = x.new_empty((0,))
    params = torch.stack([dweight, dbias, dx_bias if dx_bias is not None else torch.zeros_like(dbias)])
    return dx, dres, params


@add_layernorm_bwd_op.register_fake
def _(dy, x, residual, weight, mean, rstd, x_bias, dropout_p, seed):
    separate = residual is not None and dropout_p > 0.0
    dres = torch.empty_like(x, memory_format=torch.contiguous_format) if separate else x.new_empty((0,))
    params = x.new_empty((3, x.shape[-1]), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dres, params


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, x_bias, dropout_p, seed = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, residual, weight, x_bias, mean, rstd, seed)
    ctx.dropout_p = dropout_p
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy, _dmean, _drstd):
    x, residual, weight, x_bias, mean, rstd, seed = ctx.saved_tensors
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    dx, dres, params = add_layernorm_bwd_op(dy, x, residual, weight, mean, rstd, x_bias, ctx.dropout_p, seed)
    needs = ctx.needs_input_grad
    d_residual = None
    if residual is not None and needs[1]:
        d_residual = dres if ctx.dropout_p > 0.0 else dx  # without dropout, d residual = dx
    d_weight = params[0].to(weight.dtype) if weight is not None and needs[2] else None
    d_bias = params[1].to(ctx.bias_dtype) if ctx.bias_dtype is not None and needs[3] else None
    d_x_bias = params[2].to(x_bias.dtype) if x_bias is not None and needs[5] else None
    return dx if needs[0] else None, d_residual, d_weight, d_bias, None, d_x_bias, None, None


add_layernorm_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@dispatch.register("add_layernorm", "triton")
def triton_add_layernorm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    x_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fused Triton residual + bias + dropout + LayerNorm; same contract as
    ``fastbert.ops.layernorm.add_layernorm_reference`` (arguments checked by the op)."""
    check_supported(x, residual, weight, bias, x_bias)
    seed = draw_seed(dropout_p)
    y, _, _ = add_layernorm_fwd_op(x, residual, weight, bias, float(eps), x_bias, float(dropout_p), seed)
    return y
