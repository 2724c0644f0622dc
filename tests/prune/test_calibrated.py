"""Calibrated pruning (Wanda, SparseGPT): inputs from real tokens through the pruned layers, the solvers, errors."""

from __future__ import annotations

import sys

import pytest
import torch
import transformers

from fastbert.prune import CalibratedOptions, GradualPruner, keep_mask, prune
from fastbert.prune.masks import nm_mask, row_mask
from fastbert.prune.solvers import dampened, dense_target, keep_from_scores, refit, sparsegpt, wanda_scores
from tests.helpers import build, padded_batch

CONFIG = transformers.BertConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                 intermediate_size=96, max_position_embeddings=40)
PLAIN_WANDA = CalibratedOptions.plain("wanda")


def _model():
    return build(transformers.BertModel, CONFIG)[1].eval()


def _batch(lengths, seed):
    ids, mask = padded_batch(120, lengths, 0, seed=seed)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _masks(model):
    return {n: keep_mask(m).clone() for n, m in model.named_modules() if keep_mask(m) is not None}


def _layer_inputs(model, batches, layer):
    """The real-token input of encoder layer ``layer``, from the model's own hidden states."""
    rows = []
    with torch.no_grad():
        for b in batches:
            hidden = model(**b, output_hidden_states=True).hidden_states[layer]
            rows.append(hidden[b["attention_mask"].bool()])
    return torch.cat(rows).double()


def test_padding_is_excluded():
    """A padded batch calibrates exactly like its rows one by one without padding."""
    batch = _batch([9, 3, 6], seed=1)
    rows = [{k: v[i : i + 1, : int(batch["attention_mask"][i].sum())] for k, v in batch.items()} for i in range(3)]
    a, b = _model(), _model()
    prune(a, 0.5, method="wanda", calibration=[batch], options=PLAIN_WANDA, scope="layer", progress=False)
    prune(b, 0.5, method="wanda", calibration=rows, options=PLAIN_WANDA, scope="layer", progress=False)
    ma, mb = _masks(a), _masks(b)
    assert ma.keys() == mb.keys() and len(ma) == 8
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_later_layers_calibrate_on_the_pruned_layers_outputs():
    """Plain Wanda's layer-1 masks are Wanda's rule on the inputs the *pruned* layer 0 produces."""
    batches = [_batch([9, 4], seed=2), _batch([7, 7, 2], seed=3)]
    model = _model()
    prune(model, 0.5, method="wanda", calibration=batches, options=PLAIN_WANDA, scope="layer", progress=False)
    expected = _model()
    prune(expected, 0.5, method="wanda", calibration=batches, options=PLAIN_WANDA, scope="layer", layers=[0],
          progress=False)
    x = _layer_inputs(expected, batches, 1)  # through the pruned layer 0
    w = expected.encoder.layers[1].qkv.weight.detach()
    want = row_mask(w.abs().double() * x.pow(2).sum(0).sqrt(), 0.5)
    assert torch.equal(keep_mask(model.encoder.layers[1].qkv), want)
    dense_x = _layer_inputs(_model(), batches, 1)
    assert not torch.equal(row_mask(w.abs().double() * dense_x.pow(2).sum(0).sqrt(), 0.5), want)  # it matters


def test_wanda_scores_and_masks():
    gen = torch.Generator().manual_seed(4)
    w, x = torch.randn(12, 16, generator=gen), torch.randn(50, 16, generator=gen)
    scores = wanda_scores(w, (x.double().T @ x.double()).diagonal())
    assert torch.allclose(scores, w.double().abs() * x.double().norm(dim=0), rtol=1e-12)
    keep = keep_from_scores(scores, 0.25, "unstructured")
    assert (keep.sum(1) == 12).all()  # per output row, as Wanda compares
    nm = keep_from_scores(scores, 0.5, "2:4")
    assert (nm.view(12, 4, 4).sum(-1) == 2).all()
    assert (nm_mask(scores, 1, 4).view(12, 4, 4).sum(-1) == 1).all()
    old = torch.rand(12, 16, generator=gen) > 0.3
    assert not (keep_from_scores(scores, 0.5, "unstructured", old_keep=old) & ~old).any()  # pruned stays pruned


def _problem(rows=24, cols=40, tokens=300, seed=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=gen, dtype=torch.float64) @ torch.randn(cols, cols, generator=gen,
                                                                                 dtype=torch.float64) / cols**0.5
    return torch.randn(rows, cols, generator=gen, dtype=torch.float64), x


def test_refit_is_the_least_squares_solution_on_the_kept_weights():
    w, x = _problem()
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(6)) > 0.5
    got = refit(w * keep, w, x.T @ x, keep, steps=200, dtype=torch.float64)
    for r in range(w.shape[0]):
        cols = keep[r].nonzero().flatten()
        sol = torch.linalg.lstsq(x[:, cols], x @ w[r]).solution
        assert torch.allclose(got[r, cols], sol, rtol=1e-6, atol=1e-8)
    assert not (got * ~keep).any()


def test_dense_target_is_the_ridge_regression_towards_the_prior():
    w, x = _problem(seed=7)
    x_dense = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    H, G = x.T @ x, x.T @ x_dense
    for ridge in (0.1, 3.0):
        got = dense_target(w, H, G, ridge=ridge)
        scale = (ridge * H.diagonal()).sqrt()
        a = torch.cat([x, torch.diag(scale)])
        b = torch.cat([x_dense @ w.T, scale[:, None] * w.T])
        assert torch.allclose(got, torch.linalg.lstsq(a, b).solution.T, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "1:4"])
def test_sparsegpt_hits_the_pattern_and_beats_masking(pattern):
    w, x = _problem(seed=9)
    H = dampened(x.T @ x, 0.01)
    sparsity = {"unstructured": 0.5, "2:4": 0.5, "1:4": 0.75}[pattern]
    new, keep = sparsegpt(w, H, sparsity, pattern, chunk=16)
    assert not (new * ~keep).any()
    if pattern == "unstructured":
        assert abs((~keep).double().mean() - 0.5) < 0.01
    else:
        n = int(pattern[0])
        assert (keep.view(w.shape[0], -1, 4).sum(-1) == n).all()

    def err(v):
        d = v - w
        return float(((d @ (x.T @ x)) * d).sum())

    assert err(new) < 0.8 * err(w * keep)  # the updates compensate the pruned weights
    same, all_kept = sparsegpt(w, H, 0.0, "unstructured")
    assert all_kept.all() and torch.allclose(same, w.float().double())


def test_sparsegpt_keeps_protected_columns_and_old_masks():
    w, x = _problem(seed=10)
    H = dampened(x.T @ x, 0.01)
    old = torch.rand(w.shape, generator=torch.Generator().manual_seed(11)) > 0.2
    new, keep = sparsegpt(w, H, 0.5, "unstructured", protected=1, old_keep=old[:, :-1])
    assert keep[:, -1].all() and not (keep[:, :-1] & ~old[:, :-1]).any()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "block"])
def test_methods_run_every_pattern_and_keep_the_output_close(method, pattern):
    batches = [_batch([9, 4, 12], seed=12), _batch([5, 11], seed=13)]
    model, dense = _model(), _model()
    report = prune(model, 0.5, pattern=pattern, method=method, calibration=batches, block_size=16, progress=False)
    assert abs(report.sparsity - 0.5) < 0.06
    probe = _batch([10, 6], seed=14)
    with torch.no_grad():
        out, ref = model(**probe).last_hidden_state, dense(**probe).last_hidden_state
    assert torch.isfinite(out).all()
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)[probe["attention_mask"].bool()]
    assert cos.mean() > 0.5


def test_structured_calibrated_shrinks_and_refits():
    batches = [_batch([9, 4, 12], seed=15), _batch([5, 11, 8], seed=16)]
    model = _model()
    prune(model, 0.5, pattern="neurons", method="wanda", calibration=batches, scope="layer", progress=False)
    assert [layer.intermediate.out_features for layer in model.encoder.layers] == [48, 48]
    assert model.config.intermediate_size == 48  # uniform: recorded as the config's size


def test_calibrated_methods_need_calibration_and_check_it():
    with pytest.raises(ValueError, match="calibration"):
        prune(_model(), 0.5, method="wanda")
    with pytest.raises(ValueError, match="empty"):
        prune(_model(), 0.5, method="sparsegpt", calibration=[])
    with pytest.raises(TypeError, match="input_ids"):
        prune(_model(), 0.5, method="wanda", calibration=[torch.ones(2, 3)])
    with pytest.raises(ValueError, match="calibrated methods"):
        prune(_model(), 0.5, calibration=[_batch([3], seed=0)])
    with pytest.raises(TypeError, match="CalibratedOptions"):
        prune(_model(), 0.5, method="wanda", calibration=[_batch([3], seed=0)], options={"mask": "obs"})
    with pytest.raises(ValueError, match="mask"):
        CalibratedOptions(mask="random")
    with pytest.raises(ValueError, match="calibration"):
        GradualPruner(_model(), 0.5, 0, 10, method="sparsegpt")
    bad = _batch([3], seed=0)
    bad["attention_mask"] = torch.zeros_like(bad["attention_mask"])
    with pytest.raises(ValueError, match="real token"):
        prune(_model(), 0.5, method="wanda", calibration=[bad])


def test_progress_lines_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails: plain lines on stderr
    prune(_model(), 0.5, method="wanda", calibration=[_batch([5, 3], seed=17)], layers=[1])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("wanda unstructured: 4/4 layers.1.output")
    prune(_model(), 0.5, method="wanda", calibration=[_batch([5, 3], seed=17)], progress=False)
    assert capsys.readouterr().err == ""


def test_gradual_pruner_with_calibrated_scores():
    batches = [_batch([9, 4, 12], seed=18)]
    model = _model()
    pruner = GradualPruner(model, 0.6, start_step=1, end_step=5, frequency=2, method="wanda", calibration=batches,
                           scope="layer")
    seen = [r.sparsity for r in (pruner.step() for _ in range(6)) if r is not None]
    assert seen == sorted(seen) and abs(seen[-1] - 0.6) < 0.02
