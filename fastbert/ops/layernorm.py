"""Residual add + bias + dropout + LayerNorm: the glue after each GEMM of a post-LN layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastbert.kernels.dropout import check_dropout_p
from fastbert.ops import dispatch


def add_layernorm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    *,
    x_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``LayerNorm(dropout(x + x_bias) + residual)`` over the last dimension.

    ``x`` is typically a GEMM output without its bias (``x_bias`` is added here so a
    kernel can fuse it); ``residual`` may be None; ``weight``/``bias`` are the
    LayerNorm's affine parameters. Statistics are computed in float32. The arguments are
    checked here, once; the Triton path adds only what its kernels need.
    """
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor with at least one dimension, got {getattr(x, 'shape', x)}")
    hidden = x.shape[-1]
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    for name, t in (("residual", residual), ("weight", weight), ("bias", bias), ("x_bias", x_bias)):
        if t is None:
            continue
        if name != "residual" and t.shape != (hidden,):
            raise ValueError(f"{name} must have shape ({hidden},), got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")
    check_dropout_p(dropout_p)
    fn = dispatch.implementation("add_layernorm", x.device)
    return fn(x, residual, weight, bias, eps, x_bias=x_bias, dropout_p=dropout_p)


@dispatch.register("add_layernorm", "torch")
def add_layernorm_reference(x, residual, weight, bias, eps, *, x_bias=None, dropout_p=0.0):
    """Plain-PyTorch reference; half-precision inputs are summed and normalized in float32,
    with one rounding at the end, as the fused kernel does."""
    out_dtype = x.dtype
    upcast = out_dtype in (torch.float16, torch.bfloat16)
    h = x.float() if upcast else x
    if x_bias is not None:
        h = h + x_bias
    if dropout_p > 0.0:
        h = F.dropout(h, p=dropout_p, training=True)
    if residual is not None:
        h = h + residual
    if upcast:
        return F.layer_norm(h, (h.shape[-1],), weight.float(), bias.float(), eps).to(out_dtype)
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps)
