"""A FastBertEncoder built from a Hugging Face model's encoder weights: the one place that does it.

:func:`encoder_from_hf` is the public way (``fastbert.encoder_from_hf(model)``);
:func:`copy_encoder` is what it and :func:`fastbert.models.base.convert_base_model`
(``fastbert.optimize``) share.
"""

from __future__ import annotations

from torch import nn

from fastbert.models.families import adapter_for, hf_base_model
from fastbert.models.weights import WeightMap, load_fast_weights
from fastbert.modules.config import FastBertConfig
from fastbert.modules.encoder import FastBertEncoder


def encoder_from_hf(model: nn.Module) -> FastBertEncoder:
    """A new FastBertEncoder holding copies of the encoder weights of a Hugging Face model
    (base or task model of a supported family), on its device, in its dtype and train/eval
    mode. The HF model is not modified. TypeError/ValueError for unsupported families or options."""
    base = hf_base_model(model)
    adapter = adapter_for(base.config)
    adapter.check_supported(base.config)
    config = adapter.fast_config(base.config)
    return copy_encoder(base, config, adapter.weight_map(base.config, config))


def copy_encoder(base: nn.Module, config: FastBertConfig, weight_map: WeightMap) -> FastBertEncoder:
    """A FastBertEncoder for ``config`` with copies of the HF base model's encoder weights
    (named by ``weight_map``), placed like its input embeddings, in its train/eval mode, each
    parameter trainable as the HF ones it is made of (PEFT freezes the base model)."""
    reference = base.get_input_embeddings().weight
    encoder = FastBertEncoder(config, device="meta").to_empty(device=reference.device).to(reference.dtype)
    # A PEFT wrapper keeps the weights it wraps under base_layer: those are the ones to copy.
    state = {key.replace(".base_layer.", "."): value for key, value in base.state_dict().items()}
    trainable = {key.replace(".base_layer.", "."): p.requires_grad for key, p in base.named_parameters()}
    load_fast_weights(encoder, state, weight_map, prefix="encoder.", requires_grad=trainable)
    return encoder.train(base.training)
