"""Public ops: one function per op, each with a plain-PyTorch reference and, where one
exists, a Triton implementation, chosen per call by :mod:`fastbert.ops.dispatch`."""

from fastbert.ops.attention import attention
from fastbert.ops.dispatch import record_dispatch, select_backend
from fastbert.ops.embeddings import embeddings
from fastbert.ops.layernorm import add_layernorm
from fastbert.ops.linear import ACTIVATIONS, linear

__all__ = ["attention", "add_layernorm", "embeddings", "linear", "ACTIVATIONS", "record_dispatch", "select_backend"]
