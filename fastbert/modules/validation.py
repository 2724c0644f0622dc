"""Input checks that read tensor values (and so synchronize with the GPU)."""

from __future__ import annotations

import torch

from fastbert.ops.validation import value_checks_enabled, values_readable

__all__ = ["check_index_range", "value_checks_enabled", "values_readable"]


def check_index_range(name: str, ids: torch.Tensor, size: int, table: str) -> None:
    """ValueError if any entry of ``ids`` is outside ``[0, size)`` (one host read: min and max together)."""
    if ids.numel() == 0 or not values_readable(ids):
        return
    lo, hi = torch.stack((ids.min(), ids.max())).tolist()
    if lo < 0 or hi >= size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains {bad}, outside {table}: expected values in [0, {size})")
