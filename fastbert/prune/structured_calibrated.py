"""Heads and neurons chosen and compensated on calibration data.

Scores: a head or an FFN neuron is worth the energy it sends into the projection after it,
``sum_j ||W_:j||^2 * ||x_j||^2`` over its input columns ``j`` of ``attention_output``
(heads) or ``output`` (neurons), measured on the unpruned model. After a layer loses its
weakest units, that projection (and its bias) is refit by least squares so that, on the
calibration tokens, it reproduces the dense layer's output from what is left
(:func:`fastbert.prune.solvers.dense_target`); the next layer is calibrated on the pruned
layer's outputs.
"""

from __future__ import annotations

import copy

import torch

from fastbert.prune.calibration import InputStats, collect, embed_calibration, run_layer
from fastbert.prune.magnitude import choose_units
from fastbert.prune.progress import Progress
from fastbert.prune.solvers import dense_target
from fastbert.prune.structured import keep_heads, keep_neurons
from fastbert.prune.targets import encoder_of


def _output_side(pattern: str) -> str:
    return "attention_output" if pattern == "heads" else "output"


def _unit_scores(layer, attr: str, stats: InputStats, pattern: str) -> torch.Tensor:
    energy = getattr(layer, attr).weight.detach().double().pow(2).sum(0) * stats.col_sq
    return energy.view(layer.num_attention_heads, -1).sum(1) if pattern == "heads" else energy


@torch.no_grad()
def prune_structured_calibrated(model, chosen, sparsity, pattern, scope, batches, options, progress: bool) -> None:
    """Remove heads/neurons of the chosen layers by calibrated scores and refit what follows them."""
    encoder = encoder_of(model)
    attr = _output_side(pattern)
    layer_ids = sorted({t.layer for t in chosen})
    stream = embed_calibration(model, batches)
    scores, probe = {}, stream
    for index in encoder.config.schedule:  # scores of the unpruned model
        layer = encoder.layers[index]
        if index in layer_ids and index not in scores:
            stats = {attr: InputStats(getattr(layer, attr).in_features, False, False, layer.qkv.weight.device)}
            collect(layer, [attr], probe, stats)
            scores[index] = _unit_scores(layer, attr, stats[attr], pattern)
        probe = run_layer(layer, probe)
    keeps = choose_units(scores, sparsity, scope)
    bar = Progress(len(layer_ids), f"calibrated {pattern}", progress)
    dense_stream, done = stream, set()
    try:
        for index in encoder.config.schedule:
            layer = encoder.layers[index]
            if index in keeps and index not in done:
                dense_layer = copy.deepcopy(layer)
                (keep_heads if pattern == "heads" else keep_neurons)(layer, keeps[index].to(layer.qkv.weight.device))
                _refit_output(layer, dense_layer, attr, stream, dense_stream, options)
                done.add(index)
                bar.step(f"layers.{index}")
                dense_stream = run_layer(dense_layer, dense_stream)
            else:
                dense_stream = run_layer(layer, dense_stream)
            stream = run_layer(layer, stream)
    finally:
        bar.close()


def _refit_output(layer, dense_layer, attr: str, stream, dense_stream, options) -> None:
    linear, dense = getattr(layer, attr), getattr(dense_layer, attr)
    stats = InputStats(linear.in_features, True, True, linear.weight.device, dense_cols=dense.in_features)
    collect(layer, [attr], stream, {attr: stats}, dense_layer, dense_stream)
    full = torch.cat([dense.weight.detach().double(), dense.bias.detach().double()[:, None]], 1)
    kept = torch.cat([linear.weight.detach().double(), linear.bias.detach().double()[:, None]], 1)
    new = dense_target(full, stats.H, stats.G, prior=kept, ridge=options.ridge)
    linear.weight.copy_(new[:, :-1].to(linear.weight.dtype))
    linear.bias.copy_(new[:, -1].to(linear.bias.dtype))
