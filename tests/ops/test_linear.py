"""fastbert.ops.linear against torch and Hugging Face activations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from fastbert.ops import ACTIVATIONS, linear
from tests.helpers import rel_err


@pytest.mark.parametrize("activation", [None] + sorted(ACTIVATIONS))
def test_matches_hf_activation(activation):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 40, generator=gen, dtype=torch.float64)
    w = torch.randn(17, 40, generator=gen, dtype=torch.float64)
    b = torch.randn(17, generator=gen, dtype=torch.float64)
    ref = x @ w.T + b
    if activation is not None:
        ref = ACT2FN[activation](ref)
    assert rel_err(linear(x, w, b, activation), ref) < 1e-6


def test_gelu_forms_differ_and_match_torch():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    eye = torch.eye(1, dtype=torch.float64)
    erf = linear(x[:, None], eye, None, "gelu")[:, 0]
    tanh = linear(x[:, None], eye, None, "gelu_new")[:, 0]
    assert torch.allclose(erf, F.gelu(x), atol=0, rtol=0)
    assert torch.allclose(tanh, F.gelu(x, approximate="tanh"), atol=0, rtol=0)
    assert (erf - tanh).abs().max() > 1e-5


def test_bad_input():
    with pytest.raises(ValueError, match="activation"):
        linear(torch.randn(2, 4), torch.randn(3, 4), None, "gelu_fancy")
    with pytest.raises(ValueError, match="in_features"):
        linear(torch.randn(2, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="bias"):
        linear(torch.randn(2, 4), torch.randn(3, 4), torch.randn(4))


def test_autocast_casts_like_f_linear():
    """Under autocast fp32 weights meet a bf16 input as in ``F.linear``: same dtype, same values."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 37, generator=gen)
    w, b = torch.randn(19, 37, generator=gen), torch.randn(19, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear(x.bfloat16(), w, b, "gelu")
        want = F.gelu(F.linear(x.bfloat16(), w, b))
    assert got.dtype == want.dtype == torch.bfloat16
    assert rel_err(got, want) < 1e-2
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        linear(x.bfloat16(), w, b)  # outside autocast a mismatch is an error
