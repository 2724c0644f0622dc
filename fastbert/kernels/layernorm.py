"""Fused residual add + bias + dropout + LayerNorm, forward and backward.

Computes ``y = LayerNorm(dropout(x + x_bias) + residual) * weight + bias`` over the last
dimension, the glue after each GEMM of a post-LN BERT layer (see
``fastbert.ops.layernorm.add_layernorm_reference``, the oracle).

Forward: each program owns ``BLOCK_M`` rows as one ``(BLOCK_M, BLOCK_N)`` tile,
``BLOCK_N`` the row width rounded up to a power of two (columns past the width are
masked). Inputs of any float dtype are summed in fp32, the statistics are fp32, and
the result is rounded once. It stores the per-row mean and 1/std for the backward.

Backward by recomputation: the pre-norm sum ``h`` is rebuilt from ``x``, ``x_bias`` and
``residual`` (no saved copy, so no rounding of ``h``), and the dropout mask is
regenerated from its seed. A persistent grid of programs walks the rows; each keeps
fp32 partial column sums for dweight, dbias and dx_bias and writes them to a
``(programs, 3, hidden)`` buffer, which a second small kernel reduces (two-stage, no
atomics, deterministic).

Dropout: Triton's counter-based Philox RNG, keyed per row (``seed`` in the low word
of the key, the row index in the high word) with the column as counter, so the mask
depends on neither tile shape nor launch order and the backward reproduces it.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastbert.kernels import launch, registry
from fastbert.kernels.dtypes import TRITON_NAMES
from fastbert.kernels.registry import Variant

MAX_HIDDEN = 4096  # wider rows spill in the one-tile-per-row backward


# ---------------------------------------------------------------------------
# Autotune configs: per architecture and row-width bucket, (BLOCK_M, num_warps).
# These are memory-bound row kernels: the configs trade rows per program (fewer,
# fatter programs for narrow rows) against registers. All pass the build gate.
# ---------------------------------------------------------------------------

_TABLE = {
    "layernorm_fwd": {
        80: {128: [(16, 4), (8, 2), (32, 8)], 1024: [(4, 4), (2, 4), (8, 8)], 4096: [(1, 8), (2, 8), (1, 4)]},
        90: {128: [(16, 4), (8, 2), (32, 8)], 1024: [(4, 4), (2, 4), (8, 8)], 4096: [(1, 8), (2, 8), (1, 4)]},
    },
    "layernorm_bwd": {
        80: {128: [(16, 4), (8, 4), (32, 8)], 1024: [(2, 4), (1, 4)], 4096: [(1, 8), (1, 16)]},  # (4, 8) spills on sm_86/89
        90: {128: [(16, 4), (8, 4), (32, 8)], 1024: [(2, 4), (4, 8), (1, 4)], 4096: [(1, 8), (1, 16)]},
    },
}  # fmt: skip


def _bucket(block_n: int) -> int:
    return next(b for b in (128, 1024, 4096) if block_n <= b)


def layernorm_configs(kernel: str, arch: int, *, block_n: int) -> list[triton.Config]:
    """Autotune configs of a LayerNorm kernel for ``arch`` (80 or 90) and a padded row width."""
    if kernel == "layernorm_bwd_reduce":  # a tiny column reduction: one config
        return [triton.Config({"BLOCK_C": 256}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=1) for m, w in _TABLE[kernel][arch][_bucket(block_n)]]


_INTERPRETER_CONFIGS = {
    "layernorm_fwd": triton.Config({"BLOCK_M": 8}, num_warps=4, num_stages=1),
    "layernorm_bwd": triton.Config({"BLOCK_M": 4}, num_warps=4, num_stages=1),  # differs from fwd on purpose
    "layernorm_bwd_reduce": triton.Config({"BLOCK_C": 256}, num_warps=4, num_stages=1),
}


# ---------------------------------------------------------------------------
# Build-gate variants: every width bucket, with every fused input switched on.
# ---------------------------------------------------------------------------

_GATE_CASES = [("fp32", 96), ("fp16", 768), ("bf16", 1024), ("bf16", 4096)]


def _gate_variants(kernel: str) -> list[Variant]:
    variants = []
    for dtype, hidden in _GATE_CASES:
        block_n = triton.next_power_of_2(hidden)
        t = f"*{dtype}"
        if kernel == "layernorm_bwd_reduce":
            if hidden != 768:  # the reduction's code does not depend on the width
                continue
            args = {"Partial": "*fp32", "Out": "*fp32", "n_parts": "i32", "width": 3 * hidden}
            variants.append(Variant(f"hidden={hidden}", args, {"block_n": block_n}, False))
            continue
        args = {"X": t, "XBias": t, "Res": t, "W": t, "stride_x": hidden, "stride_res": hidden}
        args |= {"n_rows": "i32", "n_cols": hidden, "dropout_p": "fp32", "seed": "i32"}
        args |= {"HAS_XBIAS": True, "HAS_RES": True, "HAS_W": True, "HAS_DROPOUT": True, "BLOCK_N": block_n}
        if kernel == "layernorm_fwd":
            args |= {"B": t, "Y": t, "Mean": "*fp32", "Rstd": "*fp32", "stride_y": hidden, "eps": "fp32"}
            args |= {"HAS_B": True}
        else:
            args |= {"dY": t, "Mean": "*fp32", "Rstd": "*fp32", "dH": t, "dX": t, "Partial": "*fp32"}
            args |= {"stride_dy": hidden, "stride_dh": hidden, "stride_dx": hidden}
        label = f"{dtype} hidden={hidden} xbias+res+affine+dropout"
        variants.append(Variant(label, args, {"block_n": block_n}, False))
    return variants


def _register(name: str):
    return registry.kernel(name=name, variants=_gate_variants(name), configs=functools.partial(layernorm_configs, name))


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def dropout_keep(seed, rows, cols, dropout_p):
    """Dropout keep mask of a (rows, cols) tile: Philox keyed by (seed, row), counter = column."""
    key = seed + rows.to(tl.int64)[:, None] * 4294967296
    return tl.rand(key, cols[None, :]) >= dropout_p


@triton.jit
def _prenorm(X, XBias, Res, rows, cols, stride_x, stride_res, n_rows, n_cols, dropout_p, seed,
             HAS_XBIAS: tl.constexpr, HAS_RES: tl.constexpr, HAS_DROPOUT: tl.constexpr):  # fmt: skip
    """``dropout(x + x_bias) + residual`` in fp32 for a (rows, cols) tile (zero outside the
    matrix), and the dropout keep mask (all True without dropout)."""
    col_ok = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    h = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_XBIAS:
        h += tl.load(XBias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    keep = mask
    if HAS_DROPOUT:
        keep = dropout_keep(seed, rows, cols, dropout_p)
        h = tl.where(keep, h * (1.0 / (1.0 - dropout_p)), 0.0)
    if HAS_RES:
        h += tl.load(Res + rows64[:, None] * stride_res + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, h, 0.0), keep, mask


@_register("layernorm_fwd")
def _layernorm_fwd(
    X, XBias, Res, W, B, Y, Mean, Rstd,
    stride_x, stride_res, stride_y,
    n_rows, n_cols, eps, dropout_p, seed,
    HAS_XBIAS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    h, keep, mask = _prenorm(X, XBias, Res, rows, cols, stride_x, stride_res, n_rows, n_cols, dropout_p, seed,
                             HAS_XBIAS, HAS_RES, HAS_DROPOUT)  # fmt: skip
    mean = tl.sum(h, 1) / n_cols
    d = tl.where(mask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 1) / n_cols + eps)
    y = d * rstd[:, None]
    col_ok = cols < n_cols
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    rows64 = rows.to(tl.int64)
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    row_ok = rows < n_rows
    tl.store(Mean + rows, mean, mask=row_ok)
    tl.store(Rstd + rows, rstd, mask=row_ok)


@_register("layernorm_bwd")
def _layernorm_bwd(
    dY, X, XBias, Res, W, Mean, Rstd, dH, dX, Partial,
    stride_dy, stride_x, stride_res, stride_dh, stride_dx,
    n_rows, n_cols, dropout_p, seed,
    HAS_XBIAS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    # dH = d(pre-norm sum) = d residual; dX = dH through the dropout mask (written only
    # with dropout: otherwise it is dH). Partial[pid] = column sums of dy * xhat, dy, dX.
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK_M
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.full([BLOCK_N], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_dw = tl.zeros([BLOCK_N], tl.float32)
    acc_db = tl.zeros([BLOCK_N], tl.float32)
    acc_dxb = tl.zeros([BLOCK_N], tl.float32)
    for start in range(pid * BLOCK_M, n_rows, step):
        rows = start + tl.arange(0, BLOCK_M)
        h, keep, mask = _prenorm(X, XBias, Res, rows, cols, stride_x, stride_res, n_rows, n_cols, dropout_p, seed,
                                 HAS_XBIAS, HAS_RES, HAS_DROPOUT)  # fmt: skip
        row_ok = rows < n_rows
        mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        rows64 = rows.to(tl.int64)
        dy = tl.load(dY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, 1) / n_cols
        c2 = tl.sum(wdy, 1) / n_cols
        dh = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_RES or not HAS_DROPOUT:  # dH is d residual, and dx too without dropout
            tl.store(dH + rows64[:, None] * stride_dh + cols[None, :], dh.to(dH.dtype.element_ty), mask=mask)
        dx = dh
        if HAS_DROPOUT:
            dx = tl.where(keep, dh * (1.0 / (1.0 - dropout_p)), 0.0)
            tl.store(dX + rows64[:, None] * stride_dx + cols[None, :], dx.to(dX.dtype.element_ty), mask=mask)
        acc_dw += tl.sum(dy * xhat, 0)
        acc_db += tl.sum(dy, 0)
        if HAS_XBIAS:
            acc_dxb += tl.sum(tl.where(mask, dx, 0.0), 0)
    base = Partial + pid.to(tl.int64) * 3 * n_cols + cols
    tl.store(base, acc_dw, mask=col_ok)
    tl.store(base + n_cols, acc_db, mask=col_ok)
    tl.store(base + 2 * n_cols, acc_dxb, mask=col_ok)


@_register("layernorm_bwd_reduce")
def _layernorm_bwd_reduce(Partial, Out, n_parts, width, BLOCK_C: tl.constexpr):
    """Out[c] = sum over p of Partial[p, c] (fp32), for a (n_parts, width) buffer."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = cols < width
    acc = tl.zeros([BLOCK_C], tl.float32)
    ptrs = Partial + cols
    for _ in range(0, n_parts):
        acc += tl.load(ptrs, mask=ok, other=0.0)
        ptrs += width
    tl.store(Out + cols, acc, mask=ok)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------

_TUNING_KEY = ["BLOCK_N", "HAS_XBIAS", "HAS_RES", "HAS_W", "HAS_B", "HAS_DROPOUT"]


@functools.lru_cache(maxsize=None)
def _tuned(name: str, arch: int, block_n: int):
    """The autotuned launcher of kernel ``name`` for one (arch, padded width) bucket."""
    entry = registry.get(name)
    configs = [_INTERPRETER_CONFIGS[name]] if arch == 0 else entry.configs(arch, block_n=block_n)
    key = [k for k in _TUNING_KEY if k in entry.fn.arg_names]
    return triton.autotune(configs=configs, key=key)(entry.fn)


def _rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    """``t`` as a (rows, hidden) matrix with unit column stride (a view when possible)."""
    t2 = t.reshape(-1, hidden)
    if t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


def check_supported(x: torch.Tensor, *others: torch.Tensor | None) -> None:
    """TypeError/ValueError unless the kernels take ``x`` and the other tensors of a call (shapes
    and devices already checked by ``fastbert.ops.add_layernorm``): float16, bfloat16 or float32,
    on a device the kernels run on, rows of at most ``MAX_HIDDEN``. The op's Triton path calls
    it once per call; the launchers check nothing (they trust their callers)."""
    for t in (x, *others):
        if t is not None and t.dtype not in TRITON_NAMES:
            raise TypeError(f"the Triton LayerNorm takes float16, bfloat16 or float32 tensors, got {t.dtype}")
    launch.check_device("x", x)
    if not 1 <= x.shape[-1] <= MAX_HIDDEN:
        raise ValueError(f"x's last dimension must be in [1, {MAX_HIDDEN}] for the Triton LayerNorm, got {x.shape[-1]}")


def layernorm_forward(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    x_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``LayerNorm(dropout(x + x_bias) + residual)`` over the last dimension.

    Returns ``(y, mean, rstd)``: ``y`` contiguous, of ``x``'s shape and dtype; ``mean``
    and ``rstd`` (1/std) float32 per row, for :func:`layernorm_backward`. ``seed`` (in
    ``[0, 2**31)``) selects the dropout mask. Trusts its caller (:func:`check_supported`).
    """
    hidden = x.shape[-1]
    x2 = _rows(x, hidden)
    res2 = _rows(residual, hidden) if residual is not None else x2
    n_rows = x2.shape[0]
    y = launch.empty(tuple(x.shape), x.dtype, x.device)
    mean = launch.empty((n_rows,), torch.float32, x.device)
    rstd = launch.empty((n_rows,), torch.float32, x.device)
    if n_rows == 0:
        return y, mean, rstd
    block_n = triton.next_power_of_2(hidden)
    kernel = _tuned("layernorm_fwd", launch.arch(x.device), block_n)
    kernel[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
        x2, x_bias if x_bias is not None else x2, res2, weight if weight is not None else x2,
        bias if bias is not None else x2, y, mean, rstd,
        x2.stride(0), res2.stride(0), hidden,
        n_rows, hidden, float(eps), float(dropout_p), int(seed),
        HAS_XBIAS=x_bias is not None, HAS_RES=residual is not None, HAS_W=weight is not None,
        HAS_B=bias is not None, HAS_DROPOUT=dropout_p > 0.0, BLOCK_N=block_n,
    )  # fmt: skip
    return y, mean, rstd


def column_sums(partial: torch.Tensor) -> torch.Tensor:
    """Column sums (fp32) of a contiguous float32 matrix of per-program partial sums."""
    n_parts, width = partial.shape
    out = launch.empty((width,), torch.float32, partial.device)
    kernel = _tuned("layernorm_bwd_reduce", launch.arch(partial.device), 0)
    kernel[lambda meta: (triton.cdiv(width, meta["BLOCK_C"]),)](partial, out, n_parts, width)
    return out


def layernorm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    x_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`layernorm_forward` (same inputs, ``dropout_p`` and ``seed``).

    Returns ``(dx, dresidual, dweight, dbias, dx_bias)``: ``dx`` and ``dresidual`` of
    ``x``'s shape and dtype (the same tensor without dropout; ``dresidual`` is None
    without a residual), the others float32 vectors of the row width (their column
    sums over all rows; ``dx_bias`` is None without an ``x_bias``). ``dy`` has ``x``'s shape;
    ``mean`` and ``rstd`` are the forward's. Trusts its caller.
    """
    hidden = x.shape[-1]
    x2 = _rows(x, hidden)
    n_rows = x2.shape[0]
    res2 = _rows(residual, hidden) if residual is not None else x2
    dy2 = _rows(dy, hidden)
    dropout = dropout_p > 0.0
    dh = launch.empty(tuple(x.shape), x.dtype, x.device) if (residual is not None or not dropout) else None
    dx = launch.empty(tuple(x.shape), x.dtype, x.device) if dropout else dh
    programs = launch.persistent_programs(x.device, n_rows)
    partial = torch.empty((programs, 3 * hidden), dtype=torch.float32, device=x.device)
    if n_rows == 0:
        partial.zero_()
    else:
        block_n = triton.next_power_of_2(hidden)
        kernel = _tuned("layernorm_bwd", launch.arch(x.device), block_n)
        dh2 = dh.view(-1, hidden) if dh is not None else x2
        dx2 = dx.view(-1, hidden) if dx is not None else x2
        kernel[(programs,)](
            dy2, x2, x_bias if x_bias is not None else x2, res2, weight if weight is not None else x2,
            mean, rstd, dh2, dx2, partial,
            dy2.stride(0), x2.stride(0), res2.stride(0), hidden, hidden,
            n_rows, hidden, float(dropout_p), int(seed),
            HAS_XBIAS=x_bias is not None, HAS_RES=residual is not None, HAS_W=weight is not None,
            HAS_DROPOUT=dropout, BLOCK_N=block_n,
        )  # fmt: skip
    sums = column_sums(partial).view(3, hidden)
    dweight, dbias, dx_bias = sums[0], sums[1], sums[2]
    return dx, (dh if residual is not None else None), dweight, dbias, (dx_bias if x_bias is not None else None)
