"""Fused multi-head self-attention read straight from a fused QKV tensor.

Forward (flash-attention style): each program owns ``BLOCK_M`` query rows of one
(batch, head), streams key/value tiles of ``BLOCK_N`` rows through an online softmax
with fp32 accumulators, and writes the output in the ``(batch, seq, hidden)`` layout
the output projection reads, plus per-row softmax statistics for the backward pass:
the row max ``m`` and ``log(sum(exp(s - m)))``, kept apart rather than summed into a
log-sum-exp, so rows whose scores are all huge negatives (Hugging Face masks with
``finfo.min``) keep their precision.

Backward by recomputation: a small kernel computes ``delta = rowsum(dO * O)``; one
kernel per key tile accumulates dK and dV over all query tiles, another per query
tile accumulates dQ over key tiles (no atomics, deterministic). Gradients land in a
tensor laid out like ``qkv``.

Two layouts, one kernel family (constexpr ``IS_VARLEN``):
- padded: ``qkv`` (batch, seq, 3*hidden) with masks. ``key_lengths`` bounds the key
  loop, so tiles past a sequence's length are never loaded (the padding fast path);
  ``attn_mask`` (bool or additive, broadcast via stride 0) is loaded per tile. Rows
  without a live key output zeros and store ``m = +inf``, so the backward recomputes
  ``p = exp(s - m - log_sum) = 0`` for them.
- packed (padding-free, as flash-attention's varlen kernels): ``qkv`` (tokens, 3*hidden)
  with ``cu_seqlens`` (int32, batch + 1 offsets: sequence ``b`` is rows
  ``cu_seqlens[b]:cu_seqlens[b+1]``) and ``max_seqlen``. The grid covers
  ``cdiv(max_seqlen, BLOCK)`` tiles per (sequence, head); a tile starting past its
  sequence's end exits at once, and nothing is written outside a sequence's rows.
  Zero-length sequences are allowed (no rows, nothing to do).

Dropout on the attention probabilities uses Triton's counter-based Philox RNG, keyed
by ``(seed, b * heads + h)`` (the seed in the key's low word, sequence and head in the
high word) with counter ``q * 2**16 + k``, where ``q`` and ``k`` are the query's and
key's positions within their sequence. The mask of a token pair is therefore the same
in the padded and packed layouts and for every tile size, and the backward pass
regenerates the forward's exactly. Sequences with dropout are limited to
``MAX_DROPOUT_SEQLEN`` (2**16) positions.

The oracles are ``fastbert.ops.attention.attention_reference`` and
``varlen_attention_reference``.

Launchers trust their callers: ``fastbert.ops.attention`` checks the arguments once at the
public boundary (shapes, dtypes, masks and their devices, ``dropout_p``, ``cu_seqlens``) and
its Triton path adds :func:`check_supported` (what only these kernels need); the launchers
(``attention_forward``/``_backward``, ``varlen_attention_forward``/``_backward``) check
nothing, so a call through the op pays for each check once.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastbert.kernels import launch, registry
from fastbert.kernels.dtypes import TRITON_NAMES
from fastbert.kernels.registry import Variant

MAX_HEAD_DIM = 128
MAX_DROPOUT_SEQLEN = 2**16
"""Longest sequence dropout supports: query and key positions share one 32-bit RNG counter."""


# ---------------------------------------------------------------------------
# Autotune configs: per architecture, per (dtype, head dim, dropout) bucket. The
# autotune key adds a power-of-two sequence bucket, so a sweep over sequence
# lengths tunes once per bucket, not once per length. Every config here passes the
# build gate (fastbert.kernels.compile_check): no spills, shared memory in budget.
# ---------------------------------------------------------------------------


def _cfg(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


def _family(dtype: str, head_dim_pad: int, dropout: bool) -> str:
    """Config bucket: fp32 (exact FMA dots) or 16-bit x head dim x dropout (Philox costs registers)."""
    if dtype == "fp32":
        return "fp32"
    return ("d64" if head_dim_pad <= 64 else "d128") + ("-dropout" if dropout else "")


# (BLOCK_M, BLOCK_N, num_warps, num_stages) by kernel, arch and bucket. For the dK/dV
# kernel BLOCK_N is the key tile a program owns and BLOCK_M the query step.
_TABLE = {
    "attention_fwd": {
        80: {
            "d64": [(128, 64, 8, 2), (128, 32, 8, 3), (64, 32, 4, 3)],  # 128x64 in 3 stages: 112 KB, over sm_86's 99
            "d128": [(128, 32, 8, 3), (64, 32, 4, 3), (128, 64, 8, 2)],
            "d64-dropout": [(128, 64, 8, 3), (128, 32, 8, 3), (64, 32, 4, 3)],
            "d128-dropout": [(128, 32, 8, 3), (64, 32, 4, 3)],
            "fp32": [(32, 16, 4, 2), (16, 32, 4, 2)],
        },
        90: {
            "d64": [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
            "d128": [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3)],
            "d64-dropout": [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3)],
            "d128-dropout": [(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2)],
            "fp32": [(32, 32, 4, 2), (32, 16, 4, 2)],
        },
    },
    "attention_bwd_dkdv": {
        80: {
            "d64": [(32, 128, 8, 2), (32, 64, 4, 3), (16, 64, 4, 3)],
            "d128": [(16, 128, 8, 2), (16, 64, 4, 2)],
            "d64-dropout": [(16, 128, 8, 2), (16, 64, 4, 2)],
            "d128-dropout": [(32, 64, 8, 2), (16, 128, 8, 2)],
            "fp32": [(16, 16, 4, 1), (16, 16, 2, 2)],  # ptxas spills wider fp32 tiles on some of sm_80/86/89 (Triton 3.6 or 3.9)
        },
        90: {
            "d64": [(32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3)],
            "d128": [(16, 128, 8, 2), (32, 128, 8, 2), (16, 64, 4, 2)],
            "d64-dropout": [(16, 128, 8, 2), (16, 64, 4, 2)],
            "d128-dropout": [(16, 128, 8, 2), (16, 64, 4, 2)],
            "fp32": [(16, 16, 4, 2), (16, 32, 8, 2)],
        },
    },
    "attention_bwd_dq": {
        80: {
            "d64": [(128, 32, 8, 2), (64, 32, 4, 3)],
            "d128": [(128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 2)],
            "d64-dropout": [(128, 32, 8, 2), (64, 32, 4, 3)],
            "d128-dropout": [(64, 32, 4, 2), (64, 16, 4, 2)],
            "fp32": [(32, 32, 8, 2), (32, 16, 4, 2)],
        },
        90: {
            "d64": [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2)],
            "d128": [(128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 2)],
            "d64-dropout": [(128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 3)],
            "d128-dropout": [(128, 32, 8, 2), (64, 32, 4, 2)],
            "fp32": [(32, 32, 4, 2), (32, 16, 4, 2)],  # 32x32 on 8 warps spills 16 B under Triton 3.6
        },
    },
}


# The packed kernels use _TABLE too, except for configs where, without the mask's
# registers, ptxas (Triton 3.6) picks a 128-register target and spills a few words
# across the key loop: those are swapped for a neighbour that passes the gate.
_PACKED_SUBSTITUTES = {
    ("attention_fwd", 80, "d64-dropout"): {(128, 64, 8, 3): (64, 64, 4, 3)},
    ("attention_bwd_dkdv", 80, "d64-dropout"): {(16, 128, 8, 2): (16, 128, 8, 3)},
    ("attention_bwd_dq", 90, "fp32"): {(32, 32, 8, 2): (32, 32, 4, 2)},
}


def attention_configs(
    kernel: str, arch: int, *, dtype: str, head_dim_pad: int, dropout: bool, packed: bool = False
) -> list[triton.Config]:
    """Autotune configs of an attention kernel for ``arch`` (80 or 90) and one shape bucket
    (``packed``: of its variable-length specialization)."""
    if kernel == "attention_bwd_delta":  # a bandwidth-bound row reduction: one config suffices
        return [triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1)]
    bucket = _family(dtype, head_dim_pad, dropout)
    rows = _TABLE[kernel][arch][bucket]
    if packed:
        swap = _PACKED_SUBSTITUTES.get((kernel, arch, bucket), {})
        rows = list(dict.fromkeys(swap.get(row, row) for row in rows))
    return [_cfg(*c) for c in rows]


# Under TRITON_INTERPRET=1 one small config keeps CPU tests fast. Forward and backward
# use different tile sizes on purpose: dropout masks must not depend on tiling.
_INTERPRETER_CONFIGS = {
    "attention_fwd": _cfg(32, 64, 4, 1),
    "attention_bwd_dkdv": _cfg(64, 32, 4, 1),
    "attention_bwd_dq": _cfg(32, 64, 4, 1),
    "attention_bwd_delta": triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1),
}


# ---------------------------------------------------------------------------
# Representative specializations for the build gate: per config bucket, the heaviest
# code path (mask + key lengths, + dropout where the bucket has it) at the bucket's
# largest head dim, on a BERT-large-sized problem. Each kernel is registered twice,
# padded (``attention_*``) and packed (``varlen_attention_*``, no mask: the sequence
# lengths are the mask; configs from _TABLE with _PACKED_SUBSTITUTES).
# ---------------------------------------------------------------------------

_GATE_CASES = [  # dtype, head_dim, mask pointer type, dropout
    ("fp16", 64, "fp32", False),
    ("bf16", 128, "fp32", False),
    ("fp16", 64, "u1", True),
    ("bf16", 128, "fp32", True),
    ("fp32", 128, "fp32", True),
]
_GATE_SEQ, _GATE_HIDDEN = 512, 1024
_GATE_TOKENS = 4097  # packed: about 8 sequences of up to 512, a token count no multiple of 16


def _gate_variants(kernel: str, packed: bool) -> list[Variant]:
    seq, hidden = _GATE_SEQ, _GATE_HIDDEN
    rows = _GATE_TOKENS if packed else seq  # the statistics' row count per head

    def strides(name: str, width: int) -> dict:  # (batch, row) strides; packed tensors have no batch dim
        return {f"stride_{name}_b": 0 if packed else seq * width, f"stride_{name}_s": width}

    variants = []
    for dtype, head_dim, mask, dropout in _GATE_CASES[:1] if kernel == "attention_bwd_delta" else _GATE_CASES:
        t, heads = f"*{dtype}", hidden // head_dim
        args: dict = {"seq_len": seq, "num_heads": heads, "HEAD_DIM": head_dim, "HEAD_DIM_PAD": head_dim}
        args |= {"CuSeqlens": "*i32" if packed else t, "IS_VARLEN": packed}  # the launchers pass qkv as dummy
        delta = {"Delta": "*fp32", "stride_delta_b": 0 if packed else heads * rows, "stride_delta_h": rows}
        if kernel == "attention_bwd_delta":
            args |= {"Out": t, "dOut": t, **delta, **strides("out", hidden), **strides("dout", hidden)}
        else:
            args |= {"QKV": t, "Stats": "*fp32", **strides("qkv", 3 * hidden)}
            args |= {"stride_stats_b": 0 if packed else heads * 2 * rows, "stride_stats_h": 2 * rows, "stride_stats_part": rows}
            if packed:
                args |= {"Mask": t, "KeyLen": t, "stride_mask_b": 0, "stride_mask_h": 0, "stride_mask_q": 0, "stride_mask_k": 0}
            else:  # an HF padding mask (B, 1, 1, S)
                args |= {"Mask": f"*{mask}", "KeyLen": "*i64"}
                args |= {"stride_mask_b": seq, "stride_mask_h": 0, "stride_mask_q": 0, "stride_mask_k": 1}
            args |= {"scale": "fp32", "dropout_p": "fp32", "seed": "i32", "SEQ_BUCKET": seq}
            args |= {"HAS_MASK": not packed, "MASK_IS_BOOL": mask == "u1" and not packed, "HAS_KEYLEN": not packed}
            args |= {"HAS_DROPOUT": dropout}
        if kernel == "attention_fwd":
            args |= {"Out": t, **strides("out", hidden)}
        elif kernel != "attention_bwd_delta":
            args |= {"dOut": t, **delta, "dQKV": t, **strides("dout", hidden), **strides("dqkv", 3 * hidden)}
        label = f"{dtype} d{head_dim}"
        if kernel != "attention_bwd_delta":
            label += " packed" if packed else f" mask={mask} keylen"
        label += " dropout" if dropout else ""
        key = {"dtype": dtype, "head_dim_pad": head_dim, "dropout": dropout}
        matrix = kernel != "attention_bwd_delta" and dtype != "fp32"  # fp32 uses exact FMA dots
        variants.append(Variant(label, args, key, matrix))
    return variants


def _register(name: str):
    """Register an attention kernel, padded as ``name`` and packed as ``varlen_<name>``, for the build gate."""

    def wrap(fn):
        packed_configs = functools.partial(attention_configs, name, packed=True)
        registry.kernel(name=f"varlen_{name}", variants=_gate_variants(name, packed=True), configs=packed_configs)(fn)
        padded_configs = functools.partial(attention_configs, name)
        return registry.kernel(name=name, variants=_gate_variants(name, packed=False), configs=padded_configs)(fn)

    return wrap


# ---------------------------------------------------------------------------
# Helpers shared by the kernels
# ---------------------------------------------------------------------------


@triton.jit
def _tile_ids(seq_len, num_heads, BLOCK: tl.constexpr):
    """This program's (tile, sequence b, head h, b * num_heads + h): cdiv(seq_len, BLOCK) tiles per (b, h)."""
    num_tiles = tl.cdiv(seq_len, BLOCK)
    pid_bh = tl.program_id(0) // num_tiles
    return tl.program_id(0) % num_tiles, pid_bh // num_heads, pid_bh % num_heads, pid_bh


@triton.jit
def _sequence(b, CuSeqlens, KeyLen, seq_len, IS_VARLEN: tl.constexpr, HAS_KEYLEN: tl.constexpr):
    """Sequence ``b``'s (first row as int64, rows, live keys).

    Packed: rows ``cu_seqlens[b]:cu_seqlens[b + 1]``, every key live. Padded: rows
    ``0:seq_len``, keys live below ``key_lengths[b]`` clamped to ``[0, seq_len]``.
    """
    if IS_VARLEN:
        start = tl.load(CuSeqlens + b)
        rows = tl.load(CuSeqlens + b + 1) - start
        kv_end = rows
    else:
        start = tl.zeros((), tl.int32)
        rows = seq_len
        kv_end = seq_len
        if HAS_KEYLEN:
            kv_end = tl.minimum(tl.maximum(tl.load(KeyLen + b).to(tl.int32), 0), seq_len)
    return start.to(tl.int64), rows, kv_end


@triton.jit
def _base(X, i, j, stride_i, stride_j):
    """``X + i * stride_i + j * stride_j`` in 64-bit arithmetic (packed tensors outgrow 2**31 elements)."""
    return X + i.to(tl.int64) * stride_i + j.to(tl.int64) * stride_j


@triton.jit
def _load_tile(base, offs, stride, ok, offs_d, d_ok):
    """One head's rows ``offs`` (``stride`` apart) as an (rows, HEAD_DIM_PAD) tile; zeros where masked."""
    return tl.load(base + offs[:, None] * stride + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def _dropout_keep(seed_bh, offs_q, offs_k, dropout_p):
    """Keep-mask for the (query, key) positions ``offs_q`` x ``offs_k`` of one (sequence, head).

    Philox counter ``q * 2**16 + k`` from positions within the sequence (not rows of a
    layout, not tiles): the same mask in padded and packed layouts, for every tile size.
    """
    counter = (offs_q.to(tl.uint32) << 16) | offs_k.to(tl.uint32)
    return tl.rand(seed_bh, counter) >= dropout_p


@triton.jit
def _scores(q, k, scale, mask_ptrs, mask_ok, key_ok, HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr):
    """Scaled, masked scores ``q @ k.T * scale + mask`` in fp32; dead keys get -inf."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    if HAS_MASK:
        m = tl.load(mask_ptrs, mask=mask_ok, other=0)
        if MASK_IS_BOOL:
            s = tl.where(m != 0, s, float("-inf"))
        else:
            s = s + m.to(tl.float32)
    return tl.where(key_ok, s, float("-inf"))


@triton.jit
def _load_row_stats(stats, stride_part, delta, offs, ok):
    """The forward's row max and log exp-sum, and the backward's ``delta``, at query rows ``offs``."""
    m = tl.load(stats + offs, mask=ok, other=float("inf"))
    log_sum = tl.load(stats + stride_part + offs, mask=ok, other=0.0)
    return m, log_sum, tl.load(delta + offs, mask=ok, other=0.0)


@triton.jit
def _probs_and_dscores(
    x_r, x_c, g_r, g_c, m, log_sum, delta, offs_q, offs_k, scale, mask_ptrs, mask_ok, key_ok, seed_bh, dropout_p,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):  # fmt: skip
    """Recompute a tile of the forward's probabilities P and the gradient dS of its scores.

    Scores are ``x_r @ x_c.T`` and ``dP = g_r @ g_c.T``: a queries x keys tile takes
    (q, k, dO, V), a keys x queries tile (k, q, V, dO); ``m``, ``log_sum``, ``delta`` and
    the positions come broadcast to the tile's orientation. Returns (P after dropout,
    dS = P * (dP - delta)), dP dropped with P's mask.
    """
    s = _scores(x_r, x_c, scale, mask_ptrs, mask_ok, key_ok, HAS_MASK, MASK_IS_BOOL)
    p = tl.exp(s - m - log_sum)
    dp = tl.dot(g_r, tl.trans(g_c), input_precision="ieee")
    p_dropped = p
    if HAS_DROPOUT:
        keep = _dropout_keep(seed_bh, offs_q, offs_k, dropout_p)
        keep_scale = 1.0 / (1.0 - dropout_p)
        p_dropped = tl.where(keep, p * keep_scale, 0.0)
        dp = tl.where(keep, dp * keep_scale, 0.0)
    return p_dropped, p * (dp - delta)


# ---------------------------------------------------------------------------
# Kernels. ``IS_VARLEN``: tensors are packed (tokens, ...) with sequence b at rows
# cu_seqlens[b]:cu_seqlens[b+1] (batch strides 0), ``seq_len`` is the longest
# sequence, and tiles past their sequence's end exit at once.
# ---------------------------------------------------------------------------


@_register("attention_fwd")
def _attn_fwd(
    QKV, Out, Stats, Mask, KeyLen, CuSeqlens,
    stride_qkv_b, stride_qkv_s, stride_out_b, stride_out_s, stride_stats_b, stride_stats_h, stride_stats_part,
    stride_mask_b, stride_mask_h, stride_mask_q, stride_mask_k,
    seq_len, num_heads, scale, dropout_p, seed,
    SEQ_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, HAS_KEYLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m, b, h, pid_bh = _tile_ids(seq_len, num_heads, BLOCK_M)
    start, rows, kv_end = _sequence(b, CuSeqlens, KeyLen, seq_len, IS_VARLEN, HAS_KEYLEN)
    if pid_m * BLOCK_M >= rows:
        return
    hidden = num_heads * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    row_ok = offs_m < rows
    d_ok = offs_d < HEAD_DIM
    q_base = _base(QKV, b, start, stride_qkv_b, stride_qkv_s) + h * HEAD_DIM
    q = _load_tile(q_base, offs_m, stride_qkv_s, row_ok, offs_d, d_ok)
    out_base = _base(Out, b, start, stride_out_b, stride_out_s) + h * HEAD_DIM
    stats = _base(Stats, b, h, stride_stats_b, stride_stats_h) + start + offs_m
    mask_rows = _base(Mask, b, h, stride_mask_b, stride_mask_h) + offs_m[:, None] * stride_mask_q
    seed_bh = seed + pid_bh.to(tl.int64) * 4294967296  # (b, h) in the high word of Philox's key
    keep_scale = 1.0 / (1.0 - dropout_p)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    for start_n in range(0, kv_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < kv_end
        k = _load_tile(q_base + hidden, offs_n, stride_qkv_s, key_ok, offs_d, d_ok)
        s = _scores(q, k, scale, mask_rows + offs_n[None, :] * stride_mask_k, row_ok[:, None] & key_ok[None, :],
                    key_ok[None, :], HAS_MASK, MASK_IS_BOOL)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys masked so far: avoid inf - inf
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed_bh, offs_m[:, None], offs_n[None, :], dropout_p)
            p = tl.where(keep, p * keep_scale, 0.0)
        v = _load_tile(q_base + 2 * hidden, offs_n, stride_qkv_s, key_ok, offs_d, d_ok)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    dead = l_i == 0.0
    l_safe = tl.where(dead, 1.0, l_i)
    tl.store(out_base + offs_m[:, None] * stride_out_s + offs_d[None, :], (acc / l_safe[:, None]).to(Out.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(stats, tl.where(dead, float("inf"), m_i), mask=row_ok)
    tl.store(stats + stride_stats_part, tl.log(l_safe), mask=row_ok)


@_register("attention_bwd_delta")
def _attn_bwd_delta(
    Out, dOut, Delta, CuSeqlens,
    stride_out_b, stride_out_s, stride_dout_b, stride_dout_s, stride_delta_b, stride_delta_h,
    seq_len, num_heads,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, IS_VARLEN: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_m, b, h, _ = _tile_ids(seq_len, num_heads, BLOCK_M)
    start, rows, _ = _sequence(b, CuSeqlens, CuSeqlens, seq_len, IS_VARLEN, False)
    if pid_m * BLOCK_M >= rows:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    row_ok = offs_m < rows
    d_ok = offs_d < HEAD_DIM
    o = _load_tile(_base(Out, b, start, stride_out_b, stride_out_s) + h * HEAD_DIM, offs_m, stride_out_s, row_ok, offs_d, d_ok)
    do = _load_tile(_base(dOut, b, start, stride_dout_b, stride_dout_s) + h * HEAD_DIM, offs_m, stride_dout_s, row_ok,
                    offs_d, d_ok)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(_base(Delta, b, h, stride_delta_b, stride_delta_h) + start + offs_m, delta, mask=row_ok)


@_register("attention_bwd_dkdv")
def _attn_bwd_dkdv(
    QKV, dOut, Stats, Delta, dQKV, Mask, KeyLen, CuSeqlens,
    stride_qkv_b, stride_qkv_s, stride_dout_b, stride_dout_s, stride_dqkv_b, stride_dqkv_s,
    stride_stats_b, stride_stats_h, stride_stats_part, stride_delta_b, stride_delta_h,
    stride_mask_b, stride_mask_h, stride_mask_q, stride_mask_k,
    seq_len, num_heads, scale, dropout_p, seed,
    SEQ_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, HAS_KEYLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Works on transposed tiles (keys x queries), so the row reductions of the
    # forward become column broadcasts here.
    pid_n, b, h, pid_bh = _tile_ids(seq_len, num_heads, BLOCK_N)
    start, rows, kv_end = _sequence(b, CuSeqlens, KeyLen, seq_len, IS_VARLEN, HAS_KEYLEN)
    if pid_n * BLOCK_N >= rows:
        return
    hidden = num_heads * HEAD_DIM
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    key_ok = offs_n < kv_end
    q_base = _base(QKV, b, start, stride_qkv_b, stride_qkv_s) + h * HEAD_DIM
    do_base = _base(dOut, b, start, stride_dout_b, stride_dout_s) + h * HEAD_DIM
    stats = _base(Stats, b, h, stride_stats_b, stride_stats_h) + start
    delta_base = _base(Delta, b, h, stride_delta_b, stride_delta_h) + start
    mask_cols = _base(Mask, b, h, stride_mask_b, stride_mask_h) + offs_n[:, None] * stride_mask_k
    seed_bh = seed + pid_bh.to(tl.int64) * 4294967296

    dk = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)
    if pid_n * BLOCK_N < kv_end:  # padded: key tiles past the key length get zero gradients
        k = _load_tile(q_base + hidden, offs_n, stride_qkv_s, key_ok, offs_d, d_ok)
        v = _load_tile(q_base + 2 * hidden, offs_n, stride_qkv_s, key_ok, offs_d, d_ok)
        for start_m in range(0, rows, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < rows
            q = _load_tile(q_base, offs_m, stride_qkv_s, row_ok, offs_d, d_ok)
            do = _load_tile(do_base, offs_m, stride_dout_s, row_ok, offs_d, d_ok)
            m, log_sum, delta = _load_row_stats(stats, stride_stats_part, delta_base, offs_m, row_ok)
            pT, dsT = _probs_and_dscores(
                k, q, v, do, m[None, :], log_sum[None, :], delta[None, :], offs_m[None, :], offs_n[:, None], scale,
                mask_cols + offs_m[None, :] * stride_mask_q, key_ok[:, None] & row_ok[None, :], key_ok[:, None],
                seed_bh, dropout_p, HAS_MASK, MASK_IS_BOOL, HAS_DROPOUT,
            )  # fmt: skip
            dv += tl.dot(pT.to(do.dtype), do, input_precision="ieee")
            dk += tl.dot(dsT.to(q.dtype), q, input_precision="ieee")

    d_ptrs = _base(dQKV, b, start, stride_dqkv_b, stride_dqkv_s) + h * HEAD_DIM + offs_n[:, None] * stride_dqkv_s
    store_mask = (offs_n < rows)[:, None] & d_ok[None, :]
    tl.store(d_ptrs + hidden + offs_d[None, :], (dk * scale).to(dQKV.dtype.element_ty), mask=store_mask)
    tl.store(d_ptrs + 2 * hidden + offs_d[None, :], dv.to(dQKV.dtype.element_ty), mask=store_mask)


@_register("attention_bwd_dq")
def _attn_bwd_dq(
    QKV, dOut, Stats, Delta, dQKV, Mask, KeyLen, CuSeqlens,
    stride_qkv_b, stride_qkv_s, stride_dout_b, stride_dout_s, stride_dqkv_b, stride_dqkv_s,
    stride_stats_b, stride_stats_h, stride_stats_part, stride_delta_b, stride_delta_h,
    stride_mask_b, stride_mask_h, stride_mask_q, stride_mask_k,
    seq_len, num_heads, scale, dropout_p, seed,
    SEQ_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, HAS_KEYLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m, b, h, pid_bh = _tile_ids(seq_len, num_heads, BLOCK_M)
    start, rows, kv_end = _sequence(b, CuSeqlens, KeyLen, seq_len, IS_VARLEN, HAS_KEYLEN)
    if pid_m * BLOCK_M >= rows:
        return
    hidden = num_heads * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    row_ok = offs_m < rows
    d_ok = offs_d < HEAD_DIM
    q_base = _base(QKV, b, start, stride_qkv_b, stride_qkv_s) + h * HEAD_DIM
    q = _load_tile(q_base, offs_m, stride_qkv_s, row_ok, offs_d, d_ok)
    do = _load_tile(_base(dOut, b, start, stride_dout_b, stride_dout_s) + h * HEAD_DIM, offs_m, stride_dout_s, row_ok,
                    offs_d, d_ok)
    m, log_sum, delta = _load_row_stats(_base(Stats, b, h, stride_stats_b, stride_stats_h) + start, stride_stats_part,
                                        _base(Delta, b, h, stride_delta_b, stride_delta_h) + start, offs_m, row_ok)
    mask_rows = _base(Mask, b, h, stride_mask_b, stride_mask_h) + offs_m[:, None] * stride_mask_q
    seed_bh = seed + pid_bh.to(tl.int64) * 4294967296

    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    for start_n in range(0, kv_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < kv_end
        k = _load_tile(q_base + hidden, offs_n, stride_qkv_s, key_ok, offs_d, d_ok)
        v = _load_tile(q_base + 2 * hidden, offs_n, stride_qkv_s, key_ok, offs_d, d_ok)
        _, ds = _probs_and_dscores(
            q, k, do, v, m[:, None], log_sum[:, None], delta[:, None], offs_m[:, None], offs_n[None, :], scale,
            mask_rows + offs_n[None, :] * stride_mask_k, row_ok[:, None] & key_ok[None, :], key_ok[None, :],
            seed_bh, dropout_p, HAS_MASK, MASK_IS_BOOL, HAS_DROPOUT,
        )  # fmt: skip
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")

    dq_ptrs = _base(dQKV, b, start, stride_dqkv_b, stride_dqkv_s) + h * HEAD_DIM + offs_m[:, None] * stride_dqkv_s
    tl.store(dq_ptrs + offs_d[None, :], (dq * scale).to(dQKV.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------

_TUNING_KEY = ["SEQ_BUCKET", "HEAD_DIM", "HAS_MASK", "MASK_IS_BOOL", "HAS_KEYLEN", "HAS_DROPOUT"]


@functools.lru_cache(maxsize=None)
def _tuned(name: str, arch: int, dtype: str, head_dim_pad: int, dropout: bool):
    """The autotuned launcher of kernel ``name`` for one (arch, dtype, head dim, dropout) bucket."""
    entry = registry.get(name)
    if arch == 0:
        configs = [_INTERPRETER_CONFIGS[name.removeprefix("varlen_")]]
    else:
        configs = entry.configs(arch, dtype=dtype, head_dim_pad=head_dim_pad, dropout=dropout)
    key = [k for k in _TUNING_KEY if k in entry.fn.arg_names]
    return triton.autotune(configs=configs, key=key)(entry.fn)


def check_supported(qkv: torch.Tensor, num_heads: int, seq_len: int, dropout_p: float) -> None:
    """TypeError/ValueError unless the kernels take this ``qkv`` (padded ``(batch, seq, 3*hidden)``
    or packed ``(tokens, 3*hidden)``, already checked by ``fastbert.ops.attention``): float16,
    bfloat16 or float32 on a device the kernels run on, ``head_dim`` at most ``MAX_HEAD_DIM``,
    and sequences (``seq_len``: the padded length, or ``max_seqlen``) of at most
    ``MAX_DROPOUT_SEQLEN`` positions with dropout. The ops' Triton path calls it once per
    call; the launchers below check nothing."""
    if qkv.dtype not in TRITON_NAMES:
        raise TypeError(f"qkv must be float16, bfloat16 or float32 for the Triton attention kernel, got {qkv.dtype}")
    launch.check_device("qkv", qkv)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be at most {MAX_HEAD_DIM} for the Triton attention kernel, got {head_dim}")
    if dropout_p > 0.0 and seq_len > MAX_DROPOUT_SEQLEN:
        raise ValueError(
            f"dropout needs sequences of at most {MAX_DROPOUT_SEQLEN} positions (16-bit positions in the "
            f"RNG counter), got {seq_len}"
        )


class _Masks(NamedTuple):
    """Masks as the kernels take them: a 4D mask view (strides 0 where broadcast) and key lengths."""

    attn_mask: torch.Tensor | None = None
    strides: tuple[int, int, int, int] = (0, 0, 0, 0)
    is_bool: bool = False
    key_lengths: torch.Tensor | None = None


def _mask_args(attn_mask, key_lengths) -> _Masks:
    """The masks of a padded ``qkv`` as the kernels read them (shapes and devices checked by the op)."""
    masks = _Masks(key_lengths=key_lengths)
    if attn_mask is not None:
        mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
        if mask.dtype == torch.float64:
            mask = mask.float()  # the kernel adds masks in fp32
        strides = tuple(0 if size == 1 else stride for size, stride in zip(mask.shape, mask.stride()))
        masks = masks._replace(attn_mask=mask, strides=strides, is_bool=mask.dtype == torch.bool)
    return masks


def _seq_bucket(seq: int) -> int:
    return max(16, triton.next_power_of_2(seq))


def _outer_strides(t: torch.Tensor, packed: bool) -> tuple[int, int]:
    """Strides of ``t``'s (batch, next) dimensions; packed tensors have no batch dimension (stride 0)."""
    return (0, t.stride(0)) if packed else (t.stride(0), t.stride(1))


def _kernel_meta(qkv: torch.Tensor, num_heads: int, packed: bool, masks: _Masks, dropout_p: float) -> dict:
    head_dim = qkv.shape[-1] // (3 * num_heads)
    return dict(
        HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)), IS_VARLEN=packed,
        HAS_MASK=masks.attn_mask is not None, MASK_IS_BOOL=masks.is_bool, HAS_KEYLEN=masks.key_lengths is not None,
        HAS_DROPOUT=dropout_p > 0.0,
    )  # fmt: skip


def _forward(qkv, num_heads, batch, seq_len, cu_seqlens, masks: _Masks, dropout_p, scale, seed):
    """Run the forward kernel: padded, or packed when ``cu_seqlens`` is given (``seq_len`` = longest sequence)."""
    packed = cu_seqlens is not None
    meta = _kernel_meta(qkv, num_heads, packed, masks, dropout_p)
    scale = 1.0 / math.sqrt(meta["HEAD_DIM"]) if scale is None else float(scale)
    hidden = qkv.shape[-1] // 3
    out = launch.empty((*qkv.shape[:-1], hidden), qkv.dtype, qkv.device)
    stats_shape = (num_heads, 2, qkv.shape[0]) if packed else (batch, num_heads, 2, seq_len)
    stats = launch.empty(stats_shape, torch.float32, qkv.device)
    if out.numel() == 0 or seq_len == 0:
        return out, stats
    name = "varlen_attention_fwd" if packed else "attention_fwd"
    kernel = _tuned(name, launch.arch(qkv.device), TRITON_NAMES[qkv.dtype], meta["HEAD_DIM_PAD"], dropout_p > 0.0)
    grid = lambda m: (triton.cdiv(seq_len, m["BLOCK_M"]) * batch * num_heads,)  # noqa: E731
    kernel[grid](
        qkv, out, stats, _or(masks.attn_mask, qkv), _or(masks.key_lengths, qkv), _or(cu_seqlens, qkv),
        *_outer_strides(qkv, packed), *_outer_strides(out, packed), *_outer_strides(stats, packed), stats.stride(-2),
        *masks.strides, seq_len, num_heads, scale, float(dropout_p), seed, _seq_bucket(seq_len), **meta,
    )  # fmt: skip
    return out, stats


def _backward(dout, qkv, out, stats, num_heads, batch, seq_len, cu_seqlens, masks: _Masks, dropout_p, scale, seed):
    """Run the backward kernels (delta, dK/dV, dQ), padded or packed as :func:`_forward`."""
    packed = cu_seqlens is not None
    meta = _kernel_meta(qkv, num_heads, packed, masks, dropout_p)
    scale = 1.0 / math.sqrt(meta["HEAD_DIM"]) if scale is None else float(scale)
    dqkv = launch.empty(tuple(qkv.shape), qkv.dtype, qkv.device)
    if dqkv.numel() == 0 or seq_len == 0:
        return dqkv
    arch, dtype, prefix = launch.arch(qkv.device), TRITON_NAMES[qkv.dtype], "varlen_" if packed else ""
    tuned = lambda kernel, dropout: _tuned(prefix + kernel, arch, dtype, meta["HEAD_DIM_PAD"], dropout)  # noqa: E731
    delta = launch.empty((*stats.shape[:-2], stats.shape[-1]), torch.float32, qkv.device)
    cu = _or(cu_seqlens, qkv)
    tiles = lambda block: (triton.cdiv(seq_len, block) * batch * num_heads,)  # noqa: E731
    tuned("attention_bwd_delta", False)[lambda m: tiles(m["BLOCK_M"])](
        out, dout, delta, cu, *_outer_strides(out, packed), *_outer_strides(dout, packed), *_outer_strides(delta, packed),
        seq_len, num_heads, HEAD_DIM=meta["HEAD_DIM"], HEAD_DIM_PAD=meta["HEAD_DIM_PAD"], IS_VARLEN=packed,
    )  # fmt: skip
    args = (
        qkv, dout, stats, delta, dqkv, _or(masks.attn_mask, qkv), _or(masks.key_lengths, qkv), cu,
        *_outer_strides(qkv, packed), *_outer_strides(dout, packed), *_outer_strides(dqkv, packed),
        *_outer_strides(stats, packed), stats.stride(-2), *_outer_strides(delta, packed), *masks.strides,
        seq_len, num_heads, scale, float(dropout_p), seed, _seq_bucket(seq_len),
    )  # fmt: skip
    tuned("attention_bwd_dkdv", dropout_p > 0.0)[lambda m: tiles(m["BLOCK_N"])](*args, **meta)
    tuned("attention_bwd_dq", dropout_p > 0.0)[lambda m: tiles(m["BLOCK_M"])](*args, **meta)
    return dqkv


def _or(t: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    """``t``, or a dummy pointer for a kernel argument its constexpr flags leave unread."""
    return dummy if t is None else t


def attention_forward(
    qkv: torch.Tensor,
    num_heads: int,
    attn_mask: torch.Tensor | None = None,
    key_lengths: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention forward over ``qkv`` of shape (batch, seq, 3*hidden).

    Returns ``(out, stats)``: ``out`` (batch, seq, hidden) contiguous in ``qkv``'s
    dtype, and ``stats`` (batch, heads, 2, seq) float32, each query row's score max
    (``+inf`` for rows with no live key) and log of its shifted exp-sum (their sum
    is the row's log-sum-exp), needed by :func:`attention_backward`.
    ``scale`` defaults to ``1/sqrt(head_dim)``; ``seed`` (in ``[0, 2**31)``) selects
    the dropout mask; ``key_lengths`` values are clamped to ``[0, seq]``.
    Trusts its caller (see the module docstring).
    """
    batch, seq = qkv.shape[:2]
    masks = _mask_args(attn_mask, key_lengths)
    return _forward(qkv, num_heads, batch, seq, None, masks, dropout_p, scale, seed)


def attention_backward(
    dout: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    stats: torch.Tensor,
    num_heads: int,
    attn_mask: torch.Tensor | None = None,
    key_lengths: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Gradient of :func:`attention_forward` with respect to ``qkv``.

    ``out`` and ``stats`` are the forward's results; masks, ``dropout_p``, ``scale``
    and ``seed`` must be the forward's. Returns ``dqkv`` (batch, seq, 3*hidden),
    contiguous, in ``qkv``'s dtype. No gradient flows to ``attn_mask``. Trusts its caller.
    """
    batch, seq = qkv.shape[:2]
    masks = _mask_args(attn_mask, key_lengths)
    return _backward(dout, qkv, out, stats, num_heads, batch, seq, None, masks, dropout_p, scale, seed)


# --- packed (variable-length) layout --------------------------------------------------


def varlen_attention_forward(
    qkv: torch.Tensor, num_heads: int, cu_seqlens: torch.Tensor, max_seqlen: int,
    dropout_p: float = 0.0, scale: float | None = None, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Fused attention forward over packed ``qkv`` (tokens, 3*hidden): sequence ``b`` is
    rows ``cu_seqlens[b]:cu_seqlens[b+1]`` and attends only to itself.

    Returns ``(out, stats)``: ``out`` (tokens, hidden) contiguous in ``qkv``'s dtype and
    ``stats`` (heads, 2, tokens) float32 (as :func:`attention_forward`'s, per token).
    Rows outside every sequence (past ``cu_seqlens[-1]``) are not written.
    Trusts its caller (``fastbert.ops.attention`` and :func:`check_supported` check):
    ``cu_seqlens`` int32 of ``batch + 1`` non-decreasing offsets from 0, ``max_seqlen``
    at least the longest sequence.
    """
    return _forward(qkv, num_heads, cu_seqlens.shape[0] - 1, max_seqlen, cu_seqlens, _Masks(), dropout_p, scale, seed)


def varlen_attention_backward(
    dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, stats: torch.Tensor, num_heads: int,
    cu_seqlens: torch.Tensor, max_seqlen: int, dropout_p: float = 0.0, scale: float | None = None, seed: int = 0,
) -> torch.Tensor:  # fmt: skip
    """Gradient of :func:`varlen_attention_forward` with respect to ``qkv``: ``dqkv``
    (tokens, 3*hidden) contiguous in ``qkv``'s dtype (rows outside every sequence not written).

    ``dout`` and ``out`` (tokens, hidden) have stride 1 in their last dimension; the other
    arguments are the forward's. Trusts its caller like the forward.
    """
    return _backward(
        dout, qkv, out, stats, num_heads, cu_seqlens.shape[0] - 1, max_seqlen, cu_seqlens, _Masks(), dropout_p, scale, seed
    )
