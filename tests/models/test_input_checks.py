"""Input checks that follow the model as it changes (resized vocabulary, pruned heads), id
dtypes, and a forward on the meta device."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import fastbert
from fastbert.ops import record_dispatch
from fastbert.prune.structured import keep_heads
from tests.helpers import build, family_configs, padded_batch, rel_err


@pytest.fixture
def classifier():
    return build(transformers.BertForSequenceClassification, family_configs()["bert"])  # vocabulary 211


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "albert", "electra"])
def test_grown_vocabulary_after_optimize(family):
    config = family_configs()[family]
    prefix = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert", "albert": "Albert", "electra": "Electra"}
    hf, fast = build(getattr(transformers, prefix[family] + "ForSequenceClassification"), config)
    hf.resize_token_embeddings(250, mean_resizing=False)
    fast.resize_token_embeddings(250, mean_resizing=False)
    with torch.no_grad():
        fast.get_input_embeddings().weight.copy_(hf.get_input_embeddings().weight)
    ids, mask = padded_batch(250, [9, 5, 7], config.pad_token_id or 0, seed=3, low=211)  # only new ids
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        out = fast(input_ids=ids, attention_mask=mask).logits
    assert rel_err(out, ref) < 1e-5


def test_shrunk_vocabulary_rejects_ids_past_the_new_end(classifier):
    _, fast = classifier
    fast.resize_token_embeddings(100)
    with record_dispatch() as log, pytest.raises(ValueError, match=r"input_ids contains 150.*\[0, 100\)"):
        fast(input_ids=torch.tensor([[5, 150]]))
    assert log == []


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.int8, torch.float32, torch.bool])
@pytest.mark.parametrize("name", ["input_ids", "token_type_ids", "position_ids"])
def test_id_dtypes_other_than_long_or_int_are_named(classifier, name, dtype):
    _, fast = classifier
    inputs = {"input_ids": torch.tensor([[5, 6, 7]])}
    inputs[name] = torch.tensor([[1, 0, 1]]).to(dtype)
    with record_dispatch() as log, pytest.raises(TypeError, match=f"{name} must be an integer tensor of dtype torch.long"):
        fast(**inputs)
    assert log == []


def test_int32_ids_match_hf(classifier):
    hf, fast = classifier
    ids, mask = padded_batch(211, [9, 5], 0, seed=1)
    with torch.no_grad():
        assert rel_err(fast(input_ids=ids.int(), attention_mask=mask).logits, hf(input_ids=ids, attention_mask=mask).logits) < 1e-5


@pytest.mark.parametrize("unpad", [True, "auto"])
def test_meta_device_forward_gives_shapes(classifier, unpad):
    _, fast = classifier
    meta = fastbert.optimize(copy.deepcopy(fast).to("meta"), unpad=unpad)
    ids, mask = padded_batch(211, [9, 5], 0, seed=1)
    out = meta(input_ids=ids.to("meta"), attention_mask=mask.to("meta"), output_hidden_states=True)
    assert out.logits.device.type == "meta" and out.logits.shape == (2, 2)
    assert out.hidden_states[-1].shape == (2, 9, 72)


def test_head_pruned_model_checks_4d_masks_up_front(classifier):
    hf, fast = classifier
    fastbert.prune(fast, 0.34, pattern="heads", scope="layer")  # 3 heads -> 2 in every layer
    assert fast.bert.encoder.head_counts() == (2,)
    ids = torch.randint(3, 211, (2, 6), generator=torch.Generator().manual_seed(0))
    with record_dispatch() as log, pytest.raises(ValueError, match=r"head dimension \(3\).*num_attention_heads=2"):
        fast(input_ids=ids, attention_mask=torch.ones(2, 3, 6, 6, dtype=torch.bool))
    assert log == []
    with torch.no_grad():
        per_head = fast(input_ids=ids, attention_mask=torch.ones(2, 2, 6, 6, dtype=torch.bool)).logits
        shared = fast(input_ids=ids, attention_mask=torch.ones(2, 1, 6, 6, dtype=torch.bool)).logits
    assert torch.equal(per_head, shared)


def test_layers_with_different_head_counts_take_only_shared_masks(classifier):
    _, fast = classifier
    keep_heads(fast.bert.encoder.layers[0], torch.tensor([True, False, True]))
    assert fast.bert.encoder.head_counts() == (2, 3)
    ids = torch.randint(3, 211, (2, 6), generator=torch.Generator().manual_seed(0))
    for heads in (2, 3):
        with record_dispatch() as log, pytest.raises(ValueError, match="different head counts"):
            fast(input_ids=ids, attention_mask=torch.ones(2, heads, 6, 6, dtype=torch.bool))
        assert log == []
    with torch.no_grad():
        out = fast(input_ids=ids, attention_mask=torch.ones(2, 1, 6, 6, dtype=torch.bool)).logits
    assert torch.isfinite(out).all()
