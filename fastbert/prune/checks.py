"""Argument checks shared by :func:`fastbert.prune.prune` and :class:`GradualPruner`."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from fastbert.prune.masks import BLOCK_SIZES, PATTERNS

METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATED = ("wanda", "sparsegpt")
SCOPES = ("global", "layer")


def check_options(sparsity, pattern: str, method: str, scope: str, block_size) -> None:
    """TypeError/ValueError for options :func:`fastbert.prune.prune` does not take (a sparsity
    mapping per role is checked by :func:`fastbert.prune.roles.check_role_sparsity`)."""
    per_role = isinstance(sparsity, Mapping)
    if not per_role:
        check_fraction("sparsity", sparsity)
    check_pattern(pattern)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (gradual pruning: fastbert.prune.GradualPruner), got {method!r}")
    check_scope(scope)
    nm = nm_of(pattern)
    if nm is not None and not per_role and abs(sparsity - (1 - nm[0] / nm[1])) > 1e-9:
        raise ValueError(f"the {pattern} pattern is always {1 - nm[0] / nm[1]:.0%} sparse: pass sparsity={1 - nm[0] / nm[1]:g}")
    check_block_size(pattern, block_size)


def nm_of(pattern: str) -> tuple[int, int] | None:
    """``(N, M)`` for an N:M pattern such as ``"2:4"`` (N of every M consecutive inputs kept), else None."""
    if not isinstance(pattern, str) or pattern.count(":") != 1:
        return None
    n, m = pattern.split(":")
    if not (n.isdigit() and m.isdigit()) or not 0 < int(n) < int(m) <= 64:
        return None
    return int(n), int(m)


def check_pattern(pattern) -> None:
    """ValueError unless ``pattern`` is one of :data:`PATTERNS` or an N:M pattern (0 < N < M <= 64)."""
    if pattern not in PATTERNS and nm_of(pattern) is None:
        raise ValueError(f"pattern must be one of {PATTERNS} or 'N:M' (e.g. '1:4', '4:8'), got {pattern!r}")


DEFAULT_SCOPE = "layer"


def default_scope(method: str) -> str:
    """``"layer"`` (each matrix pruned to the target) for every method: what the README's table
    measured best, and a scope that never removes a matrix whole. ``"global"`` is on request."""
    return DEFAULT_SCOPE


def check_scope(scope: str) -> None:
    """ValueError unless ``scope`` is one of :data:`SCOPES`."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def check_fraction(name: str, value) -> None:
    """TypeError unless ``value`` is a real number (Python or numpy, not bool); ValueError unless in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def check_block_size(pattern: str, block_size) -> None:
    """ValueError for the block pattern with a tile size the sparse kernels do not have."""
    if pattern == "block" and block_size not in BLOCK_SIZES:
        raise ValueError(f"block size must be one of {BLOCK_SIZES}, got {block_size}")


def check_layers(layers, count: int, shared: bool = False) -> list[int] | None:
    """``layers`` as a list of distinct indices in [0, count) (None = every layer); TypeError/ValueError
    otherwise. ``shared``: the encoder shares weights across layers (ALBERT), so the indices are
    of its ``count`` shared weight sets, not of the layers it applies; the errors say so."""
    if layers is None:
        return None
    unit, units, note = "layer index", "layer indices", ""
    if shared:
        unit, units = "shared weight set index", "shared weight set indices"
        note = (f" (this encoder shares weights across layers, as ALBERT does: layers are indices of its {count} "
                "shared weight set(s), and pruning a set prunes every layer that applies it)")
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of {units}, got {type(layers).__name__}{note}")
    chosen = list(layers)
    if not chosen:
        raise ValueError(f"layers must name at least one {unit} (None prunes every layer){note}")
    for i in chosen:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"layers must hold integer {units}, got {i!r}{note}")
        if not 0 <= i < count:
            raise ValueError(f"layers must be {units} in [0, {count}), got {i}{note}")
    repeated = sorted({int(i) for i in chosen if chosen.count(i) > 1})
    if repeated:
        raise ValueError(f"layers names {repeated} more than once: give each {unit} once{note}")
    return [int(i) for i in chosen]
