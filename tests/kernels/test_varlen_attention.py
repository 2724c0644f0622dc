"""Packed (variable-length) attention kernels against a float64 oracle and the op's reference.

Without a GPU these run under TRITON_INTERPRET=1 (tiny shapes: the interpreter is
slow), fp32 and fp16. Launchers NaN-poison their outputs here (conftest.py), so every
comparison also checks that every element of every sequence was written.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton

from fastbert.kernels import attention as kernels
from fastbert.kernels.attention import attention_forward, varlen_attention_backward, varlen_attention_forward
from fastbert.ops import dispatch
from fastbert.ops.attention import attention, varlen_attention_reference
from fastbert.ops.attention_triton import triton_varlen_attention, varlen_attention_bwd_op, varlen_attention_fwd_op
from fastbert.ops.padding import varlen_indices
from tests.helpers import rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 3e-3}


def offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)


def random_packed(tokens: int, num_heads: int, head_dim: int, dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, 3 * num_heads * head_dim, generator=gen).to(DEVICE, dtype)


def oracle(qkv, cu_seqlens, num_heads, *, scale=None, keep=None, dropout_p=0.0):
    """Attention by its definition in float64, sequence by sequence, over rows ``[0, cu_seqlens[-1])``.

    ``keep``: per sequence, the dropout keep-mask (heads, n, n).
    """
    x = qkv.double()
    hidden = x.shape[1] // 3
    head_dim = hidden // num_heads
    scale = 1 / math.sqrt(head_dim) if scale is None else scale
    bounds = cu_seqlens.tolist()
    outs = []
    for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        q, k, v = (x[start:end, i * hidden : (i + 1) * hidden].reshape(end - start, num_heads, head_dim).transpose(0, 1)
                   for i in range(3))  # fmt: skip
        p = torch.softmax(q @ k.transpose(-1, -2) * scale, -1)
        if keep is not None:
            p = p * keep[b] / (1 - dropout_p)
        outs.append((p @ v).transpose(0, 1).reshape(end - start, hidden))
    return torch.cat(outs)


def kernel_fwd_bwd(qkv, cu_seqlens, max_seqlen, num_heads, dout, **kw):
    out, stats = varlen_attention_forward(qkv, num_heads, cu_seqlens, max_seqlen, **kw)
    dqkv = varlen_attention_backward(dout, qkv, out, stats, num_heads, cu_seqlens, max_seqlen, **kw)
    return out, stats, dqkv


def check_against_oracle(qkv, cu_seqlens, num_heads, data_seed, *, max_seqlen=None, keep=None, **kw):
    """Forward and gradients of the packed kernels within the dtype's tolerance of the oracle."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    max_seqlen = max(lengths) if max_seqlen is None else max_seqlen
    tokens = int(cu_seqlens[-1])
    gen = torch.Generator().manual_seed(data_seed)
    dout = torch.randn(qkv.shape[0], qkv.shape[1] // 3, generator=gen).to(DEVICE, qkv.dtype)
    out, stats, dqkv = kernel_fwd_bwd(qkv, cu_seqlens, max_seqlen, num_heads, dout, **kw)
    x = qkv[:tokens].detach().double().requires_grad_()
    ref = oracle(x, cu_seqlens, num_heads, keep=keep, scale=kw.get("scale"), dropout_p=kw.get("dropout_p", 0.0))
    ref.backward(dout[:tokens].double())
    tol = TOL[qkv.dtype]
    assert out.shape == (qkv.shape[0], qkv.shape[1] // 3) and out.dtype == qkv.dtype and out.is_contiguous()
    assert stats.shape == (num_heads, 2, qkv.shape[0]) and not stats[..., :tokens].isnan().any()
    assert rel_err(out[:tokens], ref) < tol
    assert dqkv.shape == qkv.shape and dqkv.dtype == qkv.dtype
    assert rel_err(dqkv[:tokens], x.grad) < tol
    return out, dqkv


LENGTHS = {
    "one token": [1],
    "odd": [7, 33, 3],
    "max, across a tile boundary": [65, 65],
    "mixed, with empty sequences": [5, 0, 17, 1, 0, 9],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_lengths(lengths, dtype):
    cu = offsets(lengths)
    qkv = random_packed(sum(lengths), 2, 32, dtype, seed=len(lengths))
    check_against_oracle(qkv, cu, 2, sum(lengths))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 96, 128])
def test_head_dims(head_dim, dtype):
    lengths = [9, 20]
    qkv = random_packed(sum(lengths), 2 if head_dim < 96 else 1, head_dim, dtype, seed=head_dim)
    check_against_oracle(qkv, offsets(lengths), 2 if head_dim < 96 else 1, head_dim)


def test_custom_scale_and_strided_rows():
    lengths = [12, 5, 30]
    big = random_packed(sum(lengths), 2, 40, torch.float32, seed=3)  # 240 columns
    qkv = torch.nn.functional.pad(big, (4, 4))[:, 4:-4]  # rows 248 apart: not contiguous
    assert not qkv.is_contiguous() and qkv.stride(-1) == 1
    check_against_oracle(qkv, offsets(lengths), 2, 4, scale=0.3)


def test_matches_op_reference():
    lengths = [14, 1, 0, 23]
    cu = offsets(lengths)
    qkv = random_packed(sum(lengths), 3, 16, torch.float32, seed=5)
    out, _ = varlen_attention_forward(qkv, 3, cu, 23)
    assert rel_err(out, varlen_attention_reference(qkv, 3, cu, 23)) < 1e-5


def test_rows_outside_every_sequence_are_never_read_or_written():
    """Tiles past a sequence's end exit, and no store crosses into rows of another sequence.

    The packed tensor has 6 rows after ``cu_seqlens[-1]``, NaN in ``qkv``; ``max_seqlen``
    is larger than any length, so most programs start past their sequence's end.
    """
    lengths, guard = [3, 17, 8], 6
    cu = offsets(lengths)
    tokens = sum(lengths)
    qkv = random_packed(tokens + guard, 2, 16, torch.float32, seed=6)
    qkv[tokens:] = float("nan")
    exact_out, exact_dqkv = check_against_oracle(qkv, cu, 2, 7)
    out, dqkv = check_against_oracle(qkv, cu, 2, 7, max_seqlen=70)
    assert torch.equal(out[:tokens], exact_out[:tokens]) and torch.equal(dqkv[:tokens], exact_dqkv[:tokens])
    assert out[tokens:].isnan().all() and dqkv[tokens:].isnan().all()  # poisoned, never written


# --- dropout ---------------------------------------------------------------------


def recover_keep_masks(forward, lengths, num_heads, head_dim, seed=13):
    """The dropout keep-masks ``forward(packed qkv) -> packed out`` applies, per sequence (heads, n, n).

    With V one-hot (the key at position ``offset + j`` of its sequence has V = e_j, the
    others 0), out[q, j] = P[q, offset + j] * keep / (1 - p), and P > 0 everywhere.
    """
    cu = offsets(lengths)
    hidden = num_heads * head_dim
    qkv = random_packed(sum(lengths), num_heads, head_dim, torch.float32, seed=seed)
    position = torch.cat([torch.arange(n) for n in lengths]).to(DEVICE)
    keeps = [torch.zeros(num_heads, n, n, dtype=torch.bool, device=DEVICE) for n in lengths]
    for offset in range(0, max(lengths), head_dim):
        v = torch.zeros(qkv.shape[0], head_dim, device=DEVICE)
        hit = (position >= offset) & (position < offset + head_dim)
        v[hit, position[hit] - offset] = 1.0
        qkv[:, 2 * hidden :] = v.repeat(1, num_heads)
        probs = forward(qkv).reshape(-1, num_heads, head_dim).transpose(0, 1)  # (heads, tokens, head_dim)
        for b, (start, n) in enumerate(zip(cu[:-1].tolist(), lengths)):
            width = min(head_dim, n - offset)
            if width > 0:
                keeps[b][:, :, offset : offset + width] = probs[:, start : start + n, :width] != 0
    return keeps


def packed_forward(lengths, num_heads, dropout_p, seed):
    cu = offsets(lengths)
    return lambda qkv: varlen_attention_forward(qkv, num_heads, cu, max(lengths), dropout_p=dropout_p, seed=seed)[0]


def padded_forward(lengths, num_heads, dropout_p, seed):
    """The padded kernel on the right-padded batch, its real rows gathered back to the packed layout."""
    cu = offsets(lengths)
    batch, seq = len(lengths), max(lengths)
    indices = varlen_indices(cu, seq, sum(lengths))
    key_lengths = torch.tensor(lengths, device=DEVICE)

    def forward(qkv):
        padded = qkv.new_zeros(batch * seq, qkv.shape[1]).index_copy(0, indices, qkv).view(batch, seq, -1)
        out, _ = attention_forward(padded, num_heads, key_lengths=key_lengths, dropout_p=dropout_p, seed=seed)
        return out.reshape(batch * seq, -1).index_select(0, indices)

    return forward


DROPOUT_LENGTHS = [20, 0, 37, 1, 9]


def test_dropout_mask_is_the_same_in_packed_and_padded_layouts():
    p, seed = 0.3, 4321
    packed = recover_keep_masks(packed_forward(DROPOUT_LENGTHS, 2, p, seed), DROPOUT_LENGTHS, 2, 16)
    padded = recover_keep_masks(padded_forward(DROPOUT_LENGTHS, 2, p, seed), DROPOUT_LENGTHS, 2, 16)
    assert all(torch.equal(a, b) for a, b in zip(packed, padded))
    drawn = torch.cat([k.flatten() for k in packed])
    dropped = 1 - drawn.double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / drawn.numel())
    assert not torch.equal(packed[0][0], packed[0][1])  # heads draw different masks
    assert not torch.equal(packed[0][:, :9, :9], packed[4][:, :9, :9])  # so do sequences


@pytest.fixture
def interpreter_tiles(monkeypatch):
    """Set the interpreter's tile sizes of an attention kernel for one test."""

    def set_tiles(kernel: str, block_m: int, block_n: int):
        config = triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4, num_stages=1)
        monkeypatch.setitem(kernels._INTERPRETER_CONFIGS, kernel, config)
        kernels._tuned.cache_clear()

    yield set_tiles
    kernels._tuned.cache_clear()


@pytest.mark.parametrize("layout", [packed_forward, padded_forward], ids=["packed", "padded"])
def test_dropout_mask_is_independent_of_tile_sizes(layout, interpreter_tiles):
    p, seed = 0.4, 77
    default = recover_keep_masks(layout(DROPOUT_LENGTHS, 2, p, seed), DROPOUT_LENGTHS, 2, 16)
    interpreter_tiles("attention_fwd", 16, 16)
    small = recover_keep_masks(layout(DROPOUT_LENGTHS, 2, p, seed), DROPOUT_LENGTHS, 2, 16)
    assert all(torch.equal(a, b) for a, b in zip(default, small))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dropout_backward_matches_forward_mask(dtype):
    """The backward kernels (tiles unlike the forward's) regenerate the forward's mask: gradients
    match the oracle given that mask."""
    p, seed, heads, head_dim = 0.2, 99, 2, 16
    keep = recover_keep_masks(packed_forward(DROPOUT_LENGTHS, heads, p, seed), DROPOUT_LENGTHS, heads, head_dim)
    qkv = random_packed(sum(DROPOUT_LENGTHS), heads, head_dim, dtype, seed=15)
    check_against_oracle(qkv, offsets(DROPOUT_LENGTHS), heads, 16, dropout_p=p, seed=seed, keep=keep)


# --- the op: dispatch, autograd, torch.compile ---------------------------------------


def test_public_op_runs_the_packed_kernel_without_padding():
    lengths = [6, 13, 1]
    cu = offsets(lengths)
    qkv = random_packed(sum(lengths), 2, 16, torch.float32, seed=17).requires_grad_()
    with dispatch.record_dispatch() as log:
        out = attention(qkv, 2, cu_seqlens=cu, max_seqlen=13)
    assert log == [("varlen_attention", "triton")]  # no scatter_rows / gather_rows around it
    x = qkv.detach().clone().requires_grad_()
    ref = varlen_attention_reference(x, 2, cu, 13)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert rel_err(out, ref) < 1e-5 and rel_err(qkv.grad, x.grad) < 1e-5


def test_op_dropout_follows_torch_manual_seed():
    cu = offsets([9, 17])
    qkv = random_packed(26, 2, 16, torch.float32, seed=20)
    torch.manual_seed(0)
    a = triton_varlen_attention(qkv, 2, cu, 17, dropout_p=0.5)
    torch.manual_seed(0)
    b = triton_varlen_attention(qkv, 2, cu, 17, dropout_p=0.5)
    c = triton_varlen_attention(qkv, 2, cu, 17, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_custom_ops_pass_opcheck():
    """Schemas, fake implementations and autograd registration agree with the kernels."""
    cu = offsets([4, 7])
    qkv = random_packed(11, 2, 16, torch.float32, seed=28).requires_grad_()
    seed = torch.tensor(5)
    torch.library.opcheck(varlen_attention_fwd_op, (qkv, 2, cu, 7, 0.1, 0.25, seed))
    out, stats = varlen_attention_forward(qkv.detach(), 2, cu, 7, 0.1, 0.25, 5)
    args = (torch.randn_like(out), qkv.detach(), out, stats, 2, cu, 7, 0.1, 0.25, seed)
    torch.library.opcheck(varlen_attention_bwd_op, args)


def test_torch_compile_fullgraph_with_dynamic_token_count():
    torch._dynamo.reset()

    def fn(x, cu):
        return triton_varlen_attention(x * 2, 2, cu, 19, dropout_p=0.25).sin()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    for lengths in ([19, 6], [3, 19, 11]):
        cu = offsets(lengths)
        qkv = random_packed(sum(lengths), 2, 16, torch.float32, seed=len(lengths))
        x_c, x_e = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
        torch.manual_seed(3)
        out_c = compiled(x_c, cu)
        torch.manual_seed(3)
        out_e = fn(x_e, cu)
        out_c.sum().backward()
        out_e.sum().backward()
        assert torch.equal(out_c, out_e)
        assert rel_err(x_c.grad, x_e.grad) < 1e-6


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(qkv=torch.zeros(9, 96, dtype=torch.float64)), TypeError, "qkv must be float16"),
        (dict(qkv=torch.zeros(9, 3 * 2 * 144)), ValueError, "head_dim must be at most 128"),
        (dict(dropout_p=0.1, max_seqlen=2**16 + 1), ValueError, "at most 65536"),
        (dict(qkv=torch.zeros(1, 9, 96)), ValueError, r"qkv must be 2D \(tokens, 3\*hidden\) when packed"),
    ],
)
def test_kernel_limits_checked_before_any_kernel(kwargs, error, match, monkeypatch):
    """What only the kernels need (``check_supported``) is checked by the op's Triton path,
    after the op's own checks, before any launch; the launchers check nothing."""
    monkeypatch.setattr(kernels, "_tuned", lambda *a: pytest.fail("a kernel was launched"))
    args = dict(qkv=torch.zeros(9, 96), num_heads=2, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32),
                max_seqlen=5, dropout_p=0.0) | kwargs  # fmt: skip
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    qkv, num_heads = args.pop("qkv"), args.pop("num_heads")
    with pytest.raises(error, match=match):
        attention(qkv, num_heads, **args)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(qkv=torch.zeros(9, 96, dtype=torch.int32)), TypeError, "floating-point"),
        (dict(num_heads=5), ValueError, "num_heads"),
        (dict(indices=torch.arange(8)), ValueError, "indices must hold one position per token"),
        (dict(cu_seqlens=None, indices=torch.arange(9)), ValueError, "indices go with packed input"),
    ],
)
def test_public_op_input_checks(kwargs, error, match):
    args = dict(qkv=torch.zeros(9, 96), num_heads=2, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32),
                max_seqlen=5) | kwargs  # fmt: skip
    if args["cu_seqlens"] is None:
        args["qkv"] = torch.zeros(1, 9, 96)
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    qkv, num_heads = args.pop("qkv"), args.pop("num_heads")
    with pytest.raises(error, match=match):
        attention(qkv, num_heads, **args)


# --- GPU: BERT-sized packed batches in half precision --------------------------------


@pytest.mark.gpu  # skipped, with the reason, without CUDA (tests/conftest.py)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads", [12, 16], ids=["bert-base", "bert-large"])
def test_gpu_bert_sized_packed_batch(heads, dtype):
    lengths = torch.randint(1, 513, (16,), generator=torch.Generator().manual_seed(24)).tolist()
    cu = offsets(lengths)
    qkv = random_packed(sum(lengths), heads, 64, dtype, seed=heads)
    dout = torch.randn(sum(lengths), heads * 64, generator=torch.Generator().manual_seed(25)).to(DEVICE, dtype)
    out, _, dqkv = kernel_fwd_bwd(qkv, cu, max(lengths), heads, dout)
    x = qkv.detach().float().requires_grad_()
    ref = varlen_attention_reference(x, heads, cu, max(lengths))
    ref.backward(dout.float())
    assert rel_err(out, ref) < 1e-2 and rel_err(dqkv, x.grad) < 1e-2
    packed = recover_keep_masks(packed_forward(lengths[:3], heads, 0.1, 5), lengths[:3], heads, 64)
    padded = recover_keep_masks(padded_forward(lengths[:3], heads, 0.1, 5), lengths[:3], heads, 64)
    assert all(torch.equal(a, b) for a, b in zip(packed, padded))
