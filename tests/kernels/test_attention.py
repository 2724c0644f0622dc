"""Fused attention kernels against a float64 oracle and the op's reference.

Without a GPU these run under TRITON_INTERPRET=1 (see conftest.py), fp32 and fp16
only; bf16 and BERT-sized shapes run in the ``gpu`` tests. Launchers NaN-poison
their outputs here, so every comparison also checks that every element was written.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastbert.kernels import attention as attention_kernels
from fastbert.kernels import launch
from fastbert.kernels.attention import attention_backward, attention_forward, check_supported
from fastbert.ops import dispatch
from fastbert.ops.attention import attention, attention_reference
from fastbert.ops.attention_triton import attention_bwd_op, attention_fwd_op, triton_attention
from tests.helpers import rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def oracle(qkv, num_heads, *, attn_mask=None, key_lengths=None, scale=None, keep=None, dropout_p=0.0):
    """Attention by its definition in float64; ``keep`` is a dropout keep-mask (B, nh, S, S)."""
    x = qkv.double()
    batch, seq, width = x.shape
    hidden = width // 3
    head_dim = hidden // num_heads
    q, k, v = (x[..., i * hidden : (i + 1) * hidden].reshape(batch, seq, num_heads, head_dim).transpose(1, 2) for i in range(3))
    s = q @ k.transpose(-1, -2) * (1 / math.sqrt(head_dim) if scale is None else scale)
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else s + attn_mask.double()
    if key_lengths is not None:
        padding = torch.arange(seq, device=x.device) >= key_lengths[:, None]
        s = s.masked_fill(padding[:, None, None, :], -math.inf)
    live = (s > -math.inf).any(-1, keepdim=True)
    p = torch.softmax(torch.where(live, s, 0.0), -1) * live
    if keep is not None:
        p = p * keep / (1 - dropout_p)
    return (p @ v).transpose(1, 2).reshape(batch, seq, hidden)


def random_qkv(batch, seq, num_heads, head_dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, 3 * num_heads * head_dim, generator=gen).to(DEVICE, dtype)


def kernel_fwd_bwd(qkv, num_heads, dout, **kw):
    """Kernel output and dqkv, asserting the softmax statistics are never NaN."""
    out, stats = attention_forward(qkv, num_heads, **kw)
    assert not stats.isnan().any()
    return out, attention_backward(dout, qkv, out, stats, num_heads, **kw)


def oracle_fwd_bwd(qkv, num_heads, dout, **kw):
    x = qkv.detach().double().requires_grad_()
    out = oracle(x, num_heads, **kw)
    out.backward(dout.double())
    return out.detach(), x.grad


def check_against_oracle(qkv, num_heads, data_seed, keep=None, **kw):
    """Forward and gradients of the kernel within the dtype's tolerance of the oracle.

    ``kw`` goes to the kernel and (less the dropout ``seed``) to the oracle, which
    takes the dropout keep-mask as ``keep`` instead.
    """
    gen = torch.Generator().manual_seed(data_seed)
    dout = torch.randn(qkv.shape[:2] + (qkv.shape[2] // 3,), generator=gen).to(DEVICE, qkv.dtype)
    out, dqkv = kernel_fwd_bwd(qkv, num_heads, dout, **kw)
    oracle_kw = {k: v for k, v in kw.items() if k != "seed"}
    ref_out, ref_dqkv = oracle_fwd_bwd(qkv, num_heads, dout, keep=keep, **oracle_kw)
    tol = TOL[qkv.dtype]
    assert out.shape == ref_out.shape and out.dtype == qkv.dtype and out.is_contiguous()
    assert rel_err(out, ref_out) < tol
    assert dqkv.shape == qkv.shape and dqkv.dtype == qkv.dtype
    assert rel_err(dqkv, ref_dqkv) < tol
    return out, dqkv


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("seq", [1, 7, 63, 65, 127, 129])
def test_odd_lengths(seq, dtype):
    qkv = random_qkv(2, seq, 2, 32, dtype, seed=seq)
    check_against_oracle(qkv, 2, seq)


@pytest.mark.parametrize(
    "seq, dtype", [(511, torch.float32), (511, torch.float16), (513, torch.float32), (513, torch.float16), (1025, torch.float32)]
)
def test_long_sequences(seq, dtype):
    qkv = random_qkv(1, seq, 1, 64, dtype, seed=seq)
    lengths = torch.tensor([seq - 200], device=DEVICE)
    check_against_oracle(qkv, 1, seq, key_lengths=lengths)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [16, 24, 32, 40, 48, 64, 80, 96, 128])
def test_head_dims(head_dim, dtype):
    qkv = random_qkv(2, 37, 2, head_dim, dtype, seed=head_dim)
    check_against_oracle(qkv, 2, head_dim)


def test_matches_op_reference():
    qkv = random_qkv(3, 45, 3, 24, torch.float32, seed=0)
    lengths = torch.tensor([45, 20, 1], device=DEVICE)
    out, _ = attention_forward(qkv, 3, key_lengths=lengths)
    assert rel_err(out, attention_reference(qkv, 3, key_lengths=lengths)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mixed_padding_and_empty_sequences(dtype):
    seq = 100
    qkv = random_qkv(4, seq, 2, 32, dtype, seed=1)
    lengths = torch.tensor([seq, 1, 0, 37], device=DEVICE)
    # Keys and values past each length are NaN: a kernel that reads them (or a tile past
    # the length) would spread NaN. The oracle sees zeros there.
    poisoned = qkv.clone()
    clean = qkv.clone()
    hidden = qkv.shape[2] // 3
    for b, n in enumerate(lengths.tolist()):
        poisoned[b, n:, hidden:] = float("nan")
        clean[b, n:, hidden:] = 0.0
    dout = torch.randn(4, seq, hidden, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    out, dqkv = kernel_fwd_bwd(poisoned, 2, dout, key_lengths=lengths)
    ref_out, ref_dqkv = oracle_fwd_bwd(clean, 2, dout, key_lengths=lengths)
    assert rel_err(out, ref_out) < TOL[dtype]
    assert rel_err(dqkv, ref_dqkv) < TOL[dtype]
    assert torch.equal(out[2], torch.zeros_like(out[2]))  # no live key: zeros, never NaN
    assert torch.equal(dqkv[2], torch.zeros_like(dqkv[2]))
    assert torch.equal(dqkv[3, 37:, hidden:], torch.zeros_like(dqkv[3, 37:, hidden:]))


@pytest.mark.parametrize(
    "shape, kind",
    [
        ((2, 2, 50, 50), "bool"),  # full 4D
        ((2, 1, 1, 50), "additive"),  # HF's extended padding mask
        ((1, 2, 50, 50), "additive"),  # per-head, broadcast over batch
        ((50, 50), "bool"),  # 2D, broadcast over batch and heads
        ((2, 1, 50, 1), "additive"),  # per query row, broadcast over keys
    ],
)
def test_general_masks(shape, kind):
    gen = torch.Generator().manual_seed(3)
    qkv = random_qkv(2, 50, 2, 16, torch.float32, seed=4)
    if kind == "bool":
        mask = torch.rand(shape, generator=gen) > 0.4
        mask[..., 3, :] = False  # a query row with no live key
    else:
        mask = torch.randn(shape, generator=gen) * 2
        mask.masked_fill_(torch.rand(shape, generator=gen) > 0.7, -math.inf)
        if shape[-2] > 1:
            mask[..., 5, :] = -math.inf
    mask = mask.to(DEVICE)
    out, _ = check_against_oracle(qkv, 2, 5, attn_mask=mask, key_lengths=torch.tensor([50, 31], device=DEVICE))
    assert rel_err(out, attention_reference(qkv, 2, attn_mask=mask, key_lengths=torch.tensor([50, 31], device=DEVICE))) < 1e-5


def test_huggingface_min_value_mask():
    """HF masks padding with finfo.min, not -inf: fully padded rows average all keys, as in HF."""
    qkv = random_qkv(2, 40, 2, 32, torch.float16, seed=6)
    keep = torch.arange(40)[None, :] < torch.tensor([40, 0])[:, None]
    mask = torch.zeros(2, 1, 1, 40).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min).to(DEVICE)
    out, _ = check_against_oracle(qkv, 2, 7, attn_mask=mask)
    assert rel_err(out, attention_reference(qkv, 2, attn_mask=mask)) < TOL[torch.float16]


def test_non_contiguous_inputs():
    big = random_qkv(3, 60, 2, 40, torch.float32, seed=8)  # 3 * 80 = 240 columns
    qkv = torch.nn.functional.pad(big, (4, 4))[:, 5:55, 4:-4]  # a slice: batch/seq strides not dense
    assert not qkv.is_contiguous() and qkv.stride(-1) == 1
    check_against_oracle(qkv, 2, 9, key_lengths=torch.tensor([50, 12, 33], device=DEVICE))
    seq_major = big.transpose(0, 1).contiguous().transpose(0, 1)  # batch stride < seq stride
    dout = torch.randn(60, 3, 80, generator=torch.Generator().manual_seed(10)).to(DEVICE).transpose(0, 1)
    out, dqkv = kernel_fwd_bwd(seq_major, 2, dout)
    ref_out, ref_dqkv = oracle_fwd_bwd(seq_major, 2, dout)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(dqkv, ref_dqkv) < 1e-5


def test_custom_scale():
    qkv = random_qkv(2, 30, 2, 16, torch.float32, seed=11)
    check_against_oracle(qkv, 2, 12, scale=0.37)


# --- dropout ---------------------------------------------------------------------


def recover_keep_mask(batch, seq, num_heads, head_dim, dropout_p, seed, dtype=torch.float32):
    """The kernel's keep-mask (batch, heads, seq, seq), read through the output.

    With V one-hot (V[k] = e_{k - offset} for keys offset..offset+head_dim-1, zero
    otherwise), out[q, j] = P[q, offset + j] * keep / (1 - p), and P > 0 everywhere.
    """
    hidden = num_heads * head_dim
    qkv = random_qkv(batch, seq, num_heads, head_dim, dtype, seed=13)
    keep = torch.empty(batch, num_heads, seq, seq, dtype=torch.bool, device=DEVICE)
    for offset in range(0, seq, head_dim):
        width = min(head_dim, seq - offset)
        v = torch.zeros(seq, head_dim, dtype=dtype, device=DEVICE)
        v[offset : offset + width, :width] = torch.eye(width, dtype=dtype, device=DEVICE)
        qkv[..., 2 * hidden :] = v.repeat(1, num_heads)
        out, _ = attention_forward(qkv, num_heads, dropout_p=dropout_p, seed=seed)
        probs = out.reshape(batch, seq, num_heads, head_dim).transpose(1, 2)[..., :width]
        keep[..., offset : offset + width] = probs != 0
        if offset == 0:
            exact = oracle(qkv, num_heads).reshape(batch, seq, num_heads, head_dim).transpose(1, 2)[..., :width]
            kept = probs != 0
            assert rel_err(probs[kept], exact[kept] / (1 - dropout_p)) < 1e-5  # survivors scaled by 1/(1-p)
    return keep


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_rate(dropout_p):
    keep = recover_keep_mask(2, 64, 2, 64, dropout_p, seed=1234)
    n = keep.numel()
    dropped = 1 - keep.double().mean().item()
    assert abs(dropped - dropout_p) < 5 * math.sqrt(dropout_p * (1 - dropout_p) / n)
    # Different heads and batches draw different masks.
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])


def test_dropout_same_seed_same_output():
    qkv = random_qkv(2, 33, 2, 16, torch.float32, seed=14)
    a, _ = attention_forward(qkv, 2, dropout_p=0.3, seed=7)
    b, _ = attention_forward(qkv, 2, dropout_p=0.3, seed=7)
    c, _ = attention_forward(qkv, 2, dropout_p=0.3, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dropout_backward_matches_forward_mask(dtype):
    batch, seq, heads, head_dim, p, seed = 2, 100, 2, 64, 0.2, 99
    keep = recover_keep_mask(batch, seq, heads, head_dim, p, seed)
    qkv = random_qkv(batch, seq, heads, head_dim, dtype, seed=15)
    lengths = torch.tensor([100, 41], device=DEVICE)
    check_against_oracle(qkv, heads, 16, key_lengths=lengths, dropout_p=p, seed=seed, keep=keep)


# --- the op: autograd, dispatch, torch.compile -------------------------------------


def test_triton_op_forward_backward_against_reference():
    qkv = random_qkv(2, 21, 3, 24, torch.float32, seed=17).requires_grad_()
    mask = (torch.rand(2, 1, 21, 21, generator=torch.Generator().manual_seed(18)) > 0.2).to(DEVICE)
    lengths = torch.tensor([21, 9], device=DEVICE)
    out = triton_attention(qkv, 3, attn_mask=mask, key_lengths=lengths)
    ref_qkv = qkv.detach().clone().requires_grad_()
    ref = attention_reference(ref_qkv, 3, attn_mask=mask, key_lengths=lengths)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert rel_err(out, ref) < 1e-5 and rel_err(qkv.grad, ref_qkv.grad) < 1e-5


def test_dispatch_runs_the_kernel():
    assert dispatch.has_implementation("attention", "triton")
    qkv = random_qkv(1, 9, 2, 16, torch.float32, seed=19)
    with dispatch.record_dispatch() as log:
        out = attention(qkv, 2)
    assert log == [("attention", "triton")]
    assert rel_err(out, oracle(qkv, 2)) < 1e-5


def test_op_dropout_follows_torch_manual_seed():
    qkv = random_qkv(2, 17, 2, 16, torch.float32, seed=20)
    torch.manual_seed(0)
    a = triton_attention(qkv, 2, dropout_p=0.5)
    torch.manual_seed(0)
    b = triton_attention(qkv, 2, dropout_p=0.5)
    c = triton_attention(qkv, 2, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_custom_ops_pass_opcheck():
    """Schemas, fake (meta) implementations and autograd registration agree with the kernels."""
    qkv = random_qkv(1, 6, 2, 16, torch.float32, seed=28).requires_grad_()
    mask = (torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(29)) > 0.3).to(DEVICE)
    lengths, seed = torch.tensor([4], device=DEVICE), torch.tensor(5)
    torch.library.opcheck(attention_fwd_op, (qkv, 2, mask, lengths, 0.1, 0.25, seed))
    out, stats = attention_forward(qkv.detach(), 2, mask, lengths, 0.1, 0.25, 5)
    torch.library.opcheck(attention_bwd_op, (torch.randn_like(out), qkv.detach(), out, stats, 2, mask, lengths, 0.1, 0.25, seed))


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    qkv = random_qkv(2, 19, 2, 16, torch.float32, seed=21)
    lengths = torch.tensor([19, 6], device=DEVICE)

    def fn(x):
        return triton_attention(x * 2, 2, key_lengths=lengths, dropout_p=0.25).sin()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    x_c, x_e = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    torch.manual_seed(3)
    out_c = compiled(x_c)
    torch.manual_seed(3)
    out_e = fn(x_e)
    out_c.sum().backward()
    out_e.sum().backward()
    assert torch.equal(out_c, out_e)
    assert rel_err(x_c.grad, x_e.grad) < 1e-6


# --- bad input and poisoning --------------------------------------------------------


def test_poisoned_allocation_is_active():
    assert launch.empty((4,), torch.float16, torch.device(DEVICE)).isnan().all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(qkv=torch.zeros(2, 5, 96, dtype=torch.float64)), TypeError, "qkv must be float16"),  # the kernels' own
        (dict(qkv=torch.zeros(2, 5, 3 * 2 * 144)), ValueError, "head_dim must be at most 128"),  # checks,
        (dict(qkv=torch.zeros(2, 96)), ValueError, "qkv must be a 3D tensor"),  # then the op's
        (dict(num_heads=5), ValueError, "num_heads"),
        (dict(attn_mask=torch.zeros(2, 3, 5, 5, dtype=torch.bool)), ValueError, "does not broadcast"),
        (dict(attn_mask=torch.zeros(5, 5, dtype=torch.int32)), TypeError, "attn_mask must be bool"),
        (dict(key_lengths=torch.tensor([5.0, 3.0])), ValueError, "key_lengths must be"),
        (dict(key_lengths=torch.tensor([5])), ValueError, "key_lengths must be"),
        (dict(dropout_p=1.0), ValueError, "dropout_p"),
    ],
)
def test_bad_input_is_rejected_before_any_kernel(kwargs, error, match, monkeypatch):
    """The launchers trust their callers: the op checks its arguments once, and its Triton path
    adds only what the kernels need (``check_supported``), all before a kernel launches."""
    monkeypatch.setattr(attention_kernels, "_tuned", _no_launch)
    args = dict(qkv=torch.zeros(2, 5, 96), num_heads=2) | kwargs
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with dispatch.record_dispatch() as log, pytest.raises(error, match=match):
        attention(**args)
    assert log in ([], [("attention", "triton")])


def _no_launch(*args):
    raise AssertionError("a kernel was launched")


def test_kernel_limits():
    qkv = torch.zeros(1, 5, 96, device=DEVICE)
    check_supported(qkv, 2, 2**16, 0.1)
    with pytest.raises(ValueError, match="at most 65536"):
        check_supported(qkv, 2, 2**16 + 1, 0.1)
    check_supported(qkv, 2, 2**16 + 1, 0.0)  # without dropout any length


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors are only rejected where CUDA would be used")
def test_cpu_tensor_without_interpreter_is_rejected(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensor"):
        check_supported(torch.zeros(1, 5, 96), 2, 5, 0.0)


def test_mask_gradient_is_rejected():
    qkv = random_qkv(1, 5, 2, 16, torch.float32, seed=23)
    with pytest.raises(ValueError, match="attn_mask requires grad"):
        triton_attention(qkv, 2, attn_mask=torch.zeros(5, 5, device=DEVICE, requires_grad=True))


# --- GPU: BERT-sized problems in half precision -------------------------------------

@pytest.mark.gpu  # skipped, with the reason, without CUDA (tests/conftest.py)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads", [12, 16], ids=["bert-base", "bert-large"])
@pytest.mark.parametrize("seq", [128, 512])
def test_gpu_bert_shapes(seq, heads, dtype):
    batch = 8
    qkv = random_qkv(batch, seq, heads, 64, dtype, seed=seq + heads)
    lengths = torch.randint(1, seq + 1, (batch,), generator=torch.Generator().manual_seed(24)).to(DEVICE)
    dout = torch.randn(batch, seq, heads * 64, generator=torch.Generator().manual_seed(25)).to(DEVICE, dtype)
    out, dqkv = kernel_fwd_bwd(qkv, heads, dout, key_lengths=lengths)
    x = qkv.detach().float().requires_grad_()
    ref = attention_reference(x, heads, key_lengths=lengths)
    ref.backward(dout.float())
    assert rel_err(out, ref) < 1e-2 and rel_err(dqkv, x.grad) < 1e-2
    drop_out, _ = attention_forward(qkv, heads, key_lengths=lengths, dropout_p=0.1, seed=5)
    assert torch.isfinite(drop_out).all()


@pytest.mark.gpu  # skipped, with the reason, without CUDA (tests/conftest.py)
def test_gpu_longest_sequence():
    seq, heads = 4096, 12
    qkv = random_qkv(1, seq, heads, 64, torch.float16, seed=26)
    dout = torch.randn(1, seq, heads * 64, generator=torch.Generator().manual_seed(27)).to(DEVICE, torch.float16)
    out, dqkv = kernel_fwd_bwd(qkv, heads, dout)
    x = qkv.detach().float().requires_grad_()
    ref = attention_reference(x, heads)
    ref.backward(dout.float())
    assert rel_err(out, ref) < 1e-2 and rel_err(dqkv, x.grad) < 1e-2
