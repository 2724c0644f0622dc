"""Bad input to an optimized model: a clear ValueError/TypeError before any compute."""

from __future__ import annotations

import pytest
import torch
import transformers

import fastbert
from fastbert.ops import record_dispatch
from tests.helpers import build, family_configs


@pytest.fixture(scope="module")
def model():
    return build(transformers.BertForSequenceClassification, family_configs()["bert"])[1]


def _ids(b=2, s=6, vocab=211):
    return torch.randint(3, vocab, (b, s))


CASES = [
    ("sequence too long", dict(input_ids=_ids(1, 81)), ValueError, "position table"),
    ("id out of vocabulary", dict(input_ids=torch.tensor([[5, 211]])), ValueError, "vocabulary"),
    ("negative id", dict(input_ids=torch.tensor([[5, -1]])), ValueError, "input_ids"),
    ("float ids", dict(input_ids=_ids().float()), TypeError, "integer"),
    ("1D ids", dict(input_ids=torch.tensor([1, 2, 3])), ValueError, "2D"),
    ("empty batch", dict(input_ids=torch.zeros(0, 6, dtype=torch.long)), ValueError, "empty"),
    ("empty sequence", dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), ValueError, "empty"),
    ("mask shape", dict(input_ids=_ids(), attention_mask=torch.ones(2, 5)), ValueError, "attention_mask"),
    ("mask 4D shape", dict(input_ids=_ids(), attention_mask=torch.ones(2, 1, 6, 5)), ValueError, "attention_mask"),
    ("mask heads", dict(input_ids=_ids(), attention_mask=torch.ones(2, 2, 6, 6, dtype=torch.bool)), ValueError, "head"),
    ("token type range", dict(input_ids=_ids(), token_type_ids=torch.full((2, 6), 2)), ValueError, "token_type_ids"),
    ("token type shape", dict(input_ids=_ids(), token_type_ids=torch.zeros(3, 6, dtype=torch.long)), ValueError, "token_type_ids"),
    ("position range", dict(input_ids=_ids(), position_ids=torch.full((2, 6), 80)), ValueError, "position_ids"),
    ("both ids and embeds", dict(input_ids=_ids(), inputs_embeds=torch.randn(2, 6, 72)), ValueError, "exactly one"),
    ("neither", dict(attention_mask=torch.ones(2, 6)), ValueError, "exactly one"),
    ("embeds width", dict(inputs_embeds=torch.randn(2, 6, 71)), ValueError, "inputs_embeds"),
    ("attentions", dict(input_ids=_ids(), output_attentions=True), ValueError, "attn_implementation='eager'"),
]


@pytest.mark.parametrize("name,kwargs,exc,match", CASES, ids=[c[0] for c in CASES])
def test_rejected_before_compute(model, name, kwargs, exc, match):
    with record_dispatch() as log, pytest.raises(exc, match=match):
        model(**kwargs)
    assert log == [], "an op ran before the input was rejected"


def test_all_zero_mask_row_is_finite(model):
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0] = 0
    with torch.no_grad():
        out = model(input_ids=_ids(), attention_mask=mask)
    assert torch.isfinite(out.logits).all()


def test_unsupported_family_and_object():
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(TypeError, match="gpt2"):
        fastbert.optimize(gpt2)
    with pytest.raises(TypeError, match="Hugging Face"):
        fastbert.optimize(torch.nn.Linear(2, 2))


def test_unsupported_options():
    decoder = transformers.BertConfig(**{**family_configs()["bert"].to_dict(), "is_decoder": True})
    with pytest.raises(ValueError, match="decoder"):
        fastbert.optimize(transformers.BertModel(decoder))
    act = transformers.BertConfig(**{**family_configs()["bert"].to_dict(), "hidden_act": "mish"})
    with pytest.raises(ValueError, match="activation"):
        fastbert.optimize(transformers.BertModel(act))
