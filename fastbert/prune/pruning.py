"""``fastbert.prune(model, sparsity, pattern=..., method=...)``: the one entry point of one-shot pruning.

Checks every argument before any work, runs the method (:mod:`magnitude`,
:mod:`calibrated` for Wanda/SparseGPT, :mod:`structured` for heads/neurons), gives 2:4-
and block-pruned matrices their sparse execution plan (:mod:`execution`), records removed
heads/neurons in the model's config (:mod:`structure`) and returns the report.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from fastbert.prune.calibrated import CalibratedOptions, prune_calibrated
from fastbert.prune.calibration import check_calibration
from fastbert.prune.checks import CALIBRATED, check_options, default_scope
from fastbert.prune.execution import plan_execution
from fastbert.prune.magnitude import prune_magnitude, prune_structured
from fastbert.prune.report import PruneReport, build_report
from fastbert.prune.roles import check_role_sparsity, overall_sparsity, per_target
from fastbert.prune.structure import record_structure
from fastbert.prune.structured_calibrated import prune_structured_calibrated
from fastbert.prune.targets import targets


def prune(
    model: nn.Module,
    sparsity: float | Mapping[str, float],
    pattern: str = "unstructured",
    method: str = "magnitude",
    scope: str | None = None,
    layers=None,
    block_size: int = 32,
    *,
    calibration=None,
    options: CalibratedOptions | None = None,
    progress: bool = True,
) -> PruneReport:
    """Prune the encoder projections of an optimized model (or a FastBertEncoder) in place.

    ``sparsity``: the fraction of weights (or blocks, heads, neurons) to remove, in [0, 1)
    (N:M patterns such as ``"2:4"`` fix it: ``1 - N/M``), or, for the unstructured and block
    patterns with ``scope="layer"``, a fraction per matrix role (``{"attention": 0.15, "ffn":
    0.675}``; :mod:`fastbert.prune.roles`). ``pattern``: ``"unstructured"``,
    ``"block"`` (``block_size`` tiles), ``"N:M"``, ``"heads"``, ``"neurons"``.
    ``method``: ``"magnitude"``, or the calibrated ``"wanda"`` / ``"sparsegpt"``, which need
    ``calibration``: an iterable of model input dicts (what a tokenizer returns), run layer
    by layer through the already-pruned layers on real tokens; ``options``
    (:class:`CalibratedOptions`, default the tuned settings; ``CalibratedOptions.plain(method)``
    is the published algorithm) says how; ``progress`` shows a bar (or lines on stderr).
    ``scope``: ``"layer"`` (the default for every method: what measured best on MiniLM)
    prunes each matrix to the target (heads/neurons: the same fraction per layer);
    ``"global"`` ranks all matrices against one magnitude threshold (refused, with no weight
    changed, where that would remove a matrix whole), gives layers outlier-weighted
    sparsities for the calibrated methods (OWL), or ranks heads/neurons by normalized
    scores (a layer always keeps its best one).
    ``layers`` restricts pruning to those layer indices.

    Structured patterns replace the affected ``nn.Linear`` modules with smaller ones
    (create optimizers after pruning) and record the new shapes in the model's config:
    see :func:`fastbert.from_pretrained`. Returns a :class:`PruneReport`.
    """
    scope = default_scope(method) if scope is None else scope
    check_options(sparsity, pattern, method, scope, block_size)
    target = sparsity
    if isinstance(sparsity, Mapping):
        target = overall_sparsity(model, check_role_sparsity(sparsity, pattern, scope))
    batches = None
    if method in CALIBRATED:
        if options is not None and not isinstance(options, CalibratedOptions):
            raise TypeError(f"options must be a fastbert.prune.CalibratedOptions, got {type(options).__name__}")
        options = options or CalibratedOptions()
        batches = check_calibration(calibration, method)
    elif calibration is not None or options is not None:
        raise ValueError(f"calibration and options are for the calibrated methods {CALIBRATED}; "
                         f"method={method!r} does not use them")
    chosen = targets(model, layers)
    if pattern in ("heads", "neurons"):
        if batches is None:
            prune_structured(model, chosen, sparsity, pattern, scope)
        else:
            prune_structured_calibrated(model, chosen, sparsity, pattern, scope, batches, options, progress)
        record_structure(model)
        chosen = targets(model, layers)  # the smaller modules
    elif batches is None:
        prune_magnitude(chosen, per_target(chosen, sparsity) if scope == "layer" else sparsity, pattern, scope,
                        block_size)
    else:
        fractions = per_target(chosen, sparsity) if scope == "layer" else sparsity
        prune_calibrated(model, chosen, fractions, pattern, method, batches, scope, block_size, options, progress)
    plan_execution(chosen, pattern, block_size)
    return build_report(model, chosen, target, pattern, f"{method} ({scope})")
