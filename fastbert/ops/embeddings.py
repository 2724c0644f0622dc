"""Embeddings: word (or given input embeddings) + token type + position, then LayerNorm and dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastbert.kernels.dropout import check_dropout_p
from fastbert.ops import dispatch


def embeddings(
    input_ids: torch.Tensor | None,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    token_type_weight: torch.Tensor | None,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    *,
    inputs_embeds: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``dropout(LayerNorm(word[input_ids] + token_type[token_type_ids] + position[position_ids]))``.

    Exactly one of ``input_ids`` (integer, ``(batch, seq)``) and ``inputs_embeds``
    (``(batch, seq, dim)``) is given. ``position_ids`` broadcasts to ``(batch, seq)``.
    ``token_type_weight`` None means the model has no token types (DistilBERT).
    Index ranges are the caller's to validate (the model does, before any compute).
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("exactly one of input_ids and inputs_embeds must be given")
    check_dropout_p(dropout_p)
    device = word_weight.device
    fn = dispatch.implementation("embeddings", device)
    return fn(
        input_ids,
        position_ids,
        token_type_ids,
        word_weight,
        position_weight,
        token_type_weight,
        norm_weight,
        norm_bias,
        eps,
        inputs_embeds=inputs_embeds,
        dropout_p=dropout_p,
    )


@dispatch.register("embeddings", "torch")
def embeddings_reference(
    input_ids,
    position_ids,
    token_type_ids,
    word_weight,
    position_weight,
    token_type_weight,
    norm_weight,
    norm_bias,
    eps,
    *,
    inputs_embeds=None,
    dropout_p=0.0,
):
    """Plain-PyTorch reference, summing in the order Hugging Face does (word, type, position);
    half-precision tables are summed and normalized in float32 and rounded once."""
    out_dtype = word_weight.dtype if inputs_embeds is None else inputs_embeds.dtype
    upcast = out_dtype in (torch.float16, torch.bfloat16)
    h = F.embedding(input_ids, word_weight) if inputs_embeds is None else inputs_embeds
    if upcast:
        h = h.float()
    if token_type_weight is not None:
        if token_type_ids is None:
            h = h + token_type_weight[0]
        else:
            h = h + F.embedding(token_type_ids, token_type_weight)
    h = h + F.embedding(position_ids, position_weight)
    if upcast:
        h = F.layer_norm(h, (h.shape[-1],), norm_weight.float(), norm_bias.float(), eps).to(out_dtype)
    else:
        h = F.layer_norm(h, (h.shape[-1],), norm_weight, norm_bias, eps)
    return F.dropout(h, p=dropout_p, training=True) if dropout_p > 0.0 else h
