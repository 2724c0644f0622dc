"""Padding-free execution: packed vs padded results, the cu_seqlens API, the policy."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import fastbert
from fastbert import FastBertConfig, FastBertEncoder
from fastbert.modules.unpad_policy import padding_keep_mask, plan_unpad
from fastbert.ops import padding, record_dispatch
from tests.helpers import HostSyncs, build, family_configs, padded_batch, rel_err


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


def test_rows_without_tokens_run_the_padded_path():
    """An all-padding row has no real first token: unpad=True runs padded, as unpad=False does."""
    enc = _encoder()
    x, mask = _hidden_and_mask([6, 0, 4, 0])
    enc.unpad = False
    ref = enc(x, attention_mask=mask).last_hidden_state
    enc.unpad = True
    with record_dispatch() as log:
        out = enc(x, attention_mask=mask).last_hidden_state
    assert not any(op == "gather_rows" for op, _ in log)
    assert torch.equal(out, ref)


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


CU_SEQLENS_CASES = {
    "total too small": ([0, 4, 9], 5, "tokens"),
    "total too large": ([0, 4, 11], 7, "tokens"),
    "not starting at 0": ([1, 4, 10], 6, "start at 0"),
    "decreasing": ([0, 7, 5, 10], 5, "never decrease"),
    "max_seqlen too small": ([0, 4, 10], 5, "max_seqlen"),
    "negative max_seqlen": ([0, 4, 10], -1, "max_seqlen"),
    "max_seqlen None": ([0, 4, 10], None, "max_seqlen"),
    "one offset": ([10], 10, "offsets"),
}


@pytest.mark.parametrize("offsets,max_seqlen,match", CU_SEQLENS_CASES.values(), ids=CU_SEQLENS_CASES.keys())
@pytest.mark.parametrize("entry", ["encoder", "attention op"])
def test_cu_seqlens_rejected_before_compute(offsets, max_seqlen, match, entry):
    enc = _encoder()
    cu = torch.tensor(offsets, dtype=torch.int32)
    with record_dispatch() as log, pytest.raises(ValueError, match=match):
        if entry == "encoder":
            enc(torch.randn(10, 48), cu_seqlens=cu, max_seqlen=max_seqlen)
        else:
            fastbert.ops.attention(torch.randn(10, 3 * 48), 2, cu_seqlens=cu, max_seqlen=max_seqlen)
    assert log == []


def test_cu_seqlens_type_errors():
    enc = _encoder()
    with pytest.raises(TypeError, match="cu_seqlens"):
        enc(torch.randn(10, 48), cu_seqlens=[0, 10], max_seqlen=10)
    with pytest.raises(ValueError, match="int32/int64"):
        enc(torch.randn(10, 48), cu_seqlens=torch.tensor([0.0, 10.0]), max_seqlen=10)


@pytest.mark.parametrize("mode", [True, "auto"])
def test_one_host_read_decides_and_sizes_the_packed_path(mode, monkeypatch):
    enc = _encoder()
    enc.unpad = mode
    x, mask = _hidden_and_mask([17, 3, 9, 1, 12])
    with HostSyncs(monkeypatch) as reads, record_dispatch() as log:
        enc(x, attention_mask=mask)
    assert ("gather_rows", "torch") in log and reads.ops == ["tolist"]


def test_cu_seqlens_checked_once_then_rechecked_after_change(monkeypatch):
    """One host read per cu_seqlens tensor, not one per layer; an in-place change is re-read."""
    enc = _encoder()
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with HostSyncs(monkeypatch) as reads:
        enc(torch.randn(10, 48), cu_seqlens=cu, max_seqlen=6)
    assert reads.ops == ["tolist"]
    with HostSyncs(monkeypatch) as reads:
        padding.check_cu_seqlens(cu, 10, 6)  # remembered: passes without reading
    assert reads.ops == []
    cu[0] = 1
    with pytest.raises(ValueError, match="start at 0"):
        padding.check_cu_seqlens(cu, 10, 6)


def test_cu_seqlens_bad_input():
    enc = _encoder()
    with pytest.raises(ValueError, match="attention_mask"):
        enc(torch.randn(9, 48), attention_mask=torch.ones(9), cu_seqlens=torch.tensor([0, 9]), max_seqlen=9)
    with pytest.raises(ValueError, match="2D"):
        enc(torch.randn(1, 9, 48), cu_seqlens=torch.tensor([0, 9]), max_seqlen=9)


def test_padding_mask_detection():
    keep = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    four_d = keep[:, None, None, :].expand(2, 1, 3, 3)
    found, is_padding = padding_keep_mask(four_d, 2)
    assert torch.equal(found, keep) and bool(is_padding)
    additive = torch.zeros(2, 1, 3, 3).masked_fill(~four_d, torch.finfo(torch.float32).min)
    found, is_padding = padding_keep_mask(additive, 2)
    assert torch.equal(found, keep) and bool(is_padding)
    general = four_d.clone()
    general[0, 0, 1, 0] = False
    assert not bool(padding_keep_mask(general, 2)[1])
    assert not bool(padding_keep_mask(torch.randn(2, 1, 3, 3), 2)[1])  # an additive bias, not padding


def _as_4d(rows):
    return torch.tensor(rows).bool()[:, None, None, :]


def test_policy():
    right = _as_4d([[1, 1, 1, 1], [1, 0, 0, 0]])
    plan = plan_unpad(True, right, 2)
    assert plan is not None and plan.max_seqlen == 4 and torch.equal(plan.keep, right[:, 0, 0])
    assert plan_unpad(False, right, 2) is None
    assert plan_unpad("auto", right, 2) is not None  # 37.5 % padding
    assert plan_unpad("auto", torch.ones(2, 1, 1, 40, dtype=torch.bool), 2) is None
    assert plan_unpad(True, None, 2) is None
    # Only exact when every row's first token is real: left padding, empty rows -> padded path.
    for mode in (True, "auto"):
        assert plan_unpad(mode, _as_4d([[1, 1, 1, 1], [0, 0, 1, 1]]), 2) is None
        assert plan_unpad(mode, _as_4d([[1, 1, 1, 1], [0, 0, 0, 0]]), 2) is None
        assert plan_unpad(mode, _as_4d([[1, 0, 1, 1], [1, 1, 0, 0]]), 2) is not None  # holes after the first token
    assert plan_unpad(True, right.to("meta"), 2) is None  # no values to read


@pytest.mark.parametrize("mode", ["sometimes", 0, 1, 0.0, None, "True", "AUTO"])
def test_unpad_mode_is_strict(mode):
    model = transformers.BertModel(family_configs()["bert"])
    with pytest.raises(ValueError, match="unpad"):
        fastbert.optimize(model, unpad=mode)
    fastbert.optimize(model)
    with pytest.raises(ValueError, match="unpad"):
        model.encoder.unpad = mode
    assert model.encoder.unpad == "auto"


def test_unpad_mode_rejects_numpy_booleans():
    np = pytest.importorskip("numpy")
    model = transformers.BertModel(family_configs()["bert"])
    for mode in (np.True_, np.False_):
        with pytest.raises(ValueError, match="unpad"):
            fastbert.optimize(model, unpad=mode)


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


def test_packed_path_under_inference_mode_against_hf():
    """Tensors made under torch.inference_mode have no version counter: the cu_seqlens check
    cache must not need one (it crashed there); the packed path runs and matches HF."""
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    fastbert.optimize(fast, unpad=True)
    ids, mask = padded_batch(config.vocab_size, [11, 3, 7], 0, seed=6)
    with torch.inference_mode():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        with record_dispatch() as log:
            out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
        packed = padding.unpad(torch.randn(3, 11, 4), mask.bool())
        padding.check_cu_seqlens(packed.cu_seqlens, packed.packed.shape[0], packed.max_seqlen)
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
