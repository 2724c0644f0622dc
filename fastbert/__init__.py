"""fastbert: BERT-family encoders made fast with Triton kernels, a drop-in for Hugging Face models.

``fastbert.optimize(model)`` swaps the encoder of a Hugging Face model in place (with
``cuda_graphs=True``, replayed from CUDA graphs per ``fastbert.GraphBuckets`` shape bucket);
``fastbert.FastBertEncoder(config)`` is the encoder as a plain ``nn.Module`` and
``fastbert.encoder_from_hf(model)`` one holding an HF model's encoder weights;
``fastbert.prune(model, sparsity, pattern=...)`` prunes an optimized model's encoder;
``fastbert.from_pretrained(path, cls)`` loads a checkpoint (pruned ones included) optimized.
How the package is built: docs/ARCHITECTURE.md.

The names are imported on first use (``_EXPORTS``), so ``import fastbert`` and the command
line's ``--help`` / ``--version`` do not import torch and transformers.
"""

import importlib
import importlib.util
import types

__version__ = "0.1.0"

_EXPORTS = {  # name -> the module it comes from
    "encoder_from_hf": "fastbert.models",
    "FastBertConfig": "fastbert.modules",
    "FastBertEmbeddings": "fastbert.modules",
    "FastBertEncoder": "fastbert.modules",
    "FastBertLayer": "fastbert.modules",
    "GraphBuckets": "fastbert.modules.cuda_graphs",
    "optimize": "fastbert.optimize",
    "from_pretrained": "fastbert.pretrained",
}

__all__ = [
    "FastBertConfig", "FastBertEmbeddings", "FastBertEncoder", "FastBertLayer", "GraphBuckets", "encoder_from_hf",
    "optimize", "prune", "from_pretrained", "__version__",
]


def __getattr__(name: str):
    """Import an exported name, or a subpackage (``fastbert.ops``, ``fastbert.prune``: the callable
    one), on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # the import sets it as an attribute
    raise AttributeError(f"module 'fastbert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This package's module type: importing the submodule ``fastbert.optimize`` must not
    replace the function ``fastbert.optimize`` (Python sets a package attribute to each
    submodule it imports, which an eager ``from fastbert.optimize import optimize`` here used
    to overwrite)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable as sys.modules[...]; the name stays the export
        super().__setattr__(name, value)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _Package
