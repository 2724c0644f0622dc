"""fastbert: BERT-family encoders made fast with Triton kernels, a drop-in for Hugging Face models.

``fastbert.optimize(model)`` swaps the encoder of a Hugging Face model in place;
``fastbert.FastBertEncoder(config)`` is the encoder as a plain ``nn.Module``.
"""

from fastbert.modules import FastBertConfig, FastBertEmbeddings, FastBertEncoder, FastBertLayer
from fastbert import prune
from fastbert.optimize import optimize

__version__ = "0.1.0"

__all__ = [
    "FastBertConfig", "FastBertEmbeddings", "FastBertEncoder", "FastBertLayer", "optimize", "prune", "__version__"
]
