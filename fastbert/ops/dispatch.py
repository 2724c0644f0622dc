"""Backend choice for every op: Triton kernels or the plain-PyTorch reference.

Rules (docs/ARCHITECTURE.md, "The op contract"):
- ``FASTBERT_BACKEND=torch`` or ``=triton`` forces one backend for every op;
  ``auto`` or unset chooses per call.
- ``auto``: Triton when the inputs are CUDA tensors (or when ``TRITON_INTERPRET=1``,
  which runs Triton kernels on the CPU) and Triton imports; the reference otherwise.
- An op without a Triton kernel yet runs its reference on either backend. The
  reference is the oracle, so this never changes results; ``record_dispatch`` shows
  which implementation ran.
- Triton implementations live in ``fastbert/ops/<op>_triton.py`` and are imported on
  the first call that selects Triton, so ``import fastbert`` never imports triton.
- Architecture fallback: on a GPU where an op's kernels cannot run
  (:func:`fastbert.kernels.launch.unsupported_reason`: older than sm_75; the
  matmul-class ops on sm_75, where Triton has no tensor-core dots; bfloat16 before
  sm_80) the op runs its reference instead, with one ``RuntimeWarning`` per op and
  reason. The build gate compiles exactly the combinations that are not left out.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
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
# op -> the fastbert.kernels module whose kernels its Triton implementation launches
KERNEL_MODULES = {
    "attention": "fastbert.kernels.attention",
    "varlen_attention": "fastbert.kernels.attention",
    "add_layernorm": "fastbert.kernels.layernorm",
    "linear": "fastbert.kernels.linear",
    "embeddings": "fastbert.kernels.embeddings",
    "sparse_linear": "fastbert.kernels.sparse",
}
_TRIED_IMPORT: set[str] = set()
_RECORDERS: list[list[tuple[str, str]]] = []
_WARNED: set[tuple[str, str]] = set()
_ARCH_REASONS: dict[tuple[str, int], tuple[str | None, str | None]] = {}


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
    if backend == "triton" and device.type == "cuda" and op in KERNEL_MODULES:
        guarded = _arch_guard(op, device, impls)
        if guarded is not None:
            return guarded
    _record(op, backend)
    return impls[backend]


def _record(op: str, backend: str) -> None:
    for log in _RECORDERS:
        log.append((op, backend))


def _capability(device: torch.device) -> int:
    """``major * 10 + minor`` of a CUDA device (tests monkeypatch this to play other GPUs)."""
    from fastbert.kernels import launch

    return launch.capability(device)


def _fallback(op: str, reason: str, reference: Callable) -> Callable:
    """The reference, after warning once per (op, reason) that the Triton kernels cannot run."""
    if (op, reason) not in _WARNED:
        _WARNED.add((op, reason))
        warnings.warn(f"fastbert: {op} runs its PyTorch reference on this GPU: {reason}", RuntimeWarning, stacklevel=4)
    _record(op, "torch")
    return reference


def _arch_guard(op: str, device: torch.device, impls: dict[str, Callable]) -> Callable | None:
    """The reference (or a dtype-checking wrapper) where ``op``'s kernels cannot run on this
    GPU's architecture; None where they all can."""
    arch = _capability(device)
    if (op, arch) not in _ARCH_REASONS:  # decided once per op and architecture: this runs on every call
        from fastbert.kernels import launch

        module = KERNEL_MODULES[op]
        _ARCH_REASONS[(op, arch)] = (launch.unsupported_reason(arch, module), launch.unsupported_reason(arch, module, bf16=True))
    reason, bf16_reason = _ARCH_REASONS[(op, arch)]
    if reason is not None:
        return _fallback(op, reason, impls["torch"])
    if bf16_reason is None:
        return None

    def by_dtype(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if any(t.dtype == torch.bfloat16 for t in tensors):
            return _fallback(op, bf16_reason, impls["torch"])(*args, **kwargs)
        _record(op, "triton")
        return impls["triton"](*args, **kwargs)

    return by_dtype


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
