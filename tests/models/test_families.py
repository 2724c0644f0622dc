"""Every supported family and task head: optimized model vs Hugging Face, on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import fastbert
from fastbert.ops import record_dispatch
from tests.helpers import build, family_configs, grads_in_hf_names, pad_id, padded_batch, rel_err

FAMILY_PREFIX = {
    "bert": "Bert",
    "roberta": "Roberta",
    "xlm-roberta": "XLMRoberta",
    "camembert": "Camembert",
    "distilbert": "DistilBert",
    "albert": "Albert",
    "electra": "Electra",
}
HEADS = [
    "Model",
    "ForSequenceClassification",
    "ForMaskedLM",
    "ForPreTraining",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
]
LENGTHS = [13, 9, 1, 13, 4]


def _cases():
    for family, prefix in FAMILY_PREFIX.items():
        for head in HEADS:
            cls = getattr(transformers, prefix + head, None)
            if cls is not None:
                yield pytest.param(family, cls, id=f"{family}-{head}")


def _inputs(config, lengths=LENGTHS, seed=1):
    ids, mask = padded_batch(config.vocab_size, lengths, pad_id(config), seed)
    return ids, mask


def _outputs(model, ids, mask, **kw):
    if "ForMultipleChoice" in type(model).__name__:
        ids, mask = ids[None], mask[None]  # one example whose choices are the rows
    return model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw)


def _main_tensors(out):
    """(name, tensor) for each tensor output that is not a hidden state."""
    for key, value in out.items():
        if isinstance(value, torch.Tensor) and key not in ("hidden_states",):
            yield key, value


@pytest.mark.parametrize("family,cls", list(_cases()))
def test_matches_hf_fp32(family, cls):
    config = family_configs()[family]
    hf, fast = build(cls, config)
    ids, mask = _inputs(config)
    with torch.no_grad():
        ref = _outputs(hf, ids, mask)
        with record_dispatch() as log:
            out = _outputs(fast, ids, mask)
    assert log, "the optimized model did not run fastbert ops"
    assert isinstance(out, transformers.utils.ModelOutput) and set(out.keys()) == set(ref.keys())
    assert len(out.hidden_states) == len(ref.hidden_states)
    for o, r in zip(out.hidden_states, ref.hidden_states):
        assert rel_err(o, r, mask) < 1e-5
        assert torch.isfinite(o).all()  # padded positions included
    for key, r in _main_tensors(ref):
        o = getattr(out, key)
        if tuple(r.shape[:2]) == tuple(ids.shape):  # per-token outputs: real tokens only
            assert rel_err(o[mask.bool()], r[mask.bool()]) < 1e-5, key
        else:
            assert rel_err(o, r) < 1e-5, key


@pytest.mark.parametrize("family", list(FAMILY_PREFIX))
def test_matches_hf_fp16(family):
    config = family_configs()[family]
    cls = getattr(transformers, FAMILY_PREFIX[family] + "Model")
    hf, fast = build(cls, config)
    ids, mask = _inputs(config)
    fast = fast.half()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.dtype == torch.float16
    assert rel_err(out, ref, mask) < 1e-2


@pytest.mark.parametrize("family", list(FAMILY_PREFIX))
def test_gradients_match_hf(family):
    config = family_configs()[family]
    cls = getattr(transformers, FAMILY_PREFIX[family] + "ForSequenceClassification")
    hf, fast = build(cls, config)
    ids, mask = _inputs(config)
    labels = torch.tensor([0, 1, 1, 0, 1])
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    fast(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    fast_grads = grads_in_hf_names(fast)
    total = torch.sqrt(sum(p.grad.double().norm() ** 2 for p in hf.parameters() if p.grad is not None))
    compared = 0
    for name, p in hf.named_parameters():
        if p.grad is None:
            continue
        compared += 1
        if p.grad.norm() < 1e-6 * total:  # mathematically zero (e.g. the key bias): compare absolutely
            assert fast_grads[name].norm() < 1e-6 * total, name
        else:
            assert rel_err(fast_grads[name], p.grad) < 1e-4, name
    assert compared == len(list(hf.parameters()))


@pytest.mark.parametrize("family", list(FAMILY_PREFIX))
def test_save_pretrained_roundtrip(family, tmp_path):
    config = family_configs()[family]
    cls = getattr(transformers, FAMILY_PREFIX[family] + "ForMaskedLM")
    hf, fast = build(cls, config)
    # What plain transformers writes and reads back for the same weights is the reference (some
    # versions lose a tied bias on their own); fastbert's checkpoint must load to exactly that.
    hf.save_pretrained(tmp_path / "hf")
    fast.save_pretrained(tmp_path / "fast")
    plain = cls.from_pretrained(tmp_path / "hf").eval()
    expected = plain.state_dict()
    loaded = cls.from_pretrained(tmp_path / "fast").eval()
    loaded_state = loaded.state_dict()
    assert set(expected) == set(loaded_state)
    for k, v in expected.items():
        assert torch.equal(v, loaded_state[k]), k
    # and the reloaded plain model optimizes again to the same outputs
    ids, mask = _inputs(config)
    with torch.no_grad():
        ref = plain(input_ids=ids, attention_mask=mask).logits
        out = fastbert.optimize(loaded)(input_ids=ids, attention_mask=mask).logits
    assert rel_err(out, ref, mask) < 1e-5


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_load_state_dict_accepts_hf_names(family):
    config = family_configs()[family]
    cls = getattr(transformers, FAMILY_PREFIX[family] + "Model")
    hf, fast = build(cls, config, seed=0)
    other, _ = build(cls, config, seed=5)
    fast.load_state_dict(other.state_dict())
    ids, mask = _inputs(config)
    with torch.no_grad():
        assert rel_err(fast(ids, mask).last_hidden_state, other(ids, mask).last_hidden_state, mask) < 1e-5


def test_tied_decoder_stays_tied():
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertForMaskedLM, config)
    assert fast.cls.predictions.decoder.weight is fast.bert.embeddings.word_embeddings.weight
    assert fast.get_input_embeddings() is fast.bert.embeddings.word_embeddings


def test_optimize_is_in_place_and_idempotent():
    config = family_configs()["bert"]
    hf, _ = build(transformers.BertForSequenceClassification, config)
    bert = hf.bert
    assert fastbert.optimize(hf) is hf
    assert hf.bert is bert and isinstance(hf.bert, transformers.BertModel)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    fastbert.optimize(hf)
    assert all(torch.equal(v, hf.state_dict()[k]) for k, v in state.items())


def test_base_model_positional_and_return_tuple():
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    ids, mask = _inputs(config)
    types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        ref = hf(ids, mask, types, return_dict=False)
        out = fast(ids, mask, types, return_dict=False)
    assert isinstance(out, tuple) and len(out) == len(ref)
    for o, r in zip(out, ref):
        assert rel_err(o, r) < 1e-5 if o.dim() == 2 else rel_err(o, r, mask) < 1e-5


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_inputs_embeds_and_explicit_positions(family):
    config = family_configs()[family]
    cls = getattr(transformers, FAMILY_PREFIX[family] + "Model")
    hf, fast = build(cls, config)
    ids, mask = _inputs(config)
    embeds = hf.get_input_embeddings()(ids)
    positions = torch.arange(ids.shape[1])[None].expand_as(ids) + (2 if family == "roberta" else 0)
    with torch.no_grad():
        ref = hf(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        out = fast(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        assert rel_err(out, ref, mask) < 1e-5
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        out = fast(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        assert rel_err(out, ref, mask) < 1e-5


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_4d_padding_mask_equals_2d(mask_dtype):
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    ids, mask = _inputs(config)
    keep = mask.bool()[:, None, None, :].expand(-1, 1, ids.shape[1], -1)
    mask4d = keep if mask_dtype == torch.bool else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = fast(input_ids=ids, attention_mask=mask4d).last_hidden_state
    assert rel_err(out, ref, mask) < 1e-5


def test_general_4d_mask_matches_hf_eager():
    config = copy.deepcopy(family_configs()["bert"])
    config._attn_implementation = "eager"
    hf, fast = build(transformers.BertModel, config)
    ids, _ = _inputs(config, lengths=[11, 11, 11])
    gen = torch.Generator().manual_seed(3)
    keep = torch.rand(3, 1, 11, 11, generator=gen) > 0.3
    keep |= torch.eye(11, dtype=torch.bool)  # every query sees at least itself
    additive = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    with torch.no_grad():
        try:  # transformers 5 takes a prepared 4D additive mask as is
            ref = hf(input_ids=ids, attention_mask=additive).last_hidden_state
        except ValueError:  # transformers 4 takes a 3D (batch, q, k) 0/1 mask instead
            ref = hf(input_ids=ids, attention_mask=keep[:, 0].long()).last_hidden_state
        out_bool = fast(input_ids=ids, attention_mask=keep).last_hidden_state
        out_add = fast(input_ids=ids, attention_mask=additive).last_hidden_state
    assert rel_err(out_bool, ref) < 1e-5
    assert rel_err(out_add, ref) < 1e-5


def test_all_padding_row_is_finite():
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    ids, mask = _inputs(config)
    mask[2] = 0
    with torch.no_grad():
        out = fast(input_ids=ids, attention_mask=mask)
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel_err(out.last_hidden_state, ref, mask) < 1e-5


def test_train_mode_dropout_and_eval_determinism():
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    ids, mask = _inputs(config)
    fast.train()
    a = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    b = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(a, b)
    torch.manual_seed(7)
    c = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(7)
    d = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(c, d)
    fast.eval()
    with torch.no_grad():
        e = fast(input_ids=ids, attention_mask=mask).last_hidden_state
        f = fast(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(e, f) and rel_err(e, ref, mask) < 1e-5


@pytest.mark.parametrize(("family", "cls_name"), [
    ("bert", "BertModel"), ("albert", "AlbertForSequenceClassification"), ("distilbert", "DistilBertForMaskedLM"),
])  # fmt: skip
def test_encoder_from_hf_matches_hf_encoder(family, cls_name):
    config = family_configs()[family]
    hf, _ = build(getattr(transformers, cls_name), config)
    encoder = fastbert.encoder_from_hf(hf)
    ids, mask = _inputs(config)
    base = fastbert.models.hf_base_model(hf)
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out = encoder(ref.hidden_states[0], attention_mask=mask)  # (ALBERT's: after its embedding projection)
        encoder.layers[0].qkv.weight.zero_()  # copies: the HF model keeps its weights
        again = base(input_ids=ids, attention_mask=mask).last_hidden_state
    assert isinstance(encoder, fastbert.FastBertEncoder) and encoder.training == base.training
    assert rel_err(out.last_hidden_state, ref.last_hidden_state, mask) < 1e-5
    assert torch.equal(again, ref.last_hidden_state)
    assert not fastbert.models.base.is_optimized(base)


@pytest.mark.parametrize("cls_name", ["BertForMaskedLM", "BertForPreTraining", "ElectraForMaskedLM"])
def test_mlm_head_transform_runs_fastbert_ops(cls_name):
    family = "bert" if cls_name.startswith("Bert") else "electra"
    config = family_configs()[family]
    hf, fast = build(getattr(transformers, cls_name), config)
    ids, mask = _inputs(config)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        with record_dispatch() as log:
            out = fast(input_ids=ids, attention_mask=mask)
    projection = int(family == "electra")  # ELECTRA's embeddings are projected: one more linear
    head = 1  # the transform's dense + activation
    assert sum(op == "linear" for op, _ in log) == 4 * config.num_hidden_layers + projection + head
    key = "prediction_logits" if "PreTraining" in cls_name else "logits"
    assert rel_err(out[key][mask.bool()], ref[key][mask.bool()]) < 1e-5
