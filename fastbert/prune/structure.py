"""Removed heads and neurons, recorded in the model's config so a saved checkpoint can be rebuilt.

After structured pruning :func:`record_structure` updates the HF config of the model:

- every layer kept all its heads and the same number of FFN neurons: the config's
  intermediate size becomes that number, and **plain transformers loads the checkpoint**;
- otherwise (heads removed, or neuron counts that differ between layers) the config gets
  ``fastbert_pruned = {"num_attention_heads": [...], "intermediate_size": [...], "dense":
  {...}}`` (per layer, and the dense sizes they were cut from), and its class becomes a
  subclass whose saved form (``config.json``) holds those per-layer **lists** in the
  family's own size fields (``num_attention_heads``/``intermediate_size``, DistilBERT's
  ``n_heads``/``hidden_dim``). Plain transformers then refuses the checkpoint with its own
  error (transformers 5 rejects the list in config validation, 4.x fails building the
  layers) instead of silently loading mismatched weights; :func:`fastbert.from_pretrained`
  reads the lists (:func:`read_config`) and rebuilds the shapes (:func:`apply_structure`).
  In memory the fields keep their dense integers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fastbert.models import hf_base_model
from fastbert.modules.encoder import FastBertEncoder
from fastbert.prune.structured import keep_heads, keep_neurons
from fastbert.prune.targets import encoder_of

STRUCTURE_KEY = "fastbert_pruned"
_FIELDS = {"distilbert": ("n_heads", "hidden_dim")}  # the family's (heads, FFN width) fields, where not BERT's
_DEFAULT_FIELDS = ("num_attention_heads", "intermediate_size")
_KINDS = ("num_attention_heads", "intermediate_size")


def size_fields(model_type: str) -> tuple[str, str]:
    """The HF config fields holding the head count and the FFN width for ``model_type``."""
    return _FIELDS.get(model_type, _DEFAULT_FIELDS)


class PrunedConfigMixin:
    """Mixed into an HF config class: ``to_dict`` (hence ``config.json``) writes the per-layer sizes."""

    def to_dict(self):
        d = super().to_dict()
        record = d.get(STRUCTURE_KEY)
        if record:
            for field, kind in zip(size_fields(d.get("model_type", "")), _KINDS):
                d[field] = list(record[kind])
        return d

    def __reduce__(self):  # pickles as the plain config class plus the record
        base = type(self).__mro__[2]
        return _rebuild_config, (base, super().to_dict())


def _rebuild_config(base, state):
    config = base.from_dict(state)
    if state.get(STRUCTURE_KEY):
        config.__class__ = pruned_config_class(base)
    return config


_PRUNED_CLASSES: dict[type, type] = {}


def pruned_config_class(base: type) -> type:
    """The subclass of the HF config class ``base`` that saves per-layer sizes (one per class)."""
    if base not in _PRUNED_CLASSES:
        name = f"Pruned{base.__name__}"
        cls = type(base.__name__, (PrunedConfigMixin, base), {"__module__": __name__, "__qualname__": name})
        setattr(sys.modules[__name__], name, cls)
        _PRUNED_CLASSES[base] = cls
    return _PRUNED_CLASSES[base]


def layer_structure(encoder: FastBertEncoder) -> dict[str, list[int]]:
    """Heads and FFN neurons of every (unique) layer."""
    return {
        "num_attention_heads": [layer.num_attention_heads for layer in encoder.layers],
        "intermediate_size": [layer.intermediate.out_features for layer in encoder.layers],
    }


def record_structure(model) -> None:
    """Write the encoder's layer shapes into the model's HF config (see the module docstring).
    Nothing to do for a bare FastBertEncoder (it has no HF config)."""
    if isinstance(model, FastBertEncoder):
        return
    encoder = encoder_of(model)
    config = hf_base_model(model).config
    shape = layer_structure(encoder)
    heads_field, width_field = size_fields(config.model_type)
    plain = type(config).__mro__[2] if isinstance(config, PrunedConfigMixin) else type(config)
    if len(set(shape["intermediate_size"])) == 1 and all(
            h == encoder.config.num_attention_heads for h in shape["num_attention_heads"]):
        setattr(config, width_field, shape["intermediate_size"][0])
        config.__dict__.pop(STRUCTURE_KEY, None)
        config.__class__ = plain
        return
    setattr(config, width_field, encoder.config.intermediate_size)
    dense = {"num_attention_heads": encoder.config.num_attention_heads,
             "intermediate_size": encoder.config.intermediate_size}
    setattr(config, STRUCTURE_KEY, dict(shape, dense=dense))
    config.__class__ = pruned_config_class(plain)


def read_config(folder: Path):
    """The HF config of a saved checkpoint and its structure record (None when it has none);
    per-layer size lists in ``config.json`` become the dense sizes again."""
    from transformers import AutoConfig

    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    record = raw.get(STRUCTURE_KEY)
    if not record:
        return AutoConfig.from_pretrained(folder), None
    record = check_structure(record, raw.get("num_hidden_layers", raw.get("n_layers")))
    for field, kind in zip(size_fields(raw.get("model_type", "")), _KINDS):
        raw[field] = record["dense"][kind]
    model_type = raw.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{folder / 'config.json'} has no model_type")
    config = AutoConfig.for_model(model_type, **raw)
    return config, record


def check_structure(record, layers) -> dict:
    """``record`` from a config, checked: per-layer lists of positive integers and the dense sizes;
    ValueError otherwise."""
    if not isinstance(record, dict) or set(record) != {*_KINDS, "dense"} or not isinstance(record["dense"], dict):
        raise ValueError(f"config {STRUCTURE_KEY} must hold 'num_attention_heads', 'intermediate_size' and 'dense', "
                         f"got {record!r}")
    for kind in _KINDS:
        values = record[kind]
        if not isinstance(values, list) or not all(isinstance(v, int) and v > 0 for v in values) or (
                layers is not None and len(values) > layers):
            raise ValueError(f"config {STRUCTURE_KEY}[{kind!r}] must list a positive integer per layer, got {values!r}")
        if not isinstance(record["dense"].get(kind), int) or max(values) > record["dense"][kind]:
            raise ValueError(f"config {STRUCTURE_KEY}['dense'][{kind!r}] must be an integer at least every layer's")
    return record


@torch.no_grad()
def apply_structure(model, record) -> None:
    """Shrink the (dense) encoder of an optimized ``model`` to ``record``'s head and neuron
    counts (the first ones are kept: their values come from the checkpoint loaded next)."""
    encoder = encoder_of(model)
    if any(len(record[kind]) != len(encoder.layers) for kind in _KINDS):
        raise ValueError(f"config {STRUCTURE_KEY} lists sizes for a different number of layers than the model's "
                         f"{len(encoder.layers)}")
    for layer, heads, neurons in zip(encoder.layers, record["num_attention_heads"], record["intermediate_size"]):
        if heads < layer.num_attention_heads:
            keep_heads(layer, torch.arange(layer.num_attention_heads) < heads)
        if neurons < layer.intermediate.out_features:
            keep_neurons(layer, torch.arange(layer.intermediate.out_features) < neurons)
    record_structure(model)
