"""PEFT LoRA through fastbert, in both orders, against PEFT on the plain HF model.

``get_peft_model(hf)`` then ``fastbert.optimize`` (what ``PeftModel.from_pretrained`` on an
HF model gives), and ``fastbert.optimize`` then ``get_peft_model`` with PEFT's default
targets (the q/k/v slices carry HF's names): outputs, gradients of the adapters, adapter
files (saved and loaded on optimized models; an HF adapter loads before ``optimize``, and
is refused after it), ``merge_and_unload`` (plain and safe), and the wrappers and hooks
that are refused rather than bypassed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import fastbert
from tests.helpers import build, family_configs, pad_id, padded_batch, rel_err

peft = pytest.importorskip("peft")

PREFIX = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert", "albert": "Albert", "electra": "Electra"}
# Every projection of the layer, by the family's HF names (PEFT matches module-name suffixes).
ALL_PROJECTIONS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "albert": ["query", "key", "value", "dense", "ffn", "ffn_output"],
}


def _default_targets(family):
    """None (PEFT's own default for the model type) where PEFT has one, else the q and v names."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    return None if family in DEFAULTS else fastbert_names(family)[0:3:2]


def _lora(targets, **kw):
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, **kw)


def _nonzero_adapters(model, seed=1):
    """LoRA B starts at zero (the adapter then changes nothing): draw it so the adapters act."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _models(family, targets, head="ForSequenceClassification"):
    config = family_configs()[family]
    hf, _ = build(getattr(transformers, PREFIX[family] + head), config)
    peft_hf = peft.get_peft_model(hf, _lora(targets))
    _nonzero_adapters(peft_hf)
    return config, peft_hf


def _batch(config, seed=3):
    return padded_batch(config.vocab_size, [9, 5, 7], pad_id(config), seed)


@pytest.mark.parametrize("family", list(PREFIX))
@pytest.mark.parametrize("targets", ["default", "all"])
@pytest.mark.parametrize("unpad", [True, False])
def test_peft_before_optimize_equals_peft_on_hf(family, targets, unpad):
    config, peft_hf = _models(family, _default_targets(family) if targets == "default" else ALL_PROJECTIONS[family])
    fast = fastbert.optimize(copy.deepcopy(peft_hf), unpad=unpad)
    ids, mask = _batch(config)
    with torch.no_grad():
        ref = peft_hf(input_ids=ids, attention_mask=mask).logits
        out = fast(input_ids=ids, attention_mask=mask).logits
        with peft_hf.disable_adapter():
            plain = peft_hf(input_ids=ids, attention_mask=mask).logits
    assert rel_err(plain, ref) > 1e-2  # the adapters do act
    assert rel_err(out, ref) < 1e-5
    hf_adapters = [k for k in peft_hf.state_dict() if "lora_" in k]
    assert len([k for k in fast.state_dict() if "lora_" in k]) == len(hf_adapters)
    with torch.no_grad(), fast.disable_adapter():
        assert rel_err(fast(input_ids=ids, attention_mask=mask).logits, plain) < 1e-5


@pytest.mark.parametrize("family", list(PREFIX))
def test_peft_default_targets_after_optimize(family):
    """PEFT's default targets for the family find the q/k/v slices after ``optimize``: the same
    modules as on HF (so the adapters of the HF model, carried by ``optimize``, load by name)
    and PEFT-on-HF's outputs."""
    config, peft_hf = _models(family, _default_targets(family))
    carried = _lora_state(fastbert.optimize(copy.deepcopy(peft_hf)))
    peft_fast = peft.get_peft_model(fastbert.optimize(_unwrapped(peft_hf)), _lora(_default_targets(family)))
    assert set(_lora_state(peft_fast)) == set(carried)
    peft_fast.load_state_dict(carried, strict=False)
    ids, mask = _batch(config)
    with torch.no_grad():
        assert rel_err(peft_fast(input_ids=ids, attention_mask=mask).logits,
                       peft_hf(input_ids=ids, attention_mask=mask).logits) < 1e-5


def _lora_state(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


def _trainable_grads(model, ids, mask, labels) -> dict:
    """The gradients of the trainable parameters after one loss, keyed by state-dict name
    (an optimized model's state dict speaks HF's names, so the two models' keys agree)."""
    model.zero_grad()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    holder = copy.deepcopy(model)
    trainable = set()
    with torch.no_grad():
        for (name, dst), src in zip(holder.named_parameters(), model.parameters()):
            if src.requires_grad:
                dst.copy_(src.grad)
                trainable.add(id(dst))
    keep = {id(p) for p in holder.parameters() if id(p) in trainable}
    return {k: v for k, v in holder.state_dict(keep_vars=True).items() if id(v) in keep}


def _carried_name(peft_hf, hf_name):
    """The optimized model's state-dict name of the adapter weight ``hf_name`` of ``peft_hf``
    (found by value: the adapters are drawn at random, so no two are equal)."""
    value = peft_hf.state_dict()[hf_name]
    carried = fastbert.optimize(copy.deepcopy(peft_hf)).state_dict()
    (name,) = [k for k, v in carried.items() if "lora_" in k and v.shape == value.shape and torch.equal(v, value)]
    return name


def fastbert_names(family):
    """fastbert's module names for every projection (after ``optimize``)."""
    qkv = ["q_lin", "k_lin", "v_lin"] if family == "distilbert" else ["query", "key", "value"]
    return qkv + ["attention_output", "intermediate", "output"]


@pytest.mark.parametrize("family", ["bert", "distilbert", "albert"])
@pytest.mark.parametrize("order", ["peft-first", "optimize-first"])
def test_adapter_gradients_equal_peft_on_hf(family, order):
    """One training step's gradients of every adapter (and the trainable head) equal PEFT-on-HF's,
    with dropout switched off the HF way (``p = 0`` on every ``nn.Dropout``), train mode."""
    config, peft_hf = _models(family, ALL_PROJECTIONS[family])
    if order == "peft-first":
        fast = fastbert.optimize(copy.deepcopy(peft_hf))
    else:  # fastbert's names after optimize: the modules the HF names reach, with the same adapter weights
        outside_encoder = ["dense"] if "dense" in ALL_PROJECTIONS[family] else []  # the pooler's, the head's
        fast = peft.get_peft_model(fastbert.optimize(_unwrapped(peft_hf)),
                                   _lora(fastbert_names(family) + outside_encoder))
        carried = _lora_state(fastbert.optimize(copy.deepcopy(peft_hf)))
        assert set(_lora_state(fast)) == set(carried)
        fast.load_state_dict(carried, strict=False)
    for model in (peft_hf, fast):
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            if hasattr(m, "dropout_prob"):  # transformers 4.x's SDPA attention reads its own copy
                m.dropout_prob = 0.0
    ids, mask = _batch(config)
    labels = torch.tensor([0, 1, 1])
    ref, got = _trainable_grads(peft_hf, ids, mask, labels), _trainable_grads(fast, ids, mask, labels)
    assert sum("lora_" in k for k in ref) >= 2 * len(ALL_PROJECTIONS[family])
    assert len(got) == len(ref)  # nothing else became trainable (PEFT froze the base model)
    for name, grad in ref.items():
        assert grad.norm() > 0, name
        fast_name = name if name in got else _carried_name(peft_hf, name)
        assert rel_err(got[fast_name], grad) < 1e-4, name


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_adapter_files(family, tmp_path):
    """An adapter saved from an optimized model loads onto an optimized model; one saved on the
    plain HF model loads on it before ``optimize`` (every HF name, ``dense`` included)."""
    config, peft_hf = _models(family, ALL_PROJECTIONS[family])
    fast = fastbert.optimize(copy.deepcopy(peft_hf))
    ids, mask = _batch(config)
    with torch.no_grad():
        ref = peft_hf(input_ids=ids, attention_mask=mask).logits
    fast.save_pretrained(tmp_path / "from-fast")
    again = peft.PeftModel.from_pretrained(fastbert.optimize(_unwrapped(peft_hf)), tmp_path / "from-fast")
    peft_hf.save_pretrained(tmp_path / "from-hf")
    loaded = fastbert.optimize(peft.PeftModel.from_pretrained(_unwrapped(peft_hf), tmp_path / "from-hf"))
    with torch.no_grad():
        assert rel_err(again(input_ids=ids, attention_mask=mask).logits, ref) < 1e-5
        assert rel_err(loaded(input_ids=ids, attention_mask=mask).logits, ref) < 1e-5


def test_hf_adapter_after_optimize_is_refused(tmp_path):
    """An adapter saved on the plain HF model names HF's modules: loading it onto an optimized
    model would leave it out (PEFT only warns), so it is refused with what to do instead."""
    _, peft_hf = _models("bert", None)
    peft_hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="load the adapter on the HF model first"):
        peft.PeftModel.from_pretrained(fastbert.optimize(_unwrapped(peft_hf)), tmp_path)


def _unwrapped(peft_model):
    """The HF model under ``peft_model`` with its wrappers removed (weights unmerged)."""
    return copy.deepcopy(peft_model).unload()


@pytest.mark.parametrize("safe_merge", [False, True])
def test_merge_and_unload(safe_merge, tmp_path):
    """Merging writes the low-rank terms into the fused qkv rows (PEFT's safe_merge assigns
    ``weight.data``); the merged model saves a checkpoint plain transformers loads."""
    config, peft_hf = _models("bert", ALL_PROJECTIONS["bert"])
    fast = fastbert.optimize(copy.deepcopy(peft_hf))
    ids, mask = _batch(config)
    with torch.no_grad():
        ref = peft_hf(input_ids=ids, attention_mask=mask).logits
        merged = fast.merge_and_unload(safe_merge=safe_merge)
        assert rel_err(merged(input_ids=ids, attention_mask=mask).logits, ref) < 1e-5
    merged.save_pretrained(tmp_path)
    reloaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert rel_err(reloaded(input_ids=ids, attention_mask=mask).logits, ref) < 1e-5


def test_pissa_initialisation_rewrites_the_fused_rows():
    """PiSSA moves the principal components out of the base weight (``weight.data = ...``): the
    optimized model with that adapter equals the same adapter on HF."""
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertForSequenceClassification, config)
    cfg = peft.LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights="pissa")
    peft_hf, peft_fast = peft.get_peft_model(hf, copy.deepcopy(cfg)), peft.get_peft_model(fast, cfg)
    ids, mask = _batch(config)
    with torch.no_grad():
        assert rel_err(peft_fast(input_ids=ids, attention_mask=mask).logits,
                       peft_hf(input_ids=ids, attention_mask=mask).logits) < 1e-5
        assert rel_err(peft_fast(input_ids=ids, attention_mask=mask).logits,
                       hf(input_ids=ids, attention_mask=mask).logits) < 1e-5  # PiSSA starts at the base model


def test_triton_path_honours_lora(monkeypatch):
    """The Triton backend (interpreter on the CPU) runs the wrapped slices too, padded and packed,
    and a training step gives PEFT-on-HF's adapter gradients."""
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    config, peft_hf = _models("bert", ALL_PROJECTIONS["bert"], head="Model")
    fast = fastbert.optimize(copy.deepcopy(peft_hf))
    ids, mask = _batch(config)
    with torch.no_grad():
        ref = peft_hf(input_ids=ids, attention_mask=mask).last_hidden_state
        for unpad in (True, False):
            fastbert.optimize(fast, unpad=unpad)
            assert rel_err(fast(input_ids=ids, attention_mask=mask).last_hidden_state, ref, mask) < 1e-5
    fastbert.optimize(fast, unpad=True)
    probe = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4)) * mask[..., None]
    for model in (peft_hf, fast):  # eval mode: no dropout on either side
        model.zero_grad()
        (model(input_ids=ids, attention_mask=mask).last_hidden_state * probe).sum().backward()
    fast_adapters = [p for n, p in fast.named_parameters() if "lora_" in n]
    compared = 0
    for name, p in peft_hf.named_parameters():
        if "lora_" in name:  # its copy in the optimized model: the one with the same (random) values
            (twin,) = [q for q in fast_adapters if q.shape == p.shape and torch.equal(q, p)]
            if p.grad is None:  # the pooler's adapter: last_hidden_state does not read it
                assert twin.grad is None, name
                continue
            assert rel_err(twin.grad, p.grad) < 1e-4, name
            compared += 1
    assert compared >= 4 * config.num_hidden_layers * 2


def test_hooks_after_optimize_run():
    """A forward hook on a fastbert projection or slice runs, and what it returns is used."""
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    ids, mask = _batch(config)
    with torch.no_grad():
        ref = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    layer = fast.encoder.layers[0]
    for module in (layer.attention_output, layer.value, layer.intermediate, layer.qkv):
        handle = module.register_forward_hook(lambda m, args, out: out * 1.5)
        with torch.no_grad():
            out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
        handle.remove()
        assert rel_err(out, ref, mask) > 1e-3, type(module).__name__


def test_unsupported_wrappers_and_hooks_are_refused():
    config = family_configs()["bert"]
    hf, _ = build(transformers.BertModel, config)
    hooked = copy.deepcopy(hf)
    hooked.encoder.layer[0].attention.self.query.register_forward_hook(lambda m, a, o: o)
    with pytest.raises(ValueError, match="attention.self.query"):
        fastbert.optimize(hooked)
    hooked = copy.deepcopy(hf)
    hooked.encoder.layer[1].output.LayerNorm.register_forward_pre_hook(lambda m, a: None)
    with pytest.raises(ValueError, match="output.LayerNorm"):
        fastbert.optimize(hooked)
    assert not fastbert.models.base.is_optimized(hooked)  # refused before anything changed

    both = peft.get_peft_model(fastbert.optimize(copy.deepcopy(hf)), _lora(["qkv", "query"]))
    ids, mask = _batch(config)
    with pytest.raises(ValueError, match="both the fused qkv"):
        both(input_ids=ids, attention_mask=mask)
    norm = peft.get_peft_model(fastbert.optimize(copy.deepcopy(hf)), _lora(["query"]))
    norm.base_model.model.encoder.layers[0].attention_norm.register_forward_hook(lambda m, a, o: o)
    with pytest.raises(ValueError, match="attention_norm"):
        norm(input_ids=ids, attention_mask=mask)


def test_lora_on_fused_qkv_and_word_embeddings_after_optimize():
    """fastbert's own names: a LoRA on the fused qkv and on the word embeddings are called."""
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    ids, mask = _batch(config)
    peft_fast = peft.get_peft_model(fast, _lora(["qkv", "word_embeddings"]))
    _nonzero_adapters(peft_fast)
    with torch.no_grad():
        out = peft_fast(input_ids=ids, attention_mask=mask).last_hidden_state
        merged = copy.deepcopy(peft_fast).merge_and_unload()
        assert rel_err(out, merged(input_ids=ids, attention_mask=mask).last_hidden_state, mask) < 1e-5
        with peft_fast.disable_adapter():
            plain = peft_fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel_err(out, plain, mask) > 1e-2


def test_pruning_a_model_with_adapters_is_refused():
    """Pruning rewrites the plain linears' weights; with a LoRA layer on top the adapter would keep
    its dense term: merge first."""
    config = family_configs()["bert"]
    _, fast = build(transformers.BertModel, config)
    wrapped = peft.get_peft_model(fast, _lora(["query", "attention_output"]))
    with pytest.raises(ValueError, match="merge PEFT adapters first"):
        fastbert.prune(wrapped.base_model.model, 0.5)
    merged = wrapped.merge_and_unload()
    assert fastbert.prune(merged, 0.5) is not None
