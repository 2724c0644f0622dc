"""Adapters between Hugging Face model families and fastbert modules, one file per family."""

from __future__ import annotations

from torch import nn

from fastbert.models.adapter import FamilyAdapter
from fastbert.models.albert import AlbertAdapter
from fastbert.models.bert import BertAdapter
from fastbert.models.distilbert import DistilBertAdapter
from fastbert.models.electra import ElectraAdapter
from fastbert.models.roberta import RobertaAdapter
from fastbert.models.weights import load_fast_weights

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
    return adapter.config_from_hf(hf_config).max_sequence_length


def hf_base_model(model: nn.Module) -> nn.Module:
    """The base model inside an HF model (``model.bert`` for ``BertForMaskedLM``, or the model itself)."""
    if not hasattr(model, "config") or not hasattr(model, "base_model_prefix"):
        raise TypeError(
            f"expected a Hugging Face transformers model (a PreTrainedModel), got {type(model).__name__}"
        )
    return getattr(model, model.base_model_prefix, model)


def encoder_from_hf(model: nn.Module):
    """A new FastBertEncoder with copies of an HF model's encoder weights, in the HF model's
    train/eval mode (the HF model is unchanged)."""
    from fastbert.modules.encoder import FastBertEncoder

    base = hf_base_model(model)
    adapter = adapter_for(base.config)
    adapter.check_supported(base.config)
    config = adapter.config_from_hf(base.config)
    reference = base.get_input_embeddings().weight
    encoder = FastBertEncoder(config, device="meta").to_empty(device=reference.device).to(reference.dtype)
    load_fast_weights(encoder, base.state_dict(), adapter.weight_map(base.config, config), prefix="encoder.")
    return encoder.train(base.training)


__all__ = [
    "ADAPTERS", "FamilyAdapter", "adapter_for", "encoder_from_hf", "hf_base_model", "max_sequence_length",
    "supported_model_types",
]
