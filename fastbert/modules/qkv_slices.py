"""The query, key and value projections of a layer as modules of their own: slices of the fused ``qkv``.

A :class:`~fastbert.modules.layer.FastBertLayer` stores Q, K and V in one fused ``qkv``
``nn.Linear`` (weight ``(3*hidden, hidden)``, rows q, k, v). Tools that work on modules
by name (PEFT's ``target_modules=["query", "value"]``, forward hooks, module swaps) look
for the separate projections HF models have, so each layer also holds one
:class:`QKVSlice` per projection, named as in the HF family (``query``/``key``/``value``,
DistilBERT's ``q_lin``/``k_lin``/``v_lin``). A slice owns no parameters: its ``weight``
and ``bias`` are its rows of the fused ones, so the state dict, optimizers and pruning
still see only ``qkv``. When every slice is untouched the layer runs the fused GEMM;
when one is wrapped (a PEFT LoRA layer whose ``base_layer`` is the slice) or hooked, the
layer calls the three slot modules and concatenates their outputs
(:func:`fastbert.modules.projection.qkv_projection`).
"""

from __future__ import annotations

import torch
from torch import nn

from fastbert import ops


class FusedRows(torch.Tensor):
    """Some rows of a fused parameter, as a detached alias of its storage.

    Reading it reads the fused parameter; assigning ``.data`` (what PEFT's ``safe_merge``,
    PiSSA/OLoRA initialization and DoRA's unmerge do to a base layer's weight) writes the
    new values into those rows instead of rebinding a temporary view.
    """

    @property
    def data(self):
        """An alias of these rows (in-place updates reach the fused parameter)."""
        return torch.Tensor.data.__get__(self)

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        torch.Tensor.data.__get__(self).copy_(value)


def fused_rows(tensor: torch.Tensor, start: int, stop: int) -> FusedRows:
    """Rows ``start:stop`` of ``tensor`` as a :class:`FusedRows` alias."""
    return torch.Tensor._make_subclass(FusedRows, tensor.detach()[start:stop], False)


class QKVSlice(nn.Linear):
    """The ``index``-th third (0 = q, 1 = k, 2 = v) of a layer's fused ``qkv`` projection.

    An ``nn.Linear`` to whoever inspects it (PEFT dispatches on ``isinstance(m, nn.Linear)``
    and reads ``in_features``/``out_features``/``weight``), with no parameters of its own.
    It refers to its layer rather than to the ``qkv`` module, so it follows the layer's
    current ``qkv`` (head pruning replaces it; a wrapper may sit around it).
    """

    def __init__(self, layer: nn.Module, index: int) -> None:
        nn.Module.__init__(self)
        if index not in (0, 1, 2):
            raise ValueError(f"index must be 0 (q), 1 (k) or 2 (v), got {index!r}")
        self.__dict__["_layer"] = layer  # not a submodule: the layer holds this slice
        self.index = index

    @property
    def fused(self) -> nn.Linear:
        """The layer's fused ``qkv`` linear (inside any wrapper around it)."""
        return unwrapped(self._layer.qkv)

    def _rows(self) -> tuple[int, int]:
        third = self.fused.weight.shape[0] // 3
        return self.index * third, (self.index + 1) * third

    @property
    def in_features(self) -> int:
        """The hidden size."""
        return self.fused.weight.shape[1]

    @property
    def out_features(self) -> int:
        """A third of ``qkv``'s outputs."""
        return self.fused.weight.shape[0] // 3

    @property
    def weight(self) -> FusedRows:
        """This projection's rows of ``qkv.weight`` (an alias: writes reach ``qkv``)."""
        return fused_rows(self.fused.weight, *self._rows())

    @property
    def bias(self) -> FusedRows | None:
        """This projection's entries of ``qkv.bias`` (None when ``qkv`` has no bias)."""
        bias = self.fused.bias
        return None if bias is None else fused_rows(bias, *self._rows())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W_slice.T + b_slice``, differentiable with respect to the fused parameters."""
        start, stop = self._rows()
        fused = self.fused
        bias = None if fused.bias is None else fused.bias[start:stop]
        return ops.linear(x, fused.weight[start:stop], bias)

    def extra_repr(self) -> str:
        return f"{'qkv'[self.index]} rows of qkv, in_features={self.in_features}, out_features={self.out_features}"


def unwrapped(module: nn.Module) -> nn.Module:
    """The module inside any PEFT-style wrappers (``get_base_layer()``), or ``module`` itself."""
    get_base = getattr(module, "get_base_layer", None)
    return get_base() if callable(get_base) else module
