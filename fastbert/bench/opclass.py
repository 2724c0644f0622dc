"""Which class of work (matmul, attention, layernorm, embedding, other) an op or kernel is.

An op is classified by the innermost name in its chain (the op itself, then its parent
ops) that matches a class; a GPU kernel by the chain of the op that launched it, then by
its own name. In a BERT encoder, batched matmuls (``bmm``) and softmax occur only inside
attention, so they count as attention.
"""

from __future__ import annotations

import re

CLASSES = ("matmul", "attention", "layernorm", "embedding", "other")

_PATTERNS = [
    ("attention", re.compile(r"attention|attn|sdpa|flash|fmha|bmm|softmax", re.I)),
    ("layernorm", re.compile(r"layer_?norm", re.I)),
    ("matmul", re.compile(r"addmm|aten::mm$|matmul|linear|gemm|gemv|cutlass|xmma", re.I)),
    ("embedding", re.compile(r"embedding|index_select", re.I)),
]


def match(name: str) -> str | None:
    """The class ``name`` names, or None."""
    for cls, pattern in _PATTERNS:
        if pattern.search(name):
            return cls
    return None


def classify(chain: list[str], kernel: str | None = None) -> str:
    """Class of an op (``chain``: its name, then its parents') or of ``kernel`` launched by it."""
    for name in chain:
        cls = match(name)
        if cls is not None:
            return cls
    if kernel is not None:
        return match(kernel) or "other"
    return "other"
