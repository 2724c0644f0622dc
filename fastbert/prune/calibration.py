"""Calibration data for pruning: inputs of every projection, layer by layer, real tokens only.

``calibration`` is an iterable of model input dicts (what a tokenizer returns:
``input_ids``, ``attention_mask``, ``token_type_ids``). :func:`embed_calibration` runs
the model's embeddings once per batch and packs the real tokens (padding excluded) with
``cu_seqlens``; each layer then runs on those packed tokens, so every statistic comes
from real tokens. :func:`collect` runs one layer over a stream with recording plans on
the projections asked for (:mod:`fastbert.modules.projection`) and accumulates their
:class:`InputStats` (float64).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

from fastbert import ops
from fastbert.models import hf_base_model
from fastbert.modules.encoder import FastBertEncoder
from fastbert.modules.layer import FastBertLayer
from fastbert.modules.projection import plan_of, set_plan
from fastbert.ops.padding import unpad


class Packed(NamedTuple):
    """One calibration batch at some depth of the encoder: its real tokens, packed."""

    hidden: torch.Tensor  # (tokens, hidden)
    cu_seqlens: torch.Tensor
    max_seqlen: int


def check_calibration(calibration, method: str):
    """The calibration batches as a list; ValueError/TypeError when a calibrated method has none usable."""
    if calibration is None:
        raise ValueError(f"method={method!r} needs calibration data: pass calibration=[tokenizer(texts, "
                         "padding=True, return_tensors='pt'), ...] (an iterable of model input dicts)")
    if isinstance(calibration, Mapping):
        calibration = [calibration]  # one batch
    if isinstance(calibration, (str, bytes)) or not hasattr(calibration, "__iter__"):
        raise TypeError(f"calibration must be an iterable of model input dicts, got {type(calibration).__name__}")
    batches = list(calibration)
    if not batches:
        raise ValueError("calibration is empty: give at least one batch of model inputs")
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or not isinstance(batch.get("input_ids"), torch.Tensor):
            raise TypeError(f"calibration batch {i} must be a dict of tensors with 'input_ids' (what a tokenizer "
                            f"returns with return_tensors='pt'), got {type(batch).__name__}")
        if batch["input_ids"].dim() != 2:
            raise ValueError(f"calibration batch {i}: input_ids must be (batch, seq), got {tuple(batch['input_ids'].shape)}")
    return batches


@torch.no_grad()
def embed_calibration(model: nn.Module, batches: list[Mapping]) -> list[Packed]:
    """The embeddings of each batch's real tokens, packed (the input of the first layer)."""
    if isinstance(model, FastBertEncoder):
        raise TypeError("calibrated pruning needs the optimized Hugging Face model, whose embeddings turn the "
                        "calibration inputs into hidden states; got a bare FastBertEncoder")
    base = hf_base_model(model)
    device = base.get_input_embeddings().weight.device
    was_training = base.embeddings.training
    base.embeddings.eval()
    stream = []
    try:
        for batch in batches:
            ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(device) != 0
            types = batch.get("token_type_ids")
            hidden = base.embeddings(input_ids=ids, token_type_ids=None if types is None else types.to(device))
            packed = unpad(hidden, keep)
            if packed.packed.shape[0]:
                stream.append(Packed(packed.packed, packed.cu_seqlens, packed.max_seqlen))
    finally:
        base.embeddings.train(was_training)
    if not stream:
        raise ValueError("calibration holds no real token (every attention_mask entry is 0)")
    return stream


@torch.no_grad()
def run_layer(layer: FastBertLayer, stream: list[Packed]) -> list[Packed]:
    """``layer`` applied to every batch of ``stream`` (eval mode: no dropout)."""
    was_training = layer.training
    layer.eval()
    try:
        return [Packed(layer(p.hidden, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen), p.cu_seqlens, p.max_seqlen)
                for p in stream]
    finally:
        layer.train(was_training)


class InputStats:
    """Second moments of one projection's calibration inputs, float64.

    ``H = X^T X`` over the real tokens, with a constant column of ones appended when
    ``bias`` (so a solver can move error into the bias); ``G = X^T X_dense`` when the same
    tokens' inputs in the dense model are given too (``dense_cols`` wide: the dense layer
    may be wider than a structurally pruned one).
    """

    def __init__(self, cols: int, bias: bool, cross: bool, device, dense_cols: int | None = None) -> None:
        size = cols + int(bias)
        self.bias = bias
        self.H = torch.zeros(size, size, dtype=torch.float64, device=device)
        dense_size = size if dense_cols is None else dense_cols + int(bias)
        self.G = torch.zeros(size, dense_size, dtype=torch.float64, device=device) if cross else None
        self.tokens = 0

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        return torch.cat([x, x.new_ones(x.shape[0], 1)], 1) if self.bias else x

    def add(self, x: torch.Tensor, x_dense: torch.Tensor | None = None) -> None:
        """Accumulate a batch of inputs ``(tokens, cols)`` (and the dense model's for the same tokens)."""
        rows = self._rows(x)
        self.H += rows.T @ rows
        if self.G is not None:
            self.G += rows.T @ self._rows(x_dense)
        self.tokens += rows.shape[0]

    @property
    def col_sq(self) -> torch.Tensor:
        """Sum of squares of each input column (the bias column excluded)."""
        d = self.H.diagonal()
        return d[:-1] if self.bias else d


class _Record:
    """A projection plan that keeps its input, then runs the dense linear."""

    def __init__(self) -> None:
        self.x = None

    def __call__(self, x, weight, bias=None, activation=None):
        self.x = x
        return ops.linear(x, weight, bias, activation=activation)


@torch.no_grad()
def collect(layer: FastBertLayer, attrs: list[str], stream: list[Packed], stats: dict[str, InputStats],
            dense_layer: FastBertLayer | None = None, dense_stream: list[Packed] | None = None) -> None:
    """Run ``layer`` over ``stream`` and add the inputs of its projections ``attrs`` to ``stats``;
    with ``dense_layer``/``dense_stream``, the dense model's inputs of the same projections too."""
    pairs = [(layer, stream)] + ([(dense_layer, dense_stream)] if dense_layer is not None else [])
    saved = [(lyr, attr, plan_of(getattr(lyr, attr))) for lyr, _ in pairs for attr in attrs]
    records = [{attr: _Record() for attr in attrs} for _ in pairs]
    for (lyr, _), recs in zip(pairs, records):
        for attr, rec in recs.items():
            set_plan(getattr(lyr, attr), rec)
    try:
        for i in range(len(stream)):
            for (lyr, s), recs in zip(pairs, records):
                run_layer(lyr, s[i : i + 1])
            for attr in attrs:
                dense_x = records[1][attr].x if dense_layer is not None else None
                stats[attr].add(records[0][attr].x, dense_x)
    finally:
        for lyr, attr, plan in saved:
            set_plan(getattr(lyr, attr), plan)
