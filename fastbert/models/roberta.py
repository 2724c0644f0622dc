"""RoBERTa, XLM-RoBERTa and CamemBERT: BERT's layers, positions numbered from the padding index."""

from __future__ import annotations

from fastbert.models.adapter import BERT_LAYER_MAP, FamilyAdapter, common_config


class RobertaAdapter(FamilyAdapter):
    """``RobertaModel``, ``XLMRobertaModel``, ``CamembertModel`` and their task models."""

    name = "RoBERTa"
    model_types = ("roberta", "xlm-roberta", "camembert")
    hf_splits_rows_by_position_ids = True

    def config_from_hf(self, hf_config):
        """FastBertConfig of a RoBERTa-style config (positions from the padding index)."""
        return common_config(hf_config, position_ids_from_padding=True)

    def layer_map(self):
        """RoBERTa's per-layer parameter names (BERT's)."""
        return BERT_LAYER_MAP
