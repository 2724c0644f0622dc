"""Padding removal and restoration: (batch, seq, ...) <-> packed (tokens, ...) with cu_seqlens.

``unpad(x, keep)`` gathers the real tokens of a padded batch into one packed tensor and
returns what :func:`pad` needs to scatter them back. ``cu_seqlens`` (int32, length
``batch + 1``) holds the cumulative sequence lengths: sequence ``b`` is packed rows
``cu_seqlens[b]:cu_seqlens[b+1]``. Tokens keep their order, so left padding and holes
in the mask work too.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
from torch.utils.weak import WeakIdKeyDictionary

from fastbert.ops import dispatch
from fastbert.ops.validation import values_readable

# cu_seqlens tensors whose values were checked (or built by unpad): tensor -> (version, tokens, max_seqlen).
# A layer stack calls attention once per layer on the same cu_seqlens; this keeps the value
# check (a host read) to once per tensor instead of once per layer.
_CHECKED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _version(t: torch.Tensor) -> int | None:
    """``t``'s version counter (bumped by in-place changes), which a check is valid for.
    Tensors made under ``torch.inference_mode`` have none: one of those stays checked while
    it lives (it can only be changed in place inside inference mode)."""
    return None if t.is_inference() else t._version


class Unpadded(NamedTuple):
    """A packed batch and what is needed to restore its padded shape."""

    packed: torch.Tensor  # (tokens, ...)
    indices: torch.Tensor  # (tokens,) int64: flat positions in (batch * seq)
    cu_seqlens: torch.Tensor  # (batch + 1,) int32
    max_seqlen: int
    batch: int
    seq: int


def unpad(x: torch.Tensor, keep: torch.Tensor, max_seqlen: int | None = None, tokens: int | None = None) -> Unpadded:
    """Pack the rows of ``x`` (``(batch, seq, ...)``) where ``keep`` (``(batch, seq)`` bool) is True.

    ``max_seqlen``: the longest row's count of True, and ``tokens``: the count of True, when
    the caller already read them (each saves a host read: with both, nothing is read).
    """
    if keep.dtype != torch.bool or keep.shape != x.shape[:2]:
        raise ValueError(f"keep must be a bool tensor of shape {tuple(x.shape[:2])}, got {keep.dtype} {tuple(keep.shape)}")
    lengths = keep.sum(dim=1, dtype=torch.int32)
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    indices = packed_positions(keep, tokens)
    if max_seqlen is None:
        max_seqlen = int(lengths.max()) if lengths.numel() else 0
    packed = gather_rows(x.reshape(-1, *x.shape[2:]), indices)
    if not torch.compiler.is_compiling():
        _CHECKED[cu_seqlens] = (_version(cu_seqlens), packed.shape[0], max_seqlen)  # valid by construction
    return Unpadded(packed, indices, cu_seqlens, max_seqlen, x.shape[0], x.shape[1])


def packed_positions(keep: torch.Tensor, tokens: int | None = None) -> torch.Tensor:
    """Flat positions (int64, ascending) of the True entries of ``keep``.

    With ``tokens`` (their count, already read by the caller) no host synchronization
    happens (``nonzero_static``); without it the count is read from the device, eagerly,
    or is an unbacked size under ``torch.compile`` (the custom op ``fastbert::packed_positions``).
    """
    flat = keep.reshape(-1)
    if tokens is not None:
        return torch.nonzero_static(flat, size=tokens).flatten()
    return packed_positions_op(flat)


@torch.library.custom_op("fastbert::packed_positions", mutates_args=())
def packed_positions_op(flat: torch.Tensor) -> torch.Tensor:
    """Positions of the True entries of the 1D bool tensor ``flat`` (a data-dependent size)."""
    return torch.nonzero(flat).flatten()


@packed_positions_op.register_fake
def _(flat):
    # new_dynamic_size takes only int bounds; once torch.compile retraces with dynamic shapes
    # (automatically on a second shape, or dynamic=True) the length of ``flat`` is a SymInt,
    # and the upper bound is declared with torch._check instead.
    length = flat.shape[0]
    static = not isinstance(length, torch.SymInt)
    tokens = torch.library.get_ctx().new_dynamic_size(max=length if static else None)
    if not static:
        torch._check(tokens <= length)
    return flat.new_empty((tokens,), dtype=torch.int64)


@torch._dynamo.assume_constant_result
def packing_traceable() -> bool:
    """Whether the ``torch.compile`` trace in progress can capture :func:`packed_positions`'
    data-dependent size in its graph: under ``fullgraph=True`` (or with
    ``torch._dynamo.config.capture_dynamic_output_shape_ops``). Otherwise such an op is a
    graph break, which ``torch.cond`` does not allow. Evaluated once per trace, as a constant."""
    try:
        context = torch._guards.TracingContext.try_get()
        return bool(context.fake_mode.shape_env.allow_dynamic_output_shape_ops)
    except AttributeError:  # no trace in progress, or a torch without these internals
        return bool(torch._dynamo.config.capture_dynamic_output_shape_ops)


def check_cu_seqlens(cu_seqlens, total_tokens: int, max_seqlen) -> None:
    """ValueError/TypeError unless ``cu_seqlens`` and ``max_seqlen`` describe ``total_tokens`` packed rows.

    Always (no host read): ``cu_seqlens`` is a 1D int32/int64 tensor of ``batch + 1 >= 2``
    offsets and ``max_seqlen`` a non-negative integer. When values may be read
    (:func:`~fastbert.ops.validation.value_checks_enabled`, not on ``meta``): the offsets
    start at 0, never decrease, end at ``total_tokens``, and no sequence is longer than
    ``max_seqlen`` — read in one host transfer, once per tensor (re-read if it is modified).
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"cu_seqlens must be a 1D int32/int64 tensor of batch + 1 >= 2 offsets, got {cu_seqlens.dtype} "
            f"of shape {tuple(cu_seqlens.shape)}"
        )
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (numbers.Integral, torch.SymInt)) or max_seqlen < 0:
        raise ValueError(f"max_seqlen must be a non-negative int, the longest sequence's length; got {max_seqlen!r}")
    if not values_readable(cu_seqlens):
        return
    max_seqlen = int(max_seqlen)
    if _CHECKED.get(cu_seqlens) == (_version(cu_seqlens), total_tokens, max_seqlen):
        return
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    first, last, shortest, longest = torch.stack((cu_seqlens[0], cu_seqlens[-1], lengths.min(), lengths.max())).tolist()
    if first != 0 or shortest < 0:
        raise ValueError(f"cu_seqlens must start at 0 and never decrease, got {cu_seqlens.tolist()}")
    if last != total_tokens:
        raise ValueError(f"cu_seqlens describe {last} tokens but the packed input has {total_tokens} rows")
    if longest > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence in cu_seqlens ({longest})")
    _CHECKED[cu_seqlens] = (_version(cu_seqlens), total_tokens, max_seqlen)


def mark_cu_seqlens_valid(cu_seqlens: torch.Tensor, total_tokens: int, max_seqlen: int) -> None:
    """Record that ``cu_seqlens`` (built by the caller from values it read, as :func:`unpad`
    builds its own) describes ``total_tokens`` rows with sequences of at most ``max_seqlen``:
    :func:`check_cu_seqlens` then reads nothing for it."""
    _CHECKED[cu_seqlens] = (_version(cu_seqlens), total_tokens, int(max_seqlen))


class BucketLayout(NamedTuple):
    """A packed layout of fixed size (a CUDA graph's shapes cannot depend on the batch)."""

    indices: torch.Tensor  # (token_bucket,) int64: real tokens' flat positions, then batch * seq for filler rows
    cu_seqlens: torch.Tensor  # (2 * batch + 1,) int32: the rows' sequences, then the filler's
    max_seqlen: int


def bucket_layout(keep: torch.Tensor, token_bucket: int, max_seqlen: int) -> BucketLayout:
    """The packed layout of ``keep`` (``(batch, seq)`` bool, at most ``token_bucket`` True) padded
    to exactly ``token_bucket`` rows, computed on the device without reading anything.

    The real tokens come first, each row's a sequence (rows without tokens: empty ones);
    the filler rows after them form up to ``batch`` sequences of at most ``max_seqlen``
    (``>= seq``) rows each, attending only among themselves, so they change no real
    token's result. Needs ``token_bucket <= batch * max_seqlen``.
    """
    batch, seq = keep.shape
    indices = torch.nonzero_static(keep.reshape(-1), size=token_bucket, fill_value=batch * seq).flatten()
    lengths = keep.sum(dim=1, dtype=torch.int32)
    real = torch.cumsum(lengths, 0, dtype=torch.int32)
    steps = torch.arange(1, batch + 1, dtype=torch.int32, device=keep.device) * max_seqlen
    filler = torch.clamp(real[-1] + steps, max=token_bucket)
    cu_seqlens = torch.cat((real.new_zeros(1), real, filler))
    return BucketLayout(indices, cu_seqlens, max_seqlen)


def gather_bucket(x: torch.Tensor, layout: BucketLayout) -> torch.Tensor:
    """``(token_bucket, ...)``: the rows of ``x`` (``(batch, seq, ...)``) at ``layout.indices``;
    filler rows copy the last position (finite values, in sequences of their own)."""
    flat = x.reshape(-1, *x.shape[2:])
    return gather_rows(flat, layout.indices.clamp(max=flat.shape[0] - 1))


def pad_bucket(packed: torch.Tensor, layout: BucketLayout, batch: int, seq: int) -> torch.Tensor:
    """:func:`pad` for a :func:`bucket_layout`: real rows back to ``(batch, seq, ...)``, zeros at
    padded positions; the filler rows land in one extra row, dropped."""
    out = dispatch.implementation("scatter_rows", packed.device)(packed, layout.indices, batch * seq + 1)
    return out[: batch * seq].view(batch, seq, *packed.shape[1:])


def pad(packed: torch.Tensor, indices: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """Scatter packed rows back to ``(batch, seq, ...)``, zeros at padded positions."""
    out = dispatch.implementation("scatter_rows", packed.device)(packed, indices, batch * seq)
    return out.view(batch, seq, *packed.shape[1:])


def gather_rows(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` of ``x`` along dim 0."""
    return dispatch.implementation("gather_rows", x.device)(x, indices)


def varlen_indices(cu_seqlens: torch.Tensor, max_seqlen: int, tokens: int) -> torch.Tensor:
    """Flat positions in a ``(batch, max_seqlen)`` grid of the ``tokens`` packed rows described by
    ``cu_seqlens``, without a host synchronization: token ``t`` of sequence ``b`` (found by a
    binary search in the offsets) sits at ``b * max_seqlen + t - cu_seqlens[b]``."""
    offsets = cu_seqlens.long()
    token = torch.arange(tokens, device=cu_seqlens.device)
    sequence = torch.searchsorted(offsets[1:], token, right=True)
    return sequence * max_seqlen + token - offsets[sequence]


@dispatch.register("gather_rows", "torch")
def gather_rows_reference(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``x[indices]`` along dim 0 (differentiable)."""
    return x.index_select(0, indices)


@dispatch.register("scatter_rows", "torch")
def scatter_rows_reference(packed: torch.Tensor, indices: torch.Tensor, rows: int) -> torch.Tensor:
    """A ``(rows, ...)`` zero tensor with ``packed`` written at ``indices`` (differentiable)."""
    out = packed.new_zeros(rows, *packed.shape[1:])
    return out.index_copy(0, indices, packed)
