"""FastBertEmbeddings: token, position and token-type embeddings, LayerNorm, dropout, optional projection."""

from __future__ import annotations

import torch
from torch import nn

from fastbert import ops
from fastbert.modules.config import FastBertConfig
from fastbert.modules.projection import calls_module, project
from fastbert.modules.qkv_slices import unwrapped
from fastbert.modules.validation import check_index_range, value_checks_enabled


class FastBertEmbeddings(nn.Module):
    """Embedding layer of a BERT-family encoder.

    Submodule names follow Hugging Face's (``word_embeddings``, ``position_embeddings``,
    ``token_type_embeddings``, ``LayerNorm``) so that tied output layers and
    ``get_input_embeddings`` keep working on an optimized model. ``projection`` maps a
    factorized ``embedding_size`` to ``hidden_size`` (ALBERT, ELECTRA). The dropout
    probability is ``dropout.p`` at each forward (as HF's ``embeddings.dropout``).

    The lookups, sum, LayerNorm and dropout are one fused op on the tables' weights. A
    wrapped or hooked ``word_embeddings`` (a PEFT LoRA embedding layer, say) is called and
    its output fed to that op as ``inputs_embeds``; ``projection`` runs as any projection
    (:func:`fastbert.modules.projection.project`); a wrapped or hooked position or token-type
    table or LayerNorm is refused (ValueError): the fused op cannot call them.
    """

    def __init__(self, config: FastBertConfig, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        dim = config.embedding_dim
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, dim, padding_idx=config.pad_token_id, **kw)
        pos_padding = config.pad_token_id if config.position_ids_from_padding else None
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, dim, padding_idx=pos_padding, **kw)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, dim, **kw) if config.type_vocab_size > 0 else None
        )
        self.LayerNorm = nn.LayerNorm(dim, eps=config.layer_norm_eps, **kw)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.projection = nn.Linear(dim, config.hidden_size, **kw) if config.has_projection else None

    @property
    def max_sequence_length(self) -> int:
        """Longest sequence the position table (at its current size) can number."""
        rows = self.position_embeddings.num_embeddings
        return rows - self.config.pad_token_id - 1 if self.config.position_ids_from_padding else rows

    def position_ids_for(self, input_ids: torch.Tensor | None, batch: int, seq: int, device) -> torch.Tensor:
        """Default position ids: ``0..seq-1``, or RoBERTa's numbering from the padding index."""
        cfg = self.config
        if not cfg.position_ids_from_padding:
            return torch.arange(seq, device=device)[None, :]
        pad = cfg.pad_token_id
        if input_ids is None:
            return torch.arange(pad + 1, seq + pad + 1, device=device)[None, :]
        real = (input_ids != pad).long()
        return torch.cumsum(real, dim=1) * real + pad

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed ``input_ids`` (or take ``inputs_embeds``); returns ``(batch, seq, hidden_size)``."""
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("exactly one of input_ids and inputs_embeds must be given")
        if input_ids is not None:
            _check_ids("input_ids", input_ids, None)
            batch, seq = input_ids.shape
        else:
            if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
                raise ValueError(f"inputs_embeds must be a 3D tensor (batch, seq, {cfg.embedding_dim})")
            if inputs_embeds.shape[-1] != cfg.embedding_dim:
                raise ValueError(
                    f"inputs_embeds' last dimension must be the embedding size {cfg.embedding_dim}, "
                    f"got {inputs_embeds.shape[-1]}"
                )
            batch, seq = inputs_embeds.shape[:2]
        if batch == 0 or seq == 0:
            raise ValueError(f"the batch is empty: (batch, seq) = {(batch, seq)}; need at least one token")
        if seq > self.max_sequence_length:
            raise ValueError(
                f"sequence length {seq} exceeds the model's position table: at most {self.max_sequence_length} tokens"
            )
        device = self.word_embeddings.weight.device
        if position_ids is None:
            position_ids = self.position_ids_for(input_ids, batch, seq, device)
        else:
            _check_ids("position_ids", position_ids, (batch, seq))
        if token_type_ids is not None:
            if self.token_type_embeddings is None:
                raise ValueError("token_type_ids were given but this model has no token-type embeddings")
            _check_ids("token_type_ids", token_type_ids, (batch, seq))
        if value_checks_enabled():  # against the tables' current sizes (resize_token_embeddings changes them)
            if input_ids is not None:
                check_index_range("input_ids", input_ids, unwrapped(self.word_embeddings).num_embeddings,
                                  "the vocabulary")
            check_index_range("position_ids", position_ids, self.position_embeddings.num_embeddings, "the position table")
            if token_type_ids is not None:
                check_index_range("token_type_ids", token_type_ids, self.token_type_embeddings.num_embeddings,
                                  "the token types")
        for name, plain in (("position_embeddings", nn.Embedding), ("token_type_embeddings", nn.Embedding),
                            ("LayerNorm", nn.LayerNorm)):
            module = getattr(self, name)
            if module is not None and calls_module(module, plain):
                raise ValueError(
                    f"embeddings.{name} is wrapped, hooked or not an {plain.__name__} ({type(module).__name__}): "
                    "fastbert's fused embedding op reads its weights and cannot call it"
                )
        if input_ids is not None and calls_module(self.word_embeddings, nn.Embedding):
            inputs_embeds, input_ids = self.word_embeddings(input_ids), None
        h = ops.embeddings(
            input_ids,
            position_ids,
            token_type_ids,
            self.word_embeddings.weight,
            self.position_embeddings.weight,
            None if self.token_type_embeddings is None else self.token_type_embeddings.weight,
            self.LayerNorm.weight,
            self.LayerNorm.bias,
            self.LayerNorm.eps,
            inputs_embeds=inputs_embeds,
            dropout_p=float(self.dropout.p) if self.training and self.dropout is not None else 0.0,
        )
        if self.projection is not None:
            h = project(self.projection, h)
        return h


def _check_ids(name: str, ids, shape) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor of dtype torch.long (or torch.int32), got {ids.dtype}")
    if shape is None:
        if ids.dim() != 2:
            raise ValueError(f"{name} must be 2D (batch, seq), got shape {tuple(ids.shape)}")
        return
    padded = (1,) * (2 - ids.dim()) + tuple(ids.shape)
    if ids.dim() > 2 or any(s not in (1, t) for s, t in zip(padded, shape)):
        raise ValueError(f"{name} of shape {tuple(ids.shape)} must broadcast to (batch, seq) = {shape}")
