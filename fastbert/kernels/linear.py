"""GEMM with a fused epilogue: ``act(x @ weight.T + bias)``, and its backward pieces.

``linear_fwd`` multiplies ``A`` (M, K) by ``B`` (K, N) read through arbitrary strides
(for the forward ``B = weight.T`` with ``weight`` (N, K) as in ``nn.Linear``), with
fp32 accumulation, grouped tile ordering (``GROUP_M`` row tiles share each column
band, so consecutive programs reuse tiles of ``B`` in L2), and an epilogue that adds
the bias and applies the activation before the single rounding to the output dtype.
It can also store the pre-activation ``z = x @ weight.T + bias`` for the backward.
fp32 inputs use exact (IEEE) fp32 dots, not TF32: fp32 numerics hold.

The same kernel, with other strides, computes the backward GEMMs:
``dX = dZ @ weight`` and ``dW = dZ.T @ X`` (``dZ = dY * act'(z)``); ``db = sum_rows dZ``.

The activation and its derivative are ``fastbert.kernels.activations`` (codes:
``ACTIVATIONS``), which also holds the elementwise kernels of the cuBLAS path
(``y = act(z)``) and of the backward (``dZ = dY * act'(z)``). The oracle is
``fastbert.ops.linear.linear_reference``.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastbert.kernels import launch, registry
from fastbert.kernels.activations import ACTIVATIONS, activate
from fastbert.kernels.dtypes import TRITON_NAMES, check_float_tensor
from fastbert.kernels.registry import Variant


# ---------------------------------------------------------------------------
# Autotune configs. (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages).
# 16-bit: tensor-core tiles; on sm_90 BLOCK_M >= 64 with 4 or 8 warps (one or two
# warpgroups) so Triton emits wgmma; shared memory (stages x tiles) fits each chip.
# fp32: IEEE dots run on the FMA units, so smaller tiles.
# ---------------------------------------------------------------------------

_MATMUL = {
    80: {
        "half": [(128, 256, 64, 8, 8, 3), (128, 128, 32, 8, 8, 4), (64, 128, 32, 8, 4, 4), (128, 64, 32, 8, 4, 4)],
        "half-heavy": [(128, 128, 32, 8, 8, 4), (64, 128, 32, 8, 4, 4), (128, 64, 32, 8, 4, 4)],
        "fp32": [(64, 64, 32, 8, 4, 3), (32, 64, 32, 8, 4, 3)],
    },
    90: {
        "half": [(128, 256, 64, 8, 8, 3), (128, 128, 64, 8, 8, 4), (64, 128, 64, 8, 4, 4), (64, 256, 64, 8, 8, 3)],
        "half-heavy": [(128, 128, 64, 8, 8, 4), (64, 128, 64, 8, 4, 4), (128, 64, 64, 8, 4, 4), (64, 256, 64, 8, 8, 3)],
        "fp32": [(64, 64, 32, 8, 4, 3), (32, 64, 32, 8, 4, 3)],
    },
}
"""Config buckets: "half" (16-bit, light epilogue: bias and/or ReLU), "half-heavy"
(16-bit, GELU/SiLU math or a second store of the pre-activation: that epilogue needs
more registers, and the 128x256 tile on 8 warps and 128x128 on 4 warps spill with it,
per the build gate), "fp32"."""


def heavy_epilogue(activation: int, save_pre: bool) -> bool:
    """Whether a GEMM's epilogue (activation code, pre-activation store) needs the "heavy" configs."""
    return save_pre or activation not in (0, 3)


def linear_configs(arch: int, *, dtype: str, heavy: bool = False) -> list[triton.Config]:
    """Autotune configs of the GEMM for ``arch`` (80 or 90), dtype ('fp16', 'bf16', 'fp32')
    and epilogue weight (see :func:`heavy_epilogue`)."""
    family = "fp32" if dtype == "fp32" else ("half-heavy" if heavy else "half")
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": g}, num_warps=w, num_stages=s)
        for m, n, k, g, w, s in _MATMUL[arch][family]
    ]


_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)


# ---------------------------------------------------------------------------
# Build-gate variants: BERT-base FFN shapes, forward and both backward layouts.
# ---------------------------------------------------------------------------


def _matmul_variant(label, dtype, n, k, strides, bias, act, save_pre, out_dtype=None):
    t = f"*{dtype}"
    sa_m, sa_k, sw_n, sw_k = strides
    args = {"A": t, "B": t, "Bias": t, "C": f"*{out_dtype or dtype}", "Z": f"*{out_dtype or dtype}"}
    args |= {"M": "i32", "N": n, "K": k, "stride_am": sa_m, "stride_ak": sa_k, "stride_bn": sw_n, "stride_bk": sw_k}
    args |= {"stride_cm": n, "stride_zm": n, "M_BUCKET": "i32"}
    args |= {"HAS_BIAS": bias, "ACTIVATION": act, "SAVE_PRE": save_pre}
    return Variant(label, args, {"dtype": dtype, "heavy": heavy_epilogue(act, save_pre)}, dtype != "fp32")


def _gate_variants() -> list[Variant]:
    hidden, inter = 768, 3072
    return [
        _matmul_variant("fp16 fwd 768->3072 bias+relu", "fp16", inter, hidden, (hidden, 1, hidden, 1), True, 3, False),
        _matmul_variant("fp16 fwd 768->3072 bias+gelu", "fp16", inter, hidden, (hidden, 1, hidden, 1), True, 1, False),
        _matmul_variant("bf16 fwd 768->3072 bias+gelu_tanh", "bf16", inter, hidden, (hidden, 1, hidden, 1), True, 2, False),
        _matmul_variant("fp16 fwd 768->3072 bias+gelu save_pre", "fp16", inter, hidden, (hidden, 1, hidden, 1), True, 1, True),
        _matmul_variant("bf16 fwd 768->3072 bias+silu save_pre", "bf16", inter, hidden, (hidden, 1, hidden, 1), True, 4, True),
        _matmul_variant("fp32 fwd 768->3072 bias+gelu save_pre", "fp32", inter, hidden, (hidden, 1, hidden, 1), True, 1, True),
        # dX = dZ (M, 3072) @ W (3072, 768): B read with unit stride along N.
        _matmul_variant("fp16 bwd dX 3072->768", "fp16", hidden, inter, (inter, 1, 1, hidden), False, 0, False),
        # dW = dZ.T (3072, M) @ X (M, 768): A read with unit stride along M, K = tokens.
        _matmul_variant("bf16 bwd dW (3072,M)@(M,768)", "bf16", hidden, "i32", (1, inter, 1, hidden), False, 0, False),
    ]  # fmt: skip


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@registry.kernel(name="linear_fwd", variants=_gate_variants(), configs=linear_configs)
def _linear_fwd(
    A, B, Bias, C, Z,
    M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_zm,
    M_BUCKET,  # autotune key only
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, SAVE_PRE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # C (M, N) = act(A (M, K) @ B (K, N) + bias); B[k, n] lives at B + n * stride_bn + k * stride_bk.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows/columns past the edge wrap around (their results are never stored), so
    # only the K tail needs masked loads.
    rows = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    cols = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + rows.to(tl.int64)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = B + offs_k[:, None] * stride_bk + cols.to(tl.int64)[None, :] * stride_bn

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        if A.dtype.element_ty == tl.float32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    n_ok = offs_n < N
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_mask = (offs_m < M)[:, None] & n_ok[None, :]
    row_off = offs_m.to(tl.int64)[:, None]
    if SAVE_PRE:
        tl.store(Z + row_off * stride_zm + offs_n[None, :], acc.to(Z.dtype.element_ty), mask=out_mask)
    y = activate(acc, ACTIVATION)
    tl.store(C + row_off * stride_cm + offs_n[None, :], y.to(C.dtype.element_ty), mask=out_mask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------

_TUNING_KEY = ["M_BUCKET", "N", "K", "stride_am", "stride_ak", "stride_bn", "stride_bk", "HAS_BIAS", "ACTIVATION", "SAVE_PRE"]


@functools.lru_cache(maxsize=None)
def _tuned(arch: int, dtype: str, heavy: bool):
    configs = [_INTERPRETER_CONFIG] if arch == 0 else linear_configs(arch, dtype=dtype, heavy=heavy)
    return triton.autotune(configs=configs, key=_TUNING_KEY)(_linear_fwd)


def check_supported(x: torch.Tensor) -> None:
    """TypeError/ValueError unless the kernels take ``x`` (its weight and bias share its dtype
    and device, checked by ``fastbert.ops.linear``): float16, bfloat16 or float32 on a device
    the kernels run on. The op's Triton path calls it once per call; the launchers below
    check nothing (they trust their callers)."""
    check_float_tensor("x", x)


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    save_pre: bool = False,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``act(a @ b + bias)`` for 2D ``a`` (M, K) and ``b`` (K, N), any strides.

    Returns ``(out, pre)``: ``out`` (M, N) contiguous in ``out_dtype`` (default
    ``a``'s), and the pre-activation ``a @ b + bias`` when ``save_pre`` (else None).
    ``activation`` is a canonical name (see :data:`ACTIVATIONS`). Trusts its caller
    (``fastbert.ops.linear`` checks shapes, dtypes and devices, and its Triton path
    :func:`check_supported`).
    """
    m, k = a.shape
    n = b.shape[1]
    out_dtype = out_dtype or a.dtype
    out = launch.empty((m, n), out_dtype, a.device)
    pre = launch.empty((m, n), out_dtype, a.device) if save_pre else None
    if m == 0 or n == 0:
        return out, pre
    kernel = _tuned(launch.arch(a.device), TRITON_NAMES[a.dtype], heavy_epilogue(ACTIVATIONS[activation], save_pre))
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    kernel[grid](
        a, b, bias if bias is not None else a, out, pre if pre is not None else out,
        m, n, k, a.stride(0), a.stride(1), b.stride(1), b.stride(0), out.stride(0), n,
        max(16, triton.next_power_of_2(m)),
        HAS_BIAS=bias is not None, ACTIVATION=ACTIVATIONS[activation], SAVE_PRE=save_pre,
    )  # fmt: skip
    return out, pre


def linear_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    save_pre: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``act(x @ weight.T + bias)`` for 2D ``x`` (M, K) and ``weight`` (N, K); see :func:`matmul`."""
    return matmul(x, weight.t(), bias, activation, save_pre)
