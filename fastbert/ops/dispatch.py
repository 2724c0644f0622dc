"""Backend choice for every op: Triton kernels or the plain-PyTorch reference.

Rules (DESIGN.md):
- ``FASTBERT_BACKEND=torch`` or ``=triton`` forces one backend for every op;
  ``auto`` or unset chooses per call.
- ``auto``: Triton when the inputs are CUDA tensors (or when ``TRITON_INTERPRET=1``,
  which runs Triton kernels on the CPU) and Triton imports; the reference otherwise.
- An op without a Triton kernel yet runs its reference on either backend. The
  reference is the oracle, so this never changes results; ``record_dispatch`` shows
  which implementation ran.
- Triton implementations live in ``fastbert/ops/<op>_triton.py`` and are imported on
  the first call that selects Triton, so ``import fastbert`` never imports triton.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from typing import Callable, Iterator

import torch

BACKENDS = ("torch", "triton")
_ENV = "FASTBERT_BACKEND"

_IMPLEMENTATIONS: dict[str, dict[str, Callable]] = {}
# op -> module that registers its Triton implementation when imported
TRITON_MODULES = {
    "attention": "fastbert.ops.attention_triton",
    "varlen_attention": "fastbert.ops.attention_triton",
    "add_layernorm": "fastbert.ops.layernorm_triton",
    "linear": "fastbert.ops.linear_triton",
    "embeddings": "fastbert.ops.embeddings_triton",
}
_TRIED_IMPORT: set[str] = set()
_RECORDERS: list[list[tuple[str, str]]] = []


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the ``triton`` package imports on this machine."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install on an unsupported platform
        return False
    return True


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` makes Triton kernels run on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def forced_backend() -> str | None:
    """The backend forced by ``FASTBERT_BACKEND``, or None for automatic choice."""
    value = os.environ.get(_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"{_ENV} must be one of 'torch', 'triton' or 'auto', got {value!r}")
    if value == "triton" and not triton_available():
        raise ValueError(f"{_ENV}=triton but the triton package cannot be imported")
    return value


def select_backend(device: torch.device) -> str:
    """Backend for an op whose inputs live on ``device`` (see the module docstring)."""
    forced = forced_backend()
    if forced is not None:
        return forced
    if triton_available() and (device.type == "cuda" or interpreter_enabled()):
        return "triton"
    return "torch"


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the implementation of ``op`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def wrap(fn: Callable) -> Callable:
        _IMPLEMENTATIONS.setdefault(op, {})[backend] = fn
        return fn

    return wrap


def implementation(op: str, device: torch.device) -> Callable:
    """The function that runs ``op`` for inputs on ``device``; records the choice."""
    impls = _IMPLEMENTATIONS[op]
    backend = select_backend(device)
    if backend == "triton" and backend not in impls:
        _import_triton_implementation(op)
    if backend not in impls:
        backend = "torch"
    for log in _RECORDERS:
        log.append((op, backend))
    return impls[backend]


def _import_triton_implementation(op: str) -> None:
    module = TRITON_MODULES.get(op)
    if module is None or module in _TRIED_IMPORT:
        return
    _TRIED_IMPORT.add(module)
    importlib.import_module(module)  # an error here is a broken install: let it surface


def has_implementation(op: str, backend: str) -> bool:
    """Whether ``op`` has an implementation registered for ``backend``."""
    return backend in _IMPLEMENTATIONS.get(op, {})


@contextlib.contextmanager
def record_dispatch() -> Iterator[list[tuple[str, str]]]:
    """Collect ``(op, backend)`` for every op call made inside the block."""
    log: list[tuple[str, str]] = []
    _RECORDERS.append(log)
    try:
        yield log
    finally:
        _RECORDERS.remove(log)
