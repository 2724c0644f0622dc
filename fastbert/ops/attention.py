"""Multi-head self-attention read straight from a fused QKV projection.

``attention(qkv, num_heads)`` computes ``softmax(Q Kᵀ · scale + mask) V`` per head,
where ``qkv`` is the output of one fused QKV linear layer, shape
``(batch, seq, 3 * hidden)``: queries in ``[..., :hidden]``, keys in
``[..., hidden:2*hidden]``, values in ``[..., 2*hidden:]``, head ``h`` at columns
``h*head_dim:(h+1)*head_dim`` of each. The result has shape ``(batch, seq, hidden)``,
the layout the output projection reads.

Masks:
- ``key_lengths`` ``(batch,)`` integer tensor: keys at positions ``>= key_lengths[b]``
  are padding (the fast path for right-padded batches).
- ``attn_mask`` broadcastable to ``(batch, heads, seq, seq)``: boolean (True = attend)
  or floating additive (0 = attend, large negative or -inf = masked).
A query row whose keys are all masked produces zeros (never NaN).

Packed (padding-free) input: ``qkv`` of shape ``(tokens, 3 * hidden)`` with
``cu_seqlens`` (``(batch + 1,)`` cumulative lengths) and ``max_seqlen``; each token
attends only within its own sequence, and the result is ``(tokens, hidden)``. It runs
as the op ``varlen_attention``: natively on Triton (packed kernels, no padding), and
in the reference as a right-padded batch with ``key_lengths``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastbert.kernels.dropout import check_dropout_p
from fastbert.ops import dispatch, padding


def _check_qkv(qkv, num_heads: int, dims: int, layout: str) -> None:
    """ValueError/TypeError unless ``qkv`` is a ``dims``-D floating tensor whose last dimension
    splits into q, k and v of ``num_heads`` heads each."""
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != dims:
        raise ValueError(f"qkv must be {layout}, got {getattr(qkv, 'shape', type(qkv))}")
    if not qkv.is_floating_point():
        raise TypeError(f"qkv must be a floating-point tensor, got {qkv.dtype}")
    if type(num_heads) is not int or num_heads <= 0 or qkv.shape[-1] % (3 * num_heads) != 0:
        raise ValueError(
            f"qkv's last dimension ({qkv.shape[-1]}) must be 3 * num_heads * head_dim with num_heads={num_heads!r}"
        )


def check_attention_inputs(qkv: torch.Tensor, num_heads: int, attn_mask, key_lengths) -> None:
    """Raise ValueError/TypeError on inputs the attention op cannot take: the one check of a
    padded call (the Triton path adds only what its kernels need, the launchers none)."""
    _check_qkv(qkv, num_heads, 3, "a 3D tensor (batch, seq, 3*hidden)")
    batch, seq = qkv.shape[0], qkv.shape[1]
    if attn_mask is not None:
        if attn_mask.dim() > 4:
            raise ValueError(f"attn_mask must have at most 4 dimensions, got shape {tuple(attn_mask.shape)}")
        full = (batch, num_heads, seq, seq)
        shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
        if any(s not in (1, f) for s, f in zip(shape, full)):
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (batch, heads, q, k) = {full}"
            )
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attn_mask must be bool (True = attend) or floating additive, got {attn_mask.dtype}")
        if attn_mask.device != qkv.device:
            raise ValueError(f"attn_mask must be on qkv's device {qkv.device}, got {attn_mask.device}")
    if key_lengths is not None:
        if key_lengths.shape != (batch,) or key_lengths.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"key_lengths must be an int32/int64 tensor of shape ({batch},), got "
                f"{key_lengths.dtype} {tuple(key_lengths.shape)}"
            )
        if key_lengths.device != qkv.device:
            raise ValueError(f"key_lengths must be on qkv's device {qkv.device}, got {key_lengths.device}")


def attention(
    qkv: torch.Tensor,
    num_heads: int,
    *,
    attn_mask: torch.Tensor | None = None,
    key_lengths: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-attention over a fused QKV tensor; see the module docstring for layouts and masks.

    ``dropout_p`` drops attention probabilities (pass 0.0 in eval mode). ``scale``
    defaults to ``1/sqrt(head_dim)``. Returns ``(batch, seq, hidden)``, or
    ``(tokens, hidden)`` for packed input (``cu_seqlens``/``max_seqlen``).
    ``indices``: packed input only, optional: ``padding.varlen_indices(cu_seqlens,
    max_seqlen, tokens)`` computed once by the caller (an encoder, per forward), which the
    reference path otherwise computes again on every call (no host sync either way).
    """
    check_dropout_p(dropout_p)
    if cu_seqlens is not None:
        return _varlen_attention(
            qkv, num_heads, cu_seqlens, max_seqlen, attn_mask, key_lengths, dropout_p, scale, indices
        )
    if indices is not None:
        raise ValueError("indices go with packed input (cu_seqlens) only")
    check_attention_inputs(qkv, num_heads, attn_mask, key_lengths)
    fn = dispatch.implementation("attention", qkv.device)
    return fn(qkv, num_heads, attn_mask=attn_mask, key_lengths=key_lengths, dropout_p=dropout_p, scale=scale)


def packed_attention_args(cu_seqlens: torch.Tensor, max_seqlen: int, tokens: int) -> dict:
    """The packed-layout arguments of :func:`attention` for every layer of a forward, computed
    once: ``cu_seqlens``, ``max_seqlen`` and, where the reference path will run (it pads
    through them), ``indices``; the Triton kernels read the packed layout and need none."""
    args = {"cu_seqlens": cu_seqlens, "max_seqlen": max_seqlen, "indices": None}
    if dispatch.select_backend(cu_seqlens.device) == "torch":
        args["indices"] = padding.varlen_indices(cu_seqlens, max_seqlen, tokens)
    return args


def _varlen_attention(qkv, num_heads, cu_seqlens, max_seqlen, attn_mask, key_lengths, dropout_p, scale, indices):
    """Packed attention: validate (shapes and types, no host sync), then run the backend's ``varlen_attention``."""
    if attn_mask is not None or key_lengths is not None:
        raise ValueError("packed input (cu_seqlens) takes no attn_mask or key_lengths: the lengths are the mask")
    _check_qkv(qkv, num_heads, 2, "2D (tokens, 3*hidden) when packed")
    padding.check_cu_seqlens(cu_seqlens, qkv.shape[0], max_seqlen)
    if cu_seqlens.device != qkv.device:
        raise ValueError(f"cu_seqlens must be on qkv's device {qkv.device}, got {cu_seqlens.device}")
    if indices is not None and (indices.dim() != 1 or indices.shape[0] != qkv.shape[0]):
        raise ValueError(f"indices must hold one position per token ({qkv.shape[0]},), got {tuple(indices.shape)}")
    fn = dispatch.implementation("varlen_attention", qkv.device)
    return fn(qkv, num_heads, cu_seqlens, int(max_seqlen), dropout_p=dropout_p, scale=scale, indices=indices)


def split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views q, k, v of shape ``(batch, heads, seq, head_dim)`` into a fused QKV tensor."""
    batch, seq, width = qkv.shape
    head_dim = width // (3 * num_heads)
    q, k, v = qkv.view(batch, seq, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def _as_bool_keep_mask(attn_mask, key_lengths, seq: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Fold key_lengths into the mask; returns (mask for SDPA, 'row has a live key' or None)."""
    mask = attn_mask
    if key_lengths is not None:
        keep = torch.arange(seq, device=device)[None, :] < key_lengths[:, None]
        keep = keep[:, None, None, :]
        if mask is None:
            mask = keep
        elif mask.dtype == torch.bool:
            mask = mask & keep
        else:
            mask = mask.masked_fill(~keep, float("-inf"))
    if mask is None:
        return None, None
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    live = mask if mask.dtype == torch.bool else mask > float("-inf")
    row_live = live.any(dim=-1, keepdim=True)
    # Un-mask rows with no live key before SDPA (their output is zeroed afterwards), so
    # neither the forward nor the backward ever sees a 0/0 softmax.
    if mask.dtype == torch.bool:
        mask = mask | ~row_live
    else:
        mask = torch.where(row_live, mask, torch.zeros((), dtype=mask.dtype, device=mask.device))
    return mask, row_live


@dispatch.register("attention", "torch")
def attention_reference(
    qkv: torch.Tensor,
    num_heads: int,
    *,
    attn_mask: torch.Tensor | None = None,
    key_lengths: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Plain-PyTorch attention (the oracle and the CPU path), through PyTorch's SDPA.

    Half-precision inputs are computed in float32 and cast back, so the reference
    accumulates in fp32 like the kernels.
    """
    batch, seq, width = qkv.shape
    hidden = width // 3
    q, k, v = split_heads(qkv, num_heads)
    compute_dtype = torch.float32 if qkv.dtype in (torch.float16, torch.bfloat16) else qkv.dtype
    q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    mask, row_live = _as_bool_keep_mask(attn_mask, key_lengths, seq, qkv.device)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(compute_dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if row_live is not None:
        out = torch.where(row_live, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out.transpose(1, 2).reshape(batch, seq, hidden).to(qkv.dtype)


@dispatch.register("varlen_attention", "torch")
def varlen_attention_reference(
    qkv: torch.Tensor, num_heads: int, cu_seqlens: torch.Tensor, max_seqlen: int, *,
    dropout_p: float = 0.0, scale: float | None = None, indices: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Packed attention (the oracle and the CPU path): pad to ``(batch, max_seqlen)``,
    run :func:`attention_reference` with ``key_lengths``, gather the tokens back.

    ``indices`` (``padding.varlen_indices(cu_seqlens, max_seqlen, tokens)``) may be given
    when already computed (an encoder does, once per forward for all its layers).
    """
    batch, max_seqlen = cu_seqlens.numel() - 1, int(max_seqlen)
    if indices is None:
        indices = padding.varlen_indices(cu_seqlens, max_seqlen, qkv.shape[0])
    padded = padding.pad(qkv, indices, batch, max(max_seqlen, 1))
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    out = attention_reference(padded, num_heads, key_lengths=lengths, dropout_p=dropout_p, scale=scale)
    return padding.gather_rows(out.reshape(-1, out.shape[-1]), indices)
