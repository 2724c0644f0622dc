"""Pruned models copied (pickle, torch.save/load, deepcopy, a fresh process) keep their masks through training."""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

import fastbert
from fastbert.prune import keep_mask
from tests.helpers import build, padded_batch, rel_err

CONFIG = transformers.BertConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                 intermediate_size=96, max_position_embeddings=40)
ROOT = Path(__file__).resolve().parents[2]
PATTERNS = {"unstructured": {}, "2:4": {}, "block": dict(block_size=16)}


def _pruned(pattern):
    model = build(transformers.BertModel, CONFIG)[1]
    fastbert.prune(model, 0.5, pattern=pattern, scope="layer", progress=False, **PATTERNS[pattern])
    return model


def _torch_round_trip(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = {
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save": _torch_round_trip,
    "deepcopy": copy.deepcopy,
}


def _masked(model):
    return {n: m for n, m in model.named_modules() if keep_mask(m) is not None}


def _train_step(model, seed):
    ids, mask = padded_batch(120, [9, 5, 7], 0, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    model(input_ids=ids, attention_mask=mask).last_hidden_state.square().mean().backward()
    grads = {n: m.weight.grad.clone() for n, m in _masked(model).items()}
    optimizer.step()
    model.eval()
    return grads


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_a_copy_keeps_its_masks_through_training(pattern, how):
    original = _pruned(pattern)
    keeps = {n: keep_mask(m).clone() for n, m in _masked(original).items()}
    assert len(keeps) == 8
    copied = COPIES[how](original)
    ids, mask = padded_batch(120, [9, 4, 7], 0, seed=3)
    with torch.no_grad():
        want = original.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        got = copied.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got, want)

    grads = _train_step(copied, seed=4)
    assert set(_masked(copied)) == set(keeps)
    for name, module in _masked(copied).items():
        pruned = ~keeps[name]
        assert torch.equal(keep_mask(module), keeps[name]), name
        assert not grads[name][pruned].any() and grads[name][~pruned].any(), name  # the gradient is masked
        assert not module.weight[pruned].any(), name  # still zero after the step
        assert module.weight is not dict(original.named_modules())[name].weight
    with torch.no_grad():  # the copy trained on its own: the original is untouched
        assert torch.equal(original(input_ids=ids, attention_mask=mask).last_hidden_state, want)
        assert rel_err(copied(input_ids=ids, attention_mask=mask).last_hidden_state, want) > 1e-4


def test_the_original_keeps_its_masks_after_being_copied():
    original = _pruned("unstructured")
    keeps = {n: keep_mask(m).clone() for n, m in _masked(original).items()}
    copies = [COPIES[how](original) for how in COPIES]
    _train_step(original, seed=5)
    for name, module in _masked(original).items():
        assert not module.weight[~keeps[name]].any(), name
    del copies


def test_a_fresh_process_loads_and_trains_a_pruned_model(tmp_path):
    """torch.save here, torch.load in a new interpreter: same outputs, masks still applied there."""
    saved = {}
    for pattern in PATTERNS:
        model = _pruned(pattern).eval()
        ids, mask = padded_batch(120, [9, 4, 7], 0, seed=3)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.save({"model": model, "ids": ids, "mask": mask, "out": out}, tmp_path / f"{pattern}.pt")
        saved[pattern] = str(tmp_path / f"{pattern}.pt")
    script = textwrap.dedent(f"""
        import sys
        import torch
        assert not any(name.startswith("fastbert") for name in sys.modules)
        for path in {list(saved.values())!r}:
            d = torch.load(path, weights_only=False)  # imports fastbert itself
            from fastbert.prune import keep_mask
            model = d["model"].eval()
            with torch.no_grad():
                assert torch.equal(model(input_ids=d["ids"], attention_mask=d["mask"]).last_hidden_state, d["out"])
            masked = [m for m in model.modules() if keep_mask(m) is not None]
            assert len(masked) == 8
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
            model.train()
            model(input_ids=d["ids"], attention_mask=d["mask"]).last_hidden_state.square().mean().backward()
            assert all(not m.weight.grad[~keep_mask(m)].any() for m in masked)
            optimizer.step()
            assert all(not m.weight[~keep_mask(m)].any() for m in masked)
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.parametrize("how", ["moved", "deepcopy"])
def test_masks_follow_a_model_moved_to_the_gpu(how):
    """Pruned on the CPU, trained on CUDA (the model itself, or a deep copy of it there)."""
    original = _pruned("unstructured")
    keeps = {n: keep_mask(m).cuda() for n, m in _masked(original).items()}
    model = original.cuda() if how == "moved" else copy.deepcopy(original.cuda())
    ids, mask = padded_batch(120, [9, 5, 7], 0, seed=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    model(input_ids=ids.cuda(), attention_mask=mask.cuda()).last_hidden_state.square().mean().backward()
    for name, module in _masked(model).items():
        assert not module.weight.grad[~keeps[name]].any(), name
    optimizer.step()
    for name, module in _masked(model).items():
        assert module.weight.is_cuda and not module.weight[~keeps[name]].any(), name
