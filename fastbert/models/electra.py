"""ELECTRA: BERT's encoder with factorized embeddings (``embedding_size``) and no pooler."""

from __future__ import annotations

from fastbert.models.adapter import BERT_LAYER_MAP, FamilyAdapter, common_config


class ElectraAdapter(FamilyAdapter):
    """``ElectraModel`` and its task models (discriminator and generator)."""

    name = "ELECTRA"
    model_types = ("electra",)
    hf_splits_rows_by_position_ids = True
    hf_projection = "embeddings_project"  # present only when embedding_size != hidden_size
    output_class_name = "BaseModelOutputWithPastAndCrossAttentions"

    def config_from_hf(self, hf_config):
        """FastBertConfig of an ``ElectraConfig``."""
        return common_config(hf_config, embedding_size=hf_config.embedding_size)

    def layer_map(self):
        """ELECTRA's per-layer parameter names (BERT's)."""
        return BERT_LAYER_MAP
