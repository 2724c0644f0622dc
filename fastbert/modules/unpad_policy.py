"""When the encoder removes padding: detection of padding masks and the per-device policy.

A mask is a *padding mask* when every query row of every head sees the same set of keys
(a 2D ``(batch, seq)`` mask, or a 4D one built from it). Only then can the encoder run on
packed tokens, and the outputs at padded positions then become zeros. HF computes real
values there (a pad token attends to the real tokens), and the pooler and every
sequence-level head read position 0: so the packed path is taken only when every row's
first token is real (right padding, or holes after the first token). Left-padded batches
and rows without any real token run the padded path, which gives HF's numbers everywhere.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastbert.data.tables import load_table
from fastbert.ops.validation import host_reads_possible

UNPAD_MODES = (True, False, "auto")

AUTO_PADDING_THRESHOLD: dict[str, float] = load_table("unpad_threshold")
"""Padding fraction above which "auto" unpads, per device type, as measured by
``benchmarks/unpad_cpu.py`` (``fastbert/data/unpad_threshold.json``). A device type
without a measurement (CUDA: no GPU run yet) unpads at any padding, the choice that does
not compute on padding."""


def check_unpad_mode(mode) -> None:
    """ValueError unless ``mode`` is exactly True, False or "auto" (not 0, 1 or numpy booleans)."""
    if not (mode is True or mode is False or (type(mode) is str and mode == "auto")):
        raise ValueError(f"unpad must be True, False or 'auto', got {mode!r} ({type(mode).__name__})")


def padding_keep_mask(mask: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, is_padding)`` for a normalized 4D mask, without reading values on the host.

    ``keep``: ``(batch, seq)`` bool, the keys row 0 of head 0 attends to (the real tokens,
    if this is a padding mask). ``is_padding``: 0-dim bool tensor, whether every query row
    of every head sees exactly those keys (and, for an additive mask, every entry is 0 or
    a large negative number).
    """
    if mask.dtype == torch.bool:
        keep = mask
        is_padding = torch.ones((), dtype=torch.bool, device=mask.device)
    else:
        keep = mask == 0
        is_padding = ((mask == 0) | (mask <= torch.finfo(mask.dtype).min / 2)).all()
    if keep.shape[1] != 1 or keep.shape[2] != 1:
        is_padding = is_padding & (keep == keep[:, :1, :1, :]).all()
    return keep[:, 0, 0, :].expand(batch, -1), is_padding


class UnpadPlan(NamedTuple):
    """What the encoder needs to run a batch on packed tokens, read from the device once."""

    keep: torch.Tensor  # (batch, seq) bool: real tokens
    tokens: int  # how many real tokens
    max_seqlen: int  # the longest row's real-token count


def unpad_condition(mode, mask: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(keep, take_packed)`` for a batch that may run packed, computed on the device without
    reading anything; None when it runs padded whatever its values (no mask, ``mode`` False,
    no 4D mask).

    ``take_packed`` (0-dim bool) holds when ``mask`` (normalized 4D) is a padding mask, every
    row's first token is real and, for "auto", the padding fraction is above the device's
    threshold. Eagerly :func:`plan_unpad` reads it; under ``torch.compile`` the encoder
    branches on it with ``torch.cond``.
    """
    if mask is None or mode is False or mask.dim() != 4:
        return None
    keep, is_padding = padding_keep_mask(mask, batch)
    take = is_padding & keep[:, 0].all()
    if mode == "auto":
        # padding fraction > threshold  <=>  real tokens < (1 - threshold) * all positions
        limit = (1.0 - AUTO_PADDING_THRESHOLD.get(keep.device.type, 0.0)) * keep.numel()
        take = take & (keep.sum() < limit)
    return keep, take


def plan_unpad(mode, mask: torch.Tensor | None, batch: int) -> UnpadPlan | None:
    """Whether to run this batch on packed tokens (an :class:`UnpadPlan`) or padded (None).

    Packed when :func:`unpad_condition` holds and the host can read it (not while compiling
    or capturing a CUDA graph, not on ``meta``). The decision, the token count and the
    longest row come from one host read.
    """
    condition = unpad_condition(mode, mask, batch)
    if condition is None or not host_reads_possible(mask):
        return None
    keep, take = condition
    lengths = keep.sum(dim=1)
    take_flag, tokens, longest = torch.stack((take.long(), lengths.sum(), lengths.max())).tolist()
    return UnpadPlan(keep, tokens, longest) if take_flag else None
