"""A sparsity per matrix role: checks, every method and the gradual pruner honouring it, the split helper."""

from __future__ import annotations

import pytest
import torch
import transformers

from fastbert.prune import GradualPruner, cubic_sparsity, prune, split_sparsity
from fastbert.prune.roles import overall_sparsity, role_sparsities
from tests.helpers import build, padded_batch

CONFIG = transformers.BertConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                 intermediate_size=128, max_position_embeddings=40)
ROLE_FRACTIONS = {"attention": 0.25, "ffn.in": 0.5, "ffn.out": 0.75}


def _model():
    return build(transformers.BertModel, CONFIG)[1].eval()


def _batches():
    ids, mask = padded_batch(120, [9, 4, 12], 0, seed=3)
    return [{"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}]


def _by_role(report):
    out = {}
    for m in report.matrices:
        out.setdefault(m.role, []).append(m.sparsity)
    return out


def test_role_sparsities_expand_groups_and_reject_bad_mappings():
    assert role_sparsities(ROLE_FRACTIONS) == {"attention.qkv": 0.25, "attention.output": 0.25, "ffn.in": 0.5,
                                               "ffn.out": 0.75}
    with pytest.raises(ValueError, match="twice"):
        role_sparsities({"attention": 0.2, "attention.qkv": 0.3, "ffn": 0.5})
    with pytest.raises(ValueError, match="no value"):
        role_sparsities({"attention": 0.2})
    with pytest.raises(ValueError, match="keys"):
        role_sparsities({"attention": 0.2, "mlp": 0.5})
    with pytest.raises(ValueError, match="fraction"):
        role_sparsities({"attention": 0.2, "ffn": 1.0})
    with pytest.raises(TypeError, match="number"):
        role_sparsities({"attention": "0.2", "ffn": 0.5})


@pytest.mark.parametrize("pattern,scope", [("2:4", "layer"), ("heads", "layer"), ("unstructured", "global")])
def test_a_mapping_is_refused_where_it_means_nothing(pattern, scope):
    with pytest.raises(ValueError, match="per role"):
        prune(_model(), ROLE_FRACTIONS, pattern=pattern, scope=scope)


@pytest.mark.parametrize("method,pattern", [("magnitude", "unstructured"), ("magnitude", "block"),
                                            ("wanda", "unstructured"), ("sparsegpt", "block")])
def test_each_matrix_gets_its_roles_fraction(method, pattern):
    model = _model()
    kwargs = {} if method == "magnitude" else dict(calibration=_batches(), progress=False)
    report = prune(model, ROLE_FRACTIONS, pattern=pattern, method=method, scope="layer", block_size=16, **kwargs)
    wanted = role_sparsities(ROLE_FRACTIONS)
    for role, got in _by_role(report).items():
        assert got == pytest.approx([wanted[role]] * len(got), abs=0.02), role
    assert report.role_sparsity == pytest.approx(wanted, abs=0.02)
    assert report.to_dict()["role_sparsity"] == report.role_sparsity
    assert report.target_sparsity == pytest.approx(overall_sparsity(model, wanted))
    assert report.sparsity == pytest.approx(report.target_sparsity, abs=0.02)


def test_split_sparsity_reaches_the_overall_target():
    model = _model()
    split = split_sparsity(model, 0.5, attention=0.25)
    assert split["attention"] == 0.25 and 0.5 < split["ffn"] < 1
    assert overall_sparsity(model, role_sparsities(split)) == pytest.approx(0.5)
    report = prune(model, split, scope="layer")
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="FFN"):
        split_sparsity(model, 0.9, attention=0.1)


def test_gradual_pruner_follows_a_schedule_per_role():
    model = _model()
    pruner = GradualPruner(model, ROLE_FRACTIONS, start_step=0, end_step=4, frequency=2, pattern="unstructured",
                           scope="layer")
    for _ in range(2):
        report = pruner.step()
    wanted = role_sparsities(ROLE_FRACTIONS)
    for role, got in _by_role(report).items():
        assert got == pytest.approx([cubic_sparsity(2, wanted[role], 0, 4)] * len(got), abs=0.01), role
    for _ in range(2):
        report = pruner.step()
    for role, got in _by_role(report).items():
        assert got == pytest.approx([wanted[role]] * len(got), abs=0.01), role
    with pytest.raises(ValueError, match="per role"):
        GradualPruner(_model(), ROLE_FRACTIONS, 0, 4, scope="global")
