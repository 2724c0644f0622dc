"""``fastbert bench`` / ``profile`` on a GPU: CUDA-event timing, CUDA graphs, peak memory, kernel rows.

Skipped without a CUDA GPU; benchmarks/gpu_suite.sh runs them with ``pytest tests -m gpu``.
"""

from __future__ import annotations

import json

import pytest
import torch

from fastbert.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bench_on_gpu_times_every_variant_but_compile(tmp_path):
    args = ["bench", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "64", "--dtype", "fp16", "bf16",
            "--device", "cuda", "--no-compile", "--repeats", "5", "--warmup", "2", "--no-plots", "--out", str(tmp_path)]
    assert main(args) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    meta = doc["metadata"]
    assert meta["measured_on_gpu"] is True and meta["gpu_name"] == torch.cuda.get_device_name()
    assert doc["settings"]["variants"] == ["hf_eager", "hf_sdpa", "fastbert", "fastbert_cudagraph"]
    for e in doc["results"]:
        for name, r in e["variants"].items():
            assert r["status"] == "ok", (e["label"], name, r["error"])
            assert r["timer"].startswith("cuda events") and r["repeats"] == 5
            assert r["peak_memory_bytes"] > 0 and r["memory_kind"].startswith("cuda")
            assert r["rel_error"] < 1e-2, (e["label"], name)
        assert set(e["speedup"]) == {"fastbert", "fastbert_cudagraph"}
        fb = e["variants"]["fastbert"]
        assert "triton" in fb["backends"]


def test_profile_on_gpu_has_kernel_rows_and_known_peak_for_hopper(tmp_path, capsys):
    assert main(["profile", "--arch", "bert-tiny", "--batch", "4", "--seq-len", "64", "--dtype", "fp16",
                 "--device", "cuda", "--steps", "2", "--compare", "hf", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "profile.json").read_text())
    fb = doc["profiles"]["fastbert"]
    assert fb["timed"] == "CUDA kernel time" and fb["rows"]
    classes = {c["op_class"]: c for c in fb["classes"]}
    assert classes["matmul"]["time_us"] > 0 and classes["attention"]["time_us"] > 0
    if any(h in torch.cuda.get_device_name() for h in ("H100", "H200")):
        assert doc["peak"]["tflops"] and doc["peak"]["gbps"]
        assert classes["matmul"]["frac_peak_flops"] is not None
    assert json.loads((tmp_path / "trace-fastbert.json").read_text())["traceEvents"]
