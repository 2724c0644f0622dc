"""Triton path of :func:`fastbert.ops.attention`: fused kernels, autograd, torch.compile.

The kernels (``fastbert.kernels.attention``) are wrapped as two ``torch.library``
custom ops, ``fastbert::attention_fwd`` and ``fastbert::attention_bwd``, with fake
(meta) implementations, so ``torch.compile(fullgraph=True)`` traces through them,
and ``register_autograd`` connects the backward kernel for training.

Dropout draws its seed from PyTorch's default CPU generator, so ``torch.manual_seed``
reproduces the mask; the seed travels as a CPU tensor, which keeps the op free of
host synchronization and traceable. (Under Inductor the draw comes from Inductor's
own RNG unless ``torch._inductor.config.fallback_random`` is set: reproducible, but
not the same mask as eager.)
"""

from __future__ import annotations

import math

import torch

from fastbert.kernels.attention import attention_backward, attention_forward
from fastbert.ops import dispatch
from fastbert.ops.attention import check_attention_inputs


def _seed_value(seed: torch.Tensor | None) -> int:
    return 0 if seed is None else int(seed.item())


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
    return attention_forward(qkv, num_heads, attn_mask, key_lengths, dropout_p, scale, _seed_value(seed))


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
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    return attention_backward(
        dout, qkv, out, stats, num_heads, attn_mask, key_lengths, dropout_p, scale, _seed_value(seed)
    )


@attention_bwd_op.register_fake
def _(dout, qkv, out, stats, num_heads, attn_mask, key_lengths, dropout_p, scale, seed):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    qkv, num_heads, attn_mask, key_lengths, dropout_p, scale, seed = inputs
    out, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(qkv, out, stats, attn_mask, key_lengths, seed)
    ctx.num_heads, ctx.dropout_p, ctx.scale = num_heads, dropout_p, scale


def _backward(ctx, grad_out, grad_stats):
    qkv, out, stats, attn_mask, key_lengths, seed = ctx.saved_tensors
    dqkv = attention_bwd_op(
        grad_out, qkv, out, stats, ctx.num_heads, attn_mask, key_lengths, ctx.dropout_p, ctx.scale, seed
    )
    return dqkv, None, None, None, None, None, None


attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


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
    """Fused Triton attention; same contract as ``fastbert.ops.attention.attention_reference``.

    Differentiable with respect to ``qkv`` only: an ``attn_mask`` that requires grad
    is rejected rather than silently given no gradient.
    """
    check_attention_inputs(qkv, num_heads, attn_mask, key_lengths)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if attn_mask is not None and attn_mask.requires_grad:
        raise ValueError("attn_mask requires grad, but the Triton attention kernel gives no gradient for the mask")
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    if scale is None:
        scale = 1.0 / math.sqrt(qkv.shape[-1] // (3 * num_heads))
    seed = torch.randint(0, 2**31 - 1, (), dtype=torch.int64) if dropout_p > 0.0 else None
    out, _ = attention_fwd_op(qkv, num_heads, attn_mask, key_lengths, float(dropout_p), float(scale), seed)
    return out
