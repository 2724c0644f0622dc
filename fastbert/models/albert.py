"""ALBERT: factorized embeddings projected into the encoder, layers shared across depth."""

from __future__ import annotations

from fastbert.models.adapter import FamilyAdapter, common_config


def albert_layer_schedule(num_layers: int, num_groups: int, inner: int) -> tuple[int, ...]:
    """Unique-layer index of every applied layer, following HF's group assignment:
    outer step ``i`` uses group ``int(i / (num_layers / num_groups))``, whose ``inner``
    layers run in order; unique layer ``g * inner + j`` is layer ``j`` of group ``g``."""
    schedule = []
    for i in range(num_layers):
        group = int(i / (num_layers / num_groups))
        schedule.extend(group * inner + j for j in range(inner))
    return tuple(schedule)


class AlbertAdapter(FamilyAdapter):
    """``AlbertModel`` and its task models."""

    name = "ALBERT"
    model_types = ("albert",)
    hf_projection = "encoder.embedding_hidden_mapping_in"
    output_class_name = "BaseModelOutputWithPooling"
    # AlbertLayer.dropout exists but HF never applies it (no dropout after ffn_output).
    layer_dropouts = {"attention_dropout": "attention.attention_dropout",
                      "attention_output_dropout": "attention.output_dropout", "output_dropout": None}

    def config_from_hf(self, hf_config):
        """FastBertConfig of an ``AlbertConfig``."""
        schedule = albert_layer_schedule(
            hf_config.num_hidden_layers, hf_config.num_hidden_groups, hf_config.inner_group_num
        )
        return common_config(
            hf_config,
            num_hidden_layers=len(schedule),
            embedding_size=hf_config.embedding_size,
            embedding_projection=True,
            layer_schedule=schedule,
            ffn_output_dropout_prob=0.0,  # ALBERT applies no dropout after ffn_output
        )

    def hf_layer_prefix_for(self, i, hf_config):
        """Unique layer ``i`` is layer ``i % inner_group_num`` of group ``i // inner_group_num``."""
        inner = hf_config.inner_group_num
        return f"encoder.albert_layer_groups.{i // inner}.albert_layers.{i % inner}."

    def layer_map(self):
        """ALBERT's per-layer parameter names."""
        return {
            "qkv.weight": ("attention.query.weight", "attention.key.weight", "attention.value.weight"),
            "qkv.bias": ("attention.query.bias", "attention.key.bias", "attention.value.bias"),
            "attention_output.weight": ("attention.dense.weight",),
            "attention_output.bias": ("attention.dense.bias",),
            "attention_norm.weight": ("attention.LayerNorm.weight",),
            "attention_norm.bias": ("attention.LayerNorm.bias",),
            "intermediate.weight": ("ffn.weight",),
            "intermediate.bias": ("ffn.bias",),
            "output.weight": ("ffn_output.weight",),
            "output.bias": ("ffn_output.bias",),
            "output_norm.weight": ("full_layer_layer_norm.weight",),
            "output_norm.bias": ("full_layer_layer_norm.bias",),
        }

    def pool(self, base, sequence_output):
        """ALBERT pools with ``pooler`` (a Linear) and ``pooler_activation`` on the first token."""
        if getattr(base, "pooler", None) is None:
            return None
        return base.pooler_activation(base.pooler(sequence_output[:, 0]))
