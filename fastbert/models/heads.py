"""MLM head transforms (dense + activation + LayerNorm) run through fastbert ops.

``BertForMaskedLM`` / ``BertForPreTraining`` (``cls.predictions.transform``) and ELECTRA's
generator (``generator_predictions``) apply dense -> activation -> LayerNorm before the
vocabulary decoder. :func:`convert_head_transforms` switches such modules, in place, to a
subclass whose forward is ``ops.linear(..., activation)`` then ``ops.add_layernorm``: one
GEMM with a fused epilogue and one normalization kernel on the Triton backend. Parameter
names and the decoder (a plain GEMM, tied to the word embeddings) are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from fastbert import ops

# HF class name -> how to find its activation name (a string fastbert's ops know).
_TRANSFORMS = {
    "BertPredictionHeadTransform": lambda config: config.hidden_act,
    "ElectraGeneratorPredictions": lambda config: "gelu",
}


class FastHeadTransformMixin:
    """Forward of a converted head transform; mixed in before the HF class."""

    _fastbert_activation: str

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(act(dense(hidden_states)))`` through fastbert ops."""
        h = ops.linear(hidden_states, self.dense.weight, self.dense.bias, activation=self._fastbert_activation)
        return ops.add_layernorm(h, None, self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps)


_FAST: dict[type, type] = {}


def _fast_class(hf_class: type) -> type:
    if hf_class not in _FAST:
        _FAST[hf_class] = type(hf_class.__name__, (FastHeadTransformMixin, hf_class), {"__module__": __name__})
    return _FAST[hf_class]


def convert_head_transforms(model: nn.Module, config) -> int:
    """Switch every supported head transform inside ``model`` to fastbert ops; returns how many.

    Transforms whose activation fastbert does not implement are left as they are.
    """
    converted = 0
    for module in model.modules():
        if isinstance(module, FastHeadTransformMixin):
            continue
        activation_of = _TRANSFORMS.get(type(module).__name__)
        if activation_of is None:
            continue
        activation = activation_of(config)
        if not isinstance(activation, str) or activation not in ops.ACTIVATIONS:
            continue
        module._fastbert_activation = activation
        module.__class__ = _fast_class(type(module))
        converted += 1
    return converted
