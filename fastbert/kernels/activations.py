"""Activations inside Triton kernels, and the elementwise kernels built from them.

``activate(z, ACTIVATION)`` and ``activation_derivative(z, ACTIVATION)`` are
``@triton.jit`` helpers on fp32 tiles: the GEMM epilogues of ``fastbert.kernels.linear``
and ``fastbert.kernels.sparse`` call them after the bias add. Codes (:data:`ACTIVATIONS`):
0 none, 1 GELU (erf), 2 GELU (tanh form: ``gelu_new``, ``gelu_fast``,
``gelu_pytorch_tanh``), 3 ReLU, 4 SiLU.

Two elementwise kernels, with their launchers:

- ``activation_fwd``: ``y = act(z)``, the epilogue of the cuBLAS path (``torch.addmm`` puts
  the bias in cuBLAS's own epilogue; this kernel applies the activation);
- ``activation_bwd``: ``dz = dy * act'(z)`` from the saved pre-activation ``z``, the first
  step of every linear layer's backward.

The oracle is the PyTorch activation (``fastbert.ops.linear.ACTIVATIONS``) and its autograd.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastbert.kernels import launch, registry
from fastbert.kernels.dtypes import check_float_tensor
from fastbert.kernels.registry import Variant

ACTIVATIONS = {None: 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "silu": 4}
"""Canonical activation name (``fastbert.ops.linear.canonical_activation``) -> kernel code."""

_CONFIGS = [(1024, 4), (2048, 8), (4096, 8)]  # (BLOCK, num_warps): bandwidth-bound, few registers
_INTERPRETER_CONFIG = triton.Config({"BLOCK": 1024}, num_warps=4, num_stages=1)


def activation_configs(arch: int, *, dtype: str) -> list[triton.Config]:
    """Autotune configs of the elementwise kernels (the same on every architecture and dtype)."""
    return [triton.Config({"BLOCK": b}, num_warps=w, num_stages=1) for b, w in _CONFIGS]


def _gate_variants(kernel: str) -> list[Variant]:
    """Every dtype, with the activations whose math is heaviest (erf, and the sigmoid of the tanh form)."""
    variants = []
    for dtype, act in (("fp16", 1), ("bf16", 2), ("fp32", 4)):
        t = f"*{dtype}"
        args = {"Z": t, "Out": t, "n_elements": "i32", "ACTIVATION": act}
        if kernel == "activation_bwd":
            args = {"dY": t, "Z": t, "dZ": t, "n_elements": "i32", "ACTIVATION": act}
        name = next(n for n, code in ACTIVATIONS.items() if code == act)
        variants.append(Variant(f"{dtype} {name}", args, {"dtype": dtype}, False))
    return variants


def _register(name: str):
    return registry.kernel(name=name, variants=_gate_variants(name), configs=activation_configs)


# ---------------------------------------------------------------------------
# The activation helpers (fp32 in, fp32 out)
# ---------------------------------------------------------------------------


@triton.jit
def sigmoid(x):
    """Logistic function without overflow: exp of minus the magnitude only."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0.0, 1.0, e) / (1.0 + e)


@triton.jit
def activate(z, ACTIVATION: tl.constexpr):
    """Activation of fp32 ``z`` (codes: see :data:`ACTIVATIONS`)."""
    y = z
    if ACTIVATION == 1:
        y = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACTIVATION == 2:  # 0.5 z (1 + tanh(u)) = z sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3)
        y = z * sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z))
    elif ACTIVATION == 3:
        y = tl.maximum(z, 0.0)
    elif ACTIVATION == 4:
        y = z * sigmoid(z)
    return y


@triton.jit
def activation_derivative(z, ACTIVATION: tl.constexpr):
    """d act(z) / dz for fp32 ``z``."""
    d = tl.full(z.shape, 1.0, tl.float32)
    if ACTIVATION == 1:
        d = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    elif ACTIVATION == 2:
        s = sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z))
        d = s + z * s * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * z * z)
    elif ACTIVATION == 3:
        d = tl.where(z > 0.0, 1.0, 0.0)
    elif ACTIVATION == 4:
        s = sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    return d


# ---------------------------------------------------------------------------
# Elementwise kernels
# ---------------------------------------------------------------------------


@_register("activation_fwd")
def _activation_fwd(Z, Out, n_elements, ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n_elements
    z = tl.load(Z + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Out + offs, activate(z, ACTIVATION).to(Out.dtype.element_ty), mask=ok)


@_register("activation_bwd")
def _activation_bwd(dY, Z, dZ, n_elements, ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n_elements
    z = tl.load(Z + offs, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(dY + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(dZ + offs, (dy * activation_derivative(z, ACTIVATION)).to(dZ.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _tuned(name: str, arch: int):
    entry = registry.get(name)
    configs = [_INTERPRETER_CONFIG] if arch == 0 else activation_configs(arch, dtype="")
    return triton.autotune(configs=configs, key=["ACTIVATION"])(entry.fn)  # bandwidth-bound: one tuning per activation


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS or activation is None:
        raise ValueError(f"activation must be one of {[a for a in ACTIVATIONS if a]}, got {activation!r}")


def _launch(name: str, out: torch.Tensor, *tensors: torch.Tensor, activation: str) -> torch.Tensor:
    n = out.numel()
    if n:
        kernel = _tuned(name, launch.arch(out.device))
        kernel[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](*tensors, out, n, ACTIVATION=ACTIVATIONS[activation])
    return out


def activation_forward(z: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(z)`` elementwise, computed in fp32; contiguous, ``z``'s dtype."""
    check_float_tensor("z", z)
    _check_activation(activation)
    z = z.contiguous()
    return _launch("activation_fwd", launch.empty(tuple(z.shape), z.dtype, z.device), z, activation=activation)


def activation_backward(dy: torch.Tensor, z: torch.Tensor, activation: str) -> torch.Tensor:
    """``dy * act'(z)`` elementwise, computed in fp32; contiguous, ``z``'s dtype."""
    check_float_tensor("z", z)
    check_float_tensor("dy", dy, z.dtype, z.device)
    _check_activation(activation)
    if dy.shape != z.shape:
        raise ValueError(f"dy must have z's shape {tuple(z.shape)}, got {tuple(dy.shape)}")
    z, dy = z.contiguous(), dy.contiguous()
    return _launch("activation_bwd", launch.empty(tuple(z.shape), z.dtype, z.device), dy, z, activation=activation)


__all__ = ["ACTIVATIONS", "activate", "activation_derivative", "activation_forward", "activation_backward"]
