"""The optimized HF base model: HF's object and interface, fastbert's embeddings and encoder.

:func:`convert_base_model` rewires an HF base model (``BertModel``, ``RobertaModel``, ...)
in place: its embeddings and layer stack become fastbert modules (reusing the HF
embedding tables, so tied output layers stay tied), its class becomes a subclass of
the original with fastbert's :meth:`FastBaseModelMixin.forward`, and its state dict
keeps HF names. ``isinstance(model.bert, BertModel)`` still holds, heads and the pooler
are untouched, and the HF output classes are returned.
"""

from __future__ import annotations

import inspect
import sys

import torch
from torch import nn

from fastbert.models.adapter import FamilyAdapter
from fastbert.models.carry import carry_modules, check_carriable
from fastbert.models.encoder import copy_encoder
from fastbert.models.pickling import reduce_swapped
from fastbert.models.weights import install_state_dict_hooks
from fastbert.modules.config import FastBertConfig
from fastbert.modules.embeddings import FastBertEmbeddings
from fastbert.modules.flattened import (
    FLASH_KWARGS,
    block_diagonal_mask,
    can_split_rows,
    sequences_from_flash_kwargs,
    sequences_from_position_ids,
)
from fastbert.modules.masks import normalize_attention_mask

# Keyword arguments HF heads may forward to the base model that do not change its result.
_IGNORED_KWARGS = {"use_cache", "cache", "past_key_values", "num_items_in_batch", "cache_position"}

_OUTPUT_ATTENTIONS_HELP = (
    "output_attentions=True is not available: fastbert's fused attention never materializes the "
    "attention probabilities. To inspect them, run the model without fastbert.optimize, loaded with "
    "attn_implementation='eager'."
)


class FastBaseModelMixin:
    """Forward of an optimized HF base model; mixed in before the original HF class."""

    _fastbert_adapter: FamilyAdapter
    _fastbert_config: FastBertConfig
    _fastbert_arg_names: tuple[str, ...]
    _fastbert_hf_class: type  # the HF class this class subclasses (set by fast_class)
    _fastbert_takes_kwargs: bool  # whether its forward takes **kwargs (set by fast_class)

    def __reduce_ex__(self, protocol):
        """Pickle (and deep-copy) as "fast_class of the HF class" plus the state, so that a
        process where no model was optimized yet can load it."""
        return reduce_swapped(self, fast_class, self._fastbert_hf_class)

    def forward(self, *args, **kwargs):
        """Same arguments and outputs as the HF base model's forward (see its docs)."""
        names = self._fastbert_arg_names
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}.forward takes at most {len(names)} positional arguments")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}.forward got multiple values for argument {name!r}")
            kwargs[name] = value
        input_ids = kwargs.pop("input_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        token_type_ids = kwargs.pop("token_type_ids", None)
        position_ids = kwargs.pop("position_ids", None)
        inputs_embeds = kwargs.pop("inputs_embeds", None)
        output_attentions = kwargs.pop("output_attentions", None)
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        return_dict = kwargs.pop("return_dict", None)
        flash_kwargs = {name: kwargs.pop(name, None) for name in FLASH_KWARGS}
        # seq_idx (which sequence each token is in) comes with them; the BERT families read it nowhere, as in HF.
        seq_idx = kwargs.pop("seq_idx", None)
        flattened = any(value is not None for value in flash_kwargs.values())
        if (flattened or seq_idx is not None) and not self._fastbert_takes_kwargs:
            # transformers 4.x base models take no **kwargs and refuse these too.
            given = sorted([n for n, v in flash_kwargs.items() if v is not None] + ["seq_idx"] * (seq_idx is not None))
            raise TypeError(f"{type(self).__name__}.forward got unsupported arguments {given}")
        for name in ("head_mask", "encoder_hidden_states", "encoder_attention_mask"):
            if kwargs.pop(name, None) is not None:
                raise ValueError(f"{name} is not supported by fastbert's encoder; pass None")
        unknown = sorted(k for k, v in kwargs.items() if k not in _IGNORED_KWARGS and v is not None)
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward got unsupported arguments {unknown}")

        config = self.config
        if output_attentions is None:
            output_attentions = getattr(config, "output_attentions", False)
        if output_attentions:
            raise ValueError(_OUTPUT_ATTENTIONS_HELP)
        if output_hidden_states is None:
            output_hidden_states = getattr(config, "output_hidden_states", False)
        if return_dict is None:
            return_dict = getattr(config, "return_dict", True)

        # The mask and the flattened rows' keywords are checked before any op runs; the encoder
        # then takes the mask as is.
        shape = _batch_and_seq(input_ids, inputs_embeds)
        sequences = None
        if flattened:
            if attention_mask is not None:
                raise ValueError("cu_seq_lens_q/cu_seq_lens_k describe flattened rows, which have no padding: pass "
                                 "attention_mask=None with them")
            tokens = None if shape is None else shape[0] * shape[1]
            device = self.embeddings.word_embeddings.weight.device
            sequences = sequences_from_flash_kwargs(**flash_kwargs, tokens=tokens, device=device)
        if shape is not None:
            attention_mask = normalize_attention_mask(attention_mask, *shape, self.encoder.head_counts())
        hidden = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        if sequences is None and position_ids is not None and attention_mask is None:
            sequences, attention_mask = self._split_by_position_ids(position_ids.expand(hidden.shape[:2]))
        if sequences is not None:
            sequence_output, hidden_states = self._run_flattened(hidden, sequences, output_hidden_states)
        else:
            sequence_output, hidden_states = self.encoder(
                hidden, attention_mask=attention_mask, output_hidden_states=output_hidden_states
            )
        fields = {"last_hidden_state": sequence_output}
        pooled = self._fastbert_adapter.pool(self, sequence_output)
        output_class = self._fastbert_adapter.output_class()
        if "pooler_output" in output_class.__dataclass_fields__:
            fields["pooler_output"] = pooled
        if output_hidden_states:
            fields["hidden_states"] = hidden_states
        output = output_class(**fields)
        return output if return_dict else output.to_tuple()

    def _split_by_position_ids(self, positions):
        """``(sequences, attention_mask)`` for ``(batch, seq)`` position ids without a mask: where
        HF splits rows at restarting position ids (this family, this transformers), the
        sequences they mark (None when every row is one), or, when those cannot be read or
        traced, the same attention as a block-diagonal mask for the padded path."""
        if not self._fastbert_adapter.splits_rows_by_position_ids():
            return None, None
        if can_split_rows(positions):
            return sequences_from_position_ids(positions), None
        return None, block_diagonal_mask(positions)

    def _run_flattened(self, hidden, sequences, output_hidden_states):
        """The encoder on flattened rows: their tokens are the packed input as they are (no
        gather, no padding), ``sequences`` the ``cu_seqlens``; outputs back to ``(batch, seq, hidden)``."""
        batch, seq, width = hidden.shape
        out = self.encoder(hidden.reshape(batch * seq, width), output_hidden_states=output_hidden_states,
                           cu_seqlens=sequences.cu_seqlens, max_seqlen=sequences.max_seqlen)
        last = out.last_hidden_state.view(batch, seq, -1)
        if out.hidden_states is None:
            return last, None
        return last, tuple(h.view(batch, seq, -1) for h in out.hidden_states)


def _takes_any_keyword(hf_class: type) -> bool:
    """Whether ``hf_class.forward`` takes ``**kwargs`` (transformers 5's base models do)."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(hf_class.forward).parameters.values())


def _batch_and_seq(input_ids, inputs_embeds) -> tuple[int, int] | None:
    """(batch, seq) of the input, or None when it is malformed (the embeddings then say why)."""
    source = input_ids if input_ids is not None else inputs_embeds
    if isinstance(source, torch.Tensor) and source.dim() >= 2:
        return tuple(source.shape[:2])
    return None


_FAST_CLASSES: dict[type, type] = {}


def fast_class(hf_class: type) -> type:
    """The subclass of ``hf_class`` whose forward is fastbert's (one per HF class).

    It keeps the HF class's ``__name__`` so ``save_pretrained`` records the original
    architecture, and is set on this module as ``Fast<Name>``, its ``__qualname__``, so the
    class can be found by name in the process that made it. Its forward carries the HF
    forward's signature (``inspect.signature``), which callers such as sentence-transformers
    and the Trainer read to choose the arguments they pass. Instances pickle by the HF class
    (:mod:`fastbert.models.pickling`), so they load in a fresh process too.
    """
    if hf_class not in _FAST_CLASSES:
        qualname = f"Fast{hf_class.__name__}"
        namespace = {"__module__": __name__, "__qualname__": qualname, "_fastbert_hf_class": hf_class,
                     "_fastbert_takes_kwargs": _takes_any_keyword(hf_class),
                     "forward": _forward_with_signature_of(hf_class)}
        cls = type(hf_class.__name__, (FastBaseModelMixin, hf_class), namespace)
        setattr(sys.modules[__name__], qualname, cls)
        _FAST_CLASSES[hf_class] = cls
    return _FAST_CLASSES[hf_class]


def _forward_with_signature_of(hf_class: type):
    """:meth:`FastBaseModelMixin.forward` under ``hf_class.forward``'s signature and docs."""

    def forward(self, *args, **kwargs):
        return FastBaseModelMixin.forward(self, *args, **kwargs)

    forward.__signature__ = inspect.signature(hf_class.forward)
    forward.__doc__ = FastBaseModelMixin.forward.__doc__
    forward.__qualname__ = f"Fast{hf_class.__name__}.forward"
    return forward


def is_optimized(base: nn.Module) -> bool:
    """Whether ``base`` is an HF base model already converted by fastbert."""
    return isinstance(base, FastBaseModelMixin)


def _positional_names(hf_class: type) -> tuple[str, ...]:
    params = list(inspect.signature(hf_class.forward).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


@torch.no_grad()
def convert_base_model(base: nn.Module, adapter: FamilyAdapter) -> nn.Module:
    """Rewire the HF base model ``base`` in place to run fastbert's embeddings and encoder.

    The HF modules users reach into travel into the fastbert modules (:mod:`fastbert.models.carry`:
    projections with their PEFT wrappers and hooks, dropout modules); a wrapper or hook that
    cannot travel is refused (ValueError) before anything changes."""
    hf_config = base.config
    adapter.check_supported(hf_config)
    config = adapter.fast_config(hf_config)
    check_carriable(base, adapter, config)
    weight_map = adapter.weight_map(hf_config, config)

    embeddings = FastBertEmbeddings(config, device="meta")
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        if getattr(embeddings, name) is not None:
            setattr(embeddings, name, getattr(base.embeddings, name))
    projection = adapter.hf_projection_module(base, config)
    if projection is not None:
        embeddings.projection = projection
    embeddings.train(base.training)

    encoder = copy_encoder(base, config, weight_map)
    carry_modules(base, encoder, embeddings, adapter, config)

    hf_class = type(base)
    for attr in adapter.replaced_attrs(config):
        delattr(base, attr)
    base.embeddings = embeddings
    base.encoder = encoder
    base._fastbert_adapter = adapter
    base._fastbert_config = config
    base._fastbert_arg_names = _positional_names(hf_class)
    base.__class__ = fast_class(hf_class)
    install_state_dict_hooks(base, weight_map, adapter.hf_projection_paths(hf_config, config))
    return base
