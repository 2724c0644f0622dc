"""FastBertLayer: one post-LN transformer encoder layer built from fastbert ops."""

from __future__ import annotations

import torch
from torch import nn

from fastbert import ops
from fastbert.modules.projection import calls_module, project, project_bias_later, qkv_projection
from fastbert.modules.qkv_slices import QKVSlice
from fastbert.ops.linear import canonical_activation


class FastBertLayer(nn.Module):
    """Self-attention and feed-forward blocks of a post-LN BERT layer.

    ``x1 = LN(x + dropout(attn(x) W_o + b_o))``; ``out = LN(x1 + dropout(act(x1 W_1 + b_1) W_2 + b_2))``.
    Q, K and V come from one fused ``qkv`` projection (weight ``(3*hidden, hidden)``,
    rows ordered q, k, v); ``qkv_names`` names its three :class:`QKVSlice` views
    (``query``/``key``/``value`` by default), which PEFT, hooks and module swaps can target
    like HF's separate projections. Parameters live in ``nn.Linear``/``nn.LayerNorm``
    containers so optimizers' weight-decay rules (e.g. HF Trainer's) see the usual module
    types. A plain linear's ``forward`` is never called: the fused ops read its weight;
    whatever else sits in a projection slot is called (:mod:`fastbert.modules.projection`).

    Dropout probabilities are read from the ``nn.Dropout`` modules ``attention_dropout``
    (on the attention probabilities), ``attention_output_dropout`` and ``output_dropout``
    at every forward, so setting ``p`` on them (as HF recipes do on every ``nn.Dropout``)
    takes effect; a slot set to None applies no dropout (the HF family has none there).
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
        qkv_names: tuple[str, str, str] = ("query", "key", "value"),
    ) -> None:
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
            )
        canonical_activation(hidden_act)
        qkv_names = tuple(qkv_names)
        if len(qkv_names) != 3 or len(set(qkv_names)) != 3 or not all(isinstance(n, str) and n.isidentifier()
                                                                       for n in qkv_names):
            raise ValueError(f"qkv_names must be three distinct identifiers, got {qkv_names!r}")
        kw = {"device": device, "dtype": dtype}
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.qkv_names = qkv_names
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, **kw)
        self.attention_dropout = nn.Dropout(attention_probs_dropout_prob)
        self.attention_output = nn.Linear(hidden_size, hidden_size, **kw)
        self.attention_output_dropout = nn.Dropout(attention_output_dropout_prob)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps, **kw)
        self.intermediate = nn.Linear(hidden_size, intermediate_size, **kw)
        self.output = nn.Linear(intermediate_size, hidden_size, **kw)
        self.output_dropout = nn.Dropout(ffn_output_dropout_prob)
        self.output_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps, **kw)
        for index, name in enumerate(qkv_names):
            if hasattr(self, name):
                raise ValueError(f"qkv_names: {name!r} is already an attribute of the layer")
            setattr(self, name, QKVSlice(self, index))

    @property
    def attention_probs_dropout_prob(self) -> float:
        """Dropout probability on the attention probabilities (``attention_dropout.p``)."""
        return _p(self.attention_dropout)

    @property
    def attention_output_dropout_prob(self) -> float:
        """Dropout probability after the attention output projection."""
        return _p(self.attention_output_dropout)

    @property
    def ffn_output_dropout_prob(self) -> float:
        """Dropout probability after the second feed-forward projection."""
        return _p(self.output_dropout)

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
        for name in ("attention_norm", "output_norm"):
            if calls_module(getattr(self, name), nn.LayerNorm):
                raise ValueError(
                    f"{name} is wrapped, hooked or not an nn.LayerNorm ({type(getattr(self, name)).__name__}): "
                    "fastbert fuses it with the residual add and cannot call it"
                )
        qkv = qkv_projection(self, hidden_states)
        context = ops.attention(
            qkv,
            self.num_attention_heads,
            attn_mask=attn_mask,
            key_lengths=key_lengths,
            dropout_p=self.attention_probs_dropout_prob if training else 0.0,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
            indices=indices,
        )
        attn, attn_bias = project_bias_later(self.attention_output, context)
        x1 = ops.add_layernorm(
            attn,
            hidden_states,
            self.attention_norm.weight,
            self.attention_norm.bias,
            self.attention_norm.eps,
            x_bias=attn_bias,
            dropout_p=self.attention_output_dropout_prob if training else 0.0,
        )
        ffn = project(self.intermediate, x1, activation=self.hidden_act)
        ffn, ffn_bias = project_bias_later(self.output, ffn)
        return ops.add_layernorm(
            ffn,
            x1,
            self.output_norm.weight,
            self.output_norm.bias,
            self.output_norm.eps,
            x_bias=ffn_bias,
            dropout_p=self.ffn_output_dropout_prob if training else 0.0,
        )


def _p(dropout: nn.Module | None) -> float:
    return 0.0 if dropout is None else float(dropout.p)
