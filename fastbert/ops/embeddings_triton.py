"""Triton path of :func:`fastbert.ops.embeddings`: one fused kernel, autograd, torch.compile.

The kernels (``fastbert.kernels.embeddings``) are wrapped as ``torch.library`` custom
ops ``fastbert::embeddings_fwd`` / ``fastbert::embeddings_bwd`` with fake
implementations, and ``register_autograd`` connects the backward: gradients flow to
the word, position and token-type tables (scatter-added in fp32), to
``inputs_embeds`` when given, and to the LayerNorm's weight and bias.

Dropout draws its seed from PyTorch's default CPU generator (``torch.manual_seed``
reproduces the mask); the backward regenerates the mask from the seed.
"""

from __future__ import annotations

import torch

from fastbert.kernels.embeddings import embeddings_backward, embeddings_forward
from fastbert.kernels.dropout import draw_seed, seed_value
from fastbert.ops import dispatch


def _rows(input_ids, inputs_embeds) -> tuple[int, int]:
    return tuple(input_ids.shape) if input_ids is not None else tuple(inputs_embeds.shape[:2])


@torch.library.custom_op("fastbert::embeddings_fwd", mutates_args=())
def embeddings_fwd_op(
    input_ids: torch.Tensor | None,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    token_type_weight: torch.Tensor | None,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    inputs_embeds: torch.Tensor | None,
    dropout_p: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward; returns ``(out, mean, rstd)`` (see ``embeddings_forward``)."""
    return embeddings_forward(
        input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
        norm_weight, norm_bias, eps, inputs_embeds, dropout_p, seed_value(seed),
    )  # fmt: skip


@embeddings_fwd_op.register_fake
def _(input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
      norm_weight, norm_bias, eps, inputs_embeds, dropout_p, seed):  # fmt: skip
    batch, seq = _rows(input_ids, inputs_embeds)
    out = position_weight.new_empty((batch, seq, position_weight.shape[1]))
    stats = position_weight.new_empty((batch * seq,), dtype=torch.float32)
    return out, stats, torch.empty_like(stats)


@torch.library.custom_op("fastbert::embeddings_bwd", mutates_args=())
def embeddings_bwd_op(
    dy: torch.Tensor,
    input_ids: torch.Tensor | None,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    token_type_weight: torch.Tensor | None,
    norm_weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    inputs_embeds: torch.Tensor | None,
    dropout_p: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d_word_or_inputs_embeds, d_position, d_token_type, d_norm_weight, d_norm_bias)``;
    ``d_token_type`` is empty without a token-type table; LayerNorm grads are float32."""
    d_word, d_pos, d_type, d_emb, d_w, d_b = embeddings_backward(
        dy, input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
        norm_weight, mean, rstd, inputs_embeds, dropout_p, seed_value(seed),
    )  # fmt: skip
    d_in = d_word if d_word is not None else d_emb
    return d_in, d_pos, (d_type if d_type is not None else dy.new_empty((0,))), d_w, d_b.clone()


@embeddings_bwd_op.register_fake
def _(dy, input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
      norm_weight, mean, rstd, inputs_embeds, dropout_p, seed):  # fmt: skip
    d_in = torch.empty_like(word_weight if input_ids is not None else inputs_embeds, memory_format=torch.contiguous_format)
    d_type = torch.empty_like(token_type_weight) if token_type_weight is not None else dy.new_empty((0,))
    hidden = position_weight.shape[1]
    grads = dy.new_empty((hidden,), dtype=torch.float32)
    return d_in, torch.empty_like(position_weight), d_type, grads, torch.empty_like(grads)


def _setup_context(ctx, inputs, output):
    (input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
     norm_weight, norm_bias, eps, inputs_embeds, dropout_p, seed) = inputs  # fmt: skip
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
                          norm_weight, mean, rstd, inputs_embeds, seed)  # fmt: skip
    ctx.dropout_p = dropout_p
    ctx.norm_bias_dtype = norm_bias.dtype


def _backward(ctx, dy, _dmean, _drstd):
    (input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
     norm_weight, mean, rstd, inputs_embeds, seed) = ctx.saved_tensors  # fmt: skip
    d_in, d_pos, d_type, d_w, d_b = embeddings_bwd_op(
        dy, input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
        norm_weight, mean, rstd, inputs_embeds, ctx.dropout_p, seed,
    )  # fmt: skip
    needs = ctx.needs_input_grad
    return (
        None, None, None,
        d_in if input_ids is not None and needs[3] else None,
        d_pos if needs[4] else None,
        d_type if token_type_weight is not None and needs[5] else None,
        d_w.to(norm_weight.dtype) if needs[6] else None,
        d_b.to(ctx.norm_bias_dtype) if needs[7] else None,
        None,
        d_in if inputs_embeds is not None and needs[9] else None,
        None, None,
    )  # fmt: skip


embeddings_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@dispatch.register("embeddings", "triton")
def triton_embeddings(
    input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
    norm_weight, norm_bias, eps, *, inputs_embeds=None, dropout_p=0.0,
):  # fmt: skip
    """Fused Triton embeddings; same contract as ``fastbert.ops.embeddings.embeddings_reference``
    (``dropout_p`` checked by the op; the launcher checks the shapes its indexing relies on)."""
    seed = draw_seed(dropout_p)
    out, _, _ = embeddings_fwd_op(
        input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
        norm_weight, norm_bias, float(eps), inputs_embeds, float(dropout_p), seed,
    )  # fmt: skip
    return out
