"""FastBertEncoder / FastBertLayer / FastBertEmbeddings as plain nn.Modules."""

from __future__ import annotations

import pytest
import torch

from fastbert import FastBertConfig, FastBertEmbeddings, FastBertEncoder
from fastbert.modules.masks import normalize_attention_mask
from tests.helpers import rel_err


def _config(**kw):
    base = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=61,
                max_position_embeddings=40)
    base.update(kw)
    return FastBertConfig(**base)


def test_encoder_layer_by_layer_matches_torch_transformer_math():
    cfg = _config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    enc = FastBertEncoder(cfg).double().eval()
    x = torch.randn(3, 9, 48, dtype=torch.float64)
    mask = torch.ones(3, 9)
    mask[1, 5:] = 0
    h = x
    for layer in enc.layers:  # post-LN BERT written out with torch.nn.functional
        qkv = torch.nn.functional.linear(h, layer.qkv.weight, layer.qkv.bias).view(3, 9, 3, 2, 24)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        scores = q @ k.transpose(-1, -2) / 24**0.5 + (1 - mask)[:, None, None, :] * -1e30
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 9, 48)
        a = torch.nn.functional.linear(ctx, layer.attention_output.weight, layer.attention_output.bias)
        h1 = layer.attention_norm(a + h)
        f = torch.nn.functional.gelu(layer.intermediate(h1))
        h = layer.output_norm(layer.output(f) + h1)
    out = enc(x, attention_mask=mask)
    assert rel_err(out.last_hidden_state, h, mask) < 1e-10


def test_output_hidden_states_and_shared_layers():
    cfg = _config(num_hidden_layers=4, layer_schedule=(0, 1, 0, 1))
    enc = FastBertEncoder(cfg).eval()
    assert len(enc.layers) == 2
    x = torch.randn(2, 5, 48)
    out = enc(x, output_hidden_states=True)
    assert len(out.hidden_states) == 5 and out.hidden_states[0] is x
    again = enc.layers[1](enc.layers[0](out.hidden_states[2]))
    assert torch.allclose(again, out.last_hidden_state, atol=1e-6)


def test_embeddings_module_positions_from_padding():
    cfg = _config(position_ids_from_padding=True, pad_token_id=1, type_vocab_size=1)
    emb = FastBertEmbeddings(cfg)
    ids = torch.tensor([[5, 6, 7, 1, 1]])
    assert emb.position_ids_for(ids, 1, 5, "cpu").tolist() == [[2, 3, 4, 1, 1]]
    assert emb(ids).shape == (1, 5, 48)


def test_factorized_embeddings_project_to_hidden():
    cfg = _config(embedding_size=16)
    emb = FastBertEmbeddings(cfg)
    assert emb.projection is not None and emb(torch.tensor([[1, 2, 3]])).shape == (1, 3, 48)


def test_train_mode_applies_dropout_eval_does_not():
    enc = FastBertEncoder(_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2))
    x = torch.randn(2, 6, 48)
    enc.train()
    assert not torch.equal(enc(x).last_hidden_state, enc(x).last_hidden_state)
    enc.eval()
    assert torch.equal(enc(x).last_hidden_state, enc(x).last_hidden_state)


@pytest.mark.parametrize(
    "mask,batch,seq,exc",
    [
        (torch.ones(2, 4), 2, 5, ValueError),
        (torch.ones(3, 5), 2, 5, ValueError),
        (torch.ones(2, 1, 5, 4), 2, 5, ValueError),
        (torch.ones(2, 5, 5, 5, 5), 2, 5, ValueError),
        ([[1, 1]], 1, 2, TypeError),
    ],
)
def test_mask_shape_errors(mask, batch, seq, exc):
    with pytest.raises(exc):
        normalize_attention_mask(mask, batch, seq)


def test_mask_forms():
    m = normalize_attention_mask(torch.tensor([[1, 0, 1]]), 1, 3)
    assert m.dtype == torch.bool and m.shape == (1, 1, 1, 3) and m.tolist() == [[[[True, False, True]]]]
    additive = torch.zeros(1, 1, 3, 3)
    assert normalize_attention_mask(additive, 1, 3) is additive
    assert normalize_attention_mask(torch.ones(1, 3, 3, dtype=torch.long), 1, 3).dtype == torch.bool


def test_config_validation():
    with pytest.raises(ValueError, match="multiple"):
        _config(hidden_size=50, num_attention_heads=3)
    with pytest.raises(ValueError, match="activation"):
        _config(hidden_act="tanh_gelu_plus")
    with pytest.raises(ValueError, match="hidden_size"):
        FastBertEncoder(_config())(torch.randn(1, 3, 47))
