"""Dropout's arguments: the ops' probability check, and the seed the ops draw and the launchers read.

A dropout mask is a function of a seed: the forward kernel draws it and the backward
kernel regenerates it from the same seed. The ops draw the seed from PyTorch's default
CPU generator (so ``torch.manual_seed`` reproduces the mask) as a CPU tensor, which
keeps a custom op free of host synchronization and traceable; the launchers take it as
an int. Imports no Triton.
"""

from __future__ import annotations

import torch

SEED_LIMIT = 2**31
"""Seeds lie in ``[0, SEED_LIMIT)``, so they reach the kernels as ``i32`` arguments."""


def check_dropout_p(dropout_p: float) -> None:
    """ValueError unless ``0 <= dropout_p < 1``."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


def draw_seed(dropout_p: float) -> torch.Tensor | None:
    """A fresh seed from PyTorch's default CPU generator as a 0-dim int64 CPU tensor, or None
    without dropout."""
    return torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64) if dropout_p > 0.0 else None


def seed_value(seed: torch.Tensor | None) -> int:
    """The int a launcher takes for a seed from :func:`draw_seed` (0 without dropout)."""
    return 0 if seed is None else int(seed.item())
