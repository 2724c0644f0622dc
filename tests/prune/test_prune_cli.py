"""``fastbert prune DIR --out OUT`` keeps the task model it was given and never drops weights silently."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

import fastbert
from fastbert.cli import main
from fastbert.prune.quality import DEFAULT_MIN_COSINE
from tests.helpers import build, padded_batch, rel_err

CONFIGS = {
    "bert": transformers.BertConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                    intermediate_size=96, max_position_embeddings=40, num_labels=3),
    "distilbert": transformers.DistilBertConfig(vocab_size=120, dim=64, n_heads=4, n_layers=2, hidden_dim=96,
                                                max_position_embeddings=40, num_labels=3),
}
ARGS = ["--sparsity", "0.5", "--pattern", "block", "--block-size", "16", "--scope", "layer"]


def _classifier(family):
    """A fine-tuned-like classifier: seeded random weights everywhere, head included."""
    cls = getattr(transformers, {"bert": "Bert", "distilbert": "DistilBert"}[family] + "ForSequenceClassification")
    return build(cls, CONFIGS[family])[0]


@pytest.mark.parametrize("family", list(CONFIGS))
def test_classifier_round_trip(family, tmp_path, capsys):
    hf = _classifier(family)
    hf.save_pretrained(tmp_path / "ckpt")
    assert main(["prune", str(tmp_path / "ckpt"), *ARGS, "--out", str(tmp_path / "out")]) == 0
    assert type(hf).__name__ in capsys.readouterr().out

    expected = fastbert.optimize(copy.deepcopy(hf))  # what the command must have saved
    fastbert.prune(expected, 0.5, pattern="block", block_size=16, scope="layer")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [type(hf).__name__]
    reloaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "out", output_loading_info=True)
    assert type(reloaded) is type(hf) and not info["missing_keys"] and not info["unexpected_keys"]
    state, want = reloaded.state_dict(), expected.state_dict()
    assert set(state) == set(want)
    for k, v in want.items():
        assert torch.equal(state[k], v), k
    head = [k for k in state if k.startswith(("classifier", "pre_classifier"))]
    assert head and all(torch.equal(state[k], hf.state_dict()[k]) for k in head)  # the head is the fine-tuned one

    ids, mask = padded_batch(120, [9, 4, 7], 0, seed=2)
    with torch.no_grad():
        ref = expected.eval()(input_ids=ids, attention_mask=mask).logits
        out = reloaded.eval()(input_ids=ids, attention_mask=mask).logits
    assert rel_err(out, ref) < 1e-5


def test_checkpoint_missing_head_weights_is_refused(tmp_path, capsys):
    """A config naming a classifier over a checkpoint without its weights: refused, nothing written."""
    torch.manual_seed(0)
    transformers.BertModel(CONFIGS["bert"]).save_pretrained(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    config_path.write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["prune", str(tmp_path / "ckpt"), *ARGS, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "classifier.weight" in err and "random" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unused_checkpoint_weights_are_listed(tmp_path, capsys):
    torch.manual_seed(0)
    transformers.BertForPreTraining(CONFIGS["bert"]).save_pretrained(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["BertForMaskedLM"]
    config_path.write_text(json.dumps(config))
    assert main(["prune", str(tmp_path / "ckpt"), *ARGS, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "not used by BertForMaskedLM" in err and "cls.seq_relationship.weight" in err


def test_non_empty_out_needs_force(tmp_path, capsys):
    _classifier("bert").save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["prune", str(tmp_path / "ckpt"), *ARGS, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["prune", str(tmp_path / "ckpt"), *ARGS, "--out", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and (out / "notes.txt").read_text() == "keep me"


def _tokenizer_checkpoint(tmp_path):
    """A classifier checkpoint with a word-level tokenizer, so --calibration texts can be tokenized."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(100)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]")
    hf = _classifier("bert")
    hf.save_pretrained(tmp_path / "ckpt")
    fast.save_pretrained(tmp_path / "ckpt")
    texts = tmp_path / "calibration.txt"
    gen = torch.Generator().manual_seed(5)
    texts.write_text("\n".join(" ".join(f"w{int(i)}" for i in torch.randint(0, 100, (int(n),), generator=gen))
                               for n in torch.randint(3, 20, (24,), generator=gen)) + "\n\n")
    return hf, fast, texts


def test_calibrated_method_from_a_text_file(tmp_path, capsys):
    hf, tokenizer, texts = _tokenizer_checkpoint(tmp_path)
    args = ["prune", str(tmp_path / "ckpt"), "--sparsity", "0.5", "--pattern", "2:4", "--method", "sparsegpt",
            "--calibration", str(texts), "--calibration-batch-size", "8", "--quiet", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "sparsegpt" in captured.out and "sparsegpt 2:4" not in captured.err  # --quiet: no progress
    lines = [line for line in texts.read_text().splitlines() if line.strip()]
    batches = [tokenizer(lines[i : i + 8], padding=True, return_tensors="pt") for i in range(0, len(lines), 8)]
    expected = fastbert.optimize(copy.deepcopy(hf))
    fastbert.prune(expected, 0.5, pattern="2:4", method="sparsegpt", calibration=batches, progress=False)
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    for k, v in expected.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k


@pytest.mark.parametrize("extra,match", [
    (["--method", "wanda"], "needs --calibration"),
    (["--calibration", "CAL"], "calibrated methods"),
    (["--method", "wanda", "--calibration", "MISSING"], "cannot be read"),
    (["--method", "wanda", "--calibration", "EMPTY"], "holds no text"),
    (["--pattern", "3:2"], "pattern"),
    (["--method", "wanda", "--calibration", "CAL", "--calibration-batch-size", "0"], "at least 1"),
    (["--sparsity", "half"], "must be a number"),
    (["--sparsity", "attention=0.25", "--scope", "layer"], "no value"),
    (["--sparsity", "attention=0.25,ffn=0.6", "--scope", "global"], "--scope layer"),
    (["--sparsity", "attention=0.25,ffn"], "ROLE=FRACTION"),
    (["--sparsity", "attention=0.25,ffn=0.6", "--pattern", "2:4"], "per role"),
    (["--sparsity", "attention=0.1,attention=0.3,ffn=0.5"], "'attention' more than once"),
    (["--layers", "0", "0"], "more than once"),
    (["--min-cosine", "1.5"], "--min-cosine must be a cosine in [-1, 1]"),
])
def test_calibration_arguments_are_checked_first(tmp_path, capsys, extra, match):
    _, _, texts = _tokenizer_checkpoint(tmp_path)
    (tmp_path / "empty.txt").write_text("\n  \n")
    swap = {"CAL": str(texts), "MISSING": str(tmp_path / "nope.txt"), "EMPTY": str(tmp_path / "empty.txt")}
    capsys.readouterr()  # the set-up's own output
    argv = ["prune", str(tmp_path / "ckpt"), "--sparsity", "0.5", *[swap.get(a, a) for a in extra],
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_sparsity_per_role_from_the_command_line(tmp_path, capsys):
    hf = _classifier("bert")
    hf.save_pretrained(tmp_path / "ckpt")
    argv = ["prune", str(tmp_path / "ckpt"), "--sparsity", "attention=0.25, ffn=0.75", "--pattern", "block",
            "--block-size", "16", "--scope", "layer", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    expected = fastbert.optimize(copy.deepcopy(hf))
    fastbert.prune(expected, {"attention": 0.25, "ffn": 0.75}, pattern="block", block_size=16, scope="layer")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    for k, v in expected.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    report = json.loads((tmp_path / "out" / "prune_report.json").read_text())
    roles = {m["role"]: m["sparsity"] for m in report["matrices"]}
    assert roles["attention.output"] == pytest.approx(0.25) and roles["ffn.in"] == pytest.approx(0.75)


def _with_one_small_matrix(tmp_path):
    """A classifier checkpoint whose layer 0 ffn.out weights are 100x smaller than the rest (one ranking over all
    matrices would take that whole matrix first)."""
    hf = _classifier("bert")
    with torch.no_grad():
        hf.bert.encoder.layer[0].output.dense.weight.mul_(0.01)
    hf.save_pretrained(tmp_path / "ckpt")
    return hf


def test_the_defaults_prune_every_matrix_to_the_target(tmp_path, capsys):
    """Only --sparsity: unstructured magnitude, each matrix to the target (what fastbert.prune does by default too)."""
    hf = _with_one_small_matrix(tmp_path)
    assert main(["prune", str(tmp_path / "ckpt"), "--sparsity", "0.5", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "prune_report.json").read_text())
    assert report["pattern"] == "unstructured" and report["method"] == "magnitude (layer)"
    assert report["pruned_whole"] == [] and len(report["matrices"]) == 8
    assert all(m["sparsity"] == pytest.approx(0.5, abs=1e-3) for m in report["matrices"])
    expected = fastbert.optimize(copy.deepcopy(hf))
    fastbert.prune(expected, 0.5)
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    for k, v in expected.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    assert "per matrix: 50.0% to 50.0% removed" in capsys.readouterr().out


def test_help_says_what_the_defaults_are(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("default unstructured", "default magnitude", "layer, the default", "--min-cosine",
                  f"(default {DEFAULT_MIN_COSINE:g})",
                  "fails the quality check"):
        assert words in text, words


def _mean_pooled_cosines(dense, pruned, batch):
    """Per-row cosine of the two models' last hidden states, averaged over real tokens (float64)."""
    with torch.no_grad():
        out = [m.eval().base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
               .last_hidden_state.double() for m in (dense, pruned)]
    mask = batch["attention_mask"].double()[..., None]
    a, b = [(h * mask).sum(1) / mask.sum(1) for h in out]
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_the_quality_check_gates_what_is_written(tmp_path, capsys):
    """The printed cosine is the pruned model's to the dense one's on the calibration texts; below --min-cosine
    nothing is written and the exit code is 1; --force writes anyway."""
    hf, tokenizer, texts = _tokenizer_checkpoint(tmp_path)
    lines = [line for line in texts.read_text().splitlines() if line.strip()][:12]
    texts.write_text("\n".join(lines))
    argv = ["prune", str(tmp_path / "ckpt"), "--sparsity", "0.7", "--method", "wanda", "--calibration", str(texts),
            "--quiet", "--min-cosine", "1", "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert not (tmp_path / "out").exists()
    assert "quality: mean cosine" in captured.out and "BELOW --min-cosine 1" in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "--force" in captured.err

    assert main(argv + ["--force"]) == 0
    assert "warning" in capsys.readouterr().err
    batch = tokenizer(lines, padding=True, return_tensors="pt")
    expected = fastbert.optimize(copy.deepcopy(hf))
    fastbert.prune(expected, 0.7, method="wanda", calibration=[batch], progress=False)
    cosines = _mean_pooled_cosines(hf, expected, batch)
    quality = json.loads((tmp_path / "out" / "prune_report.json").read_text())["quality"]
    assert quality["count"] == 12 and quality["source"] == "calibration texts"
    assert quality["mean_cosine"] == pytest.approx(float(cosines.mean()), abs=1e-6)
    assert quality["min_cosine"] == pytest.approx(float(cosines.min()), abs=1e-6)
    assert quality["mean_cosine"] < 0.9999


def _short_table_checkpoint(tmp_path, family):
    """A classifier with a 40-row position table and a word-level tokenizer that sets no length limit."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    config_cls, model_cls = {"bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
                             "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification)}[family]
    pad = 0 if family == "bert" else 1
    config = config_cls(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                        intermediate_size=96, max_position_embeddings=40, num_labels=3, pad_token_id=pad)
    hf = build(model_cls, config)[0]
    specials = ["[UNK]", "[CLS]", "[SEP]"]
    specials.insert(pad, "[PAD]")
    words = specials + [f"w{i}" for i in range(100)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    hf.save_pretrained(tmp_path / "ckpt")
    fast.save_pretrained(tmp_path / "ckpt")
    gen = torch.Generator().manual_seed(7)
    lines = [" ".join(f"w{int(i)}" for i in torch.randint(0, 100, (n,), generator=gen)) for n in (60, 9, 45, 14)]
    (tmp_path / "long.txt").write_text("\n".join(lines))
    return hf, fast, lines, 40 - (pad + 1 if family == "roberta" else 0)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_calibration_is_truncated_at_the_position_table(tmp_path, family):
    """Texts longer than the position table (the tokenizer sets no limit) are cut where the model's table ends
    (RoBERTa numbers positions after its padding index)."""
    hf, tokenizer, lines, limit = _short_table_checkpoint(tmp_path, family)
    argv = ["prune", str(tmp_path / "ckpt"), "--sparsity", "0.5", "--method", "sparsegpt", "--calibration",
            str(tmp_path / "long.txt"), "--quiet", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    batch = tokenizer(lines, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    assert batch["input_ids"].shape[1] == limit
    expected = fastbert.optimize(copy.deepcopy(hf))
    fastbert.prune(expected, 0.5, method="sparsegpt", calibration=[batch], progress=False)
    reloaded = type(hf).from_pretrained(tmp_path / "out")
    for k, v in expected.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
