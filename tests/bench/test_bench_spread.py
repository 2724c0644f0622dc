"""Every timing table shows its spread (median, fastest call, 90th percentile) and marks a ratio
whose two variants' ranges overlap as unreliable ('?'), with a warning line: the forward sweep,
``bench --train`` and ``bench --model`` tables, on seeded random timings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastbert.bench import measure, report, texts, train_report
from fastbert.bench.sweep import BenchConfig


def _calls(rng, center: float, n: int = 10, spikes: int = 0) -> list[float]:
    """``n`` call times (seconds) within 5 % of ``center``, the last ``spikes`` of them 4-6x slower."""
    times = list(center * (1 + 0.05 * rng.random(n - spikes)))
    return times + list(center * rng.uniform(4, 6, spikes))


def _result(seconds: list[float]) -> dict:
    t = measure.summarize(seconds, 0.0, measure.CPU_TIMER)
    return measure.variant_result("ok", median_ms=t.median_s * 1e3, p90_ms=t.p90_s * 1e3, min_ms=t.min_s * 1e3,
                                  repeats=t.repeats, real_tokens_per_s=1.0, rel_error=0.0, loss_rel_diff=0.0,
                                  loss_ok=True)


def _entries(seed: int) -> list[dict]:
    """Two configurations, fastbert about 2x faster than HF SDPA: one quiet, one whose fastbert calls spiked."""
    rng = np.random.default_rng(seed)
    entries = []
    for batch, spikes in ((1, 0), (2, 3)):
        variants = {"hf_sdpa": _result(_calls(rng, 0.02)), "fastbert": _result(_calls(rng, 0.01, spikes=spikes))}
        entry = measure.config_entry(BenchConfig("bert-tiny", batch, 16, "float32", False), (16 * batch, 16 * batch),
                                     "ref", variants)
        entry["config"]["task"] = "cls"
        entry["speedup_min"] = measure.speedups(variants, "min_ms")
        entries.append(entry)
    return entries


def _rows(table: str) -> list[str]:
    return table.splitlines()[2:4]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["forward", "train"])
def test_sweep_tables_show_the_spread_and_mark_overlapping_ratios(kind, seed):
    entries = _entries(seed)
    quiet, noisy = entries
    assert quiet["speedup_reliable"] == {"fastbert": {"hf_sdpa": True}}
    assert noisy["speedup_reliable"] == {"fastbert": {"hf_sdpa": False}}  # fastbert's p90 is beyond HF's fastest call
    fmt = ".3g" if kind == "forward" else ".4g"
    table = (report.format_table(entries, ["hf_sdpa", "fastbert"]) if kind == "forward"
             else train_report.format_train_table(entries, ["hf_sdpa", "fastbert"]))
    for row, entry in zip(_rows(table), entries):
        for r in entry["variants"].values():
            assert report.spread_cell(r["median_ms"], r["min_ms"], r["p90_ms"], fmt) in row
    for row, entry, mark in zip(_rows(table), entries, ("", report.UNRELIABLE)):
        ratio = f"{entry['speedup']['fastbert']['hf_sdpa']:.2f}x"
        if kind == "train":
            ratio += f"/{entry['speedup_min']['fastbert']['hf_sdpa']:.2f}x"
        assert f" {ratio}{mark} " in f" {row} "
    assert report.UNRELIABLE not in _rows(table)[0]
    assert "1 of 2 ratios are marked" in table and "overlap" in table


def test_a_quiet_table_has_no_warning():
    quiet = _entries(0)[:1]
    assert "warning" not in report.format_table(quiet, ["hf_sdpa", "fastbert"])
    assert report.unreliable_count(quiet) == (0, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_text_bench_table_shows_the_spread_and_marks_an_unreliable_speedup(seed):
    rng = np.random.default_rng(seed)
    entries = []
    for batch, spikes in ((1, 0), (8, 3)):
        seconds = {"plain": _calls(rng, 0.2), "fastbert": _calls(rng, 0.1, spikes=spikes)}
        outputs = {n: torch.randn(7, 16, generator=torch.Generator().manual_seed(seed)) for n in seconds}
        entry = {"dtype": "float32", "batch": batch, "sentences": 7, "real_tokens": 70, "padded_tokens": 90,
                 "padding_fraction": 2 / 9}
        texts._fill_entry(entry, seconds, outputs, {})
        entries.append(entry)
    assert [e["speedup_reliable"] for e in entries] == [True, False]
    table = texts.format_table(entries)
    rows = table.splitlines()[2:4]
    for row, entry in zip(rows, entries):
        for r in entry["variants"].values():
            assert report.spread_cell(r["median_s"], r["min_s"], r["p90_s"]) in row
    assert f" {entries[0]['speedup']:.2f}x " in rows[0] and report.UNRELIABLE not in rows[0]
    assert f"{entries[1]['speedup']:.2f}x{report.UNRELIABLE}" in rows[1]
    assert "1 of 2 speedups are marked" in table


# ---------------------------------------------------------------------------
# Progress inside a long configuration
# ---------------------------------------------------------------------------


def test_a_long_configuration_reports_its_stages(tmp_path, monkeypatch, capsys):
    """With the silence limit at 0 every stage is "long": each variant's build and warm-up and
    each timed round get a line on stderr (bench --train, whose one configuration ran 519 s
    silent on a busy machine, and the forward sweep)."""
    from fastbert.cli import main

    monkeypatch.setattr(measure, "PROGRESS_EVERY_S", 0.0)
    common = ["--arch", "bert-tiny", "--batch", "2", "--seq-len", "8", "--no-varlen", "--repeats", "2", "--warmup", "1",
              "--device", "cpu", "--no-plots"]
    for extra, variants in ((["--train"], ["hf_eager", "fastbert_ckpt"]), ([], ["hf_eager", "fastbert"])):
        capsys.readouterr()
        assert main(["bench", *extra, *common, "--variants", *variants, "--out", str(tmp_path / "x".join(extra))]) == 0
        err = capsys.readouterr().err
        for name in variants:
            assert f"{name} built" in err and "warmed up" in err.split(f"{name} built", 1)[1], err
        assert "timed round 1/2" in err, err


def test_profile_compare_times_interleaved_forwards_and_prints_their_spread(tmp_path, capsys):
    from fastbert.cli import main

    code = main(["profile", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "16", "--device", "cpu", "--steps", "1",
                 "--warmup", "1", "--repeats", "4", "--compare", "hf", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0
    timed = json.loads((tmp_path / "profile.json").read_text())["timed"]
    lines = printed.split("outside the profiler: 4 interleaved forwards of each", 1)[1].splitlines()
    for name in ("fastbert", "hf_sdpa"):
        t = timed[name]
        assert t["repeats"] == 4 and t["min_ms"] <= t["median_ms"] <= t["p90_ms"]
        assert f"{name:<10} {t['median_ms']:>10.3f} {t['min_ms']:>10.3f} {t['p90_ms']:>10.3f}" in lines
    ratio = timed["ratio"]
    assert ratio["median"] == pytest.approx(timed["hf_sdpa"]["median_ms"] / timed["fastbert"]["median_ms"])
    assert ratio["min"] == pytest.approx(timed["hf_sdpa"]["min_ms"] / timed["fastbert"]["min_ms"])
    assert ratio["reliable"] == (not measure.ranges_overlap(timed["fastbert"]["min_ms"], timed["fastbert"]["p90_ms"],
                                                            timed["hf_sdpa"]["min_ms"], timed["hf_sdpa"]["p90_ms"]))
    assert f"hf_sdpa/fastbert: {ratio['median']:.2f}x (medians), {ratio['min']:.2f}x (minima)" in printed
    assert ("unreliable" in printed) == (not ratio["reliable"])
