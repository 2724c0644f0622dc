"""Adapters between Hugging Face model families and fastbert modules, one file per family.

:mod:`families` finds a model's family; :mod:`encoder` builds a FastBertEncoder from an HF
model; :mod:`base` and :mod:`heads` convert an HF model in place (``fastbert.optimize``).
"""

from fastbert.models.adapter import FamilyAdapter
from fastbert.models.encoder import encoder_from_hf
from fastbert.models.families import ADAPTERS, adapter_for, hf_base_model, max_sequence_length, supported_model_types

__all__ = [
    "ADAPTERS", "FamilyAdapter", "adapter_for", "encoder_from_hf", "hf_base_model", "max_sequence_length",
    "supported_model_types",
]
