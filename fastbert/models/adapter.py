"""FamilyAdapter: what fastbert needs to know about one Hugging Face model family."""

from __future__ import annotations

import dataclasses
import functools
import inspect

import torch
from torch import nn

from fastbert.modules.config import FastBertConfig
from fastbert.ops.linear import ACTIVATIONS


class FamilyAdapter:
    """Base class of the per-family adapters in ``fastbert/models/``.

    Subclasses set ``name`` and ``model_types`` (HF ``config.model_type`` values) and
    implement :meth:`config_from_hf` and :meth:`layer_map`. Attribute names are those of
    the HF base model (``BertModel``, ``DistilBertModel``, ...).
    """

    name: str = ""
    model_types: tuple[str, ...] = ()
    hf_encoder_attr = "encoder"  # HF base-model attribute holding the layer stack
    hf_layer_prefix = "encoder.layer.{i}."  # HF name prefix of unique layer i
    hf_projection: str | None = None  # HF name of the embedding projection (factorized embeddings)
    output_class_name = "BaseModelOutputWithPoolingAndCrossAttentions"
    # Whether transformers 5 splits a row at restarting position_ids (no attention mask) for this
    # family: its base model passes position_ids to create_bidirectional_mask (DistilBERT's and
    # ALBERT's do not, in transformers 5.25).
    hf_splits_rows_by_position_ids = False

    # HF names (relative to a layer prefix) of the nn.Dropout modules each fastbert layer slot
    # mirrors; None where the family applies no dropout there (BERT's layout by default).
    layer_dropouts: dict[str, str | None] = {
        "attention_dropout": "attention.self.dropout",
        "attention_output_dropout": "attention.output.dropout",
        "output_dropout": "output.dropout",
    }

    # ---- config -------------------------------------------------------------
    def fast_config(self, hf_config) -> FastBertConfig:
        """The FastBertConfig an encoder for ``hf_config`` is built from: :meth:`config_from_hf`
        with the q/k/v slices named as this family names its projections."""
        return dataclasses.replace(self.config_from_hf(hf_config), qkv_names=self.qkv_names())

    def config_from_hf(self, hf_config) -> FastBertConfig:
        """Translate an HF config into a FastBertConfig (after :meth:`check_supported`)."""
        raise NotImplementedError

    def check_supported(self, hf_config) -> None:
        """ValueError for HF options fastbert's encoder does not implement."""
        if getattr(hf_config, "is_decoder", False) or getattr(hf_config, "add_cross_attention", False):
            raise ValueError(
                f"{self.name}: decoder / cross-attention configurations (is_decoder, add_cross_attention) are not "
                "supported by fastbert; it optimizes bidirectional encoders"
            )
        pet = getattr(hf_config, "position_embedding_type", "absolute")
        if pet not in (None, "absolute"):
            raise ValueError(f"{self.name}: position_embedding_type={pet!r} is not supported, only 'absolute'")
        act = self.hf_activation(hf_config)
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise ValueError(f"{self.name}: activation {act!r} is not supported; supported: {sorted(ACTIVATIONS)}")

    def hf_activation(self, hf_config):
        """The HF config's activation name."""
        return hf_config.hidden_act

    # ---- weights ------------------------------------------------------------
    def layer_map(self) -> dict[str, tuple[str, ...]]:
        """``{fastbert layer param: HF names relative to the layer prefix}`` for one layer."""
        raise NotImplementedError

    def weight_map(self, hf_config, config: FastBertConfig) -> dict[str, tuple[str, ...]]:
        """Full weight map for the base model (names relative to it); embeddings keep HF names."""
        mapping: dict[str, tuple[str, ...]] = {}
        for i in range(config.num_unique_layers):
            hf_prefix = self.hf_layer_prefix_for(i, hf_config)
            for fast, hf in self.layer_map().items():
                mapping[f"encoder.layers.{i}.{fast}"] = tuple(hf_prefix + h for h in hf)
        if config.has_projection:
            for p in ("weight", "bias"):
                mapping[f"embeddings.projection.{p}"] = (f"{self.hf_projection}.{p}",)
        return mapping

    def layer_module_map(self) -> dict[str, str]:
        """``{fastbert layer slot: HF module path relative to the layer prefix}`` for the modules
        fastbert keeps as modules: the three q/k/v slices of ``qkv`` (named as HF's
        projections) and the other projections. PEFT adapters and hooks on these carry over."""
        mapping = {}
        for fast, hf in self.layer_map().items():
            if not fast.endswith(".weight") or "norm" in fast:
                continue
            paths = [h[: -len(".weight")] for h in hf]
            if len(paths) == 1:
                mapping[fast[: -len(".weight")]] = paths[0]
            else:
                mapping.update({path.rsplit(".", 1)[-1]: path for path in paths})
        return mapping

    def qkv_names(self) -> tuple[str, str, str]:
        """The family's names of its query, key and value projections (``query``, ``q_lin``, ...)."""
        return tuple(h.rsplit(".", 1)[0].rsplit(".", 1)[-1] for h in self.layer_map()["qkv.weight"])

    def hf_projection_paths(self, hf_config, config: FastBertConfig) -> list[str]:
        """The HF module paths (relative to the base model) of every module :meth:`layer_module_map`
        names, in every unique layer, and of the embedding projection: where an adapter saved
        on the plain HF model puts its weights."""
        paths = [self.hf_layer_prefix_for(i, hf_config) + hf
                 for i in range(config.num_unique_layers) for hf in self.layer_module_map().values()]
        if config.has_projection:
            paths.append(self.hf_projection)
        return paths

    def hf_layer_prefix_for(self, i: int, hf_config) -> str:
        """HF name prefix of unique layer ``i``."""
        return self.hf_layer_prefix.format(i=i)

    def hf_projection_module(self, base: nn.Module, config: FastBertConfig) -> nn.Module | None:
        """The HF base model's embedding projection module, if this model has one."""
        if not config.has_projection:
            return None
        return base.get_submodule(self.hf_projection)

    def replaced_attrs(self, config: FastBertConfig) -> tuple[str, ...]:
        """HF base-model attributes that fastbert modules replace."""
        attrs = ["embeddings", self.hf_encoder_attr]
        if config.has_projection and "." not in self.hf_projection:
            attrs.append(self.hf_projection)
        return tuple(attrs)

    # ---- inputs -------------------------------------------------------------
    def splits_rows_by_position_ids(self) -> bool:
        """Whether the installed transformers attends within the sequences that restarting
        ``position_ids`` mark when no attention mask is given (flattened rows,
        :mod:`fastbert.modules.flattened`): this family's flag, where transformers' mask
        builder takes position ids (4.x and 5.17 attend over the whole row)."""
        return self.hf_splits_rows_by_position_ids and _hf_masks_read_position_ids()

    # ---- outputs ------------------------------------------------------------
    def pool(self, base: nn.Module, sequence_output: torch.Tensor) -> torch.Tensor | None:
        """The pooled output HF's base model returns (None for families without a pooler)."""
        pooler = getattr(base, "pooler", None)
        return None if pooler is None else pooler(sequence_output)

    def output_class(self):
        """The HF ``ModelOutput`` class the base model returns."""
        from transformers import modeling_outputs

        return getattr(modeling_outputs, self.output_class_name, modeling_outputs.BaseModelOutput)


@functools.lru_cache(maxsize=None)
def _hf_masks_read_position_ids() -> bool:
    """Whether transformers' ``create_bidirectional_mask`` takes ``position_ids`` (it then splits
    flattened rows at their restarts, ``find_packed_sequence_indices``)."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers 4.x
        return False
    return "position_ids" in inspect.signature(create_bidirectional_mask).parameters


def common_config(hf_config, **overrides) -> FastBertConfig:
    """FastBertConfig from the BERT-style attribute names most families share."""
    fields = dict(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_attention_heads=hf_config.num_attention_heads,
        intermediate_size=hf_config.intermediate_size,
        hidden_act=hf_config.hidden_act,
        max_position_embeddings=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size,
        layer_norm_eps=hf_config.layer_norm_eps,
        hidden_dropout_prob=hf_config.hidden_dropout_prob,
        attention_probs_dropout_prob=hf_config.attention_probs_dropout_prob,
        pad_token_id=hf_config.pad_token_id,
        initializer_range=getattr(hf_config, "initializer_range", 0.02),
    )
    fields.update(overrides)
    return FastBertConfig(**fields)


BERT_LAYER_MAP = {
    "qkv.weight": ("attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight"),
    "qkv.bias": ("attention.self.query.bias", "attention.self.key.bias", "attention.self.value.bias"),
    "attention_output.weight": ("attention.output.dense.weight",),
    "attention_output.bias": ("attention.output.dense.bias",),
    "attention_norm.weight": ("attention.output.LayerNorm.weight",),
    "attention_norm.bias": ("attention.output.LayerNorm.bias",),
    "intermediate.weight": ("intermediate.dense.weight",),
    "intermediate.bias": ("intermediate.dense.bias",),
    "output.weight": ("output.dense.weight",),
    "output.bias": ("output.dense.bias",),
    "output_norm.weight": ("output.LayerNorm.weight",),
    "output_norm.bias": ("output.LayerNorm.bias",),
}
