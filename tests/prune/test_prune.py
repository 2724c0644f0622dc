"""fastbert.prune: patterns, methods, masks kept through training, the gradual schedule."""

from __future__ import annotations

import pytest
import torch
import transformers

import fastbert
from fastbert.prune import GradualPruner, cubic_sparsity, prune
from fastbert.prune.masks import block_mask, two_four_mask, unstructured_mask
from tests.helpers import build, family_configs, padded_batch

CONFIG = transformers.BertConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                 intermediate_size=96, max_position_embeddings=40)


def _model(cls=transformers.BertModel, config=CONFIG):
    return build(cls, config)[1]


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_hits_the_target(sparsity, scope):
    model = _model()
    report = prune(model, sparsity, scope=scope)
    assert abs(report.sparsity - sparsity) < 0.01
    if scope == "layer":
        assert all(abs(m.sparsity - sparsity) < 0.01 for m in report.matrices)
    weights = [m.weight for m in (model.encoder.layers[0].qkv, model.encoder.layers[1].output)]
    assert all(torch.count_nonzero(w) < w.numel() for w in weights)


def test_magnitude_removes_the_smallest():
    w = torch.randn(32, 48)
    keep = unstructured_mask(w.abs(), 0.25)
    assert w.abs()[~keep].max() <= w.abs()[keep].min()


@pytest.mark.parametrize("block", [16, 32])
def test_block_pattern_zeros_whole_tiles(block):
    model = _model()
    prune(model, 0.5, pattern="block", block_size=block, scope="layer")
    w = model.encoder.layers[0].intermediate.weight.detach()  # 96 x 64
    tiles = w.view(96 // block, block, 64 // block, block).abs().sum(dim=(1, 3))
    assert ((tiles == 0).float().mean() - 0.5).abs() < 0.13
    assert ((tiles == 0) | (w.view(96 // block, block, 64 // block, block) != 0).all(dim=(1, 3))).all()


def test_block_mask_odd_shapes_cover_everything():
    keep = block_mask(torch.rand(50, 37), 0.5, 16)
    assert keep.shape == (50, 37)


def test_two_four():
    keep = two_four_mask(torch.rand(8, 16))
    assert (keep.view(8, 4, 4).sum(-1) == 2).all()
    model = _model()
    report = prune(model, 0.5, pattern="2:4")
    assert abs(report.sparsity - 0.5) < 1e-6
    with pytest.raises(ValueError, match="2:4"):
        prune(_model(), 0.3, pattern="2:4")


@pytest.mark.parametrize("pattern", ["heads", "neurons"])
def test_structured_leaves_smaller_dense_matrices_and_runs(pattern):
    model = _model()
    ids, mask = padded_batch(120, [9, 4], 0, seed=1)
    report = prune(model, 0.5, pattern=pattern, scope="layer")
    layer = model.encoder.layers[0]
    if pattern == "heads":
        assert layer.num_attention_heads == 2 and layer.qkv.weight.shape == (3 * 2 * 16, 64)
        assert layer.attention_output.weight.shape == (64, 32)
    else:
        assert layer.intermediate.weight.shape == (48, 64) and layer.output.weight.shape == (64, 48)
    assert report.ideal_flop_ratio > 1.2
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(out).all()


def test_removing_a_head_equals_masking_it():
    """Structured head removal gives the same output as zeroing that head's weights."""
    model = _model()
    model.eval()
    ids, mask = padded_batch(120, [9, 4], 0, seed=2)
    layer = model.encoder.layers[0]
    scores = fastbert.prune.head_scores(layer)
    weakest = int(scores.argmin())
    with torch.no_grad():
        zeroed = build(transformers.BertModel, CONFIG)[1].eval()
        zl = zeroed.encoder.layers[0]
        zl.qkv.weight.view(3, 4, 16, 64)[:, weakest] = 0
        zl.qkv.bias.view(3, 4, 16)[:, weakest] = 0
        zl.attention_output.weight.view(64, 4, 16)[:, weakest] = 0
        ref = zeroed(input_ids=ids, attention_mask=mask).last_hidden_state
    # zeroing q and k of a head leaves uniform attention over v=0 -> contributes nothing
    prune(model, 0.25, pattern="heads", scope="layer", layers=[0])
    assert model.encoder.layers[0].num_attention_heads == 3
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    assert torch.allclose(out[keep], ref[keep], atol=1e-5)


def test_masks_survive_fine_tuning():
    model = _model(transformers.BertForSequenceClassification)
    prune(model, 0.6, pattern="block", block_size=16)
    w = model.bert.encoder.layers[1].intermediate.weight
    zeros = w.detach() == 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids, mask = padded_batch(120, [9, 4, 7], 0, seed=3)
    for _ in range(3):
        model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert (w.detach()[zeros] == 0).all()
    assert not torch.equal(w.detach()[~zeros], w.detach()[~zeros] * 0)


def test_cubic_schedule_and_gradual_pruner():
    assert cubic_sparsity(0, 0.8, 10, 110) == 0.0 and cubic_sparsity(200, 0.8, 10, 110) == 0.8
    mid = cubic_sparsity(60, 0.8, 10, 110)
    assert 0.8 * (1 - 0.5**3) == pytest.approx(mid)
    model = _model()
    pruner = GradualPruner(model, 0.8, start_step=2, end_step=12, frequency=2)
    seen = []
    for _ in range(15):
        report = pruner.step()
        if report is not None:
            seen.append(report.sparsity)
    assert seen == sorted(seen) and abs(seen[-1] - 0.8) < 0.01 and len(seen) >= 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="sparsity"):
        prune(_model(), 1.0)
    with pytest.raises(ValueError, match="pattern"):
        prune(_model(), 0.5, pattern="diagonal")
    with pytest.raises(ValueError, match="block size"):
        prune(_model(), 0.5, pattern="block", block_size=24)
    with pytest.raises(ValueError, match="layers"):
        prune(_model(), 0.5, layers=[5])
    with pytest.raises(TypeError, match="optimize"):
        prune(transformers.BertModel(family_configs()["bert"]), 0.5)


def test_the_report_flags_a_matrix_left_with_no_weight():
    from fastbert.prune.report import MatrixReport, PruneReport

    report = PruneReport("block", "magnitude (global)", 0.5, [MatrixReport("layers.0.output", "ffn.out", (4, 8), 32, 0),
                                                            MatrixReport("layers.0.qkv", "attention.qkv", (12, 4), 48, 40)])
    assert report.pruned_whole == ["layers.0.output"]
    assert report.matrix_sparsity_range == (pytest.approx(1 - 40 / 48), 1.0)
    text = report.format()
    assert "per matrix: 16.7% to 100.0% removed" in text
    assert "WARNING: 1 matrix(es) lost every weight: layers.0.output" in text
    assert report.to_dict()["pruned_whole"] == ["layers.0.output"]
