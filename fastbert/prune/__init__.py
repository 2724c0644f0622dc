"""Pruning fastbert encoders: ``fastbert.prune(model, sparsity=..., pattern=..., method=...)``.

Patterns: ``"unstructured"``, ``"block"`` (B x B tiles, B in 16/32/64: the sparse
kernel's unit), ``"2:4"`` (semi-structured, always 50 %), ``"heads"`` and ``"neurons"``
(structured: whole attention heads / FFN neurons removed, leaving smaller dense matrices).
Methods: ``"magnitude"`` with ``scope="global"`` (one threshold over all matrices) or
``"layer"`` (each matrix at the target sparsity); gradual pruning during fine-tuning is
:class:`GradualPruner`. Masks stay applied through training: pruned weights get zero
gradients and are re-zeroed after every optimizer step.

One job per module: :mod:`magnitude` (the pruning pass), :mod:`masks` (a keep-mask per
pattern), :mod:`structured` (removing heads and neurons), :mod:`apply` (masks kept through
training), :mod:`schedule` (gradual pruning), :mod:`targets` (which matrices),
:mod:`checks` (argument checks), :mod:`report` (what was pruned), :mod:`command`
(the ``fastbert prune`` command). This file only re-exports.
"""

from __future__ import annotations

import sys
import types

from fastbert.prune.apply import keep_mask, reapply_masks
from fastbert.prune.checks import METHODS, SCOPES
from fastbert.prune.magnitude import prune
from fastbert.prune.masks import PATTERNS
from fastbert.prune.report import PruneReport
from fastbert.prune.schedule import GradualPruner, cubic_sparsity
from fastbert.prune.structured import head_scores, neuron_scores

__all__ = [
    "prune", "GradualPruner", "PruneReport", "cubic_sparsity", "reapply_masks", "keep_mask", "head_scores",
    "neuron_scores", "PATTERNS", "METHODS", "SCOPES",
]


class _CallableModule(types.ModuleType):
    """This package, callable: ``fastbert.prune(model, ...)`` runs :func:`prune`.

    The documented call is ``fastbert.prune(model, 0.5, pattern="block")``, and the same
    name is the package holding ``GradualPruner``, the masks and the command
    (``fastbert.prune.GradualPruner``, ``fastbert.prune.masks``). Rather than two names
    for one feature, the package's module object gets this class, whose ``__call__`` is
    :func:`prune`; everything else about the package is unchanged.
    """

    def __call__(self, *args, **kwargs) -> PruneReport:
        return prune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
