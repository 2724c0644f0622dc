"""Block-sparse matmul for pruned weights: ``act(x @ W.T + bias) + residual`` visiting only
the non-zero ``B x B`` blocks of ``W``, and the backward pieces for fine-tuning with a
fixed mask.

Format (:class:`fastbert.kernels.sparse_format.BlockSparseWeight`, plain PyTorch):
``W`` (N out features, K in features) cut into ``B x B`` blocks (B in 16/32/64, edge
blocks zero-padded), the blocks with any non-zero entry stored CSR over blocks
(``row_ptr``, ``col_idx``, ``values`` (nnz, B, B)), plus the transposed index for
``dX = dZ @ W`` and the weight-gradient work list ("dW groups" of up to ``64 // B``
blocks of one block column, so that tile is 64 rows tall: enough for wgmma).

Kernels (all accumulate in fp32; fp32 inputs use IEEE dots, not TF32):

- ``sparse_fwd``: one program per (``BLOCK_M`` rows of X, one block row of W); it loops
  over that row's non-zero block columns: ``acc += X[:, cols] @ V[j].T``. Epilogue:
  bias, activation (0 none, 1 GELU erf, 2 GELU tanh, 3 ReLU, 4 SiLU: the codes of
  ``fastbert.kernels.linear.ACTIVATIONS``), optional store of the pre-activation
  (for the backward), then ``+ residual``. Empty block rows write ``act(bias)``
  (+ residual) or zeros: every output element is written.
- ``sparse_dz``: elementwise ``dZ = dY * act'(Z)``.
- ``sparse_dx``: one program per (``BLOCK_M`` rows, one block column of W), looping over
  the transposed index: ``dX[:, cols] += dZ[:, rows] @ V[j]``; empty columns write 0.
- ``sparse_dw``: one program per dW group: ``dV[j] = dZ[:, rows_j].T @ X[:, cols]``
  reduced over all M rows, for the stored blocks only.

Launch order of ``sparse_fwd``/``sparse_dx``: consecutive programs share the same rows
of X (dZ) and walk the block rows (columns), so the activation tile stays in L2 while
the weight blocks (small: the whole pruned matrix) are re-read from L2.

The oracle is ``fastbert.ops.sparse_linear.sparse_linear_reference`` (a dense matmul of
``BlockSparseWeight.to_dense()``).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastbert.kernels import launch, registry
from fastbert.kernels.registry import Variant
from fastbert.kernels.sparse_format import BLOCK_SIZES, DW_TILE, BlockSparseWeight

__all__ = ["BLOCK_SIZES", "BlockSparseWeight", "sparse_forward", "sparse_grad_input", "sparse_grad_values", "activation_grad"]
ACTIVATIONS = {None: 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "silu": 4}
"""Canonical activation name (``fastbert.ops.linear.canonical_activation``) -> kernel code
(the same codes as ``fastbert.kernels.linear``)."""
_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


# ---------------------------------------------------------------------------
# Autotune configs: (BLOCK_M, num_warps, num_stages) per architecture and kind.
# 16-bit: tiles of BLOCK_M >= 64 rows on 4 warps (one warpgroup) or 128 on 8, so sm_90
# gets wgmma; fp32: IEEE dots on the FMA units, smaller tiles. ``dw``'s BLOCK_M is
# the reduction chunk (its tile is DW_TILE x B).
# ---------------------------------------------------------------------------

_CONFIGS = {
    "mm": {
        80: {"half": [(64, 4, 3), (128, 4, 3), (128, 8, 4)], "fp32": [(32, 4, 2), (64, 4, 2)]},
        90: {"half": [(64, 4, 3), (128, 4, 3), (128, 8, 4)], "fp32": [(32, 4, 2), (64, 4, 2)]},
    },
    "dw": {
        80: {"half": [(64, 4, 3), (128, 4, 3)], "fp32": [(32, 4, 2)]},
        90: {"half": [(64, 4, 3), (128, 4, 3)], "fp32": [(32, 4, 2)]},
    },
}
_ELEMENTWISE = [(1024, 4), (2048, 8)]
_INTERPRETER_CONFIGS = {
    "sparse_fwd": triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=1),
    "sparse_dx": triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=1),
    "sparse_dw": triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=1),
    "sparse_dz": triton.Config({"BLOCK": 1024}, num_warps=4, num_stages=1),
}


def sparse_configs(kernel: str, arch: int, *, dtype: str) -> list[triton.Config]:
    """Autotune configs of a sparse kernel for ``arch`` (80 or 90) and dtype ('fp16', 'bf16', 'fp32')."""
    if kernel == "sparse_dz":
        return [triton.Config({"BLOCK": b}, num_warps=w, num_stages=1) for b, w in _ELEMENTWISE]
    family = "fp32" if dtype == "fp32" else "half"
    table = _CONFIGS["dw" if kernel == "sparse_dw" else "mm"][arch][family]
    return [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=s) for m, w, s in table]


# ---------------------------------------------------------------------------
# Build-gate variants: BERT-base FFN-up (768 -> 3072) and attention-output shapes.
# ---------------------------------------------------------------------------


def _gate_variants(kernel: str) -> list[Variant]:
    hidden, inter = 768, 3072
    idx = {"RowPtr": "*i32", "ColIdx": "*i32"}
    out = []
    if kernel == "sparse_fwd":
        for dtype, block, act, res, pre in (
            ("fp16", 32, 1, False, True), ("bf16", 64, 2, False, False), ("fp16", 16, 3, False, False),
            ("bf16", 32, 0, True, False), ("fp32", 32, 4, True, True),
        ):  # fmt: skip
            t = f"*{dtype}"
            n = hidden if res else inter
            args = {"X": t, "Values": t, **idx, "Bias": t, "Res": t, "Y": t, "Z": t, "M": "i32", "N": n, "K": hidden}
            args |= {"stride_xm": hidden, "stride_xk": 1, "stride_ym": n, "stride_rm": n, "stride_zm": n, "M_BUCKET": "i32"}
            args |= {"B": block, "HAS_BIAS": True, "ACTIVATION": act, "SAVE_PRE": pre, "HAS_RESIDUAL": res}
            label = f"{dtype} B={block} 768->{n} act={act}{' +res' if res else ''}{' save_pre' if pre else ''}"
            out.append(Variant(label, args, {"dtype": dtype}, dtype != "fp32"))
    elif kernel == "sparse_dx":
        for dtype, block in (("fp16", 16), ("bf16", 32), ("fp16", 64), ("fp32", 32)):
            t = f"*{dtype}"
            args = {"dZ": t, "Values": t, "TPtr": "*i32", "TRow": "*i32", "TBlk": "*i32", "dX": t}
            args |= {"M": "i32", "N": inter, "K": hidden, "stride_dzm": inter, "stride_dxm": hidden, "M_BUCKET": "i32", "B": block}
            out.append(Variant(f"{dtype} B={block} dX 3072->768", args, {"dtype": dtype}, dtype != "fp32"))
    elif kernel == "sparse_dw":
        for dtype, block in (("fp16", 16), ("bf16", 32), ("fp16", 64), ("fp32", 32)):
            t = f"*{dtype}"
            args = {"dZ": t, "X": t, "Groups": "*i32", "GroupCol": "*i32", "RowIdx": "*i32", "dV": t}
            args |= {"M": "i32", "N": inter, "K": hidden, "stride_dzm": inter, "stride_xm": hidden, "stride_xk": 1}
            args |= {"M_BUCKET": "i32", "B": block, "G": DW_TILE // block}
            out.append(Variant(f"{dtype} B={block} dW (3072,M)@(M,768)", args, {"dtype": dtype}, dtype != "fp32"))
    else:  # sparse_dz
        for dtype in ("fp16", "bf16", "fp32"):
            t = f"*{dtype}"
            args = {"dY": t, "Z": t, "dZ": t, "n_elements": "i32", "ACTIVATION": 1}
            out.append(Variant(f"{dtype} gelu", args, {"dtype": dtype}, False))
    return out


def _register(name: str):
    return registry.kernel(name=name, variants=_gate_variants(name), configs=functools.partial(sparse_configs, name))


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _sigmoid(x):
    """Logistic function without overflow: exp of minus the magnitude only."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0.0, 1.0, e) / (1.0 + e)


@triton.jit
def _activate(z, ACTIVATION: tl.constexpr):
    """Activation of fp32 ``z`` (codes: see :data:`ACTIVATIONS`)."""
    y = z
    if ACTIVATION == 1:
        y = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACTIVATION == 2:  # 0.5 z (1 + tanh(u)) = z sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3)
        y = z * _sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z))
    elif ACTIVATION == 3:
        y = tl.maximum(z, 0.0)
    elif ACTIVATION == 4:
        y = z * _sigmoid(z)
    return y


@triton.jit
def _activation_grad(z, ACTIVATION: tl.constexpr):
    """d act(z) / dz for fp32 ``z``."""
    d = tl.full(z.shape, 1.0, tl.float32)
    if ACTIVATION == 1:
        d = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    elif ACTIVATION == 2:
        s = _sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z))
        d = s + z * s * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * z * z)
    elif ACTIVATION == 3:
        d = tl.where(z > 0.0, 1.0, 0.0)
    elif ACTIVATION == 4:
        s = _sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    return d


@_register("sparse_fwd")
def _sparse_fwd(
    X, Values, RowPtr, ColIdx, Bias, Res, Y, Z,
    M, N, K,
    stride_xm, stride_xk, stride_ym, stride_rm, stride_zm,
    M_BUCKET,  # autotune key only
    B: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, SAVE_PRE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    # Y (M, N) = act(X (M, K) @ W.T + bias) + residual, W's non-zero blocks only.
    pid = tl.program_id(0)
    n_block_rows = tl.cdiv(N, B)
    block_row = pid % n_block_rows
    pid_m = pid // n_block_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_b = tl.arange(0, B)
    # Rows past M wrap around (never stored), so the loads need only the K-edge mask.
    rows = offs_m % M
    x_rows = X + rows.to(tl.int64)[:, None] * stride_xm
    # Values[j] is (B out, B in), row-major; read transposed as (B in, B out).
    v_offs = offs_b[:, None] + offs_b[None, :] * B

    start = tl.load(RowPtr + block_row)
    end = tl.load(RowPtr + block_row + 1)
    w_ptrs = Values + start.to(tl.int64) * (B * B) + v_offs
    col_ptr = ColIdx + start
    acc = tl.zeros([BLOCK_M, B], dtype=tl.float32)
    for _ in range(start, end):
        cols = tl.load(col_ptr) * B + offs_b
        x = tl.load(x_rows + cols[None, :] * stride_xk, mask=(cols < K)[None, :], other=0.0)
        w = tl.load(w_ptrs)
        col_ptr += 1
        w_ptrs += B * B
        if X.dtype.element_ty == tl.float32:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)

    offs_n = block_row * B + offs_b
    n_ok = offs_n < N
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_mask = (offs_m < M)[:, None] & n_ok[None, :]
    row_off = offs_m.to(tl.int64)[:, None]
    if SAVE_PRE:
        tl.store(Z + row_off * stride_zm + offs_n[None, :], acc.to(Z.dtype.element_ty), mask=out_mask)
    y = _activate(acc, ACTIVATION)
    if HAS_RESIDUAL:
        y += tl.load(Res + row_off * stride_rm + offs_n[None, :], mask=out_mask, other=0.0).to(tl.float32)
    tl.store(Y + row_off * stride_ym + offs_n[None, :], y.to(Y.dtype.element_ty), mask=out_mask)


@_register("sparse_dz")
def _sparse_dz(dY, Z, dZ, n_elements, ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n_elements
    z = tl.load(Z + offs, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(dY + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(dZ + offs, (dy * _activation_grad(z, ACTIVATION)).to(dZ.dtype.element_ty), mask=ok)


@_register("sparse_dx")
def _sparse_dx(
    dZ, Values, TPtr, TRow, TBlk, dX,
    M, N, K, stride_dzm, stride_dxm,
    M_BUCKET,  # autotune key only
    B: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    # dX (M, K) = dZ (M, N) @ W (N, K), W's non-zero blocks only, via the transposed index.
    pid = tl.program_id(0)
    n_block_cols = tl.cdiv(K, B)
    block_col = pid % n_block_cols
    pid_m = pid // n_block_cols

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_b = tl.arange(0, B)
    rows = offs_m % M
    dz_rows = dZ + rows.to(tl.int64)[:, None] * stride_dzm
    v_offs = offs_b[:, None] * B + offs_b[None, :]  # Values[j] as stored: (B out, B in)

    start = tl.load(TPtr + block_col)
    end = tl.load(TPtr + block_col + 1)
    acc = tl.zeros([BLOCK_M, B], dtype=tl.float32)
    for t in range(start, end):
        n = tl.load(TRow + t) * B + offs_b
        j = tl.load(TBlk + t).to(tl.int64)
        dz = tl.load(dz_rows + n[None, :], mask=(n < N)[None, :], other=0.0)
        w = tl.load(Values + j * (B * B) + v_offs)
        if dZ.dtype.element_ty == tl.float32:
            acc = tl.dot(dz, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(dz, w, acc)

    offs_k = block_col * B + offs_b
    mask = (offs_m < M)[:, None] & (offs_k < K)[None, :]
    tl.store(dX + offs_m.to(tl.int64)[:, None] * stride_dxm + offs_k[None, :], acc.to(dX.dtype.element_ty), mask=mask)


@_register("sparse_dw")
def _sparse_dw(
    dZ, X, Groups, GroupCol, RowIdx, dV,
    M, N, K, stride_dzm, stride_xm, stride_xk,
    M_BUCKET,  # autotune key only
    B: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    # For the G blocks j of one dW group (same block column c): dV[j] = dZ[:, rows_j].T @ X[:, c].
    # The G blocks stack into one (G*B, B) tile, so the dot is G*B = 64 rows tall.
    group = tl.program_id(0)
    offs_t = tl.arange(0, G * B)
    slot = offs_t // B
    inner = offs_t % B
    j = tl.load(Groups + group * G + slot)  # (TILE,): the block each tile row belongs to
    used = j >= 0
    block_row = tl.load(RowIdx + j, mask=used, other=0)
    n = block_row * B + inner
    n_ok = used & (n < N)
    offs_b = tl.arange(0, B)
    k = tl.load(GroupCol + group) * B + offs_b
    k_ok = k < K

    acc = tl.zeros([G * B, B], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        m64 = offs_m.to(tl.int64)
        dz_t = tl.load(dZ + m64[None, :] * stride_dzm + n[:, None], mask=n_ok[:, None] & m_ok[None, :], other=0.0)
        x = tl.load(X + m64[:, None] * stride_xm + k[None, :] * stride_xk, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if X.dtype.element_ty == tl.float32:
            acc = tl.dot(dz_t, x, acc, input_precision="ieee")
        else:
            acc = tl.dot(dz_t, x, acc)

    dst = dV + j.to(tl.int64)[:, None] * (B * B) + inner[:, None] * B + offs_b[None, :]
    tl.store(dst, acc.to(dV.dtype.element_ty), mask=used[:, None])


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------

_TUNING_KEY = ["M_BUCKET", "N", "K", "stride_xk", "B", "HAS_BIAS", "ACTIVATION", "SAVE_PRE", "HAS_RESIDUAL"]


@functools.lru_cache(maxsize=None)
def _tuned(name: str, arch: int, dtype: str):
    entry = registry.get(name)
    configs = [_INTERPRETER_CONFIGS[name]] if arch == 0 else entry.configs(arch, dtype=dtype)
    key = [k for k in _TUNING_KEY if k in entry.fn.arg_names] if name != "sparse_dz" else ["ACTIVATION"]
    return triton.autotune(configs=configs, key=key)(entry.fn)


def _m_bucket(m: int) -> int:
    return max(16, triton.next_power_of_2(m))


def _check_tensor(name: str, t: torch.Tensor, dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32 for the sparse kernels, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (like x), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (like x), got {t.device}")
    launch.check_device(name, t)


def _check_weight(w: BlockSparseWeight, x: torch.Tensor) -> None:
    if not isinstance(w, BlockSparseWeight):
        raise TypeError(f"weight must be a BlockSparseWeight, got {type(w).__name__}")
    _check_tensor("weight.values", w.values, x.dtype, x.device)
    if w.row_ptr.device != x.device:
        raise ValueError(f"weight's indices must be on {x.device} (like x), got {w.row_ptr.device}: use weight.to(device)")


def sparse_forward(
    x: torch.Tensor,
    weight: BlockSparseWeight,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    save_pre: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``act(x @ W.T + bias) + residual`` for 2D ``x`` (M, K) (any strides) and block-sparse ``W`` (N, K).

    Returns ``(y, pre)``: ``y`` (M, N) contiguous in ``x``'s dtype and the pre-activation
    ``x @ W.T + bias`` when ``save_pre`` (else None). ``residual`` is (M, N), unit stride
    along N. ``activation`` is a canonical name (see :data:`ACTIVATIONS`).
    """
    _check_tensor("x", x)
    _check_weight(weight, x)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    n, k = weight.shape
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be (M, {k}) for a weight of shape {weight.shape}, got {tuple(x.shape)}")
    m = x.shape[0]
    if bias is not None:
        _check_tensor("bias", bias, x.dtype, x.device)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
        bias = bias.contiguous()
    if residual is not None:
        _check_tensor("residual", residual, x.dtype, x.device)
        if residual.shape != (m, n):
            raise ValueError(f"residual must have shape ({m}, {n}), got {tuple(residual.shape)}")
        if residual.stride(1) != 1:
            residual = residual.contiguous()
    y = launch.empty((m, n), x.dtype, x.device)
    pre = launch.empty((m, n), x.dtype, x.device) if save_pre else None
    if m == 0 or n == 0:
        return y, pre
    kernel = _tuned("sparse_fwd", launch.arch(x.device), _DTYPES[x.dtype])
    nbr = weight.block_rows
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * nbr,)  # noqa: E731
    kernel[grid](
        x, weight.values, weight.row_ptr, weight.col_idx,
        bias if bias is not None else x, residual if residual is not None else x, y, pre if pre is not None else y,
        m, n, k, x.stride(0), x.stride(1), n, residual.stride(0) if residual is not None else n, n, _m_bucket(m),
        B=weight.block, HAS_BIAS=bias is not None, ACTIVATION=ACTIVATIONS[activation], SAVE_PRE=save_pre,
        HAS_RESIDUAL=residual is not None,
    )  # fmt: skip
    return y, pre


def activation_grad(dy: torch.Tensor, z: torch.Tensor, activation: str) -> torch.Tensor:
    """``dy * act'(z)`` elementwise (fp32 math), contiguous, ``z``'s dtype."""
    _check_tensor("z", z)
    _check_tensor("dy", dy, z.dtype, z.device)
    if activation not in ACTIVATIONS or activation is None:
        raise ValueError(f"activation must be one of {[a for a in ACTIVATIONS if a]}, got {activation!r}")
    if dy.shape != z.shape:
        raise ValueError(f"dy must have z's shape {tuple(z.shape)}, got {tuple(dy.shape)}")
    z, dy = z.contiguous(), dy.contiguous()
    dz = launch.empty(tuple(z.shape), z.dtype, z.device)
    if z.numel():
        kernel = _tuned("sparse_dz", launch.arch(z.device), _DTYPES[z.dtype])
        kernel[lambda meta: (triton.cdiv(z.numel(), meta["BLOCK"]),)](dy, z, dz, z.numel(), ACTIVATION=ACTIVATIONS[activation])
    return dz


def _check_dz(dz: torch.Tensor, weight: BlockSparseWeight) -> torch.Tensor:
    _check_tensor("dz", dz)
    _check_weight(weight, dz)
    if dz.dim() != 2 or dz.shape[1] != weight.shape[0]:
        raise ValueError(f"dz must be (M, {weight.shape[0]}), got {tuple(dz.shape)}")
    return dz if dz.stride(1) == 1 else dz.contiguous()


def sparse_grad_input(dz: torch.Tensor, weight: BlockSparseWeight) -> torch.Tensor:
    """``dX = dz @ W`` (M, K) for ``dz`` (M, N) (the gradient at the pre-activation)."""
    dz = _check_dz(dz, weight)
    n, k = weight.shape
    m = dz.shape[0]
    dx = launch.empty((m, k), dz.dtype, dz.device)
    if m == 0 or k == 0:
        return dx
    kernel = _tuned("sparse_dx", launch.arch(dz.device), _DTYPES[dz.dtype])
    nbc = weight.block_cols
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * nbc,)  # noqa: E731
    kernel[grid](
        dz, weight.values, weight.t_ptr, weight.t_row, weight.t_blk, dx,
        m, n, k, dz.stride(0), k, _m_bucket(m), B=weight.block,
    )  # fmt: skip
    return dx


def sparse_grad_values(dz: torch.Tensor, x: torch.Tensor, weight: BlockSparseWeight) -> torch.Tensor:
    """Gradient of ``weight.values`` (nnz, B, B): ``dz[:, rows_j].T @ x[:, cols_j]`` per stored
    block (zero in the padding past N or K)."""
    dz = _check_dz(dz, weight)
    _check_tensor("x", x, dz.dtype, dz.device)
    n, k = weight.shape
    if x.dim() != 2 or x.shape != (dz.shape[0], k):
        raise ValueError(f"x must be ({dz.shape[0]}, {k}), got {tuple(x.shape)}")
    dv = launch.empty(tuple(weight.values.shape), dz.dtype, dz.device)
    if weight.nnz_blocks == 0:
        return dv
    m = x.shape[0]
    kernel = _tuned("sparse_dw", launch.arch(dz.device), _DTYPES[dz.dtype])
    b = weight.block
    kernel[(weight.dw_blocks.shape[0],)](
        dz, x, weight.dw_blocks, weight.dw_col, weight.row_idx, dv,
        m, n, k, dz.stride(0), x.stride(0), x.stride(1), _m_bucket(m), B=b, G=DW_TILE // b,
    )  # fmt: skip
    return dv
