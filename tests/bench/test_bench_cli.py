"""``fastbert bench`` and ``fastbert profile`` on tiny CPU configurations, in process."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math

import pytest
import torch

from fastbert.bench import report, variants
from fastbert.cli import main

TINY = ["--arch", "bert-tiny", "--batch", "1", "2", "--seq-len", "16", "--repeats", "1", "--warmup", "1",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One tiny bench run shared by the schema tests: (exit code, JSON document, out dir)."""
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", *TINY, "--out", str(out)])
    return code, json.loads((out / "bench.json").read_text()), out


def test_bench_json_schema_and_metadata(bench_run):
    code, doc, _ = bench_run
    assert code == 0
    assert doc["schema"] == report.SCHEMA
    meta = doc["metadata"]
    for key in ("date_utc", "device", "measured_on_gpu", "gpu_name", "driver_version", "cuda_version", "torch", "triton",
                "transformers", "python", "fastbert", "commit", "env"):
        assert key in meta, key
    assert meta["device"] == "cpu" and meta["measured_on_gpu"] is False and meta["gpu_name"] is None
    assert meta["torch"] == torch.__version__
    assert not any("hostname" in k or "node" in k for k in meta)
    settings = doc["settings"]
    assert settings["variants"] == ["hf_eager", "hf_sdpa", "fastbert"]  # compile and CUDA graphs skipped on the CPU
    assert any("hf_compile" in n and "--compile" in n for n in settings["notes"])
    assert any("not GPU results" in n for n in settings["notes"])
    assert doc["wall_time_s"] > 0 and doc["complete"] is True
    # 2 batches x (fixed, varlen) x 1 seq x 1 dtype
    assert [(e["config"]["batch"], e["config"]["varlen"]) for e in doc["results"]] == [(1, False), (2, False), (1, True), (2, True)]
    for e in doc["results"]:
        assert e["padded_tokens"] == e["config"]["batch"] * e["config"]["seq_len"]
        assert 0 < e["real_tokens"] <= e["padded_tokens"]
        if not e["config"]["varlen"]:
            assert e["real_tokens"] == e["padded_tokens"]
        for name, r in e["variants"].items():
            assert r["status"] == "ok", (name, r["error"])
            assert r["repeats"] == 1 and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] >= r["min_ms"]
            assert r["real_tokens_per_s"] == pytest.approx(e["real_tokens"] / (r["median_ms"] / 1e3))
            assert r["padded_tokens_per_s"] == pytest.approx(e["padded_tokens"] / (r["median_ms"] / 1e3))
            assert r["peak_memory_bytes"] is None and "not measured" in r["memory_kind"]
            assert r["rel_error"] < 1e-5  # fp32 vs the float64 reference, on real tokens
            if name == "fastbert":
                assert "attention=" in r["backends"] and "linear=" in r["backends"]
            else:
                assert r["backends"] is None


def test_every_speedup_is_baseline_median_over_fastbert_median(bench_run):
    _, doc, _ = bench_run
    checked = 0
    for e in doc["results"]:
        medians = {n: r["median_ms"] for n, r in e["variants"].items()}
        assert set(e["speedup"]) == {"fastbert"}
        assert set(e["speedup"]["fastbert"]) == {"hf_eager", "hf_sdpa"}
        for base, value in e["speedup"]["fastbert"].items():
            assert math.isclose(value, medians[base] / medians["fastbert"], rel_tol=1e-12)
            checked += 1
    assert checked == 8


def test_every_ratio_says_whether_the_timing_ranges_overlap(bench_run):
    _, doc, out = bench_run
    for e in doc["results"]:
        v = e["variants"]
        for base, reliable in e["speedup_reliable"]["fastbert"].items():
            lows, highs = (v["fastbert"]["min_ms"], v[base]["min_ms"]), (v["fastbert"]["p90_ms"], v[base]["p90_ms"])
            assert reliable == (max(lows) > min(highs))  # one range ends before the other begins
    with (out / "bench.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["variant"] == "fastbert"]
    assert [r["speedup_reliable_vs_hf_sdpa"] for r in rows] == [str(e["speedup_reliable"]["fastbert"]["hf_sdpa"])
                                                                for e in doc["results"]]


def test_csv_matches_json(bench_run):
    _, doc, out = bench_run
    with (out / "bench.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == report.CSV_COLUMNS
    assert len(rows) == sum(len(e["variants"]) for e in doc["results"])
    it = iter(rows)
    for e in doc["results"]:
        for name, r in e["variants"].items():
            row = next(it)
            assert (row["model"], int(row["batch"]), int(row["seq_len"]), row["variant"]) == (
                e["config"]["model"], e["config"]["batch"], e["config"]["seq_len"], name)
            assert row["varlen"] == str(e["config"]["varlen"]) and row["status"] == r["status"]
            assert float(row["median_ms"]) == pytest.approx(r["median_ms"], rel=1e-12)
            assert float(row["rel_error"]) == pytest.approx(r["rel_error"], rel=1e-12)
            for base in ("hf_eager", "hf_sdpa"):
                expected = e["speedup"].get(name, {}).get(base)
                cell = row[f"speedup_vs_{base}"]
                assert (cell == "") if expected is None else float(cell) == pytest.approx(expected, rel=1e-12)


def test_bench_writes_plots_when_matplotlib_is_available(bench_run):
    pytest.importorskip("matplotlib")
    _, _, out = bench_run
    for name in ("throughput-bert-tiny-float32.png", "speedup-bert-tiny-float32.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_bench_prints_a_table(tmp_path, capsys):
    assert main(["bench", *TINY[:4], "1", "--seq-len", "8", "--no-varlen", "--repeats", "1", "--device", "cpu",
                 "--no-plots", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fastbert/hf_sdpa" in out and "bert-tiny" in out and "plots: skipped (--no-plots)" in out
    assert "not GPU results" in out


@pytest.mark.parametrize("exc", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")])
def test_out_of_memory_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, exc):
    calls = []

    def oom_forward(model, inputs):
        calls.append(inputs["input_ids"].shape)
        raise exc

    monkeypatch.setitem(variants.VARIANTS, "hf_eager", dataclasses.replace(variants.VARIANTS["hf_eager"], make_forward=oom_forward))
    assert main(["bench", *TINY, "--no-plots", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert len(calls) == len(doc["results"]) == 4  # every configuration was tried
    for e in doc["results"]:
        eager = e["variants"]["hf_eager"]
        assert eager["status"] == "oom" and "out of memory" in eager["error"] and eager["median_ms"] is None
        assert e["variants"]["hf_sdpa"]["status"] == e["variants"]["fastbert"]["status"] == "ok"
        assert set(e["speedup"]["fastbert"]) == {"hf_sdpa"}


def test_other_errors_are_recorded_as_error(tmp_path, monkeypatch):
    def broken(base, dtype, device):
        raise TypeError("this family is not supported")

    monkeypatch.setitem(variants.VARIANTS, "fastbert", dataclasses.replace(variants.VARIANTS["fastbert"], build=broken))
    args = ["bench", "--arch", "bert-tiny", "--batch", "1", "--seq-len", "8", "--no-varlen", "--repeats", "1",
            "--device", "cpu", "--no-plots", "--out", str(tmp_path)]
    assert main(args) == 1  # a failed variant fails the run; the others are still measured and written
    (e,) = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert e["variants"]["fastbert"]["status"] == "error" and "not supported" in e["variants"]["fastbert"]["error"]
    assert e["variants"]["hf_eager"]["status"] == "ok" and e["speedup"] == {}


def test_time_budget_skips_the_remaining_configurations(tmp_path, capsys):
    assert main(["bench", *TINY, "--no-plots", "--time-budget", "1e-9", "--out", str(tmp_path)]) == 1
    assert "nothing was measured" in capsys.readouterr().err
    doc = json.loads((tmp_path / "bench.json").read_text())
    statuses = {r["status"] for e in doc["results"] for r in e["variants"].values()}
    assert statuses == {"skipped"}


def test_bench_rejects_bad_arguments(tmp_path, capsys):
    assert main(["bench", "--dtype", "fp8", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "dtype" in capsys.readouterr().err
    assert main(["bench", "--variants", "tensorrt", "--device", "cpu", "--out", str(tmp_path)]) == 2


def test_profile_writes_a_chrome_trace_and_tables(tmp_path, capsys):
    code = main(["profile", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "16", "--dtype", "fp32", "--device", "cpu",
                 "--steps", "1", "--warmup", "1", "--compare", "hf", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("fastbert", "hf_sdpa"):
        trace = json.loads((tmp_path / f"trace-{name}.json").read_text())
        assert trace["traceEvents"], name
    assert "self ms" in printed and "TFLOP/s" in printed and "where the time went" in printed
    assert "peak unknown" in printed
    doc = json.loads((tmp_path / "profile.json").read_text())
    fb = doc["profiles"]["fastbert"]
    assert fb["rows"] and math.isclose(sum(r["share"] for r in fb["rows"]), 1.0, rel_tol=1e-9)
    classes = {c["op_class"]: c for c in fb["classes"]}
    assert classes["matmul"]["time_us"] > 0 and classes["matmul"]["flops"] > 0
    assert classes["matmul"]["tflops"] == pytest.approx(classes["matmul"]["flops"] / (classes["matmul"]["time_us"] * 1e-6) / 1e12)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "roofline.png").read_bytes()[:4] == b"\x89PNG"
