"""Optimized models pickle, ``torch.save``/``torch.load`` (weights_only=False) and deep-copy, with
identical outputs: in this process and in a fresh one, where no model was optimized yet (as in
a spawned worker)."""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from fastbert.models.base import is_optimized
from fastbert.models.heads import FastHeadTransformMixin
from tests.helpers import build, family_configs, pad_id, padded_batch

ROOT = Path(__file__).resolve().parents[2]
CASES = [("bert", "BertForMaskedLM"), ("bert", "BertForSequenceClassification"), ("roberta", "RobertaModel"),
         ("distilbert", "DistilBertForQuestionAnswering"), ("albert", "AlbertForTokenClassification"),
         ("electra", "ElectraForMaskedLM")]


def _model_and_batch(family: str, cls_name: str):
    config = family_configs()[family]
    _, fast = build(getattr(transformers, cls_name), config, seed=3)
    ids, mask = padded_batch(config.vocab_size, [11, 4, 1, 7], pad_id(config), seed=5)
    return fast, {"input_ids": ids, "attention_mask": mask}


def _out(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch)[0]


def _torch_save_load(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


ROUND_TRIPS = {
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save": _torch_save_load,
    "deepcopy": copy.deepcopy,
}


@pytest.mark.parametrize("how", list(ROUND_TRIPS))
@pytest.mark.parametrize("family,cls_name", CASES, ids=[c for _, c in CASES])
def test_round_trip_gives_identical_outputs_and_keeps_hf_names(family, cls_name, how):
    fast, batch = _model_and_batch(family, cls_name)
    loaded = ROUND_TRIPS[how](fast)
    assert type(loaded) is type(fast) and is_optimized(loaded.base_model)
    assert type(loaded.base_model) is type(fast.base_model)
    assert torch.equal(_out(loaded, batch), _out(fast, batch))
    # the state-dict hooks came along: HF names out, HF names in
    state = loaded.state_dict()
    assert list(state) == list(fast.state_dict())
    assert not any(".layers." in k for k in state)
    loaded.load_state_dict(state)
    # the copy owns its weights
    next(loaded.parameters()).data.add_(1.0)
    assert not torch.equal(next(loaded.parameters()), next(fast.parameters()))


def test_mlm_head_transform_stays_converted_through_a_round_trip():
    fast, _ = _model_and_batch("bert", "BertForMaskedLM")
    assert isinstance(fast.cls.predictions.transform, FastHeadTransformMixin)
    for how, round_trip in ROUND_TRIPS.items():
        assert isinstance(round_trip(fast).cls.predictions.transform, FastHeadTransformMixin), how


def test_loads_in_a_fresh_process(tmp_path):
    """A process that imports nothing of fastbert first (a spawned worker, a later session)
    loads the pickled model, gets the fast classes back and the same outputs."""
    fast, batch = _model_and_batch("bert", "BertForMaskedLM")
    torch.save(fast, tmp_path / "model.pt")
    pickle.dump(fast, (tmp_path / "model.pkl").open("wb"))
    torch.save({"batch": batch, "out": _out(fast, batch)}, tmp_path / "expected.pt")
    script = f"""
import pickle, sys, torch
assert not any(name.startswith("fastbert") for name in sys.modules)
expected = torch.load({str(tmp_path / 'expected.pt')!r})
for model in (torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False),
              pickle.load(open({str(tmp_path / 'model.pkl')!r}, "rb"))):
    from fastbert.models.base import is_optimized
    from fastbert.models.heads import FastHeadTransformMixin
    assert is_optimized(model.bert) and type(model.bert).__name__ == "BertModel"
    assert isinstance(model.cls.predictions.transform, FastHeadTransformMixin)
    with torch.no_grad():
        assert torch.equal(model(**expected["batch"]).logits, expected["out"])
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FASTBERT_BACKEND": "torch"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_pickled_model_saves_a_checkpoint_plain_transformers_loads(tmp_path):
    fast, batch = _model_and_batch("bert", "BertForSequenceClassification")
    loaded = pickle.loads(pickle.dumps(fast))
    loaded.save_pretrained(tmp_path)
    plain = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert not is_optimized(plain.bert)
    torch.testing.assert_close(_out(plain, batch), _out(fast, batch), rtol=1e-5, atol=1e-5)
