"""Pruned checkpoints load back: uniform neurons in plain transformers, heads and uneven neurons with
``fastbert.from_pretrained`` (plain transformers then refuses them with its own error)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import transformers

import fastbert
from fastbert.prune.structure import STRUCTURE_KEY
from tests.helpers import build, padded_batch, rel_err

CONFIGS = {
    "bert": transformers.BertConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=3,
                                    intermediate_size=96, max_position_embeddings=40, num_labels=3),
    "distilbert": transformers.DistilBertConfig(vocab_size=120, dim=64, n_heads=4, n_layers=2, hidden_dim=96,
                                                max_position_embeddings=40, num_labels=3),
}
CLASSES = {"bert": transformers.BertForSequenceClassification,
           "distilbert": transformers.DistilBertForSequenceClassification}


def _pruned(family, **prune_args):
    model = build(CLASSES[family], CONFIGS[family])[1].eval()
    fastbert.prune(model, **prune_args)
    return model


def _logits(model, seed=3):
    ids, mask = padded_batch(120, [9, 4, 7], 0, seed=seed)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", list(CONFIGS))
def test_uniform_neurons_load_in_plain_transformers(family, tmp_path):
    model = _pruned(family, sparsity=0.5, pattern="neurons", scope="layer")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["hidden_dim" if family == "distilbert" else "intermediate_size"] == 48
    assert STRUCTURE_KEY not in config
    plain, info = CLASSES[family].from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert rel_err(_logits(plain.eval()), _logits(model)) < 1e-5
    again = fastbert.from_pretrained(tmp_path)  # the class its config names
    assert type(again).__name__ == CLASSES[family].__name__
    assert rel_err(_logits(again), _logits(model)) < 1e-5


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("pattern,scope", [("heads", "layer"), ("neurons", "global")])
def test_heads_and_uneven_neurons_load_with_fastbert(family, pattern, scope, tmp_path):
    model = _pruned(family, sparsity=0.4, pattern=pattern, scope=scope)
    structure = {"num_attention_heads": [layer.num_attention_heads for layer in model.base_model.encoder.layers],
                 "intermediate_size": [layer.intermediate.out_features for layer in model.base_model.encoder.layers]}
    if pattern == "neurons":
        assert len(set(structure["intermediate_size"])) > 1  # global scope: layers differ
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: saved[STRUCTURE_KEY][k] for k in structure} == structure
    heads_field, width_field = ("n_heads", "hidden_dim") if family == "distilbert" else (
        "num_attention_heads", "intermediate_size")
    assert saved[heads_field] == structure["num_attention_heads"] and saved[width_field] == structure["intermediate_size"]
    assert model.config.to_dict()[heads_field] == structure["num_attention_heads"]
    assert isinstance(getattr(model.config, heads_field), int)  # in memory the field keeps its dense integer
    copied = pickle.loads(pickle.dumps(model.config))
    assert copied.to_dict() == model.config.to_dict() and type(copied) is type(model.config)
    with pytest.raises(Exception, match="list"):  # transformers' own error: 5.x validation, 4.x building a layer
        CLASSES[family].from_pretrained(tmp_path)
    loaded = fastbert.from_pretrained(tmp_path, CLASSES[family])
    assert rel_err(_logits(loaded), _logits(model)) < 1e-5
    for a, b in zip(loaded.base_model.encoder.layers, model.base_model.encoder.layers):
        assert a.num_attention_heads == b.num_attention_heads and a.intermediate.weight.shape == b.intermediate.weight.shape
    base = fastbert.from_pretrained(tmp_path, transformers.AutoModel)  # a task checkpoint as its base model
    ids, mask = padded_batch(120, [6, 2], 0, seed=4)
    with torch.no_grad():
        want = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = base(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel_err(got, want, mask) < 1e-5


def test_heads_and_neurons_together_round_trip(tmp_path):
    model = _pruned("bert", sparsity=0.5, pattern="heads", scope="layer")
    fastbert.prune(model, 0.25, pattern="neurons", scope="layer")
    model.save_pretrained(tmp_path)
    loaded = fastbert.from_pretrained(tmp_path)
    assert [layer.num_attention_heads for layer in loaded.bert.encoder.layers] == [2, 2, 2]
    assert rel_err(_logits(loaded), _logits(model)) < 1e-5


def test_unpruned_and_masked_checkpoints_load_as_usual(tmp_path):
    model = _pruned("bert", sparsity=0.5, pattern="unstructured")
    model.save_pretrained(tmp_path)
    loaded = fastbert.from_pretrained(tmp_path)
    assert rel_err(_logits(loaded), _logits(model)) < 1e-5


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        fastbert.from_pretrained(tmp_path)
    model = _pruned("bert", sparsity=0.5, pattern="heads", scope="layer")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[STRUCTURE_KEY]["num_attention_heads"] = [2, 2]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="number of layers"):
        fastbert.from_pretrained(tmp_path)
    config[STRUCTURE_KEY]["num_attention_heads"] = [2, 2, 9]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=STRUCTURE_KEY):
        fastbert.from_pretrained(tmp_path)
