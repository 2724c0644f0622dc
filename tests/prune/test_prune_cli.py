"""``fastbert prune DIR --out OUT`` keeps the task model it was given and never drops weights silently."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

import fastbert
from fastbert.cli import main
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
