"""Calibrated one-shot pruning (Wanda, SparseGPT), layer by layer through the already-pruned layers.

The calibration batches are embedded once; then, layer after layer, the inputs of each
projection are recorded on real tokens (:mod:`fastbert.prune.calibration`), the
projection is pruned from those statistics (:mod:`fastbert.prune.solvers`), and the
pruned layer's outputs become the next layer's inputs, so later layers see (and
compensate) the error of earlier ones.

:class:`CalibratedOptions` says how:

- ``sequential``: prune the four projections of a layer one after the other, each
  calibrated on inputs that already went through the pruned ones before it (otherwise all
  four from one pass, as plain Wanda and SparseGPT do);
- ``dense_target`` (SparseGPT): reconstruct the *dense* model's outputs of each
  projection from the pruned model's inputs (least squares, ``W G^T H^-1``), not the
  projection's own dense outputs on those inputs, so the error earlier layers left is corrected;
- ``bias``: the bias takes part in the reconstruction (it absorbs the error's mean);
- ``mask``: SparseGPT's own choice along the sweep (``"obs"``, smallest ``w^2/[U]_jj^2``
  per chunk of columns), per row (``"obs-row"``), or Wanda's ``|W| * ||x||`` per output row
  fixed in advance (``"wanda"``);
- ``refit``: after the sweep, a least-squares refit of the kept weights for the final mask;
- ``block_mask`` (SparseGPT, block pattern): which tiles go, chosen greedily by their optimal
  brain surgeon cost given the tiles already removed (``"obs"``, :mod:`fastbert.prune.block_obs`),
  or ranked once by their sum of Wanda scores (``"wanda"``); the kept weights are then
  reconstructed as for any fixed mask;

``scope`` says how the sparsity is spread: ``"layer"`` prunes every matrix to the target,
``"global"`` gives each layer its own sparsity from its share of outlier weights
(:mod:`fastbert.prune.allocation`, OWL), averaging to the target (N:M is uniform by definition).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from fastbert.prune.allocation import layer_sparsities
from fastbert.prune.apply import apply_mask, keep_mask
from fastbert.prune.block_obs import obs_block_mask
from fastbert.prune.calibration import InputStats, Packed, collect, embed_calibration, run_layer
from fastbert.prune.progress import Progress
from fastbert.prune.solvers import dampened, dense_target, keep_from_scores, refit, sparsegpt, wanda_scores
from fastbert.prune.targets import LAYER_MATRICES, Target, encoder_of

ORDER = tuple(LAYER_MATRICES)  # the order a layer applies its projections
MASKS = ("obs", "obs-row", "wanda")
BLOCK_MASKS = ("obs", "wanda")


@dataclass(frozen=True)
class CalibratedOptions:
    """How calibrated pruning runs (see the module docstring); the defaults are the tuned ones."""

    sequential: bool = True
    dense_target: bool = True
    bias: bool = True
    mask: str = "obs-row"
    refit: bool = True
    block_mask: str = "obs"
    dampening: float = 0.01
    ridge: float = 1.0
    owl_threshold: float = 5.0
    owl_spread: float = 0.08

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"options.mask must be one of {MASKS}, got {self.mask!r}")
        if self.block_mask not in BLOCK_MASKS:
            raise ValueError(f"options.block_mask must be one of {BLOCK_MASKS}, got {self.block_mask!r}")
        if not 0.0 < self.dampening < 1.0:
            raise ValueError(f"options.dampening must be in (0, 1), got {self.dampening!r}")
        if not 0.0 <= self.owl_spread < 0.5 or self.owl_threshold <= 0:
            raise ValueError("options.owl_spread must be in [0, 0.5) and options.owl_threshold positive")

    @classmethod
    def plain(cls, method: str) -> "CalibratedOptions":
        """The published algorithm as is: plain Wanda or plain SparseGPT."""
        return cls(sequential=False, dense_target=False, bias=False, mask="wanda" if method == "wanda" else "obs",
                   refit=False, block_mask="wanda")


def prune_calibrated(model, chosen: list[Target], sparsity: float | dict[str, float], pattern: str, method: str,
                     batches, scope: str, block_size: int, options: CalibratedOptions,
                     progress: bool) -> dict[str, float]:
    """Prune the ``chosen`` matrices of ``model`` with ``method`` on ``batches`` (``sparsity``: one
    fraction, or one per matrix name); returns each matrix's target sparsity."""
    encoder = encoder_of(model)
    stream = embed_calibration(model, batches)
    by_layer: dict[int, list[Target]] = {}
    for t in chosen:
        by_layer.setdefault(t.layer, []).append(t)
    targets = _allocate(encoder, stream, by_layer, sparsity, pattern, scope, options)
    use_dense = method == "sparsegpt" and options.dense_target
    dense_stream = stream if use_dense else None
    bar = Progress(len(chosen), f"{method} {pattern}", progress)
    done = set()
    try:
        for index in encoder.config.schedule:
            layer = encoder.layers[index]
            if index in by_layer and index not in done:
                dense_layer = copy.deepcopy(layer) if use_dense else None
                group = sorted(by_layer[index], key=lambda t: ORDER.index(_attr(t)))
                for step in ([[t] for t in group] if options.sequential else [group]):
                    attrs = [_attr(t) for t in step]
                    stats = {a: InputStats(getattr(layer, a).in_features, _bias(layer, a, options, method),
                                           use_dense, getattr(layer, a).weight.device) for a in attrs}
                    collect(layer, attrs, stream, stats, dense_layer, dense_stream)
                    for t in step:
                        _prune_one(t, stats[_attr(t)], targets[t.name], pattern, method, block_size, options)
                        bar.step(t.name)
                done.add(index)
                if use_dense:
                    dense_stream = run_layer(dense_layer, dense_stream)
            elif use_dense:
                dense_stream = run_layer(layer, dense_stream)
            stream = run_layer(layer, stream)
    finally:
        bar.close()
    return targets


def _attr(t: Target) -> str:
    return t.name.rsplit(".", 1)[1]


def _bias(layer, attr: str, options: CalibratedOptions, method: str) -> bool:
    return method == "sparsegpt" and options.bias and getattr(layer, attr).bias is not None


def _allocate(encoder, stream: list[Packed], by_layer, sparsity: float | dict[str, float], pattern: str, scope: str,
              options) -> dict[str, float]:
    """Each chosen matrix's sparsity: the given one, the target, or the OWL allocation from a pass of
    the unpruned model."""
    names = [t.name for ts in by_layer.values() for t in ts]
    if isinstance(sparsity, dict):  # a fraction per matrix already (per role)
        return {name: sparsity[name] for name in names}
    if scope == "layer" or ":" in pattern or len(by_layer) < 2:  # N:M is the same fraction everywhere by definition
        return dict.fromkeys(names, sparsity)
    scores: dict[int, list[torch.Tensor]] = {}
    for index in encoder.config.schedule:
        layer = encoder.layers[index]
        if index in by_layer and index not in scores:
            attrs = [_attr(t) for t in by_layer[index]]
            stats = {a: InputStats(getattr(layer, a).in_features, False, False, layer.qkv.weight.device) for a in attrs}
            collect(layer, attrs, stream, stats)
            scores[index] = [wanda_scores(getattr(layer, a).weight, stats[a].col_sq) for a in attrs]
        stream = run_layer(layer, stream)
    per_layer = layer_sparsities(scores, sparsity, options.owl_threshold, options.owl_spread)
    return {t.name: per_layer[i] for i, ts in by_layer.items() for t in ts}


@torch.no_grad()
def _prune_one(t: Target, stats: InputStats, sparsity: float, pattern: str, method: str, block: int,
               options: CalibratedOptions) -> None:
    module = t.module
    old = keep_mask(module)
    if method == "wanda":
        keep = keep_from_scores(wanda_scores(module.weight, stats.col_sq), sparsity, pattern, block, old)
        apply_mask(module, keep)
        return
    H = dampened(stats.H, options.dampening)
    k = module.in_features
    full = module.weight.detach().double()
    if stats.bias:
        full = torch.cat([full, module.bias.detach().double()[:, None]], 1)
    target = dense_target(full, stats.H, stats.G, ridge=options.ridge) if stats.G is not None else full
    fixed = None
    if pattern == "block" and options.block_mask == "obs":  # blocks: fixed tiles, then reconstruction
        old_full = None if old is None else torch.cat([old, old.new_ones(old.shape[0], int(stats.bias))], 1)
        fixed = obs_block_mask(target, H, sparsity, block, old_full, protected=int(stats.bias))
    elif options.mask == "wanda" or pattern == "block":
        fixed = keep_from_scores(wanda_scores(target[:, :k], stats.col_sq), sparsity, pattern, block, old)
        if stats.bias:
            fixed = torch.cat([fixed, fixed.new_ones(fixed.shape[0], 1)], 1)
    new, keep = sparsegpt(target, H, sparsity, pattern, keep=fixed, protected=int(stats.bias), old_keep=old,
                          rowwise=options.mask == "obs-row")
    if options.refit:
        new = refit(new, target, H, keep)
    module.weight.copy_(new[:, :k].to(module.weight.dtype))
    if stats.bias:
        module.bias.copy_(new[:, k].to(module.bias.dtype))
    apply_mask(module, keep[:, :k])
