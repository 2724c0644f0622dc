"""Hugging Face models inside sentence-transformers objects, for ``fastbert.optimize``.

A ``SentenceTransformer`` runs its text through a ``Transformer`` module whose
``auto_model`` is an HF model (``BertModel``, ...); a ``CrossEncoder`` scores pairs with
an HF ``...ForSequenceClassification`` (its ``model``); a ``SparseEncoder`` holds a
``...ForMaskedLM`` in a ``Transformer`` module. ``fastbert.optimize`` optimizes each of
them in place and returns the object it was given, so ``encode``, ``predict``, saving and
multi-process pools keep working. sentence-transformers is not a dependency: objects are
recognized by the package their class comes from, never by importing it.
"""

from __future__ import annotations

from torch import nn

from fastbert.models import adapter_for, hf_base_model


def is_hf_model(obj) -> bool:
    """Whether ``obj`` looks like an HF transformers model (it has ``config`` and ``base_model_prefix``)."""
    return hasattr(obj, "config") and hasattr(obj, "base_model_prefix")


def is_sentence_transformers_object(obj) -> bool:
    """Whether ``obj``'s class comes from the ``sentence_transformers`` package."""
    return any(cls.__module__.split(".")[0] == "sentence_transformers" for cls in type(obj).__mro__)


def wrapped_hf_models(obj) -> list[nn.Module] | None:
    """The HF models inside a sentence-transformers object, ready to optimize; None when
    ``obj`` is not a sentence-transformers object (it may be an HF model itself).

    Every model is checked before the caller changes any (TypeError for an unsupported
    family or for an object holding no HF model, ValueError for unsupported options).
    ``Transformer`` modules that feed flash-attention's flattened batches (one row of
    sequences end to end with ``cu_seq_lens_*``; sentence-transformers does this when the
    model was loaded with ``attn_implementation="flash_attention_2"``) keep doing so: the
    optimized model runs them on its packed path as they are (:mod:`fastbert.modules.flattened`).
    """
    if is_hf_model(obj) or not is_sentence_transformers_object(obj):
        return None
    found = {id(m): m for m in _candidates(obj) if is_hf_model(m)}
    if not found:
        raise TypeError(
            f"{type(obj).__name__} holds no Hugging Face transformers model to optimize "
            "(fastbert optimizes the Transformer module's auto_model, or a CrossEncoder's model)"
        )
    models = list(found.values())
    for model in models:
        config = hf_base_model(model).config
        adapter_for(config).check_supported(config)
    return models


def _modules(obj) -> list:
    """``obj`` and its submodules (just ``obj`` when it is not an ``nn.Module``, as in old CrossEncoders)."""
    return list(obj.modules()) if isinstance(obj, nn.Module) else [obj]


def _candidates(obj):
    """What may hold an HF model: a CrossEncoder's ``model`` and each module's ``auto_model``."""
    yield getattr(obj, "model", None)
    for module in _modules(obj):
        if not is_hf_model(module):
            yield getattr(module, "auto_model", None)
