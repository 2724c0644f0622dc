"""fastbert.ops.attention (reference path) against explicit float64 math."""

from __future__ import annotations

import math

import pytest
import torch

from fastbert.ops import padding, record_dispatch
from fastbert.ops.attention import attention, attention_reference
from tests.helpers import rel_err


def oracle(qkv, num_heads, keep=None, additive=None):
    """softmax(QKᵀ/sqrt(d) + mask) V in float64, written out; rows with no live key are 0."""
    b, s, w = qkv.shape
    d = w // (3 * num_heads)
    x = qkv.double().view(b, s, 3, num_heads, d)
    q, k, v = x[:, :, 0].transpose(1, 2), x[:, :, 1].transpose(1, 2), x[:, :, 2].transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if additive is not None:
        scores = scores + additive.double()
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    live = scores.amax(-1, keepdim=True) > float("-inf")
    probs = torch.softmax(scores.masked_fill(~live, 0.0), dim=-1) * live
    return (probs @ v).transpose(1, 2).reshape(b, s, w // 3)


def _qkv(b, s, heads, d, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, 3 * heads * d, generator=gen).to(dtype)


@pytest.mark.parametrize("s", [1, 7, 17, 100])
@pytest.mark.parametrize("d", [16, 24, 64])
def test_no_mask(s, d):
    qkv = _qkv(2, s, 3, d)
    assert rel_err(attention(qkv, 3), oracle(qkv, 3)) < 1e-6


def test_key_lengths_padding_and_empty_rows():
    qkv = _qkv(4, 17, 2, 24)
    lengths = torch.tensor([17, 5, 1, 0])
    keep = (torch.arange(17)[None, :] < lengths[:, None])[:, None, None, :]
    out = attention(qkv, 2, key_lengths=lengths)
    assert rel_err(out, oracle(qkv, 2, keep=keep)) < 1e-6
    assert torch.equal(out[3], torch.zeros_like(out[3]))


@pytest.mark.parametrize("shape", [(4, 1, 1, 17), (4, 2, 17, 17), (1, 1, 17, 17), (17, 17)])
def test_general_bool_and_additive_masks(shape):
    qkv = _qkv(4, 17, 2, 16, seed=3)
    gen = torch.Generator().manual_seed(4)
    keep = torch.rand(shape, generator=gen) > 0.4
    additive = torch.randn(shape, generator=gen).masked_fill(~keep, float("-inf"))
    full_keep = keep.expand(4, 2, 17, 17) if keep.dim() == 4 else keep.expand(4, 2, 17, 17)
    assert rel_err(attention(qkv, 2, attn_mask=keep), oracle(qkv, 2, keep=full_keep)) < 1e-6
    ref = oracle(qkv, 2, additive=additive.expand(4, 2, 17, 17))
    assert rel_err(attention(qkv, 2, attn_mask=additive), ref) < 1e-6


def test_fully_masked_rows_are_zero_with_finite_gradients():
    qkv = _qkv(2, 9, 2, 16).requires_grad_()
    keep = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    keep[0, :, 3] = False  # query row 3 of sequence 0 sees nothing
    out = attention(qkv, 2, attn_mask=keep)
    assert torch.equal(out[0, 3], torch.zeros_like(out[0, 3]))
    out.sum().backward()
    assert torch.isfinite(qkv.grad).all()


def test_gradients_match_oracle():
    qkv = _qkv(3, 11, 2, 24).double().requires_grad_()
    lengths = torch.tensor([11, 6, 2])
    keep = (torch.arange(11)[None, :] < lengths[:, None])[:, None, None, :]
    grad_out = torch.randn(3, 11, 48, dtype=torch.float64)
    (attention(qkv, 2, key_lengths=lengths) * grad_out).sum().backward()
    got = qkv.grad.clone()
    qkv.grad = None
    (oracle(qkv, 2, keep=keep) * grad_out).sum().backward()
    assert rel_err(got, qkv.grad) < 1e-10


def test_fp16_accumulates_in_fp32():
    qkv = _qkv(2, 33, 4, 32, dtype=torch.float16)
    out = attention(qkv, 4)
    assert out.dtype == torch.float16
    assert rel_err(out, oracle(qkv, 4)) < 2e-3


def test_non_contiguous_qkv():
    big = _qkv(2, 13, 2, 24 * 2)  # twice as wide; take every other column block
    qkv = big.view(2, 13, -1)[:, :, : 3 * 48]
    assert not qkv.is_contiguous()
    assert rel_err(attention(qkv, 2), oracle(qkv.contiguous(), 2)) < 1e-6


def test_dropout_rate_and_seed_reproducibility():
    torch.manual_seed(0)
    heads, d, s = 1, 64, 64
    qkv = torch.zeros(1, s, 3 * heads * d)
    qkv[..., 2 * d :] = torch.eye(s, d)  # V = identity rows: out row = probs for the first d keys
    torch.manual_seed(11)
    a = attention_reference(qkv, heads, dropout_p=0.3)
    torch.manual_seed(11)
    b = attention_reference(qkv, heads, dropout_p=0.3)
    assert torch.equal(a, b)
    dropped = (a == 0).float().mean().item()
    # uniform probs 1/s, survivors scaled to 1/(s*(1-p)); 4096 Bernoulli(0.3) draws: 5 sigma bound
    assert abs(dropped - 0.3) < 5 * math.sqrt(0.3 * 0.7 / a.numel())
    assert torch.allclose(a[a != 0], torch.full_like(a[a != 0], 1 / (s * 0.7)))


def test_packed_input_attends_within_each_sequence():
    lengths = [5, 0, 12, 1]
    cu = torch.tensor([0, 5, 5, 17, 18], dtype=torch.int32)
    qkv = _qkv(1, 18, 2, 16, seed=6)[0]
    out = attention(qkv, 2, cu_seqlens=cu, max_seqlen=12)
    alone = [oracle(qkv[s : s + n][None], 2)[0] for s, n in zip(cu[:-1].tolist(), lengths) if n]
    assert out.shape == (18, 32) and rel_err(out, torch.cat(alone)) < 1e-6


def test_packed_input_with_precomputed_indices_does_not_sync():
    """An encoder computes ``varlen_indices`` (without a host sync) once per forward; given
    them, or computing them itself, the reference path runs no ``nonzero`` (a host sync on a
    GPU) and gives the same result."""
    cu = torch.tensor([0, 7, 9, 20], dtype=torch.int32)
    qkv = _qkv(1, 20, 2, 16, seed=7)[0]
    with torch.profiler.profile() as prof, record_dispatch() as log:
        indices = padding.varlen_indices(cu, 11, 20)
        out = attention(qkv, 2, cu_seqlens=cu, max_seqlen=11, indices=indices)
        again = attention(qkv, 2, cu_seqlens=cu, max_seqlen=11)
    assert ("varlen_attention", "torch") in log
    assert not [e for e in prof.events() if e.name in ("aten::nonzero", "aten::item", "aten::_local_scalar_dense")]
    assert torch.equal(out, again)
    grid = (torch.arange(11)[None, :] < torch.tensor([7, 2, 11])[:, None]).reshape(-1)
    assert torch.equal(indices, torch.nonzero(grid).flatten())  # the positions nonzero would find


def test_packed_input_token_count_mismatch():
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    with pytest.raises(ValueError, match="9 tokens but the packed input has 10 rows"):
        attention(torch.randn(10, 96), 2, cu_seqlens=cu, max_seqlen=5)
    with pytest.raises(ValueError, match="indices must hold one position per token"):
        ok = torch.tensor([0, 4, 10], dtype=torch.int32)
        attention(torch.randn(10, 96), 2, cu_seqlens=ok, max_seqlen=6, indices=torch.arange(9))


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(qkv=torch.randn(2, 5, 10), num_heads=2), ValueError),
        (dict(qkv=torch.randn(2, 5, 12, 1), num_heads=2), ValueError),
        (dict(qkv=torch.randint(0, 3, (2, 5, 12)), num_heads=2), TypeError),
        (dict(qkv=torch.randn(2, 5, 12), num_heads=2, attn_mask=torch.ones(3, 1, 5, 5, dtype=torch.bool)), ValueError),
        (dict(qkv=torch.randn(2, 5, 12), num_heads=2, attn_mask=torch.ones(2, 1, 1, 5, dtype=torch.long)), TypeError),
        (dict(qkv=torch.randn(2, 5, 12), num_heads=2, key_lengths=torch.tensor([1.0, 2.0])), ValueError),
        (dict(qkv=torch.randn(2, 5, 12), num_heads=2, dropout_p=1.0), ValueError),
    ],
)
def test_bad_input(kwargs, exc):
    with pytest.raises(exc):
        attention(**kwargs)
