"""Removed heads and neurons, recorded in the model's config so a saved checkpoint can be rebuilt.

After structured pruning :func:`record_structure` updates the HF config of the model:

- every layer kept all its heads and the same number of FFN neurons: the config's
  intermediate size becomes that number, and **plain transformers loads the checkpoint**;
- otherwise (heads removed, or neuron counts that differ between layers) the config keeps
  its dense sizes and gets ``fastbert_pruned = {"num_attention_heads": [...],
  "intermediate_size": [...]}`` (one entry per layer): the checkpoint's matrices are
  smaller than the config says, so plain transformers refuses it (size mismatch) and
  :func:`fastbert.from_pretrained` loads it (:func:`apply_structure` rebuilds the shapes).
"""

from __future__ import annotations

import torch

from fastbert.models import hf_base_model
from fastbert.modules.encoder import FastBertEncoder
from fastbert.prune.structured import keep_heads, keep_neurons
from fastbert.prune.targets import encoder_of

STRUCTURE_KEY = "fastbert_pruned"
_INTERMEDIATE_ATTR = {"distilbert": "hidden_dim"}  # HF config name of the FFN width, where not intermediate_size


def intermediate_attr(config) -> str:
    """The HF config attribute holding the FFN width."""
    return _INTERMEDIATE_ATTR.get(getattr(config, "model_type", ""), "intermediate_size")


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
    uniform_neurons = len(set(shape["intermediate_size"])) == 1
    all_heads = all(h == encoder.config.num_attention_heads for h in shape["num_attention_heads"])
    attr = intermediate_attr(config)
    if uniform_neurons and all_heads:
        setattr(config, attr, shape["intermediate_size"][0])
        if hasattr(config, STRUCTURE_KEY):
            delattr(config, STRUCTURE_KEY)
    else:
        setattr(config, attr, encoder.config.intermediate_size)
        setattr(config, STRUCTURE_KEY, shape)


def check_structure(structure, layers: int) -> dict[str, list[int]]:
    """``structure`` from a config, checked: two lists of ``layers`` positive integers; ValueError otherwise."""
    if not isinstance(structure, dict) or set(structure) != {"num_attention_heads", "intermediate_size"}:
        raise ValueError(f"config.{STRUCTURE_KEY} must be a dict with 'num_attention_heads' and 'intermediate_size', "
                         f"got {structure!r}")
    for key, values in structure.items():
        if not isinstance(values, list) or len(values) != layers or not all(
                isinstance(v, int) and v > 0 for v in values):
            raise ValueError(f"config.{STRUCTURE_KEY}[{key!r}] must list {layers} positive integers, got {values!r}")
    return structure


@torch.no_grad()
def apply_structure(model, structure) -> None:
    """Shrink the (dense) encoder of an optimized ``model`` to ``structure``'s head and neuron
    counts (the first ones are kept: their values come from the checkpoint loaded next)."""
    encoder = encoder_of(model)
    structure = check_structure(structure, len(encoder.layers))
    for layer, heads, neurons in zip(encoder.layers, structure["num_attention_heads"], structure["intermediate_size"]):
        if heads > layer.num_attention_heads or neurons > layer.intermediate.out_features:
            raise ValueError(f"config.{STRUCTURE_KEY} asks for more heads or neurons than the config's dense layer has")
        if heads < layer.num_attention_heads:
            keep_heads(layer, torch.arange(layer.num_attention_heads) < heads)
        if neurons < layer.intermediate.out_features:
            keep_neurons(layer, torch.arange(layer.intermediate.out_features) < neurons)
