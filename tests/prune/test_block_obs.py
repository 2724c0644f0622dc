"""Greedy OBS choice of tiles: exact costs, the optimal update, the mask it returns."""

from __future__ import annotations

import itertools

import pytest
import torch

from fastbert.prune import CalibratedOptions
from fastbert.prune.block_obs import _TileRow, _tile_spans, obs_block_mask


def _problem(rows, cols, tokens=400, seed=0):
    """Weights and correlated inputs (so a tile's inputs matter together)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen, dtype=torch.float64) / cols**0.5
    x = torch.randn(tokens, cols, generator=gen, dtype=torch.float64) @ mix
    return torch.randn(rows, cols, generator=gen, dtype=torch.float64), x


def _refit_error(w, x, keep):
    """``||(W_hat - W) X^T||^2`` with ``W_hat`` the least-squares fit of ``X W^T`` on each row's kept inputs."""
    total = 0.0
    for r in range(w.shape[0]):
        cols = keep[r].nonzero().flatten()
        target = x @ w[r]
        fit = x[:, cols] @ torch.linalg.lstsq(x[:, cols], target).solution if len(cols) else 0 * target
        total += float((fit - target).pow(2).sum())
    return total


def test_removal_cost_and_update_are_the_least_squares_optimum():
    w, x = _problem(rows=4, cols=12, seed=1)
    H = x.T @ x
    row = _TileRow(w, H, torch.linalg.inv(H), _tile_spans(12, 4), [False] * 3)
    removed = torch.zeros(12, dtype=torch.bool)
    for tile in (1, 2):
        predicted = row.costs()[tile] if not removed.any() else None
        before = _refit_error(w, x, (~removed).expand(4, 12))
        row.remove(tile)
        removed[4 * tile : 4 * tile + 4] = True
        after = _refit_error(w, x, (~removed).expand(4, 12))
        if predicted is not None:
            assert float(predicted) == pytest.approx(after - before, rel=1e-8)
        kept = (~removed).nonzero().flatten()
        best = torch.linalg.lstsq(x[:, kept], x @ w.T).solution.T
        assert torch.allclose(row.W[:, kept], best, rtol=1e-7, atol=1e-9)
        assert not row.W[:, removed].any()
    assert torch.isinf(row.costs()[[1, 2]]).all() and torch.isfinite(row.costs()[[0]]).all()


def test_starting_with_tiles_removed_equals_removing_them():
    w, x = _problem(rows=4, cols=16, seed=5)
    H = x.T @ x
    spans = _tile_spans(16, 4)
    stepwise = _TileRow(w, H, torch.linalg.inv(H), spans, [False] * 4)
    stepwise.remove(3)
    stepwise.remove(0)
    at_once = _TileRow(w, H, torch.linalg.inv(H), spans, [True, False, False, True])
    assert torch.allclose(at_once.W, stepwise.W, rtol=1e-8, atol=1e-10)
    assert torch.allclose(at_once.Hinv, stepwise.Hinv, rtol=1e-8, atol=1e-10)
    assert torch.allclose(at_once.costs(), stepwise.costs(), rtol=1e-8)


def test_one_tile_removed_is_the_cheapest_of_all():
    w, x = _problem(rows=16, cols=16, seed=2)
    keep = obs_block_mask(w, x.T @ x, 1 / 16, 4)  # 16 tiles of 4 x 4, one goes
    assert (~keep).sum() == 16
    errors = {}
    for r, c in itertools.product(range(4), range(4)):
        trial = torch.ones(16, 16, dtype=torch.bool)
        trial[4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = False
        errors[(r, c)] = _refit_error(w, x, trial)
    assert _refit_error(w, x, keep) == pytest.approx(min(errors.values()), rel=1e-9)


def test_greedy_tiles_cost_less_than_tiles_ranked_by_wanda_scores():
    w, x = _problem(rows=32, cols=32, seed=3)
    H = x.T @ x
    keep = obs_block_mask(w, H, 0.5, 8)
    scores = (w.abs() * H.diagonal().sqrt()).view(4, 8, 4, 8).sum((1, 3))
    wanda = torch.ones(4, 4, dtype=torch.bool)
    wanda.view(-1)[scores.flatten().argsort()[:8]] = False
    wanda = wanda.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert (~keep).sum() == (~wanda).sum() == 512
    assert _refit_error(w, x, keep) < _refit_error(w, x, wanda)


def test_protected_columns_old_masks_and_partial_tiles():
    w, x = _problem(rows=10, cols=15, seed=4)  # tiles of 4: partial at the edges; last column protected
    H = x.T @ x + 1e-3 * torch.eye(15, dtype=torch.float64)
    old = torch.ones(10, 15, dtype=torch.bool)
    old[0:4, 4:8] = False  # a whole tile already pruned
    old[5, 0] = False  # a single weight already pruned
    keep = obs_block_mask(w, H, 0.5, 4, old_keep=old, protected=1)
    assert keep[:, -1].all()
    assert not (keep & ~old).any()
    tiles = [(r, c) for r in _tile_spans(10, 4) for c in _tile_spans(14, 4)]
    gone = [t for t in tiles if not keep[t].any()]
    assert len(gone) == round(0.5 * len(tiles)) and (slice(0, 4), slice(4, 8)) in gone
    assert all(keep[t].all() or not keep[t].any() for t in tiles if t != (slice(4, 8), slice(0, 4)))


def test_nothing_left_to_remove_keeps_the_old_mask():
    w, x = _problem(rows=8, cols=8, seed=7)
    old = torch.ones(8, 8, dtype=torch.bool)
    old[:4, 4:] = False
    old[6, 1] = False
    assert obs_block_mask(w, x.T @ x, 0.0, 4).all()
    assert torch.equal(obs_block_mask(w, x.T @ x, 0.25, 4, old_keep=old), old)  # one of four tiles: already gone


def test_block_mask_option_is_checked():
    assert CalibratedOptions().block_mask == "obs" and CalibratedOptions.plain("sparsegpt").block_mask == "wanda"
    with pytest.raises(ValueError, match="block_mask"):
        CalibratedOptions(block_mask="magnitude")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_same_tiles_on_the_gpu():
    w, x = _problem(rows=64, cols=96, seed=6)
    H = x.T @ x + 1e-3 * torch.eye(96, dtype=torch.float64)
    old = torch.ones(64, 96, dtype=torch.bool)
    old[:16, 16:32] = False
    on_cpu = obs_block_mask(w, H, 0.5, 16, old_keep=old)
    on_gpu = obs_block_mask(w.cuda(), H.cuda(), 0.5, 16, old_keep=old.cuda())
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), on_cpu)
