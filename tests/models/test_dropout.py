"""Dropout is switched the HF way: by ``p`` on the ``nn.Dropout`` modules, before or after ``optimize``."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from packaging import version

import fastbert
from tests.helpers import build, family_configs, pad_id, padded_batch, rel_err

PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert",
          "distilbert": "DistilBert", "albert": "Albert", "electra": "Electra"}
# transformers 4.x's SDPA attention reads the config's dropout probability, not the module's.
HF_READS_MODULE_P = version.parse(transformers.__version__) >= version.parse("5")


def _switch_off(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _outputs(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("family", list(PREFIX))
@pytest.mark.parametrize("when", ["after optimize", "before optimize"])
def test_dropout_off_on_the_modules_makes_training_deterministic(family, when):
    config = family_configs()[family]
    hf, _ = build(getattr(transformers, PREFIX[family] + "Model"), config)
    ids, mask = padded_batch(config.vocab_size, [9, 4, 7], pad_id(config), seed=5)
    with torch.no_grad():
        ref = _outputs(hf, ids, mask)  # eval mode: no dropout
    fast = copy.deepcopy(hf)
    if when == "before optimize":
        _switch_off(fast)
    fastbert.optimize(fast)
    if when == "after optimize":
        _switch_off(fast)
    fast.train()
    with torch.no_grad():
        first, second = _outputs(fast, ids, mask), _outputs(fast, ids, mask)
    assert rel_err(first, ref, mask) < 1e-5
    assert torch.equal(first, second)
    if HF_READS_MODULE_P:  # the premise: HF in train mode with p = 0 everywhere is the eval model
        plain = copy.deepcopy(hf).train()
        _switch_off(plain)
        with torch.no_grad():
            assert rel_err(_outputs(plain, ids, mask), ref, mask) < 1e-5


@pytest.mark.parametrize("family", ["bert", "distilbert", "albert"])
def test_each_dropout_module_acts(family):
    """Each dropout slot reads its own module: only that one on, the outputs vary between calls."""
    config = family_configs()[family]
    _, fast = build(getattr(transformers, PREFIX[family] + "Model"), config)
    ids, mask = padded_batch(config.vocab_size, [9, 4, 7], pad_id(config), seed=6)
    fast.train()
    slots = [fast.embeddings.dropout] + [
        m for layer in fast.encoder.layers
        for m in (layer.attention_dropout, layer.attention_output_dropout, layer.output_dropout) if m is not None
    ]
    for slot in slots:
        _switch_off(fast)
        slot.p = 0.5
        with torch.no_grad():
            assert not torch.equal(_outputs(fast, ids, mask), _outputs(fast, ids, mask)), slot


def test_families_without_a_dropout_have_none_there():
    """DistilBERT applies no dropout after the attention output, ALBERT none after the FFN: those
    slots hold no module, so setting p on every nn.Dropout cannot switch one on."""
    for family, absent in (("distilbert", "attention_output_dropout"), ("albert", "output_dropout")):
        _, fast = build(getattr(transformers, PREFIX[family] + "Model"), family_configs()[family])
        assert all(getattr(layer, absent) is None for layer in fast.encoder.layers)
