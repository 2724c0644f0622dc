"""The supported Hugging Face model families, and finding an HF model's family and base model."""

from __future__ import annotations

from torch import nn

from fastbert.models.adapter import FamilyAdapter
from fastbert.models.albert import AlbertAdapter
from fastbert.models.bert import BertAdapter
from fastbert.models.distilbert import DistilBertAdapter
from fastbert.models.electra import ElectraAdapter
from fastbert.models.roberta import RobertaAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (
    BertAdapter(),
    RobertaAdapter(),
    DistilBertAdapter(),
    AlbertAdapter(),
    ElectraAdapter(),
)


def supported_model_types() -> list[str]:
    """HF ``model_type`` values fastbert can optimize."""
    return [t for a in ADAPTERS for t in a.model_types]


def adapter_for(hf_config) -> FamilyAdapter:
    """The adapter for an HF config; TypeError naming the supported families otherwise."""
    model_type = getattr(hf_config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise TypeError(f"fastbert does not support model_type {model_type!r}; supported: {supported_model_types()}")


def max_sequence_length(hf_config) -> int:
    """The longest sequence an HF config's position table numbers (what fastbert accepts);
    TypeError/ValueError for families or options fastbert does not support."""
    adapter = adapter_for(hf_config)
    adapter.check_supported(hf_config)
    return adapter.fast_config(hf_config).max_sequence_length


def hf_base_model(model: nn.Module) -> nn.Module:
    """The base model inside an HF model (``model.bert`` for ``BertForMaskedLM``, or the model itself),
    also through a PEFT ``PeftModel``."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and hasattr(model, "peft_config"):  # a PEFT PeftModel: the HF model it wraps
        model = get_base()
    if not hasattr(model, "config") or not hasattr(model, "base_model_prefix"):
        raise TypeError(
            f"expected a Hugging Face transformers model (a PreTrainedModel), got {type(model).__name__}"
        )
    return getattr(model, model.base_model_prefix, model)
