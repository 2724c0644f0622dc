"""fastbert: BERT-family encoders made fast with Triton kernels, a drop-in for Hugging Face models.

``fastbert.optimize(model)`` swaps the encoder of a Hugging Face model in place (with
``cuda_graphs=True``, replayed from CUDA graphs per ``fastbert.GraphBuckets`` shape bucket);
``fastbert.FastBertEncoder(config)`` is the encoder as a plain ``nn.Module`` and
``fastbert.encoder_from_hf(model)`` one holding an HF model's encoder weights;
``fastbert.prune(model, sparsity, pattern=...)`` prunes an optimized model's encoder;
``fastbert.from_pretrained(path, cls)`` loads a checkpoint (pruned ones included) optimized.
How the package is built: docs/ARCHITECTURE.md.
"""

from fastbert.models import encoder_from_hf
from fastbert.modules import FastBertConfig, FastBertEmbeddings, FastBertEncoder, FastBertLayer
from fastbert.modules.cuda_graphs import GraphBuckets
from fastbert import prune
from fastbert.optimize import optimize
from fastbert.pretrained import from_pretrained

__version__ = "0.1.0"

__all__ = [
    "FastBertConfig", "FastBertEmbeddings", "FastBertEncoder", "FastBertLayer", "GraphBuckets", "encoder_from_hf",
    "optimize", "prune", "from_pretrained", "__version__",
]
