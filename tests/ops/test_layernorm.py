"""fastbert.ops.add_layernorm against a float64 LayerNorm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastbert.ops import add_layernorm
from tests.helpers import rel_err


def _inputs(rows, hidden, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    return mk(rows, hidden), mk(rows, hidden), mk(hidden) + 1, mk(hidden), mk(hidden)


@pytest.mark.parametrize("hidden", [96, 200, 384])
@pytest.mark.parametrize("rows", [1, 7, 100])
@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_matches_float64(hidden, rows, eps):
    x, res, w, b, xb = _inputs(rows, hidden, torch.float32)
    ref = F.layer_norm((x.double() + xb.double()) + res.double(), (hidden,), w.double(), b.double(), eps)
    assert rel_err(add_layernorm(x, res, w, b, eps, x_bias=xb), ref) < 1e-6
    ref = F.layer_norm(x.double(), (hidden,), w.double(), b.double(), eps)
    assert rel_err(add_layernorm(x, None, w, b, eps), ref) < 1e-6


def test_fp16_statistics_in_fp32():
    x, res, w, b, xb = _inputs(33, 768, torch.float16)
    ref = F.layer_norm(x.double() + xb.double() + res.double(), (768,), w.double(), b.double(), 1e-12)
    out = add_layernorm(x, res, w, b, 1e-12, x_bias=xb)
    assert out.dtype == torch.float16 and rel_err(out, ref) < 2e-3


def test_dropout_rate():
    torch.manual_seed(0)
    x = torch.ones(64, 512)
    w, b = torch.ones(512), torch.zeros(512)
    # x = 1 everywhere: dropped entries become 0, kept ones 1/(1-p); the row mean is about 1, so
    # after normalization exactly the dropped entries are negative.
    out = add_layernorm(x, torch.zeros_like(x), w, b, 1e-5, dropout_p=0.25)
    dropped = (out < 0).float().mean().item()  # dropped entries fall below the row mean
    assert abs(dropped - 0.25) < 5 * math.sqrt(0.25 * 0.75 / x.numel())


def test_bad_input():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="residual"):
        add_layernorm(x, torch.randn(2, 9), torch.ones(8), torch.zeros(8), 1e-5)
    with pytest.raises(ValueError, match="weight"):
        add_layernorm(x, None, torch.ones(7), torch.zeros(8), 1e-5)
    with pytest.raises(ValueError, match="dropout_p"):
        add_layernorm(x, None, torch.ones(8), torch.zeros(8), 1e-5, dropout_p=-0.1)
