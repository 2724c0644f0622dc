"""Fused residual + bias + dropout + LayerNorm kernels against float64 math and the op's reference.

Without a GPU these run under TRITON_INTERPRET=1 (see conftest.py), fp32 and fp16;
bf16 at BERT sizes runs in the ``gpu`` tests. Launchers NaN-poison their outputs here,
so every comparison also checks that every element was written.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastbert.kernels import launch
from fastbert.kernels import layernorm as layernorm_kernels
from fastbert.kernels.layernorm import MAX_HIDDEN, check_supported, layernorm_backward, layernorm_forward
from fastbert.ops import dispatch
from fastbert.ops.layernorm import add_layernorm, add_layernorm_reference
from fastbert.ops.layernorm_triton import triton_add_layernorm
from tests.helpers import rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def make_inputs(shape, dtype, seed, *, residual=True, weight=True, bias=True, x_bias=True, scale=1.0):
    """Fresh seeded random inputs (never zeros); the LayerNorm parameters away from 1 and 0."""
    gen = torch.Generator().manual_seed(seed)
    hidden = shape[-1]
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    t = {
        "x": rnd(*shape) * scale + 0.3,
        "residual": rnd(*shape) * scale if residual else None,
        "weight": 1 + 0.5 * rnd(hidden) if weight else None,
        "bias": 0.5 * rnd(hidden) if bias else None,
        "x_bias": 0.5 * rnd(hidden) if x_bias else None,
    }
    return {k: (v.to(DEVICE, dtype) if v is not None else None) for k, v in t.items()}


def oracle(x, residual, weight, bias, eps, x_bias=None, keep=None, dropout_p=0.0):
    """The op by its definition in float64; ``keep`` is the dropout keep mask."""
    h = x.double()
    if x_bias is not None:
        h = h + x_bias.double()
    if keep is not None:
        h = h * keep / (1 - dropout_p)
    if residual is not None:
        h = h + residual.double()
    mean = h.mean(-1, keepdim=True)
    var = ((h - mean) ** 2).mean(-1, keepdim=True)
    y = (h - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.double()
    if bias is not None:
        y = y + bias.double()
    return y


def grads(fn, inputs, dy):
    """Output and gradients of every tensor input of ``fn(**inputs)`` given the output grad ``dy``."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    out = fn(**{k: leaves.get(k) for k in inputs})
    out.backward(dy.to(out.dtype))
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def check_op(inputs, eps, tol, dropout_p=0.0, keep=None, seed=0):
    """The Triton op's output and gradients against float64 math (and, without dropout,
    against the reference op's autograd in the same dtype)."""
    gen = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(inputs["x"].shape, generator=gen).to(DEVICE)
    out, g = grads(lambda **kw: triton_add_layernorm(eps=eps, dropout_p=dropout_p, **kw), inputs, dy)
    dbl = {k: v.double() if v is not None else None for k, v in inputs.items()}
    ref_out, ref_g = grads(lambda **kw: oracle(eps=eps, keep=keep, dropout_p=dropout_p, **kw), dbl, dy.double())
    assert out.dtype == inputs["x"].dtype and out.shape == inputs["x"].shape
    assert rel_err(out, ref_out) < tol, "forward"
    for name in g:
        assert g[name].dtype == inputs[name].dtype and g[name].shape == inputs[name].shape, name
        assert rel_err(g[name], ref_g[name]) < tol, name
    if dropout_p == 0.0:
        ref_out2, ref_g2 = grads(lambda **kw: add_layernorm_reference(eps=eps, **kw), inputs, dy)
        assert rel_err(out, ref_out2) < tol
        for name in g:
            assert rel_err(g[name], ref_g2[name]) < tol, name
    return out, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hidden", [96, 200, 384, 768, 1024])
@pytest.mark.parametrize("rows", [1, 7, 100])
def test_sizes_forward_backward(rows, hidden, dtype):
    check_op(make_inputs((rows, hidden), dtype, seed=rows * hidden), 1e-5, TOL[dtype], seed=rows)


@pytest.mark.parametrize(
    "present",
    [
        dict(residual=False, x_bias=False),
        dict(weight=False, bias=False),
        dict(weight=True, bias=False, x_bias=False),
        dict(weight=False, bias=True, residual=False),
    ],
    ids=["no-residual-no-xbias", "no-affine", "weight-only", "bias-only"],
)
def test_affine_and_optional_inputs(present):
    inputs = make_inputs((3, 11, 72), torch.float32, seed=5, **present)
    check_op(inputs, 1e-5, TOL[torch.float32])


@pytest.mark.parametrize("eps", [1e-12, 1e-5, 1e-3])
def test_eps(eps):
    # Rows with a variance comparable to eps, where eps decides the result.
    inputs = make_inputs((9, 200), torch.float32, seed=6, scale=0.03)
    check_op(inputs, eps, TOL[torch.float32])


def test_fp16_inputs_with_fp32_parameters():
    inputs = make_inputs((5, 96), torch.float16, seed=7)
    for k in ("weight", "bias", "x_bias"):
        inputs[k] = inputs[k].float()
    check_op(inputs, 1e-5, TOL[torch.float16])


def test_non_contiguous_and_3d_inputs():
    inputs = make_inputs((4, 6, 200), torch.float32, seed=8)
    wide = torch.randn(4, 6, 260, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    inputs["x"] = wide[..., 30:230]  # row stride 260: read in place, not copied
    assert not inputs["x"].is_contiguous()
    inputs["residual"] = inputs["residual"].transpose(0, 1).contiguous().transpose(0, 1)  # not viewable as rows
    check_op(inputs, 1e-5, TOL[torch.float32])


def test_kernel_statistics_and_param_grads():
    inputs = make_inputs((13, 384), torch.float32, seed=10)
    y, mean, rstd = layernorm_forward(inputs["x"], inputs["residual"], inputs["weight"], inputs["bias"], 1e-5,
                                      inputs["x_bias"])  # fmt: skip
    h = (inputs["x"] + inputs["x_bias"] + inputs["residual"]).double()
    assert rel_err(mean, h.mean(-1)) < 1e-6
    assert rel_err(rstd, 1 / torch.sqrt(h.var(-1, unbiased=False) + 1e-5)) < 1e-6
    dy = torch.randn(13, 384, generator=torch.Generator().manual_seed(11)).to(DEVICE)
    dx, dres, dw, db, dxb = layernorm_backward(dy, inputs["x"], inputs["residual"], inputs["weight"], mean, rstd,
                                               inputs["x_bias"])  # fmt: skip
    assert dres is dx  # without dropout d residual is dx: one tensor, one write
    assert dw.dtype == db.dtype == dxb.dtype == torch.float32
    assert rel_err(db, dy.double().sum(0)) < 1e-6 and rel_err(dxb, dx.double().sum(0)) < 1e-6


def test_zero_rows():
    x = torch.zeros(0, 96, device=DEVICE)
    w = torch.ones(96, device=DEVICE)
    y, mean, rstd = layernorm_forward(x, None, w, w, 1e-5)
    assert y.shape == (0, 96) and mean.shape == (0,)
    dx, _, dw, db, _ = layernorm_backward(y, x, None, w, mean, rstd)
    assert dx.shape == (0, 96) and torch.equal(dw, torch.zeros(96)) and torch.equal(db, torch.zeros(96))


# --- dropout ---------------------------------------------------------------------


def kernel_keep_mask(inputs, dropout_p, seed):
    """The kernel's keep mask, read through its dx (dropped elements get exactly 0)."""
    y, mean, rstd = layernorm_forward(inputs["x"], inputs["residual"], inputs["weight"], inputs["bias"], 1e-5,
                                      inputs["x_bias"], dropout_p, seed)  # fmt: skip
    dy = torch.randn(inputs["x"].shape, generator=torch.Generator().manual_seed(12)).to(DEVICE)
    dx, dres, *_ = layernorm_backward(dy, inputs["x"], inputs["residual"], inputs["weight"], mean, rstd,
                                      inputs["x_bias"], dropout_p, seed)  # fmt: skip
    assert (dres != 0).all()  # d residual never sees the mask
    return y, dx != 0


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_rate(dropout_p):
    inputs = make_inputs((64, 768), torch.float32, seed=13)
    _, keep = kernel_keep_mask(inputs, dropout_p, seed=1234)
    n = keep.numel()
    dropped = 1 - keep.double().mean().item()
    assert abs(dropped - dropout_p) < 5 * math.sqrt(dropout_p * (1 - dropout_p) / n)
    assert not torch.equal(keep[0], keep[1])  # rows draw different masks
    per_row = 1 - keep.double().mean(1)
    assert (per_row - dropout_p).abs().max() < 6 * math.sqrt(dropout_p * (1 - dropout_p) / 768)


def test_dropout_same_seed_same_output():
    inputs = make_inputs((7, 200), torch.float32, seed=14)
    args = (inputs["x"], inputs["residual"], inputs["weight"], inputs["bias"], 1e-5, inputs["x_bias"], 0.3)
    a, b, c = layernorm_forward(*args, 7)[0], layernorm_forward(*args, 7)[0], layernorm_forward(*args, 8)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dropout_backward_matches_forward_mask(dtype):
    """The forward, read with the mask its backward applies, equals float64 math: one mask."""
    inputs = make_inputs((37, 200), dtype, seed=15)
    p = 0.2
    torch.manual_seed(99)  # the op draws its kernel seed from torch's generator, like this
    seed = int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64))
    y, keep = kernel_keep_mask(inputs, p, seed)
    assert rel_err(y, oracle(**inputs, eps=1e-5, keep=keep, dropout_p=p)) < TOL[dtype]
    torch.manual_seed(99)
    check_op(inputs, 1e-5, TOL[dtype], dropout_p=p, keep=keep, seed=3)


def test_dropout_without_residual():
    inputs = make_inputs((9, 96), torch.float32, seed=16, residual=False)
    torch.manual_seed(4)
    seed = int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64))
    y, mean, rstd = layernorm_forward(inputs["x"], None, inputs["weight"], inputs["bias"], 1e-5, inputs["x_bias"], 0.4, seed)
    dx, dres, *_ = layernorm_backward(torch.ones_like(y), inputs["x"], None, inputs["weight"], mean, rstd,
                                      inputs["x_bias"], 0.4, seed)  # fmt: skip
    assert dres is None
    keep = torch.ones_like(y, dtype=torch.bool)
    ref = oracle(inputs["x"], None, inputs["weight"], inputs["bias"], 1e-5, inputs["x_bias"], keep=keep, dropout_p=0.4)
    assert rel_err(y, ref) > 1e-3  # dropout did something
    torch.manual_seed(4)
    out, g = grads(lambda **kw: triton_add_layernorm(eps=1e-5, dropout_p=0.4, **kw), inputs, torch.ones_like(y))
    assert torch.equal(out, y) and torch.equal(g["x"], dx)


def test_op_dropout_follows_torch_manual_seed():
    inputs = make_inputs((5, 96), torch.float32, seed=17)
    torch.manual_seed(0)
    a = triton_add_layernorm(**inputs, eps=1e-5, dropout_p=0.5)
    torch.manual_seed(0)
    b = triton_add_layernorm(**inputs, eps=1e-5, dropout_p=0.5)
    c = triton_add_layernorm(**inputs, eps=1e-5, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- the op: dispatch, torch.compile, bad input ---------------------------------------


def test_dispatch_runs_the_kernel():
    assert dispatch.has_implementation("add_layernorm", "triton")
    inputs = make_inputs((3, 96), torch.float32, seed=18)
    with dispatch.record_dispatch() as log:
        out = add_layernorm(inputs["x"], inputs["residual"], inputs["weight"], inputs["bias"], 1e-5, x_bias=inputs["x_bias"])
    assert log == [("add_layernorm", "triton")]
    assert rel_err(out, oracle(**inputs, eps=1e-5)) < 1e-6


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    inputs = make_inputs((2, 5, 96), torch.float32, seed=19)

    def fn(x):
        return triton_add_layernorm(x * 2, inputs["residual"], inputs["weight"], inputs["bias"], 1e-5,
                                    x_bias=inputs["x_bias"], dropout_p=0.25).sin()  # fmt: skip

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    x_c, x_e = inputs["x"].clone().requires_grad_(), inputs["x"].clone().requires_grad_()
    torch.manual_seed(3)
    out_c = compiled(x_c)
    torch.manual_seed(3)
    out_e = fn(x_e)
    out_c.sum().backward()
    out_e.sum().backward()
    assert torch.equal(out_c, out_e) and rel_err(x_c.grad, x_e.grad) < 1e-6


def test_poisoned_allocation_is_active():
    assert launch.empty((4,), torch.float16, torch.device(DEVICE)).isnan().all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=torch.zeros(2, 8, dtype=torch.float64)), TypeError, "float16, bfloat16 or float32"),  # the kernels'
        (dict(x=torch.zeros(2, MAX_HIDDEN + 1)), ValueError, "last dimension"),  # own checks,
        (dict(x_bias=torch.zeros(8, dtype=torch.int32)), TypeError, "float16, bfloat16 or float32"),
        (dict(residual=torch.zeros(2, 7)), ValueError, "residual must"),  # then the op's
        (dict(weight=torch.zeros(7)), ValueError, "weight must"),
        (dict(dropout_p=1.0), ValueError, "dropout_p"),
        (dict(x=torch.tensor(1.0)), TypeError, "at least one dimension"),
    ],
)
def test_bad_input_is_rejected_before_any_kernel(kwargs, error, match, monkeypatch):
    """The launchers trust their callers: the op checks its arguments once, and its Triton path
    adds only what the kernels need (``check_supported``), all before a kernel launches."""
    monkeypatch.setattr(layernorm_kernels, "_tuned", lambda *a: pytest.fail("a kernel was launched"))
    args = dict(x=torch.zeros(2, 8), residual=None, weight=None, bias=None, eps=1e-5) | kwargs
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(error, match=match):
        add_layernorm(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors are only rejected where CUDA would be used")
def test_cpu_tensor_without_interpreter_is_rejected(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensor"):
        check_supported(torch.zeros(2, 8))


# --- GPU: BERT-sized rows in half precision -----------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hidden", [768, 1024], ids=["bert-base", "bert-large"])
def test_gpu_bert_shapes(hidden, dtype):
    inputs = make_inputs((8, 512, hidden), dtype, seed=hidden)
    dy = torch.randn(8, 512, hidden, generator=torch.Generator().manual_seed(20)).to(DEVICE)
    out, g = grads(lambda **kw: triton_add_layernorm(eps=1e-12, **kw), inputs, dy)
    ref_out, ref_g = grads(lambda **kw: oracle(eps=1e-12, **kw), {k: v.float() for k, v in inputs.items()}, dy)
    assert rel_err(out, ref_out) < 1e-2
    for name in g:
        assert rel_err(g[name], ref_g[name]) < 1e-2, name
    torch.manual_seed(0)
    assert torch.isfinite(triton_add_layernorm(**inputs, eps=1e-12, dropout_p=0.1)).all()
