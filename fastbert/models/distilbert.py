"""DistilBERT: BERT's layer math under other names, no token types, no pooler."""

from __future__ import annotations

from fastbert.models.adapter import FamilyAdapter
from fastbert.modules.config import FastBertConfig


class DistilBertAdapter(FamilyAdapter):
    """``DistilBertModel`` and its task models."""

    name = "DistilBERT"
    model_types = ("distilbert",)
    hf_encoder_attr = "transformer"
    hf_layer_prefix = "transformer.layer.{i}."
    output_class_name = "BaseModelOutput"
    layer_dropouts = {"attention_dropout": "attention.dropout", "attention_output_dropout": None,
                      "output_dropout": "ffn.dropout"}

    def hf_activation(self, hf_config):
        """DistilBERT calls it ``activation``."""
        return hf_config.activation

    def config_from_hf(self, hf_config):
        """FastBertConfig of a ``DistilBertConfig`` (its LayerNorms use eps 1e-12, fixed in HF's code)."""
        return FastBertConfig(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.dim,
            num_hidden_layers=hf_config.n_layers,
            num_attention_heads=hf_config.n_heads,
            intermediate_size=hf_config.hidden_dim,
            hidden_act=hf_config.activation,
            max_position_embeddings=hf_config.max_position_embeddings,
            type_vocab_size=0,
            layer_norm_eps=1e-12,
            hidden_dropout_prob=hf_config.dropout,
            attention_probs_dropout_prob=hf_config.attention_dropout,
            attention_output_dropout_prob=0.0,  # DistilBERT has no dropout after out_lin
            pad_token_id=hf_config.pad_token_id,
            initializer_range=getattr(hf_config, "initializer_range", 0.02),
        )

    def layer_map(self):
        """DistilBERT's per-layer parameter names."""
        return {
            "qkv.weight": ("attention.q_lin.weight", "attention.k_lin.weight", "attention.v_lin.weight"),
            "qkv.bias": ("attention.q_lin.bias", "attention.k_lin.bias", "attention.v_lin.bias"),
            "attention_output.weight": ("attention.out_lin.weight",),
            "attention_output.bias": ("attention.out_lin.bias",),
            "attention_norm.weight": ("sa_layer_norm.weight",),
            "attention_norm.bias": ("sa_layer_norm.bias",),
            "intermediate.weight": ("ffn.lin1.weight",),
            "intermediate.bias": ("ffn.lin1.bias",),
            "output.weight": ("ffn.lin2.weight",),
            "output.bias": ("ffn.lin2.bias",),
            "output_norm.weight": ("output_layer_norm.weight",),
            "output_norm.bias": ("output_layer_norm.bias",),
        }
