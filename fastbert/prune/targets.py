"""Which weights pruning touches: the encoder's four projection matrices per layer."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from fastbert.models import hf_base_model
from fastbert.models.base import is_optimized
from fastbert.modules.encoder import FastBertEncoder
from fastbert.modules.projection import calls_module
from fastbert.modules.qkv_slices import QKVSlice
from fastbert.prune.checks import check_layers

# FastBertLayer attribute -> short role name used in reports.
LAYER_MATRICES = {"qkv": "attention.qkv", "attention_output": "attention.output", "intermediate": "ffn.in", "output": "ffn.out"}


class Target(NamedTuple):
    """One prunable matrix: where it lives and what it is."""

    name: str  # e.g. "layers.3.intermediate"
    layer: int  # index of the (possibly shared) layer
    role: str  # "attention.qkv", "attention.output", "ffn.in", "ffn.out"
    module: nn.Linear


def encoder_of(model: nn.Module) -> FastBertEncoder:
    """The FastBertEncoder of an optimized HF model, or ``model`` itself if it is one."""
    if isinstance(model, FastBertEncoder):
        return model
    base = hf_base_model(model)
    if not is_optimized(base):
        raise TypeError("prune works on fastbert models: call fastbert.optimize(model) first (or pass a FastBertEncoder)")
    return base.encoder


def targets(model: nn.Module, layers=None) -> list[Target]:
    """Prunable matrices of ``model``, optionally only those of the given layer indices."""
    encoder = encoder_of(model)
    count = len(encoder.layers)
    chosen = check_layers(layers, count, shared=encoder.config.layer_schedule is not None)
    if chosen is None:
        chosen = range(count)
    found = [
        Target(f"layers.{i}.{attr}", i, role, getattr(encoder.layers[i], attr))
        for i in chosen
        for attr, role in LAYER_MATRICES.items()
    ]
    check_plain_projections(encoder)
    return found


def check_plain_projections(encoder: FastBertEncoder) -> None:
    """ValueError if a projection (or a q/k/v slice) is wrapped or hooked: pruning rewrites and
    records the plain linears' weights, and a PEFT adapter on top would keep adding its dense term."""
    for i, layer in enumerate(encoder.layers):
        for attr in (*LAYER_MATRICES, *layer.qkv_names):
            module = getattr(layer, attr)
            if calls_module(module, QKVSlice if attr in layer.qkv_names else nn.Linear):
                raise ValueError(
                    f"layers.{i}.{attr} is {type(module).__name__} (wrapped, hooked or not an nn.Linear): prune the "
                    "plain model (merge PEFT adapters first: merge_and_unload()) and remove hooks before pruning"
                )
