"""Structured pruning: remove whole attention heads or FFN neurons, leaving smaller dense matrices."""

from __future__ import annotations

import torch
from torch import nn

from fastbert.modules.layer import FastBertLayer


def head_scores(layer: FastBertLayer) -> torch.Tensor:
    """L2 norm of each head's q/k/v rows and output-projection columns."""
    heads = layer.num_attention_heads
    hidden = layer.attention_output.weight.shape[0]
    d = layer.qkv.weight.shape[0] // (3 * heads)
    qkv = layer.qkv.weight.detach().view(3, heads, d, hidden).pow(2).sum(dim=(0, 2, 3))
    out = layer.attention_output.weight.detach().view(hidden, heads, d).pow(2).sum(dim=(0, 2))
    return (qkv + out).sqrt()


def neuron_scores(layer: FastBertLayer) -> torch.Tensor:
    """L2 norm of each FFN neuron's input row and output column."""
    w_in = layer.intermediate.weight.detach().pow(2).sum(1)
    w_out = layer.output.weight.detach().pow(2).sum(0)
    return (w_in + w_out).sqrt()


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


@torch.no_grad()
def keep_heads(layer: FastBertLayer, keep: torch.Tensor) -> None:
    """Shrink ``layer`` to the heads where ``keep`` (bool per head) is True (at least one)."""
    if int(keep.sum()) == 0:
        raise ValueError("a layer must keep at least one attention head")
    heads = layer.num_attention_heads
    hidden = layer.attention_output.weight.shape[0]
    d = layer.qkv.weight.shape[0] // (3 * heads)
    idx = keep.nonzero().flatten()
    w = layer.qkv.weight.view(3, heads, d, hidden)[:, idx].reshape(-1, hidden)
    b = layer.qkv.bias.view(3, heads, d)[:, idx].reshape(-1)
    layer.qkv = _linear(w, b)
    w_out = layer.attention_output.weight.view(hidden, heads, d)[:, idx].reshape(hidden, -1)
    layer.attention_output = _linear(w_out, layer.attention_output.bias)
    layer.num_attention_heads = len(idx)


@torch.no_grad()
def keep_neurons(layer: FastBertLayer, keep: torch.Tensor) -> None:
    """Shrink ``layer``'s FFN to the neurons where ``keep`` is True (at least one)."""
    if int(keep.sum()) == 0:
        raise ValueError("a layer must keep at least one FFN neuron")
    idx = keep.nonzero().flatten()
    layer.intermediate = _linear(layer.intermediate.weight[idx], layer.intermediate.bias[idx])
    layer.output = _linear(layer.output.weight[:, idx], layer.output.bias)
