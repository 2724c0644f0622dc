"""Linear layers with pruned weights: block-sparse (Triton) and 2:4 semi-structured (PyTorch).

``sparse_linear(x, sparse_weight, bias, activation, residual)`` computes
``activation(x @ W.T + bias) + residual`` for a :class:`BlockSparseWeight` ``W``:

- reference (``sparse_linear_reference``, the oracle and the CPU path): a dense matmul
  of ``W.to_dense()``, the masked weight;
- Triton (CUDA tensors, or ``TRITON_INTERPRET=1``): :mod:`fastbert.kernels.sparse`,
  visiting only the stored blocks, bias/activation/residual in the epilogue, through an
  ``autograd.Function`` for fine-tuning with the mask fixed: gradients for ``x``,
  ``W.values`` (stored blocks only: the mask never changes), ``bias`` and ``residual``.

Chosen per call by :mod:`fastbert.ops.dispatch` (op name ``"sparse_linear"``).

``pruned_linear`` decides per matrix whether the sparse path is worth it: it asks the
measured crossover table (:mod:`fastbert.kernels.sparse_table`, **empty until a GPU run
of benchmarks/sparse_crossover.py fills it**) and runs the dense linear when the table
has no entry saying sparse is faster ("never slower than dense"). :func:`execution_path`
is the same decision for either sparse kind from plain facts (device, capability, dtype,
shape, tokens), as a pruned layer's projection asks it (:mod:`fastbert.modules.projection`).

2:4 semi-structured (``to_semi_structured``, ``semi_structured_linear``): PyTorch's
``to_sparse_semi_structured`` (sparse tensor cores, CUDA sm_80+, fp16/bf16); a clear
error (or None from ``semi_structured_or_none``) elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastbert.kernels.dtypes import TRITON_NAMES
from fastbert.kernels.sparse_format import BLOCK_SIZES, BlockSparseWeight
from fastbert.ops import dispatch
from fastbert.ops.linear import ACTIVATIONS, canonical_activation, linear

__all__ = [
    "BlockSparseWeight", "BLOCK_SIZES", "sparse_linear", "sparse_linear_reference", "pruned_linear", "choose_path",
    "is_two_four", "semi_structured_unsupported_reason", "to_semi_structured", "semi_structured_or_none",
    "semi_structured_linear", "execution_path",
]  # fmt: skip


def _check_inputs(x, sparse_weight, bias, residual) -> None:
    if not isinstance(sparse_weight, BlockSparseWeight):
        raise TypeError(f"sparse_weight must be a BlockSparseWeight (BlockSparseWeight.from_dense(w, block)), got "
                        f"{type(sparse_weight).__name__}")  # fmt: skip
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise TypeError(f"x must be a tensor of shape (..., in_features), got {getattr(x, 'shape', type(x).__name__)}")
    n, k = sparse_weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x's last dimension ({x.shape[-1]}) must equal the weight's in_features ({k})")
    if x.dtype != sparse_weight.dtype:
        raise TypeError(f"x must have the weight's dtype {sparse_weight.dtype}, got {x.dtype}")
    if x.device != sparse_weight.device:
        raise ValueError(f"x must be on the weight's device {sparse_weight.device}, got {x.device}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (n,)):
        raise ValueError(f"bias must have shape ({n},), got {tuple(getattr(bias, 'shape', ()))}")
    expected = tuple(x.shape[:-1]) + (n,)
    if residual is not None and (not isinstance(residual, torch.Tensor) or tuple(residual.shape) != expected):
        raise ValueError(f"residual must have shape {expected}, got {tuple(getattr(residual, 'shape', ()))}")


def sparse_linear(
    x: torch.Tensor,
    sparse_weight: BlockSparseWeight,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``activation(x @ W.T + bias) + residual`` over the last dimension of ``x``, ``W`` block-sparse.

    ``activation`` is None or a Hugging Face name (``fastbert.ops.linear.ACTIVATIONS``);
    ``residual`` has the output's shape. Gradients flow to ``x``, ``sparse_weight.values``
    (when it requires grad), ``bias`` and ``residual``.
    """
    canonical_activation(activation)
    _check_inputs(x, sparse_weight, bias, residual)
    return dispatch.implementation("sparse_linear", x.device)(x, sparse_weight, bias, activation, residual)


@dispatch.register("sparse_linear", "torch")
def sparse_linear_reference(x, sparse_weight, bias=None, activation=None, residual=None):
    """Plain-PyTorch reference: dense ``F.linear`` with the masked weight, activation, residual."""
    y = F.linear(x, sparse_weight.to_dense(), bias)
    if activation is not None:
        y = ACTIVATIONS[activation](y)
    return y if residual is None else y + residual


class _SparseLinearFunction(torch.autograd.Function):
    """Triton forward/backward; ``values`` is an input so autograd routes its gradient."""

    @staticmethod
    def forward(ctx, x2, values, bias, residual2, sparse_weight, activation):
        from fastbert.kernels.sparse import sparse_forward

        weight = sparse_weight.with_values(values)
        save_pre = activation is not None and any(ctx.needs_input_grad[:3])
        y, pre = sparse_forward(x2, weight, bias, activation, residual2, save_pre)
        ctx.save_for_backward(x2, values, pre)
        ctx.sparse_weight, ctx.activation = sparse_weight, activation
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        from fastbert.kernels.activations import activation_backward
        from fastbert.kernels.sparse import sparse_grad_input, sparse_grad_values

        x2, values, pre = ctx.saved_tensors
        weight = ctx.sparse_weight.with_values(values)
        need_x, need_v, need_b, need_r = ctx.needs_input_grad[:4]
        dy = dy.contiguous()
        dz = dy
        if ctx.activation is not None and (need_x or need_v or need_b):
            dz = activation_backward(dy, pre, ctx.activation)
        dx = sparse_grad_input(dz, weight) if need_x else None
        dv = sparse_grad_values(dz, x2, weight) if need_v else None
        db = dz.sum(0, dtype=torch.float32).to(ctx.bias_dtype) if need_b and ctx.bias_dtype is not None else None
        return dx, dv, db, (dy if need_r else None), None, None


@dispatch.register("sparse_linear", "triton")
def triton_sparse_linear(x, sparse_weight, bias=None, activation=None, residual=None):
    """Block-sparse Triton linear; same contract as :func:`sparse_linear_reference`.

    ``x`` may have any leading dimensions (flattened; a view when the layout allows).
    """
    act = canonical_activation(activation)
    n, k = sparse_weight.shape
    x2 = x if x.dim() == 2 else x.reshape(-1, k)
    r2 = None if residual is None else (residual if residual.dim() == 2 else residual.reshape(-1, n))
    y = _SparseLinearFunction.apply(x2, sparse_weight.values, bias, r2, sparse_weight, act)
    return y if x.dim() == 2 else y.view(*x.shape[:-1], n)


# ---------------------------------------------------------------------------
# Sparse or dense, per matrix, from the measured table
# ---------------------------------------------------------------------------


def choose_path(sparse_weight: BlockSparseWeight, tokens: int, device: torch.device | None = None) -> str:
    """``"sparse"`` or ``"dense"`` for a GEMM of ``tokens`` rows with this weight.

    Dense unless the measured table (:mod:`fastbert.kernels.sparse_table`) has entries for
    this GPU architecture, shape, dtype and block size showing the block-sparse kernel
    faster at this sparsity and token count. The table is empty until a GPU run fills
    it, so today this always answers ``"dense"`` (and always off CUDA).
    """
    device = device or sparse_weight.device
    if device.type != "cuda" or sparse_weight.dtype not in TRITON_NAMES:
        return "dense"
    from fastbert.kernels import launch, sparse_table

    n, k = sparse_weight.shape
    choice = sparse_table.choose(
        launch.arch(device), tokens, n, k, TRITON_NAMES[sparse_weight.dtype], sparse_weight.block,
        sparse_weight.block_sparsity, kind="block",
    )  # fmt: skip
    return "sparse" if choice == "block" else "dense"


def execution_path(
    kind: str,
    device: torch.device,
    dtype: torch.dtype,
    n: int,
    k: int,
    tokens: int,
    block: int = 0,
    sparsity: float = 0.5,
    table=None,
) -> str:
    """Where a pruned ``(n, k)`` weight of pattern ``kind`` runs for ``tokens`` rows: ``kind`` or ``"dense"``.

    ``kind`` is ``"block"`` (``block`` x ``block`` tiles, ``sparsity`` = fraction of tiles
    removed) or ``"2:4"``. Off CUDA the answer is always ``"dense"``. On CUDA:

    - ``"block"`` only where the measured crossover table (``table``, default
      :data:`fastbert.kernels.sparse_table.TABLE`) shows the block-sparse kernel faster
      for this architecture, shape, dtype, block size, sparsity and token count;
    - ``"2:4"`` on compute capability 8.0+, float16/bfloat16, ``n`` a multiple of 32 and
      ``k`` of 64 (what PyTorch's semi-structured kernels take); when the table holds 2:4
      measurements for this architecture, only where they show 2:4 faster.
    """
    if kind not in ("block", "2:4"):
        raise ValueError(f"kind must be 'block' or '2:4', got {kind!r}")
    if device.type != "cuda" or dtype not in TRITON_NAMES:
        return "dense"
    from fastbert.kernels import sparse_table

    table = sparse_table.TABLE if table is None else table
    major, minor = torch.cuda.get_device_capability(device)
    arch = 90 if major == 9 else 80
    name = TRITON_NAMES[dtype]
    if kind == "block":
        return sparse_table.choose(arch, tokens, n, k, name, block, sparsity, kind="block", table=table)
    if major < 8 or dtype not in _SEMI_DTYPES or n % _SEMI_ROWS or k % _SEMI_COLS:
        return "dense"
    if not any(e["kind"] == "2:4" for e in table.get(arch, [])):
        return "2:4"  # nothing measured on this architecture: PyTorch's sparse tensor cores
    return sparse_table.choose(arch, tokens, n, k, name, 0, 0.5, kind="2:4", table=table)


def pruned_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    sparse_weight: BlockSparseWeight | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``activation(x @ weight.T + bias) + residual`` for a pruned dense ``weight``, on the faster path.

    ``sparse_weight`` is ``weight``'s block-sparse form (the caller caches it; None means
    dense). The sparse kernel runs only where :func:`choose_path` says it was measured
    faster; otherwise the dense :func:`fastbert.ops.linear` does (never slower than dense).
    Both compute the same function, since ``weight`` is zero outside the stored blocks.
    """
    tokens = x.numel() // max(1, x.shape[-1])
    if sparse_weight is not None and choose_path(sparse_weight, tokens, x.device) == "sparse":
        return sparse_linear(x, sparse_weight, bias, activation, residual)
    y = linear(x, weight, bias, activation)
    return y if residual is None else y + residual


# ---------------------------------------------------------------------------
# 2:4 semi-structured sparsity (PyTorch's sparse tensor-core kernels)
# ---------------------------------------------------------------------------

# Sizes every backend of torch.sparse.to_sparse_semi_structured accepts for 16-bit weights
# (CUTLASS: rows multiple of 32, columns multiple of 64; cuSPARSELt: 16 and 16).
_SEMI_ROWS, _SEMI_COLS = 32, 64
_SEMI_DTYPES = (torch.float16, torch.bfloat16)


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive entries along each row has at most 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight != 0).view(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def semi_structured_unsupported_reason(weight: torch.Tensor) -> str | None:
    """Why ``weight`` cannot become a 2:4 semi-structured tensor here, or None if it can."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return f"weight must be a 2D (out_features, in_features) tensor, got {getattr(weight, 'shape', type(weight).__name__)}"
    if weight.device.type != "cuda":
        return f"2:4 semi-structured sparsity needs a CUDA tensor (sparse tensor cores, sm_80+), got device {weight.device}"
    major, minor = torch.cuda.get_device_capability(weight.device)
    if major < 8:
        return f"2:4 semi-structured sparsity needs compute capability 8.0 or newer, got {major}.{minor}"
    if weight.dtype not in _SEMI_DTYPES:
        return f"2:4 semi-structured sparsity supports float16 and bfloat16 weights, got {weight.dtype}"
    rows, cols = weight.shape
    if rows % _SEMI_ROWS or cols % _SEMI_COLS:
        return f"2:4 semi-structured weights need out_features % {_SEMI_ROWS} == 0 and in_features % {_SEMI_COLS} == 0, got {tuple(weight.shape)}"
    if not is_two_four(weight):
        return "weight is not 2:4 sparse (some group of 4 consecutive inputs has more than 2 non-zeros): prune it with pattern='2:4'"
    return None


def to_semi_structured(weight: torch.Tensor):
    """``torch.sparse.to_sparse_semi_structured`` of a 2:4-pruned weight; ValueError where unsupported."""
    reason = semi_structured_unsupported_reason(weight)
    if reason is not None:
        raise ValueError(reason)
    try:
        return torch.sparse.to_sparse_semi_structured(weight.detach().contiguous())
    except (RuntimeError, NotImplementedError) as e:  # e.g. a build of torch without cuSPARSELt/CUTLASS kernels
        raise ValueError(f"torch could not convert the weight to 2:4 semi-structured form: {e}") from e


def semi_structured_or_none(weight: torch.Tensor):
    """The 2:4 semi-structured form of ``weight``, or None where it is unsupported."""
    if semi_structured_unsupported_reason(weight) is not None:
        return None
    try:
        return to_semi_structured(weight)
    except ValueError:
        return None


def semi_structured_linear(
    x: torch.Tensor,
    weight_2_4,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``activation(x @ W.T + bias) + residual`` with ``W`` from :func:`to_semi_structured` (inference)."""
    canonical_activation(activation)
    if not isinstance(weight_2_4, torch.sparse.SparseSemiStructuredTensor):
        raise TypeError(f"weight_2_4 must come from to_semi_structured, got {type(weight_2_4).__name__}")
    if x.shape[-1] != weight_2_4.shape[1]:
        raise ValueError(f"x's last dimension ({x.shape[-1]}) must equal the weight's in_features ({weight_2_4.shape[1]})")
    if x.dtype != weight_2_4.dtype or x.device != weight_2_4.device:
        raise ValueError(f"x must be {weight_2_4.dtype} on {weight_2_4.device} like the weight, got {x.dtype} on {x.device}")
    y = F.linear(x.reshape(-1, x.shape[-1]), weight_2_4, bias).view(*x.shape[:-1], weight_2_4.shape[0])
    if activation is not None:
        y = ACTIVATIONS[activation](y)
    return y if residual is None else y + residual
