"""Flattened rows: several sequences laid end to end in one row, no padding.

Hugging Face's ``DataCollatorWithFlattening`` (padding-free training) and sentence-transformers'
flattened ``encode`` concatenate a batch into ``(1, tokens)`` input ids with no attention
mask, and mark where each sequence starts in one of two ways:

- ``position_ids`` that restart (``0 1 2 0 1 0 1 2 3``). transformers 5 reads them for the
  BERT-style families (:meth:`~fastbert.models.adapter.FamilyAdapter.splits_rows_by_position_ids`)
  with the rule of ``transformers.masking_utils.find_packed_sequence_indices``: within a row,
  a new sequence starts wherever a position id is not the previous one plus 1 (so
  ``5 6 7`` is one sequence, ``0 2 4`` three). :func:`sequences_from_position_ids` applies it.
- flash-attention's keywords ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (the sequences' offsets
  in the flattened ``batch * seq`` tokens) and ``max_length_q`` / ``max_length_k`` (the
  longest sequence): :func:`sequences_from_flash_kwargs`.

Either way the result is the ``cu_seqlens`` / ``max_seqlen`` of the encoder's packed input:
the row's tokens are already packed, so nothing is gathered or padded.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from fastbert.ops.padding import mark_cu_seqlens_valid, packed_positions, packing_traceable
from fastbert.ops.validation import host_reads_possible, values_readable

FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
"""The keywords of transformers' ``FlashAttentionKwargs`` that describe flattened sequences."""


class FlatSequences(NamedTuple):
    """The sequences of flattened rows, as the encoder's packed input takes them."""

    cu_seqlens: torch.Tensor  # (sequences + 1,) int32 offsets into the batch * seq flattened tokens
    max_seqlen: int  # the longest sequence (a bound under torch.compile)


def sequence_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)`` bool: True where a sequence starts (each row's first token, and every
    token whose position id is not the previous one plus 1), transformers' rule."""
    first = torch.ones_like(position_ids[:, :1], dtype=torch.bool)
    return torch.cat((first, (position_ids[:, 1:] - position_ids[:, :-1]) != 1), dim=1)


def sequences_from_position_ids(position_ids: torch.Tensor) -> FlatSequences | None:
    """The sequences that ``(batch, seq)`` ``position_ids`` mark (:func:`sequence_starts`), or
    None when every row is one sequence (then attention needs no mask, as in transformers).

    Eagerly this reads the number of sequences and the longest one from the device in one
    transfer. While compiling (with ``fullgraph=True``, :func:`~fastbert.ops.padding.packing_traceable`)
    the count is an unbacked size and ``max_seqlen`` the row length, a bound; a row with a
    single sequence is then one packed sequence, which gives the same numbers. Callers that
    can neither read nor trace a data-dependent size use :func:`block_diagonal_mask`.
    """
    batch, seq = position_ids.shape
    starts = sequence_starts(position_ids).reshape(-1)
    tokens = starts.numel()
    if host_reads_possible(position_ids):
        index = torch.arange(tokens, device=starts.device)
        # Each token's offset from its sequence's first token, +1: the longest is max_seqlen.
        run = index - torch.cummax(torch.where(starts, index, 0), dim=0).values + 1
        count, longest = torch.stack((starts.sum(), run.max())).tolist()
        if count == batch:
            return None
        begins, max_seqlen = packed_positions(starts, count), longest
    else:
        begins, max_seqlen = packed_positions(starts), seq
        torch._check(begins.shape[0] >= batch)  # every row's first token starts a sequence
    end = torch.full((1,), tokens, dtype=torch.int32, device=starts.device)
    cu_seqlens = torch.cat((begins.to(torch.int32), end))
    if not torch.compiler.is_compiling():
        mark_cu_seqlens_valid(cu_seqlens, tokens, max_seqlen)
    return FlatSequences(cu_seqlens, max_seqlen)


def can_split_rows(position_ids: torch.Tensor) -> bool:
    """Whether :func:`sequences_from_position_ids` can run now: the host can read values, or a
    ``fullgraph`` trace can hold the data-dependent sequence count."""
    return host_reads_possible(position_ids) or (torch.compiler.is_compiling() and packing_traceable())


def block_diagonal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """``(batch, 1, seq, seq)`` bool mask: each token attends to the tokens of its own sequence
    (:func:`sequence_starts`); the padded path's form of the same attention."""
    sequence = sequence_starts(position_ids).cumsum(dim=1)
    return (sequence[:, :, None] == sequence[:, None, :])[:, None]


def sequences_from_flash_kwargs(
    cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, tokens: int | None, device: torch.device
) -> FlatSequences:
    """The sequences flash-attention's keywords describe, checked (before any work).

    All four are given together (as ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``
    returns them); an encoder attends over the same tokens it queries, so the query and key
    offsets, and the two lengths, must agree. The offsets must cover the ``tokens``
    flattened tokens (``batch * seq``) and be on the model's ``device``; the encoder checks their values. ``max_length_*``
    may be Python ints or 0-dim integer tensors (read from the device).
    """
    given = {"cu_seq_lens_q": cu_seq_lens_q, "cu_seq_lens_k": cu_seq_lens_k,
             "max_length_q": max_length_q, "max_length_k": max_length_k}  # fmt: skip
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(f"{', '.join(FLASH_KWARGS)} go together (flattened sequences); missing {missing}")
    for name in ("cu_seq_lens_q", "cu_seq_lens_k"):
        value = given[name]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of sequence offsets, got {type(value).__name__}")
        if value.dim() != 1 or value.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be a 1D int32/int64 tensor of offsets, got {value.dtype} {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} must be on the model's device {device}, got {value.device}")
    lengths = {name: _length(name, given[name]) for name in ("max_length_q", "max_length_k")}
    if lengths["max_length_q"] != lengths["max_length_k"]:
        raise ValueError(f"max_length_q ({lengths['max_length_q']}) and max_length_k ({lengths['max_length_k']}) "
                         "must be equal: an encoder's queries and keys are the same tokens")
    if cu_seq_lens_q is not cu_seq_lens_k:
        if cu_seq_lens_q.shape != cu_seq_lens_k.shape or (
            values_readable(cu_seq_lens_q) and not torch.equal(cu_seq_lens_q, cu_seq_lens_k.to(cu_seq_lens_q))
        ):
            raise ValueError("cu_seq_lens_q and cu_seq_lens_k must be equal: an encoder's queries and keys are the "
                             "same tokens")
    if cu_seq_lens_q.numel() < 2:
        raise ValueError(f"cu_seq_lens_q must hold at least 2 offsets (0 and the token count, {tokens})")
    return FlatSequences(cu_seq_lens_q, lengths["max_length_q"])


def _length(name: str, value):
    """``max_length_*`` as an int (or a traced size)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be an int (the longest sequence), got a {value.dtype} tensor "
                             f"of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.SymInt)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (the longest sequence), got {value!r}")
    return value
