"""Pruning fastbert encoders: ``fastbert.prune(model, sparsity, pattern=..., method=...)``.

Patterns: ``"unstructured"``, ``"block"`` (B x B tiles, B in 16/32/64: the sparse
kernel's unit), ``"N:M"`` such as ``"2:4"`` (semi-structured), ``"heads"`` and ``"neurons"``
(structured: whole attention heads / FFN neurons removed, leaving smaller dense matrices).
Methods: ``"magnitude"``, and the calibrated ``"wanda"`` and ``"sparsegpt"``, which read
calibration batches layer by layer (:class:`CalibratedOptions` says how). Gradual pruning
during fine-tuning is :class:`GradualPruner`; recovery by distillation from the dense
model is :class:`Distiller`. Masks stay applied through training: pruned weights get zero
gradients and are re-zeroed after every optimizer step, also in pickled or deep-copied
models (:mod:`apply`). After pruning, 2:4 and block
matrices run on their sparse path where it is faster (:mod:`execution`).

One job per module: :mod:`pruning` (the entry point), :mod:`magnitude`, :mod:`calibrated`
and :mod:`structured_calibrated` (the methods), :mod:`calibration` (inputs per layer,
real tokens only), :mod:`solvers` (Wanda scores, SparseGPT, least squares),
:mod:`allocation` (per-layer sparsities), :mod:`roles` (a sparsity per matrix role),
:mod:`block_obs` (which tiles go), :mod:`masks` (a keep-mask per pattern),
:mod:`structured` (removing heads and neurons), :mod:`structure` (recording them in the
config), :mod:`apply` (masks kept through training), :mod:`schedule` (gradual pruning),
:mod:`distill` (recovery), :mod:`execution` (sparse paths), :mod:`targets` (which
matrices), :mod:`checks` (argument checks), :mod:`progress`, :mod:`report` (what was
pruned), :mod:`command` (the ``fastbert prune`` command). This file only re-exports.
"""

from __future__ import annotations

import sys
import types

from fastbert.prune.apply import keep_mask, reapply_masks
from fastbert.prune.calibrated import CalibratedOptions
from fastbert.prune.checks import METHODS, SCOPES
from fastbert.prune.distill import Distiller
from fastbert.prune.masks import PATTERNS
from fastbert.prune.pruning import prune
from fastbert.prune.report import PruneReport
from fastbert.prune.roles import split_sparsity
from fastbert.prune.schedule import GradualPruner, cubic_sparsity
from fastbert.prune.structured import head_scores, neuron_scores

__all__ = [
    "prune", "CalibratedOptions", "Distiller", "GradualPruner", "PruneReport", "cubic_sparsity", "reapply_masks", "keep_mask",
    "head_scores", "neuron_scores", "split_sparsity", "PATTERNS", "METHODS", "SCOPES",
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
