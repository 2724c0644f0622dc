"""nn.Modules built from fastbert ops."""

from fastbert.modules.config import FastBertConfig
from fastbert.modules.embeddings import FastBertEmbeddings
from fastbert.modules.encoder import EncoderOutput, FastBertEncoder
from fastbert.modules.layer import FastBertLayer

__all__ = ["FastBertConfig", "FastBertEmbeddings", "FastBertEncoder", "FastBertLayer", "EncoderOutput"]
