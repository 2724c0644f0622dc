"""BERT (and ELECTRA, whose encoder is BERT's)."""

from __future__ import annotations

from fastbert.models.adapter import BERT_LAYER_MAP, FamilyAdapter, common_config


class BertAdapter(FamilyAdapter):
    """``BertModel`` and its task models."""

    name = "BERT"
    model_types = ("bert",)
    hf_splits_rows_by_position_ids = True

    def config_from_hf(self, hf_config):
        """FastBertConfig of a ``BertConfig``."""
        return common_config(hf_config)

    def layer_map(self):
        """BERT's per-layer parameter names."""
        return BERT_LAYER_MAP
