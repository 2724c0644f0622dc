"""One registry of every Triton kernel in fastbert, for the ahead-of-time build gate.

A kernel is defined with :func:`kernel` instead of ``@triton.jit``; the decorator
jits the function and records what :mod:`fastbert.kernels.compile_check` needs to
compile it without a GPU: representative specializations (:class:`Variant`) and the
autotune configs the launcher would try on each architecture. Defining a kernel is
therefore enough to put it under the gate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import triton

ARCHS = (75, 80, 86, 89, 90)
"""CUDA architectures the gate compiles for: ``sm_75`` (T4), ``sm_80`` (A100), ``sm_86``
(A10, RTX 3090), ``sm_89`` (L4, RTX 4090), ``sm_90`` (H100/H200)."""


def config_family(arch: int) -> int:
    """Which config table a CUDA architecture (``major * 10 + minor``) uses: 90 on Hopper,
    80 on every other chip. The 80 tables must therefore fit the smallest of them: 99 KB of
    shared memory per block (sm_86, sm_89) and no spills on any (the build gate checks);
    sm_75 runs only the row kernels (:func:`fastbert.kernels.launch.unsupported_reason`)."""
    return 90 if arch // 10 == 9 else 80


@dataclasses.dataclass(frozen=True)
class Variant:
    """A representative specialization of a kernel, compiled by the build gate.

    ``args`` names every kernel argument except the autotuned meta-parameters.
    Constexpr parameters take their value; the others take a Triton signature type
    (``"*fp16"``, ``"i64"``, ``"fp32"`` ...) or an ``int``, which stands for an
    ``i32`` of that value: multiples of 16 get the divisibility hint the JIT gives
    them at run time, so the gate compiles the code path real launches get.
    ``tuning_key`` is passed to the kernel's ``configs`` function (the same key the
    launcher uses to pick a config list). ``matrix`` says the compiled code must use
    the architecture's matrix instructions (``mma`` on sm_80, ``wgmma`` on sm_90).
    """

    label: str
    args: Mapping[str, Any]
    tuning_key: Mapping[str, Any]
    matrix: bool


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A registered kernel: the jitted function and how to compile it ahead of time."""

    name: str
    fn: Any
    module: str
    variants: tuple[Variant, ...]
    configs: Callable[..., Sequence[triton.Config]]

    def configs_for(self, arch: int, variant: Variant) -> list[triton.Config]:
        """The autotune configs the launcher tries for ``variant``'s key on ``arch`` (any CUDA
        architecture: its :func:`config_family` picks the table)."""
        return list(self.configs(config_family(arch), **variant.tuning_key))


_KERNELS: dict[str, Kernel] = {}


def kernel(
    *,
    variants: Sequence[Variant],
    configs: Callable[..., Sequence[triton.Config]],
    name: str | None = None,
    **jit_kwargs: Any,
) -> Callable[[Callable], Any]:
    """Decorator: ``triton.jit`` the function and register it for the build gate.

    ``configs(family, **variant.tuning_key)`` returns the autotune configs for a config
    family (80 or 90: see :func:`config_family`). ``jit_kwargs`` go to ``triton.jit``.
    """
    if not variants:
        raise ValueError("a kernel needs at least one Variant for the build gate")

    def wrap(fn: Callable) -> Any:
        key = name or fn.__name__
        if key in _KERNELS and _KERNELS[key].module != fn.__module__:
            raise ValueError(f"kernel name {key!r} is registered twice ({_KERNELS[key].module}, {fn.__module__})")
        jitted = triton.jit(fn, **jit_kwargs)
        _KERNELS[key] = Kernel(key, jitted, fn.__module__, tuple(variants), configs)
        return jitted

    return wrap


def kernels() -> list[Kernel]:
    """Every registered kernel, in registration order."""
    return list(_KERNELS.values())


def get(name: str) -> Kernel:
    """The registered kernel called ``name``."""
    try:
        return _KERNELS[name]
    except KeyError:
        raise KeyError(f"no kernel named {name!r}; registered: {sorted(_KERNELS)}") from None


def uses_matrix_instructions(module: str) -> bool:
    """Whether any kernel registered by ``module`` has a variant that must use tensor-core
    matrix instructions (``Variant.matrix``): such a module needs an architecture on
    which Triton emits them."""
    return any(v.matrix for k in _KERNELS.values() if k.module == module for v in k.variants)


def config_label(config: triton.Config) -> str:
    """A short, stable description of an autotune config (``BLOCK_M=128 BLOCK_N=64 w4 s3``)."""
    params = " ".join(f"{k}={v}" for k, v in sorted(config.kwargs.items()))
    return f"{params} w{config.num_warps} s{config.num_stages}".strip()
