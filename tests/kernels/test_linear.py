"""GEMM with fused bias/activation epilogue, its backward, and the cuBLAS/Triton table
(the activation kernels themselves: test_activations.py).

Without a GPU these run under TRITON_INTERPRET=1 (see conftest.py) on small odd-sized
matrices, fp32 and fp16; bf16 at BERT shapes runs in the ``gpu`` tests. Launchers
NaN-poison their outputs here, so every comparison also checks every element was written.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastbert.kernels import linear as linear_kernels
from fastbert.kernels import linear_table
from fastbert.kernels.linear import linear_forward, matmul
from fastbert.ops import dispatch, linear_triton
from fastbert.ops.linear import ACTIVATIONS, canonical_activation, linear, linear_reference
from fastbert.ops.linear_triton import triton_linear
from tests.helpers import TORCH_ACTIVATIONS, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_inputs(m, k, n, dtype, seed, bias=True, lead=()):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k**0.5
    b = torch.randn(n, generator=gen) if bias else None
    return {"x": x.to(DEVICE, dtype), "weight": w.to(DEVICE, dtype), "bias": b.to(DEVICE, dtype) if bias else None}


def grads(fn, inputs, dy):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    out = fn(**{k: leaves.get(k) for k in inputs})
    out.backward(dy.to(out.dtype))
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def check(inputs, activation, tol, seed=0, fn=None):
    """The op's output and grads against float64 math and the reference op's autograd."""
    fn = fn or triton_linear
    out_shape = inputs["x"].shape[:-1] + (inputs["weight"].shape[0],)
    dy = torch.randn(out_shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    out, g = grads(lambda **kw: fn(**kw, activation=activation), inputs, dy)
    act = TORCH_ACTIVATIONS[canonical_activation(activation)]
    dbl = {k: v.double() if v is not None else None for k, v in inputs.items()}
    ref_out, ref_g = grads(lambda x, weight, bias: act(F.linear(x, weight, bias)), dbl, dy.double())
    assert out.shape == out_shape and out.dtype == inputs["x"].dtype and out.is_contiguous()
    assert rel_err(out, ref_out) < tol, "forward"
    for name in g:
        assert g[name].shape == inputs[name].shape and g[name].dtype == inputs[name].dtype, name
        assert rel_err(g[name], ref_g[name]) < tol, name
    ref_out2, ref_g2 = grads(lambda **kw: linear_reference(**kw, activation=activation), inputs, dy)
    assert rel_err(out, ref_out2) < tol
    for name in g:
        assert rel_err(g[name], ref_g2[name]) < tol, name
    return out, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k, n", [(24, 72), (200, 24), (72, 200)])
@pytest.mark.parametrize("m", [1, 7, 100])
def test_sizes_bias_gelu(m, k, n, dtype):
    check(make_inputs(m, k, n, dtype, seed=m + k + n), "gelu", TOL[dtype], seed=m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_activations(activation, dtype):
    check(make_inputs(37, 72, 40, dtype, seed=1), activation, TOL[dtype])


def test_no_bias_3d_input():
    inputs = make_inputs(9, 24, 72, torch.float32, seed=2, bias=False, lead=(3,))
    check(inputs, "relu", TOL[torch.float32])


def test_non_contiguous_inputs():
    inputs = make_inputs(30, 72, 24, torch.float32, seed=3)
    inputs["x"] = torch.randn(100, 90, generator=torch.Generator().manual_seed(4)).to(DEVICE)[::3, 5:77]  # strided rows
    inputs["weight"] = inputs["weight"].t().contiguous().t()  # column-major weight
    assert not inputs["x"].is_contiguous() and not inputs["weight"].is_contiguous()
    check(inputs, "silu", TOL[torch.float32])
    x_t = torch.randn(72, 30, generator=torch.Generator().manual_seed(5)).to(DEVICE).t()  # unit stride along rows
    out, _ = linear_forward(x_t, inputs["weight"], inputs["bias"], "gelu")
    assert rel_err(out, F.gelu(F.linear(x_t.double(), inputs["weight"].double(), inputs["bias"].double()))) < 1e-5


def test_matmul_saves_the_pre_activation():
    inputs = make_inputs(19, 40, 56, torch.float16, seed=6)
    y, pre = linear_forward(inputs["x"], inputs["weight"], inputs["bias"], "gelu_tanh", save_pre=True)
    z = F.linear(inputs["x"].double(), inputs["weight"].double(), inputs["bias"].double())
    assert rel_err(pre, z) < TOL[torch.float16] and rel_err(y, F.gelu(z, approximate="tanh")) < TOL[torch.float16]
    assert matmul(inputs["x"], inputs["weight"].t())[1] is None


def test_empty_and_k_zero():
    y, _ = linear_forward(torch.zeros(0, 8, device=DEVICE), torch.ones(4, 8, device=DEVICE))
    assert y.shape == (0, 4)
    bias = torch.randn(4, device=DEVICE)
    y, _ = linear_forward(torch.zeros(3, 0, device=DEVICE), torch.zeros(4, 0, device=DEVICE), bias, "relu")
    assert torch.equal(y, F.relu(bias).expand(3, 4))


# --- the cuBLAS + epilogue path and its measured table --------------------------------


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_cublas_path(activation, monkeypatch):
    """The path the table can choose: torch.addmm, then the elementwise epilogue kernel."""
    monkeypatch.setattr(linear_triton, "_path", lambda *a: "cublas")
    check(make_inputs(23, 40, 24, torch.float32, seed=8), activation, TOL[torch.float32])


def test_table_lookup():
    assert linear_table.TABLE == {} or all(isinstance(k, int) for k in linear_table.TABLE)
    entry = dict(dtype="fp16", n=3072, k=768, activation="gelu", triton_us=1.0, cublas_us=1.0)
    table = {90: [dict(entry, m=512, choice="cublas"), dict(entry, m=4096, choice="triton"), dict(entry, m=2048, choice="cublas")]}
    choose = lambda m, **kw: linear_table.choose(kw.get("arch", 90), m, 3072, 768, kw.get("dtype", "fp16"),  # noqa: E731
                                                 kw.get("act", "gelu"), table)  # fmt: skip
    assert choose(1) == "cublas" and choose(512) == "cublas" and choose(513) == "cublas"
    assert choose(2049) == "triton" and choose(10**6) == "triton"
    assert choose(512, arch=80) == "triton"  # no table for the arch: fused Triton
    assert choose(512, dtype="bf16") == "triton" and choose(512, act=None) == "triton"  # no entry for the shape
    assert linear_table.choose(0, 512, 3072, 768, "fp16", "gelu") == "triton"  # the interpreter


# --- the op: dispatch, autograd, torch.compile, bad input -----------------------------


def test_dispatch_runs_the_kernel():
    assert dispatch.has_implementation("linear", "triton")
    inputs = make_inputs(5, 24, 40, torch.float32, seed=9)
    with dispatch.record_dispatch() as log:
        out = linear(**inputs, activation="gelu_new")
    assert log == [("linear", "triton")]
    ref = F.gelu(F.linear(*(t.double() for t in inputs.values())), approximate="tanh")
    assert rel_err(out, ref) < 1e-5


def test_no_grad_and_partial_grads():
    inputs = make_inputs(6, 24, 40, torch.float32, seed=10)
    with torch.no_grad():
        out = triton_linear(**inputs, activation="gelu")
    assert rel_err(out, F.gelu(F.linear(*(t.double() for t in inputs.values())))) < 1e-5
    w = inputs["weight"].clone().requires_grad_()  # only the weight needs a gradient
    triton_linear(inputs["x"], w, inputs["bias"], "silu").sum().backward()
    wd = inputs["weight"].double().requires_grad_()
    F.silu(F.linear(inputs["x"].double(), wd, inputs["bias"].double())).sum().backward()
    assert rel_err(w.grad, wd.grad) < 1e-5


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    inputs = make_inputs(7, 24, 40, torch.float32, seed=11)

    def fn(x):
        return triton_linear(x * 2, inputs["weight"], inputs["bias"], "gelu").sin()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    x_c, x_e = inputs["x"].clone().requires_grad_(), inputs["x"].clone().requires_grad_()
    out_c, out_e = compiled(x_c), fn(x_e)
    out_c.sum().backward()
    out_e.sum().backward()
    assert torch.equal(out_c, out_e) and rel_err(x_c.grad, x_e.grad) < 1e-6


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.zeros(2, 8, dtype=torch.float64), torch.zeros(4, 8, dtype=torch.float64)), TypeError, "float16, bfloat16"),
        ((torch.zeros(2, 8), torch.zeros(4, 8, dtype=torch.float16)), TypeError, "dtype"),
        ((torch.zeros(2, 8), torch.zeros(4, 7)), ValueError, "in_features"),
        ((torch.zeros(2, 8), torch.zeros(4, 8), torch.zeros(3)), ValueError, "bias must"),
        ((torch.zeros(2, 8), torch.zeros(4, 8), None, "tanh"), ValueError, "activation"),
        ((torch.tensor(1.0), torch.zeros(4, 8)), ValueError, "x must be a tensor"),
    ],
)
def test_bad_input_is_rejected_before_any_kernel(args, error, match, monkeypatch):
    """The launchers trust their callers: the op checks its arguments once, and its Triton path
    adds only what the kernels need (``check_supported``), all before a kernel launches."""
    monkeypatch.setattr(linear_kernels, "_tuned", lambda *a: pytest.fail("a kernel was launched"))
    with pytest.raises(error, match=match):
        linear(*(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args))


# --- GPU: BERT shapes in half precision -----------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "k, n, activation",
    [(768, 2304, None), (768, 3072, "gelu"), (3072, 768, None), (1024, 4096, "gelu"), (4096, 1024, None)],
)
def test_gpu_bert_shapes(k, n, activation, dtype):
    inputs = make_inputs(4096, k, n, dtype, seed=k + n)
    dy = torch.randn(4096, n, generator=torch.Generator().manual_seed(12)).to(DEVICE)
    out, g = grads(lambda **kw: triton_linear(**kw, activation=activation), inputs, dy)
    ref_out, ref_g = grads(lambda **kw: linear_reference(**kw, activation=activation), {k_: v.float() for k_, v in inputs.items()}, dy)
    assert rel_err(out, ref_out) < 1e-2
    for name in g:
        assert rel_err(g[name], ref_g[name]) < 1e-2, name
