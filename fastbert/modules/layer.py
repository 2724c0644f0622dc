"""FastBertLayer: one post-LN transformer encoder layer built from fastbert ops."""

from __future__ import annotations

import torch
from torch import nn

from fastbert import ops
from fastbert.modules.projection import project
from fastbert.ops.linear import canonical_activation


class FastBertLayer(nn.Module):
    """Self-attention and feed-forward blocks of a post-LN BERT layer.

    ``x1 = LN(x + dropout(attn(x) W_o + b_o))``; ``out = LN(x1 + dropout(act(x1 W_1 + b_1) W_2 + b_2))``.
    Q, K and V come from one fused ``qkv`` projection (weight ``(3*hidden, hidden)``,
    rows ordered q, k, v). Parameters live in ``nn.Linear``/``nn.LayerNorm`` containers
    so optimizers' weight-decay rules (e.g. HF Trainer's) see the usual module types;
    their ``forward`` is never called, the ops are. Each projection runs through
    :func:`~fastbert.modules.projection.project`, which takes a pruned matrix's sparse path.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        intermediate_size: int,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        attention_probs_dropout_prob: float = 0.0,
        attention_output_dropout_prob: float = 0.0,
        ffn_output_dropout_prob: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
            )
        canonical_activation(hidden_act)
        kw = {"device": device, "dtype": dtype}
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.attention_output_dropout_prob = attention_output_dropout_prob
        self.ffn_output_dropout_prob = ffn_output_dropout_prob
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, **kw)
        self.attention_output = nn.Linear(hidden_size, hidden_size, **kw)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps, **kw)
        self.intermediate = nn.Linear(hidden_size, intermediate_size, **kw)
        self.output = nn.Linear(intermediate_size, hidden_size, **kw)
        self.output_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps, **kw)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        key_lengths: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(batch, seq, hidden)`` -> same shape, or packed ``(tokens, hidden)`` with
        ``cu_seqlens``/``max_seqlen`` (and ``indices``, computed once per forward by the
        encoder: :func:`fastbert.ops.attention.packed_attention_args`); masks as in
        :func:`fastbert.ops.attention`."""
        training = self.training
        attn_p = self.attention_probs_dropout_prob if training else 0.0
        qkv = project(self.qkv, hidden_states, self.qkv.bias)
        context = ops.attention(
            qkv,
            self.num_attention_heads,
            attn_mask=attn_mask,
            key_lengths=key_lengths,
            dropout_p=attn_p,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
            indices=indices,
        )
        attn = project(self.attention_output, context)
        x1 = ops.add_layernorm(
            attn,
            hidden_states,
            self.attention_norm.weight,
            self.attention_norm.bias,
            self.attention_norm.eps,
            x_bias=self.attention_output.bias,
            dropout_p=self.attention_output_dropout_prob if training else 0.0,
        )
        ffn = project(self.intermediate, x1, self.intermediate.bias, activation=self.hidden_act)
        ffn = project(self.output, ffn)
        return ops.add_layernorm(
            ffn,
            x1,
            self.output_norm.weight,
            self.output_norm.bias,
            self.output_norm.eps,
            x_bias=self.output.bias,
            dropout_p=self.ffn_output_dropout_prob if training else 0.0,
        )
