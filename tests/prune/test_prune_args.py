"""Pruning arguments are checked before any work: prune() and GradualPruner(...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from fastbert.prune import GradualPruner, prune
from tests.helpers import build, family_configs

CONFIG = transformers.BertConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                 intermediate_size=96, max_position_embeddings=40)


def _model():
    return build(transformers.BertModel, CONFIG)[1]


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


PRUNE_CASES = [
    ("no layers", dict(sparsity=0.5, layers=[]), ValueError, "at least one layer"),
    ("layer out of range", dict(sparsity=0.5, layers=[2]), ValueError, r"\[0, 2\)"),
    ("negative layer", dict(sparsity=0.5, layers=[-1]), ValueError, "layers"),
    ("float layer", dict(sparsity=0.5, layers=[0.5]), TypeError, "integer"),
    ("layers not a list", dict(sparsity=0.5, layers=1), TypeError, "list"),
    ("sparsity 1", dict(sparsity=1.0), ValueError, "sparsity"),
    ("negative sparsity", dict(sparsity=-0.1), ValueError, "sparsity"),
    ("bool sparsity", dict(sparsity=True), TypeError, "sparsity"),
    ("string sparsity", dict(sparsity="0.5"), TypeError, "sparsity"),
    ("bad scope", dict(sparsity=0.5, scope="row"), ValueError, "scope"),
    ("repeated layer", dict(sparsity=0.5, layers=[0, 0]), ValueError, r"\[0\] more than once"),
    ("repeated layers", dict(sparsity=0.5, layers=[1, 0, 1]), ValueError, r"\[1\] more than once"),
]


@pytest.mark.parametrize("name,kwargs,exc,match", PRUNE_CASES, ids=[c[0] for c in PRUNE_CASES])
def test_prune_rejects_before_touching_weights(name, kwargs, exc, match):
    model = _model()
    before = _weights(model)
    with pytest.raises(exc, match=match):
        prune(model, **kwargs)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("sparsity", [np.float32(0.5), np.float64(0.5), np.float16(0.5)])
def test_numpy_sparsity_is_the_same_as_a_float(sparsity):
    a, b = _model(), _model()
    prune(a, 0.5, layers=[1])
    prune(b, sparsity, layers=np.array([1]))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


GRADUAL_CASES = [
    ("final 1.0", dict(final_sparsity=1.0), ValueError, "final_sparsity"),
    ("final 1.5", dict(final_sparsity=1.5), ValueError, "final_sparsity"),
    ("final negative", dict(final_sparsity=-0.2), ValueError, "final_sparsity"),
    ("pattern unknown", dict(pattern="diagonal"), ValueError, "pattern"),
    ("pattern heads", dict(pattern="heads"), ValueError, "pattern"),
    ("scope unknown", dict(scope="row"), ValueError, "scope"),
    ("layers out of range", dict(layers=[5]), ValueError, "layers"),
    ("layers empty", dict(layers=[]), ValueError, "layers"),
    ("block size", dict(pattern="block", block_size=24), ValueError, "block size"),
    ("frequency 0", dict(frequency=0), ValueError, "frequency"),
    ("window reversed", dict(start_step=10, end_step=5), ValueError, "end"),
    ("negative start", dict(start_step=-1), ValueError, "start_step"),
    ("float steps", dict(end_step=10.5), ValueError, "end_step"),
]


@pytest.mark.parametrize("name,kwargs,exc,match", GRADUAL_CASES, ids=[c[0] for c in GRADUAL_CASES])
def test_gradual_pruner_rejects_at_construction(name, kwargs, exc, match):
    args = dict(final_sparsity=0.5, start_step=0, end_step=10) | kwargs
    with pytest.raises(exc, match=match):
        GradualPruner(_model(), **args)


def test_gradual_pruner_needs_an_optimized_model():
    with pytest.raises(TypeError, match="optimize"):
        GradualPruner(transformers.BertModel(CONFIG), 0.5, 0, 10)


@pytest.mark.parametrize("layers,exc", [([3], ValueError), ([0, 0], ValueError), ([], ValueError), ([0.5], TypeError)])
def test_albert_layer_errors_say_the_indices_are_of_shared_weight_sets(layers, exc):
    model = build(transformers.AlbertModel, family_configs()["albert"])[1]  # 3 layers applying 1 shared set
    before = _weights(model)
    with pytest.raises(exc, match="shared weight set"):
        prune(model, 0.5, layers=layers)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_layer_error_of_an_unshared_encoder_does_not_mention_shared_sets():
    with pytest.raises(ValueError, match=r"layer indices in \[0, 2\)") as info:
        prune(_model(), 0.5, layers=[5])
    assert "shared" not in str(info.value)


def _with_one_small_matrix():
    """A model whose layer 0 ffn.out weights are 100x smaller than the rest: one global ranking takes all of them."""
    model = _model()
    with torch.no_grad():
        model.encoder.layers[0].output.weight.mul_(0.01)
    return model


@pytest.mark.parametrize("pattern", ["unstructured", "block"])
def test_global_scope_refuses_to_remove_a_matrix_whole(pattern):
    model = _with_one_small_matrix()
    before = _weights(model)
    with pytest.raises(ValueError, match=r"every weight of 1 matrix\(es\) \(layers\.0\.output\).*scope='layer'"):
        prune(model, 0.5, pattern=pattern, scope="global", block_size=16)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_default_scope_prunes_each_matrix_to_the_target():
    report = prune(_with_one_small_matrix(), 0.5, pattern="block", block_size=16)
    assert report.method == "magnitude (layer)" and not report.pruned_whole
    assert all(abs(m.sparsity - 0.5) < 0.1 for m in report.matrices), [m.sparsity for m in report.matrices]
    low, high = report.matrix_sparsity_range
    assert f"per matrix: {low:.1%} to {high:.1%} removed" in report.format()
