"""``fastbert.optimize(model)``: swap a Hugging Face model's encoder for fastbert's, in place."""

from __future__ import annotations

from torch import nn

from fastbert.models import adapter_for, hf_base_model
from fastbert.models.base import convert_base_model, is_optimized


def optimize(model: nn.Module) -> nn.Module:
    """Run ``model``'s embeddings and encoder on fastbert; returns the same object.

    ``model`` is an HF base model (``BertModel``, ``RobertaModel``, ...) or one of its
    task models (``...ForSequenceClassification``, ``ForMaskedLM``, ``ForPreTraining``,
    ``ForTokenClassification``, ``ForQuestionAnswering``, ``ForMultipleChoice``). Heads,
    pooler, embedding tables (and their ties), config, output classes and state-dict
    names stay as they were, so the rest of the user's code keeps working. Calling it on
    an optimized model does nothing. Raises TypeError for unsupported families and
    ValueError for unsupported options (decoders, relative positions, ...).
    """
    base = hf_base_model(model)
    if is_optimized(base):
        return model
    adapter = adapter_for(base.config)
    convert_base_model(base, adapter)
    return model
