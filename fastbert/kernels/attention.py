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
``(batch, seq, 3 * hidden)`` tensor laid out like ``qkv``.

Masks: ``key_lengths`` bounds the key loop, so tiles past a sequence's length are
never loaded (the padding fast path); ``attn_mask`` (bool or additive, broadcast via
stride 0) is loaded per tile. Rows without a live key output zeros and store
``m = +inf``, so the backward recomputes ``p = exp(s - m - log_sum) = 0`` for them.

Dropout on the attention probabilities uses Triton's counter-based Philox RNG keyed
by ``(seed, batch * heads + head)`` with counter ``q * seq + k``: the backward pass
regenerates the forward's mask exactly, whatever its tile sizes.

The oracle is ``fastbert.ops.attention.attention_reference``.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from fastbert.kernels import launch, registry
from fastbert.kernels.registry import Variant

MAX_HEAD_DIM = 128
_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


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
            "fp32": [(16, 32, 4, 2), (16, 16, 4, 2)],  # 32x16 on 4 warps spills on sm_86/89 under Triton 3.6
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


def attention_configs(kernel: str, arch: int, *, dtype: str, head_dim_pad: int, dropout: bool) -> list[triton.Config]:
    """Autotune configs of an attention kernel for ``arch`` (80 or 90) and one shape bucket."""
    if kernel == "attention_bwd_delta":  # a bandwidth-bound row reduction: one config suffices
        return [triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1)]
    return [_cfg(*c) for c in _TABLE[kernel][arch][_family(dtype, head_dim_pad, dropout)]]


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
# largest head dim, on a BERT-large-sized problem.
# ---------------------------------------------------------------------------

_GATE_CASES = [  # dtype, head_dim, mask pointer type, dropout
    ("fp16", 64, "fp32", False),
    ("bf16", 128, "fp32", False),
    ("fp16", 64, "u1", True),
    ("bf16", 128, "fp32", True),
    ("fp32", 128, "fp32", True),
]


def _gate_variants(kernel: str) -> list[Variant]:
    seq, hidden = 512, 1024
    rows = {"b": seq * hidden, "s": hidden}  # strides of a (batch, seq, hidden) tensor
    fused = {"b": seq * 3 * hidden, "s": 3 * hidden}  # strides of a (batch, seq, 3 * hidden) tensor
    strides = lambda name, st: {f"stride_{name}_b": st["b"], f"stride_{name}_s": st["s"]}  # noqa: E731
    variants = []
    for dtype, head_dim, mask, dropout in _GATE_CASES[:1] if kernel == "attention_bwd_delta" else _GATE_CASES:
        t = f"*{dtype}"
        args: dict = {"seq_len": seq, "num_heads": hidden // head_dim, "HEAD_DIM": head_dim, "HEAD_DIM_PAD": head_dim}
        if kernel == "attention_bwd_delta":
            args |= {"Out": t, "dOut": t, "Delta": "*fp32", **strides("out", rows), **strides("dout", rows)}
        else:
            args |= {"QKV": t, "Stats": "*fp32", "Mask": f"*{mask}", "KeyLen": "*i64", **strides("qkv", fused)}
            args |= {"stride_mask_b": seq, "stride_mask_h": 0, "stride_mask_q": 0, "stride_mask_k": 1}  # (B, 1, 1, S)
            args |= {"scale": "fp32", "dropout_p": "fp32", "seed": "i32", "SEQ_BUCKET": seq}
            args |= {"HAS_MASK": True, "MASK_IS_BOOL": mask == "u1", "HAS_KEYLEN": True, "HAS_DROPOUT": dropout}
        if kernel == "attention_fwd":
            args |= {"Out": t, **strides("out", rows)}
        elif kernel != "attention_bwd_delta":
            args |= {"dOut": t, "Delta": "*fp32", "dQKV": t, **strides("dout", rows), **strides("dqkv", fused)}
        label = f"{dtype} d{head_dim}" if kernel == "attention_bwd_delta" else f"{dtype} d{head_dim} mask={mask} keylen"
        label += " dropout" if dropout else ""
        key = {"dtype": dtype, "head_dim_pad": head_dim, "dropout": dropout}
        matrix = kernel != "attention_bwd_delta" and dtype != "fp32"  # fp32 uses exact FMA dots
        variants.append(Variant(label, args, key, matrix))
    return variants


def _register(name: str):
    """Register an attention kernel with its gate variants and config table."""
    return registry.kernel(name=name, variants=_gate_variants(name), configs=functools.partial(attention_configs, name))


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _dropout_keep(seed_bh, offs_q, offs_k, seq_len, dropout_p):
    """Keep-mask for probabilities (offs_q x offs_k); the same in forward and backward."""
    return tl.rand(seed_bh, offs_q * seq_len + offs_k) >= dropout_p


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


@_register("attention_fwd")
def _attn_fwd(
    QKV, Out, Stats, Mask, KeyLen,
    stride_qkv_b, stride_qkv_s, stride_out_b, stride_out_s,
    stride_mask_b, stride_mask_h, stride_mask_q, stride_mask_k,
    seq_len, num_heads, scale, dropout_p, seed,
    SEQ_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, HAS_KEYLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    num_m = tl.cdiv(seq_len, BLOCK_M)
    pid_m = tl.program_id(0) % num_m
    pid_bh = tl.program_id(0) // num_m
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    hidden = num_heads * HEAD_DIM

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    row_ok = offs_m < seq_len
    d_ok = offs_d < HEAD_DIM
    q_base = QKV + b.to(tl.int64) * stride_qkv_b + h * HEAD_DIM
    q = tl.load(q_base + offs_m[:, None] * stride_qkv_s + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = q_base + hidden
    v_base = q_base + 2 * hidden

    kv_end = seq_len
    if HAS_KEYLEN:
        kv_end = tl.minimum(tl.maximum(tl.load(KeyLen + b).to(tl.int32), 0), seq_len)
    mask_rows = Mask + b.to(tl.int64) * stride_mask_b + h.to(tl.int64) * stride_mask_h + offs_m[:, None] * stride_mask_q
    seed_bh = seed + pid_bh.to(tl.int64) * 4294967296  # (b, h) in the high word of Philox's key
    keep_scale = 1.0 / (1.0 - dropout_p)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    for start_n in range(0, kv_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < kv_end
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_qkv_s + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _scores(q, k, scale, mask_rows + offs_n[None, :] * stride_mask_k, row_ok[:, None] & key_ok[None, :],
                    key_ok[None, :], HAS_MASK, MASK_IS_BOOL)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys masked so far: avoid inf - inf
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed_bh, offs_m[:, None], offs_n[None, :], seq_len, dropout_p)
            p = tl.where(keep, p * keep_scale, 0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_qkv_s + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    dead = l_i == 0.0
    l_safe = tl.where(dead, 1.0, l_i)
    out = acc / l_safe[:, None]
    out_ptrs = Out + b.to(tl.int64) * stride_out_b + offs_m[:, None] * stride_out_s + h * HEAD_DIM + offs_d[None, :]
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    stats = Stats + pid_bh.to(tl.int64) * 2 * seq_len + offs_m
    tl.store(stats, tl.where(dead, float("inf"), m_i), mask=row_ok)
    tl.store(stats + seq_len, tl.log(l_safe), mask=row_ok)


@_register("attention_bwd_delta")
def _attn_bwd_delta(
    Out, dOut, Delta,
    stride_out_b, stride_out_s, stride_dout_b, stride_dout_s,
    seq_len, num_heads,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    num_m = tl.cdiv(seq_len, BLOCK_M)
    pid_m = tl.program_id(0) % num_m
    pid_bh = tl.program_id(0) // num_m
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    ok = (offs_m < seq_len)[:, None] & (offs_d < HEAD_DIM)[None, :]
    cols = h * HEAD_DIM + offs_d[None, :]
    o = tl.load(Out + b.to(tl.int64) * stride_out_b + offs_m[:, None] * stride_out_s + cols, mask=ok, other=0.0)
    do = tl.load(dOut + b.to(tl.int64) * stride_dout_b + offs_m[:, None] * stride_dout_s + cols, mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + pid_bh.to(tl.int64) * seq_len + offs_m, delta, mask=offs_m < seq_len)


@_register("attention_bwd_dkdv")
def _attn_bwd_dkdv(
    QKV, dOut, Stats, Delta, dQKV, Mask, KeyLen,
    stride_qkv_b, stride_qkv_s, stride_dout_b, stride_dout_s, stride_dqkv_b, stride_dqkv_s,
    stride_mask_b, stride_mask_h, stride_mask_q, stride_mask_k,
    seq_len, num_heads, scale, dropout_p, seed,
    SEQ_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, HAS_KEYLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Works on transposed tiles (keys x queries), so the row reductions of the
    # forward become column broadcasts here.
    num_n = tl.cdiv(seq_len, BLOCK_N)
    pid_n = tl.program_id(0) % num_n
    pid_bh = tl.program_id(0) // num_n
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    hidden = num_heads * HEAD_DIM

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    kv_end = seq_len
    if HAS_KEYLEN:
        kv_end = tl.minimum(tl.maximum(tl.load(KeyLen + b).to(tl.int32), 0), seq_len)
    key_ok = offs_n < kv_end

    q_base = QKV + b.to(tl.int64) * stride_qkv_b + h * HEAD_DIM
    do_base = dOut + b.to(tl.int64) * stride_dout_b + h * HEAD_DIM
    mask_cols = Mask + b.to(tl.int64) * stride_mask_b + h.to(tl.int64) * stride_mask_h + offs_n[:, None] * stride_mask_k
    seed_bh = seed + pid_bh.to(tl.int64) * 4294967296
    keep_scale = 1.0 / (1.0 - dropout_p)

    dk = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)
    if pid_n * BLOCK_N < kv_end:  # key tiles past the sequence's length get zero gradients
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(q_base + hidden + offs_n[:, None] * stride_qkv_s + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(q_base + 2 * hidden + offs_n[:, None] * stride_qkv_s + offs_d[None, :], mask=kv_mask, other=0.0)
        for start_m in range(0, seq_len, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < seq_len
            q_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + offs_m[:, None] * stride_qkv_s + offs_d[None, :], mask=q_mask, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * stride_dout_s + offs_d[None, :], mask=q_mask, other=0.0)
            stats = Stats + pid_bh.to(tl.int64) * 2 * seq_len + offs_m
            m = tl.load(stats, mask=row_ok, other=float("inf"))
            log_sum = tl.load(stats + seq_len, mask=row_ok, other=0.0)
            delta = tl.load(Delta + pid_bh.to(tl.int64) * seq_len + offs_m, mask=row_ok, other=0.0)
            sT = _scores(k, q, scale, mask_cols + offs_m[None, :] * stride_mask_q, key_ok[:, None] & row_ok[None, :],
                         key_ok[:, None], HAS_MASK, MASK_IS_BOOL)
            pT = tl.exp(sT - m[None, :] - log_sum[None, :])
            dpT = tl.dot(v, tl.trans(do), input_precision="ieee")
            if HAS_DROPOUT:
                keep = _dropout_keep(seed_bh, offs_m[None, :], offs_n[:, None], seq_len, dropout_p)
                dv += tl.dot(tl.where(keep, pT * keep_scale, 0.0).to(do.dtype), do, input_precision="ieee")
                dpT = tl.where(keep, dpT * keep_scale, 0.0)
            else:
                dv += tl.dot(pT.to(do.dtype), do, input_precision="ieee")
            dsT = pT * (dpT - delta[None, :])
            dk += tl.dot(dsT.to(q.dtype), q, input_precision="ieee")

    store_mask = (offs_n < seq_len)[:, None] & d_ok[None, :]
    d_base = dQKV + b.to(tl.int64) * stride_dqkv_b + offs_n[:, None] * stride_dqkv_s + h * HEAD_DIM + offs_d[None, :]
    tl.store(d_base + hidden, (dk * scale).to(dQKV.dtype.element_ty), mask=store_mask)
    tl.store(d_base + 2 * hidden, dv.to(dQKV.dtype.element_ty), mask=store_mask)


@_register("attention_bwd_dq")
def _attn_bwd_dq(
    QKV, dOut, Stats, Delta, dQKV, Mask, KeyLen,
    stride_qkv_b, stride_qkv_s, stride_dout_b, stride_dout_s, stride_dqkv_b, stride_dqkv_s,
    stride_mask_b, stride_mask_h, stride_mask_q, stride_mask_k,
    seq_len, num_heads, scale, dropout_p, seed,
    SEQ_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, HAS_KEYLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    num_m = tl.cdiv(seq_len, BLOCK_M)
    pid_m = tl.program_id(0) % num_m
    pid_bh = tl.program_id(0) // num_m
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    hidden = num_heads * HEAD_DIM

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    row_ok = offs_m < seq_len
    d_ok = offs_d < HEAD_DIM
    q_mask = row_ok[:, None] & d_ok[None, :]
    q_base = QKV + b.to(tl.int64) * stride_qkv_b + h * HEAD_DIM
    q = tl.load(q_base + offs_m[:, None] * stride_qkv_s + offs_d[None, :], mask=q_mask, other=0.0)
    do_ptrs = dOut + b.to(tl.int64) * stride_dout_b + offs_m[:, None] * stride_dout_s + h * HEAD_DIM + offs_d[None, :]
    do = tl.load(do_ptrs, mask=q_mask, other=0.0)
    stats = Stats + pid_bh.to(tl.int64) * 2 * seq_len + offs_m
    m = tl.load(stats, mask=row_ok, other=float("inf"))
    log_sum = tl.load(stats + seq_len, mask=row_ok, other=0.0)
    delta = tl.load(Delta + pid_bh.to(tl.int64) * seq_len + offs_m, mask=row_ok, other=0.0)

    kv_end = seq_len
    if HAS_KEYLEN:
        kv_end = tl.minimum(tl.maximum(tl.load(KeyLen + b).to(tl.int32), 0), seq_len)
    mask_rows = Mask + b.to(tl.int64) * stride_mask_b + h.to(tl.int64) * stride_mask_h + offs_m[:, None] * stride_mask_q
    seed_bh = seed + pid_bh.to(tl.int64) * 4294967296
    keep_scale = 1.0 / (1.0 - dropout_p)

    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    for start_n in range(0, kv_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < kv_end
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(q_base + hidden + offs_n[:, None] * stride_qkv_s + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(q_base + 2 * hidden + offs_n[:, None] * stride_qkv_s + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _scores(q, k, scale, mask_rows + offs_n[None, :] * stride_mask_k, row_ok[:, None] & key_ok[None, :],
                    key_ok[None, :], HAS_MASK, MASK_IS_BOOL)
        p = tl.exp(s - m[:, None] - log_sum[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        if HAS_DROPOUT:
            keep = _dropout_keep(seed_bh, offs_m[:, None], offs_n[None, :], seq_len, dropout_p)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")

    dq_ptrs = dQKV + b.to(tl.int64) * stride_dqkv_b + offs_m[:, None] * stride_dqkv_s + h * HEAD_DIM + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(dQKV.dtype.element_ty), mask=q_mask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------

_TUNING_KEY = ["SEQ_BUCKET", "HEAD_DIM", "HAS_MASK", "MASK_IS_BOOL", "HAS_KEYLEN", "HAS_DROPOUT"]


@functools.lru_cache(maxsize=None)
def _tuned(name: str, arch: int, dtype: str, head_dim_pad: int, dropout: bool):
    """The autotuned launcher of kernel ``name`` for one (arch, dtype, head dim, dropout) bucket."""
    entry = registry.get(name)
    if arch == 0:
        configs = [_INTERPRETER_CONFIGS[name]]
    else:
        configs = entry.configs(arch, dtype=dtype, head_dim_pad=head_dim_pad, dropout=dropout)
    key = [k for k in _TUNING_KEY if k in entry.fn.arg_names]
    return triton.autotune(configs=configs, key=key)(entry.fn)


def _check_qkv(qkv: torch.Tensor, num_heads: int) -> tuple[int, int, int, int]:
    """Validate ``qkv``; returns (batch, seq, hidden, head_dim)."""
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dtype not in _DTYPES:
        raise TypeError(f"qkv must be float16, bfloat16 or float32 for the Triton attention kernel, got {qkv.dtype}")
    if qkv.dim() != 3:
        raise ValueError(f"qkv must have shape (batch, seq, 3*hidden), got {tuple(qkv.shape)}")
    launch.check_device("qkv", qkv)
    if not isinstance(num_heads, int) or num_heads <= 0 or qkv.shape[2] % (3 * num_heads):
        raise ValueError(f"qkv's last dimension ({qkv.shape[2]}) must be 3 * num_heads * head_dim, num_heads={num_heads}")
    batch, seq, width = qkv.shape
    head_dim = width // (3 * num_heads)
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be at most {MAX_HEAD_DIM} for the Triton attention kernel, got {head_dim}")
    if seq == 0:
        raise ValueError("qkv must have at least one sequence position")
    if qkv.stride(2) != 1:
        raise ValueError(f"qkv must have stride 1 in its last dimension, got strides {qkv.stride()}")
    return batch, seq, width // 3, head_dim


def _mask_args(attn_mask, key_lengths, qkv: torch.Tensor, num_heads: int):
    """Validate the masks; returns (mask tensor or dummy, its 4 strides, has_mask, is_bool, keylen or dummy)."""
    batch, seq = qkv.shape[:2]
    mask, strides, is_bool = qkv, (0, 0, 0, 0), False
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attn_mask must be bool (True = attend) or floating additive, got {attn_mask.dtype}")
        if attn_mask.device != qkv.device:
            raise ValueError(f"attn_mask must be on {qkv.device}, got {attn_mask.device}")
        if attn_mask.dim() > 4:
            raise ValueError(f"attn_mask must have at most 4 dimensions, got shape {tuple(attn_mask.shape)}")
        mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
        full = (batch, num_heads, seq, seq)
        if any(s not in (1, f) for s, f in zip(mask.shape, full)):
            raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (batch, heads, q, k) = {full}")
        if mask.dtype == torch.float64:
            mask = mask.float()  # the kernel adds masks in fp32
        is_bool = mask.dtype == torch.bool
        strides = tuple(0 if size == 1 else stride for size, stride in zip(mask.shape, mask.stride()))
    keylen = qkv
    if key_lengths is not None:
        if not isinstance(key_lengths, torch.Tensor):
            raise TypeError(f"key_lengths must be a tensor or None, got {type(key_lengths).__name__}")
        if key_lengths.shape != (batch,) or key_lengths.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"key_lengths must be an int32/int64 tensor of shape ({batch},), got {key_lengths.dtype} {tuple(key_lengths.shape)}"
            )
        if key_lengths.device != qkv.device:
            raise ValueError(f"key_lengths must be on {qkv.device}, got {key_lengths.device}")
        keylen = key_lengths
    return mask, strides, attn_mask is not None, is_bool, keylen


def _check_dropout(dropout_p: float, seed: int, seq: int) -> None:
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0:
        if not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ValueError(f"seed must be an int in [0, 2**31) when dropout_p > 0, got {seed!r}")
        if seq * seq >= 2**31:
            raise ValueError(f"dropout needs seq**2 < 2**31 (32-bit RNG counters), got seq={seq}")


def _seq_bucket(seq: int) -> int:
    return max(16, triton.next_power_of_2(seq))


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
    """
    batch, seq, hidden, head_dim = _check_qkv(qkv, num_heads)
    mask, mstrides, has_mask, is_bool, keylen = _mask_args(attn_mask, key_lengths, qkv, num_heads)
    _check_dropout(dropout_p, seed, seq)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = launch.empty((batch, seq, hidden), qkv.dtype, qkv.device)
    stats = launch.empty((batch, num_heads, 2, seq), torch.float32, qkv.device)
    if batch == 0:
        return out, stats
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    kernel = _tuned("attention_fwd", launch.arch(qkv.device), _DTYPES[qkv.dtype], head_dim_pad, dropout_p > 0.0)
    grid = lambda meta: (triton.cdiv(seq, meta["BLOCK_M"]) * batch * num_heads,)  # noqa: E731
    kernel[grid](
        qkv, out, stats, mask, keylen,
        qkv.stride(0), qkv.stride(1), out.stride(0), out.stride(1), *mstrides,
        seq, num_heads, scale, float(dropout_p), seed, _seq_bucket(seq),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, HAS_MASK=has_mask, MASK_IS_BOOL=is_bool,
        HAS_KEYLEN=key_lengths is not None, HAS_DROPOUT=dropout_p > 0.0,
    )  # fmt: skip
    return out, stats


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
    contiguous, in ``qkv``'s dtype. No gradient flows to ``attn_mask``.
    """
    batch, seq, hidden, head_dim = _check_qkv(qkv, num_heads)
    mask, mstrides, has_mask, is_bool, keylen = _mask_args(attn_mask, key_lengths, qkv, num_heads)
    _check_dropout(dropout_p, seed, seq)
    for name, t in (("dout", dout), ("out", out)):
        if not isinstance(t, torch.Tensor) or t.shape != (batch, seq, hidden) or t.dtype != qkv.dtype:
            raise ValueError(
                f"{name} must be a {qkv.dtype} tensor of shape {(batch, seq, hidden)}, got "
                f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}"
            )
        if t.device != qkv.device or t.stride(2) != 1:
            raise ValueError(f"{name} must be on {qkv.device} with stride 1 in its last dimension")
    expected = (batch, num_heads, 2, seq)
    if not isinstance(stats, torch.Tensor) or stats.shape != expected or stats.dtype != torch.float32:
        raise ValueError(f"stats must be the forward's float32 tensor of shape {expected}")
    if not stats.is_contiguous() or stats.device != qkv.device:
        raise ValueError(f"stats must be contiguous and on {qkv.device}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    dqkv = launch.empty((batch, seq, 3 * hidden), qkv.dtype, qkv.device)
    if batch == 0:
        return dqkv
    arch, dtype = launch.arch(qkv.device), _DTYPES[qkv.dtype]
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    delta = launch.empty((batch, num_heads, seq), torch.float32, qkv.device)
    rows = lambda block: (triton.cdiv(seq, block) * batch * num_heads,)  # noqa: E731
    _tuned("attention_bwd_delta", arch, dtype, head_dim_pad, False)[lambda meta: rows(meta["BLOCK_M"])](
        out, dout, delta, out.stride(0), out.stride(1), dout.stride(0), dout.stride(1), seq, num_heads,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
    )  # fmt: skip
    args = (
        qkv, dout, stats, delta, dqkv, mask, keylen,
        qkv.stride(0), qkv.stride(1), dout.stride(0), dout.stride(1), dqkv.stride(0), dqkv.stride(1), *mstrides,
        seq, num_heads, scale, float(dropout_p), seed, _seq_bucket(seq),
    )  # fmt: skip
    meta = dict(
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, HAS_MASK=has_mask, MASK_IS_BOOL=is_bool,
        HAS_KEYLEN=key_lengths is not None, HAS_DROPOUT=dropout_p > 0.0,
    )  # fmt: skip
    _tuned("attention_bwd_dkdv", arch, dtype, head_dim_pad, dropout_p > 0.0)[lambda m: rows(m["BLOCK_N"])](*args, **meta)
    _tuned("attention_bwd_dq", arch, dtype, head_dim_pad, dropout_p > 0.0)[lambda m: rows(m["BLOCK_M"])](*args, **meta)
    return dqkv
