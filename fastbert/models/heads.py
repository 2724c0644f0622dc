"""MLM head transforms (dense + activation + LayerNorm) run through fastbert ops.

``BertForMaskedLM`` / ``BertForPreTraining`` (``cls.predictions.transform``) and ELECTRA's
generator (``generator_predictions``) apply dense -> activation -> LayerNorm before the
vocabulary decoder. :func:`convert_head_transforms` switches such modules, in place, to a
subclass whose forward is ``ops.linear(..., activation)`` then ``ops.add_layernorm``: one
GEMM with a fused epilogue and one normalization kernel on the Triton backend. Parameter
names and the decoder (a plain GEMM, tied to the word embeddings) are unchanged; a
wrapped or hooked ``dense`` or ``LayerNorm`` (PEFT, hooks) is called instead.
"""

from __future__ import annotations

import torch
from torch import nn

from fastbert import ops
from fastbert.models.pickling import reduce_swapped
from fastbert.modules.projection import calls_module, project

# HF class name -> how to find its activation name (a string fastbert's ops know).
_TRANSFORMS = {
    "BertPredictionHeadTransform": lambda config: config.hidden_act,
    "ElectraGeneratorPredictions": lambda config: "gelu",
}


class FastHeadTransformMixin:
    """Forward of a converted head transform; mixed in before the HF class."""

    _fastbert_activation: str
    _fastbert_hf_class: type  # the HF class this class subclasses (set by fast_head_class)

    def __reduce_ex__(self, protocol):
        """Pickle (and deep-copy) by the HF class, as :class:`fastbert.models.base.FastBaseModelMixin` does."""
        return reduce_swapped(self, fast_head_class, self._fastbert_hf_class)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(act(dense(hidden_states)))`` through fastbert ops (a wrapped or hooked
        ``dense`` or ``LayerNorm`` is called, as HF calls it)."""
        h = project(self.dense, hidden_states, activation=self._fastbert_activation)
        if calls_module(self.LayerNorm, nn.LayerNorm):
            return self.LayerNorm(h)
        return ops.add_layernorm(h, None, self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps)


_FAST: dict[type, type] = {}


def fast_head_class(hf_class: type) -> type:
    """The subclass of the head transform class ``hf_class`` that runs fastbert ops (one per class)."""
    if hf_class not in _FAST:
        namespace = {"__module__": __name__, "_fastbert_hf_class": hf_class}
        _FAST[hf_class] = type(hf_class.__name__, (FastHeadTransformMixin, hf_class), namespace)
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
        module.__class__ = fast_head_class(type(module))
        converted += 1
    return converted
