"""The activation helpers and the elementwise kernels built from them (``y = act(z)``,
``dz = dy * act'(z)``), against PyTorch's activations and their autograd in float64.

Without a GPU these run under TRITON_INTERPRET=1 (see conftest.py), fp32 and fp16, with
NaN-poisoned outputs, so every comparison also checks every element was written.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastbert.kernels import compile_check, registry
from fastbert.kernels.activations import ACTIVATIONS, activation_backward, activation_forward
from tests.helpers import TORCH_ACTIVATIONS, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
def test_activation_kernels_against_torch(activation, dtype):
    gen = torch.Generator().manual_seed(7)
    z = torch.cat([torch.randn(3000, generator=gen) * 3, torch.tensor([-60.0, -30.0, -10.0, 0.0, 1e-4, 10.0, 30.0, 60.0])])
    z = z.to(DEVICE, dtype)
    dy = torch.randn(z.shape, generator=gen).to(DEVICE, dtype)
    zd = z.double().requires_grad_()
    ref = TORCH_ACTIVATIONS[activation](zd)
    ref.backward(dy.double())
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    assert rel_err(activation_forward(z, activation), ref) < tol
    assert rel_err(activation_backward(dy, z, activation), zd.grad) < tol
    if activation.startswith("gelu"):  # each form differs measurably from the other one
        other = F.gelu(z.double(), approximate="none" if activation == "gelu_tanh" else "tanh")
        assert rel_err(activation_forward(z.float(), activation), other) > 1e-5


def test_any_shape_and_strides_empty_and_one_element():
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(7, 5, 3, generator=gen).to(DEVICE).transpose(0, 2)  # non-contiguous
    dy = torch.randn(3, 5, 7, generator=gen).to(DEVICE)
    y = activation_forward(z, "silu")
    assert y.shape == z.shape and y.is_contiguous() and rel_err(y, F.silu(z.double())) < 1e-6
    zd = z.double().requires_grad_()
    F.silu(zd).backward(dy.double())
    assert rel_err(activation_backward(dy, z, "silu"), zd.grad) < 1e-6
    assert activation_forward(torch.zeros(0, 4, device=DEVICE), "gelu").shape == (0, 4)
    one = torch.tensor([0.7], device=DEVICE)
    assert rel_err(activation_forward(one, "gelu"), F.gelu(one.double())) < 1e-6


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda z: activation_forward(z.double(), "gelu"), TypeError, "float16, bfloat16 or float32"),
    (lambda z: activation_forward(z, None), ValueError, "activation must be one of"),
    (lambda z: activation_forward(z, "tanh"), ValueError, "activation must be one of"),
    (lambda z: activation_backward(z.half(), z, "gelu"), TypeError, "dy must have dtype"),
    (lambda z: activation_backward(z[:3], z, "gelu"), ValueError, "dy must have z's shape"),
    (lambda z: activation_backward([1.0], z, "gelu"), TypeError, "dy must be a torch.Tensor"),
])  # fmt: skip
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(4, device=DEVICE))


def test_registered_for_the_build_gate_with_every_dtype():
    compile_check.load_kernel_modules()
    for name in ("activation_fwd", "activation_bwd"):
        entry = registry.get(name)
        assert entry.module == "fastbert.kernels.activations"
        assert {v.tuning_key["dtype"] for v in entry.variants} == {"fp16", "bf16", "fp32"}
        assert {v.args["ACTIVATION"] for v in entry.variants} >= {ACTIVATIONS["gelu"], ACTIVATIONS["gelu_tanh"]}
        for variant in entry.variants:
            for arch in registry.ARCHS:
                assert entry.configs_for(arch, variant)
