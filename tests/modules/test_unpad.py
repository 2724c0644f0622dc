"""Padding-free execution: packed vs padded results, the cu_seqlens API, the policy."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import fastbert
from fastbert import FastBertConfig, FastBertEncoder
from fastbert.modules.unpad_policy import padding_keep_mask, should_unpad
from fastbert.ops import padding, record_dispatch
from tests.helpers import build, family_configs, padded_batch, rel_err


def _encoder(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = FastBertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=61,
                         vocab_size=50, max_position_embeddings=64)
    return FastBertEncoder(cfg).to(dtype).eval()


def _hidden_and_mask(lengths, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    seq = max(max(lengths), 1)
    x = torch.randn(len(lengths), seq, 48, generator=gen).to(dtype)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return x, mask


LENGTH_CASES = {
    "mixed": [17, 3, 9, 1, 12],
    "all equal": [8, 8, 8],
    "batch 1": [11],
    "one token": [1],
    "with empty rows": [6, 0, 4, 0],
    "random": torch.randint(1, 40, (9,), generator=torch.Generator().manual_seed(5)).tolist(),
}


@pytest.mark.parametrize("lengths", LENGTH_CASES.values(), ids=LENGTH_CASES.keys())
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 5e-3)])
def test_packed_equals_padded(lengths, dtype, tol):
    enc = _encoder(dtype)
    x, mask = _hidden_and_mask(lengths, dtype=dtype)
    enc.unpad = False
    ref = enc(x, attention_mask=mask, output_hidden_states=True)
    enc.unpad = True
    with record_dispatch() as log:
        out = enc(x, attention_mask=mask, output_hidden_states=True)
    assert ("gather_rows", "torch") in log or ("gather_rows", "triton") in log
    real = mask.bool()
    if real.any():
        for o, r in zip(out.hidden_states[1:], ref.hidden_states[1:]):
            assert rel_err(o, r, mask) < tol
    assert torch.count_nonzero(out.last_hidden_state[~real]) == 0  # zeros at padded positions


def test_gradients_through_packed_path():
    x, mask = _hidden_and_mask([9, 4, 7, 2], seed=1)
    x = x.double()
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = []
    for mode in (False, True):
        enc = _encoder(torch.float64)
        enc.unpad = mode
        xx = x.clone().requires_grad_()
        out = enc(xx, attention_mask=mask).last_hidden_state
        (out * mask[..., None] * probe).sum().backward()
        grads.append((xx.grad, [p.grad for p in enc.parameters()]))
    (gx0, gp0), (gx1, gp1) = grads
    assert rel_err(gx1, gx0, mask) < 1e-10
    assert torch.count_nonzero(gx1[~mask.bool()]) == 0  # padding does not influence anything
    for a, b in zip(gp1, gp0):
        assert rel_err(a, b) < 1e-10


def test_cu_seqlens_api_matches_each_sequence_alone():
    enc = _encoder()
    lengths = [5, 12, 1, 7]
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randn(n, 48, generator=gen) for n in lengths]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    out = enc(torch.cat(seqs), cu_seqlens=cu, max_seqlen=max(lengths), output_hidden_states=True)
    assert out.last_hidden_state.shape == (sum(lengths), 48) and len(out.hidden_states) == 3
    for seq, start, n in zip(seqs, cu[:-1].tolist(), lengths):
        alone = enc(seq[None]).last_hidden_state[0]
        assert rel_err(out.last_hidden_state[start : start + n], alone) < 1e-6


def test_cu_seqlens_bad_input():
    enc = _encoder()
    with pytest.raises(ValueError, match="tokens"):
        enc(torch.randn(10, 48), cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32), max_seqlen=5)
    with pytest.raises(ValueError, match="attention_mask"):
        enc(torch.randn(9, 48), attention_mask=torch.ones(9), cu_seqlens=torch.tensor([0, 9]), max_seqlen=9)
    with pytest.raises(ValueError, match="2D"):
        enc(torch.randn(1, 9, 48), cu_seqlens=torch.tensor([0, 9]), max_seqlen=9)


def test_padding_mask_detection():
    keep = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    four_d = keep[:, None, None, :].expand(2, 1, 3, 3)
    assert torch.equal(padding_keep_mask(four_d, 2), keep)
    additive = torch.zeros(2, 1, 3, 3).masked_fill(~four_d, torch.finfo(torch.float32).min)
    assert torch.equal(padding_keep_mask(additive, 2), keep)
    general = four_d.clone()
    general[0, 0, 1, 0] = False
    assert padding_keep_mask(general, 2) is None
    assert padding_keep_mask(torch.randn(2, 1, 3, 3), 2) is None  # an additive bias, not padding


def test_policy():
    keep = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]).bool()
    assert should_unpad(True, keep) and not should_unpad(False, keep)
    assert should_unpad("auto", keep)  # 37.5 % padding
    assert not should_unpad("auto", torch.ones(2, 40, dtype=torch.bool))
    assert not should_unpad(True, None)
    with pytest.raises(ValueError, match="unpad"):
        fastbert.optimize(transformers.BertModel(family_configs()["bert"]), unpad="sometimes")


def test_general_4d_mask_falls_back_to_padded_path():
    enc = _encoder()
    enc.unpad = True
    x, _ = _hidden_and_mask([7, 7])
    keep = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(0)) > 0.3
    keep |= torch.eye(7, dtype=torch.bool)
    with record_dispatch() as log:
        out = enc(x, attention_mask=keep)
    assert not any(op == "gather_rows" for op, _ in log)
    enc.unpad = False
    assert torch.equal(out.last_hidden_state, enc(x, attention_mask=keep).last_hidden_state)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "albert"])
def test_whole_model_heavy_padding_against_hf(family):
    config = family_configs()[family]
    cls = getattr(transformers, {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert",
                                 "albert": "Albert"}[family] + "Model")
    hf, fast = build(cls, config)
    fastbert.optimize(fast, unpad=True)
    pad = config.pad_token_id or 0
    ids, mask = padded_batch(config.vocab_size, [40, 2, 5, 1, 9, 3], pad, seed=3)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        with record_dispatch() as log:
            out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert ("gather_rows", "torch") in log
    assert rel_err(out, ref, mask) < 1e-5


def test_left_padding():
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    fastbert.optimize(fast, unpad=True)
    ids, mask = padded_batch(config.vocab_size, [9, 4, 6], 0, seed=4)
    ids, mask = ids.flip(1), mask.flip(1)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=torch.arange(9)[None]).last_hidden_state
        out = fast(input_ids=ids, attention_mask=mask, position_ids=torch.arange(9)[None]).last_hidden_state
    assert rel_err(out, ref, mask) < 1e-5


def test_unpad_roundtrip_op():
    x = torch.randn(3, 5, 4)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]]).bool()
    u = padding.unpad(x, keep)
    assert u.cu_seqlens.tolist() == [0, 3, 8, 10] and u.max_seqlen == 5
    back = padding.pad(u.packed, u.indices, 3, 5)
    assert torch.equal(back[keep], x[keep]) and torch.count_nonzero(back[~keep]) == 0
    with pytest.raises(ValueError, match="keep"):
        padding.unpad(x, keep.long())
