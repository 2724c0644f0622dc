"""Checks of a real CPU dry run of the GPU suite, and the ingest script on its output.

CI makes the dry run (``FASTBERT_SUITE_ALLOW_CPU=1 benchmarks/gpu_suite.sh DIR``, about a
minute) and then runs this file with ``FASTBERT_SUITE_OUTPUT=DIR``; without that variable
these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from benchmarks import gpu_suite
from benchmarks import ingest_gpu_results as ingest

REPO = Path(__file__).resolve().parents[2]
OUTPUT = os.environ.get("FASTBERT_SUITE_OUTPUT")
pytestmark = pytest.mark.skipif(not OUTPUT, reason="set FASTBERT_SUITE_OUTPUT to a dry run's folder (.ci/run does)")
MEASUREMENTS = ("attention.json", "elementwise.json", "bench/bench.json", "profile/profile.json", "env.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = Path(OUTPUT)
    unpacked = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(out / gpu_suite.BUNDLE) as tar:
        tar.extractall(unpacked, filter="data")
    return out, json.loads((out / gpu_suite.SUMMARY).read_text()), unpacked


def test_every_step_ran_and_wrote_its_files(run):
    out, summary, unpacked = run
    assert [s["name"] for s in summary["steps"]] == [s.name for s in gpu_suite.STEPS]
    ctx = gpu_suite.Context(work=unpacked, python="python3", dry_run=True, cpus=1)
    for record, step in zip(summary["steps"], gpu_suite.STEPS):
        assert record["exit_code"] == 0 and not record["timed_out"] and record["ok"], record
        assert set(record["outputs"]) == set(step.outputs(ctx)) and all(record["outputs"].values()), record
        for name in step.outputs(ctx):
            assert (unpacked / name).stat().st_size > 0, name  # and they travelled in the tarball
        assert (unpacked / "logs" / f"{step.name}.log").is_file()
    assert summary["seconds"] <= gpu_suite.BUDGET_S["cpu"]


def test_what_comes_back_fits_the_gpu_machines_limits(run):
    out, _, _ = run
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(gpu_suite.returned_files()) and len(files) <= gpu_suite.MAX_RETURNED
    assert all(p.is_file() and p.stat().st_size <= gpu_suite.MAX_FILE_BYTES for p in out.iterdir())


def test_every_result_says_it_is_not_a_gpu_result(run):
    out, summary, unpacked = run
    assert summary["measured_on_gpu"] is False and summary["dry_run"] is True and "NOT GPU" in summary["label"]
    for name in MEASUREMENTS:
        doc = json.loads((unpacked / name).read_text())
        meta = doc.get("meta") or doc.get("metadata") or doc
        assert meta["measured_on_gpu"] is False, name
    for name in ("attention.json", "elementwise.json"):
        assert "not GPU results" in json.loads((out / name).read_text())["meta"]["label"]


def test_the_gate_and_the_crossover_listings_ran(run):
    out, _, unpacked = run
    gate = json.loads((out / "compile-check.json").read_text())
    assert gate["archs"] == ["sm_90"] and gate["rows"] and all(r["status"] == "ok" for r in gate["rows"])
    assert "points" in (unpacked / "logs" / "sparse-crossover.log").read_text()
    assert "->" in (unpacked / "logs" / "linear-crossover.log").read_text()


def test_ingest_refuses_the_dry_run_and_labels_it_when_allowed(run, tmp_path, capsys):
    out, summary, _ = run
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    argv = [str(out), "--results-root", str(tmp_path / "results"), "--readme", str(readme)]
    assert ingest.main(argv) == 2 and "refusing" in capsys.readouterr().err
    assert ingest.main([*argv, "--allow-cpu", "--apply-tables"]) == 2  # tables only from a GPU
    assert ingest.main([*argv, "--allow-cpu"]) == 0
    dest = tmp_path / "results" / f"cpu-dry-run-{summary['started_utc'][:10]}"
    assert (dest / "README.md").read_text().startswith(f"# {dest.name}: CPU DRY RUN: NOT GPU RESULTS")
    for name in ("summary.json", "attention.json", "elementwise.json", "compile-check.json", "bench/bench.json",
                 "profile/profile.json"):
        assert (dest / name).is_file(), name
    block = readme.read_text().split(ingest.BEGIN)[1].split(ingest.END)[0]
    assert ingest.CPU_LABEL in block and "Measured on" not in block
