"""Triton path of :func:`fastbert.ops.attention`: fused kernels, autograd, torch.compile.

The kernels (``fastbert.kernels.attention``) are wrapped as ``torch.library`` custom
ops, ``fastbert::attention_fwd``/``attention_bwd`` (padded) and
``fastbert::varlen_attention_fwd``/``varlen_attention_bwd`` (packed, ``cu_seqlens``),
with fake (meta) implementations, so ``torch.compile(fullgraph=True)`` traces through
them (the packed ones shape their outputs from ``qkv``'s token count, which may be an
unbacked size), and ``register_autograd`` connects the backward kernels for training.

Dropout draws its seed from PyTorch's default CPU generator, so ``torch.manual_seed``
reproduces the mask; the seed travels as a CPU tensor, which keeps the op free of
host synchronization and traceable. (Under Inductor the draw comes from Inductor's
own RNG unless ``torch._inductor.config.fallback_random`` is set: reproducible, but
not the same mask as eager.)
"""

from __future__ import annotations

import math

import torch

from fastbert.kernels.attention import (
    attention_backward,
    attention_forward,
    check_supported,
    varlen_attention_backward,
    varlen_attention_forward,
)
from fastbert.kernels.dropout import draw_seed, seed_value
from fastbert.ops import dispatch


@torch.library.custom_op("fastbert::attention_fwd", mutates_args=())
def attention_fwd_op(
    qkv: torch.Tensor,
    num_heads: int,
    attn_mask: torch.Tensor | None,
    key_lengths: torch.Tensor | None,
    dropout_p: float,
    scale: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention forward; returns ``(out, stats)`` (see ``attention_forward``)."""
    return attention_forward(qkv, num_heads, attn_mask, key_lengths, dropout_p, scale, seed_value(seed))


@attention_fwd_op.register_fake
def _(qkv, num_heads, attn_mask, key_lengths, dropout_p, scale, seed):
    batch, seq, width = qkv.shape
    out = qkv.new_empty((batch, seq, width // 3))
    stats = qkv.new_empty((batch, num_heads, 2, seq), dtype=torch.float32)
    return out, stats


@torch.library.custom_op("fastbert::attention_bwd", mutates_args=())
def attention_bwd_op(
    dout: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    stats: torch.Tensor,
    num_heads: int,
    attn_mask: torch.Tensor | None,
    key_lengths: torch.Tensor | None,
    dropout_p: float,
    scale: float,
    seed: torch.Tensor | None,
) -> torch.Tensor:
    """Gradient of ``attention_fwd`` with respect to ``qkv`` (see ``attention_backward``)."""
    return attention_backward(
        dout, qkv, out, stats, num_heads, attn_mask, key_lengths, dropout_p, scale, seed_value(seed)
    )


@attention_bwd_op.register_fake
def _(dout, qkv, out, stats, num_heads, attn_mask, key_lengths, dropout_p, scale, seed):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _connect_backward(fwd_op, bwd_op) -> None:
    """Register ``bwd_op(dout, qkv, out, stats, *inputs[1:])`` as the autograd of
    ``fwd_op(qkv, *inputs[1:]) -> (out, stats)``; only ``qkv`` gets a gradient."""

    def setup_context(ctx, inputs, output):
        out, stats = output
        ctx.mark_non_differentiable(stats)
        ctx.is_tensor = [isinstance(x, torch.Tensor) for x in inputs]
        ctx.save_for_backward(out, stats, *(x for x, t in zip(inputs, ctx.is_tensor) if t))
        ctx.constants = [None if t else x for x, t in zip(inputs, ctx.is_tensor)]

    def backward(ctx, grad_out, grad_stats):
        out, stats, *tensors = ctx.saved_tensors
        saved = iter(tensors)
        qkv, *rest = [next(saved) if t else c for t, c in zip(ctx.is_tensor, ctx.constants)]
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        return bwd_op(grad_out, qkv, out, stats, *rest), *(None for _ in rest)

    fwd_op.register_autograd(backward, setup_context=setup_context)


_connect_backward(attention_fwd_op, attention_bwd_op)


@dispatch.register("attention", "triton")
def triton_attention(
    qkv: torch.Tensor,
    num_heads: int,
    *,
    attn_mask: torch.Tensor | None = None,
    key_lengths: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused Triton attention; same contract as ``fastbert.ops.attention.attention_reference``
    (arguments checked by ``fastbert.ops.attention``; here only what the kernels add).

    Differentiable with respect to ``qkv`` only: an ``attn_mask`` that requires grad
    is rejected rather than silently given no gradient.
    """
    check_supported(qkv, num_heads, qkv.shape[1], dropout_p)
    if attn_mask is not None and attn_mask.requires_grad:
        raise ValueError("attn_mask requires grad, but the Triton attention kernel gives no gradient for the mask")
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    if scale is None:
        scale = 1.0 / math.sqrt(qkv.shape[-1] // (3 * num_heads))
    seed = draw_seed(dropout_p)
    out, _ = attention_fwd_op(qkv, num_heads, attn_mask, key_lengths, float(dropout_p), float(scale), seed)
    return out


# --- packed (variable-length) layout --------------------------------------------------


@torch.library.custom_op("fastbert::varlen_attention_fwd", mutates_args=())
def varlen_attention_fwd_op(
    qkv: torch.Tensor, num_heads: int, cu_seqlens: torch.Tensor, max_seqlen: int, dropout_p: float, scale: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Packed attention forward; returns ``(out, stats)`` (see ``varlen_attention_forward``)."""
    return varlen_attention_forward(qkv, num_heads, cu_seqlens, max_seqlen, dropout_p, scale, seed_value(seed))


@varlen_attention_fwd_op.register_fake
def _(qkv, num_heads, cu_seqlens, max_seqlen, dropout_p, scale, seed):
    tokens, width = qkv.shape
    return qkv.new_empty((tokens, width // 3)), qkv.new_empty((num_heads, 2, tokens), dtype=torch.float32)


@torch.library.custom_op("fastbert::varlen_attention_bwd", mutates_args=())
def varlen_attention_bwd_op(
    dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, stats: torch.Tensor, num_heads: int,
    cu_seqlens: torch.Tensor, max_seqlen: int, dropout_p: float, scale: float, seed: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    """Gradient of ``varlen_attention_fwd`` with respect to ``qkv`` (see ``varlen_attention_backward``)."""
    return varlen_attention_backward(
        dout, qkv, out, stats, num_heads, cu_seqlens, max_seqlen, dropout_p, scale, seed_value(seed)
    )


@varlen_attention_bwd_op.register_fake
def _(dout, qkv, out, stats, num_heads, cu_seqlens, max_seqlen, dropout_p, scale, seed):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


_connect_backward(varlen_attention_fwd_op, varlen_attention_bwd_op)


@dispatch.register("varlen_attention", "triton")
def triton_varlen_attention(
    qkv: torch.Tensor, num_heads: int, cu_seqlens: torch.Tensor, max_seqlen: int, *,
    dropout_p: float = 0.0, scale: float | None = None, indices: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Packed Triton attention straight on ``(tokens, 3*hidden)``; same contract as
    ``fastbert.ops.attention.varlen_attention_reference`` (arguments checked by
    ``fastbert.ops.attention``). ``indices`` are not needed (no padding happens) and
    ignored. Differentiable with respect to ``qkv``.
    """
    check_supported(qkv, num_heads, max_seqlen, dropout_p)
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    cu_seqlens = cu_seqlens.to(torch.int32)  # no-op for the usual int32 offsets
    if scale is None:
        scale = 1.0 / math.sqrt(qkv.shape[-1] // (3 * num_heads))
    seed = draw_seed(dropout_p)
    out, _ = varlen_attention_fwd_op(qkv, num_heads, cu_seqlens, max_seqlen, float(dropout_p), float(scale), seed)
    return out
