"""Per-op timings of fastbert.ops: attention, add_layernorm, linear (+ activation), embeddings.

The ``backend`` fixture (benchmarks/conftest.py) runs each op on every backend of this machine."""

from __future__ import annotations

import pytest
import torch

from fastbert import ops


def _randn(*size, shape, device, scale=1.0):
    gen = torch.Generator(device="cpu").manual_seed(sum(size))
    return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=shape["dtype"])


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_attention(timed, backend, shape, device, padded):
    b, s, h = shape["batch"], shape["seq"], shape["hidden"]
    qkv = _randn(b, s, 3 * h, shape=shape, device=device)
    lengths = torch.randint(s // 4, s + 1, (b,), generator=torch.Generator().manual_seed(0)) if padded else torch.full((b,), s)
    key_lengths = lengths.to(device=device, dtype=torch.int32)
    timed(lambda: ops.attention(qkv, shape["heads"], key_lengths=key_lengths))


def test_add_layernorm(timed, backend, shape, device):
    h = shape["hidden"]
    x = _randn(shape["batch"] * shape["seq"], h, shape=shape, device=device)
    residual = _randn(shape["batch"] * shape["seq"], h, shape=shape, device=device)
    weight, bias, x_bias = (_randn(h, shape=shape, device=device) for _ in range(3))
    timed(lambda: ops.add_layernorm(x, residual, weight, bias, 1e-12, x_bias=x_bias))


@pytest.mark.parametrize(("out_name", "activation"), [("qkv", None), ("ffn_in", "gelu"), ("ffn_out", None)])
def test_linear(timed, backend, shape, device, out_name, activation):
    h, inter = shape["hidden"], shape["inter"]
    in_features, out_features = {"qkv": (h, 3 * h), "ffn_in": (h, inter), "ffn_out": (inter, h)}[out_name]
    x = _randn(shape["batch"] * shape["seq"], in_features, shape=shape, device=device)
    weight = _randn(out_features, in_features, shape=shape, device=device, scale=in_features ** -0.5)
    bias = _randn(out_features, shape=shape, device=device)
    timed(lambda: ops.linear(x, weight, bias, activation))


def test_embeddings(timed, backend, shape, device):
    b, s, h = shape["batch"], shape["seq"], shape["hidden"]
    ids = torch.randint(3, shape["vocab"], (b, s), generator=torch.Generator().manual_seed(0)).to(device)
    positions = torch.arange(s, device=device)[None, :]
    types = torch.zeros_like(ids)
    word = _randn(shape["vocab"], h, shape=shape, device=device)
    pos, typ = _randn(512, h, shape=shape, device=device), _randn(2, h, shape=shape, device=device)
    norm_w, norm_b = _randn(h, shape=shape, device=device), _randn(h, shape=shape, device=device)
    timed(lambda: ops.embeddings(ids, positions, types, word, pos, typ, norm_w, norm_b, 1e-12))
