"""Linear layer with an optional fused activation: ``act(x @ weightᵀ + bias)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastbert.ops import dispatch


def _gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# Hugging Face activation names -> reference function. "gelu_new", "gelu_fast" and
# "gelu_pytorch_tanh" are the same tanh approximation written three ways.
ACTIVATIONS = {
    "gelu": _gelu_erf,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def canonical_activation(name: str | None) -> str | None:
    """Canonical activation name ('gelu', 'gelu_tanh', 'relu', 'silu') or None; ValueError if unknown."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {sorted(ACTIVATIONS)}, got {name!r}")
    return {"gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "swish": "silu"}.get(
        name, name
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """``activation(x @ weight.T + bias)`` over the last dimension of ``x``.

    ``weight`` is ``(out_features, in_features)`` as in ``nn.Linear``; ``activation`` is
    None or a Hugging Face activation name from :data:`ACTIVATIONS`. Under autocast the
    three are cast to autocast's dtype first, as ``F.linear`` does. The arguments are
    checked here, once; the Triton path adds only what its kernels need.
    """
    canonical_activation(activation)
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"x must be a tensor (..., in_features) and weight (out_features, in_features), got "
                         f"{getattr(x, 'shape', x)} and {getattr(weight, 'shape', weight)}")  # fmt: skip
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"x's last dimension ({x.shape[-1]}) must equal weight's in_features ({weight.shape[-1]})")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):  # as F.linear does
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"{name} must have x's dtype and device ({x.dtype}, {x.device}), got {t.dtype}, {t.device}")
    return dispatch.implementation("linear", x.device)(x, weight, bias, activation)


@dispatch.register("linear", "torch")
def linear_reference(x, weight, bias=None, activation=None):
    """Plain-PyTorch reference: ``F.linear`` then the activation."""
    y = F.linear(x, weight, bias)
    return y if activation is None else ACTIVATIONS[activation](y)
