"""benchmarks/ingest_gpu_results.py on suite outputs built here (a GPU-labelled one and a CPU one).

The numbers in these fake runs are random draws, not measurements; the tests check that
they land where they should, labelled as what they are. The real dry run's output is
ingested in tests/benchmarks/test_suite_dry_run.py.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import pytest

from benchmarks import ingest_gpu_results as ingest
from benchmarks.ingest_gpu_results import Refused

REPO = Path(__file__).resolve().parents[2]
DATE = "2031-02-03"


def _meta(on_gpu: bool) -> dict:
    return {"measured_on_gpu": on_gpu, "gpu_name": "NVIDIA H200" if on_gpu else None}


def fake_run(tmp_path: Path, on_gpu: bool = True, seed: int = 0, cpu_files: tuple[str, ...] = ()) -> Path:
    """A suite OUT_DIR: summary.json + results.tar.gz with the microbenchmarks, gate, bench and a table."""
    rng = random.Random(seed)
    attention = [{"batch": 32, "heads": 16, "seq": 512, "head_dim": d, "dtype": "fp16", "mode": mode,
                  "fastbert_tflops": rng.uniform(50, 500), "sdpa_flash_tflops": rng.uniform(50, 500),
                  "fastbert_over_sdpa": rng.uniform(0.5, 2), "agrees": True}
                 for d in (64, 128) for mode in ("fwd", "fwd+bwd")]  # fmt: skip
    elementwise = [{"op": op, "tokens": 65536, "hidden": 768, "dtype": "fp16", "fastbert_gbps": rng.uniform(1e3, 4e3),
                    "torch_gbps": rng.uniform(1e3, 4e3), "copy_gbps": rng.uniform(3e3, 4e3), "fastbert_of_copy": rng.random()}
                   for op in ("add_layernorm", "gelu")]  # fmt: skip
    env = {"measured_on_gpu": on_gpu, "gpu_name": "NVIDIA H200" if on_gpu else None, "compute_capability": "9.0",
           "driver_version": "580.1", "cuda_version": "13.0", "python": "3.12.3", "torch": "2.11.0", "triton": "3.6.0",
           "transformers": "5.17.0", "numpy": "2.5.2", "commit": "%040x" % rng.getrandbits(160), "dirty": False}  # fmt: skip
    ffn = [{"what": f"FFN 768->3072->768 fp16, {v}", "device": "NVIDIA H200", "tokens": 4096,
            "seconds_median": rng.uniform(1e-5, 1e-4), "speedup_vs_dense": rng.uniform(0.5, 3)}
           for v in ("dense", "2:4", "block-sparse 75% (32x32)")]  # fmt: skip
    files = {
        "prune_speed.json": {"meta": _meta(on_gpu and "prune_speed.json" not in cpu_files), "results": ffn},
        "attention.json": {"meta": _meta(on_gpu and "attention.json" not in cpu_files), "rows": attention},
        "elementwise.json": {"meta": _meta(on_gpu and "elementwise.json" not in cpu_files), "rows": elementwise},
        "compile-check.json": {"triton": "3.6.0", "summary": {"sm_90": {"ok": 173, "failed": 0}}, "rows": []},
        "bench/bench.json": {"metadata": _meta(on_gpu and "bench/bench.json" not in cpu_files), "results": []},
        "env.json": env,
        "logs/env.log": "env ok\n",
    }
    out = tmp_path / f"{'gpu' if on_gpu else 'cpu'}-out-{seed}"
    out.mkdir(parents=True)
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        for name, content in files.items():
            data = (content if isinstance(content, str) else json.dumps(content)).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        # The crossover step's results and its rewritten table: the committed table plus sm_90 entries,
        # and an sm_80 entry the run's checkout had (stale: the ingest must copy only sm_90).
        table = json.loads((REPO / "fastbert" / "data" / "linear_crossover.json").read_text())
        table["table"] |= {"80": [{"stale": True}], "90": [{"measured": seed}]}
        results = {"meta": {"gpu": "NVIDIA H200", "arch": 90}, "rows": [{"measured": seed}]}
        for name, content in (("tables/linear_crossover.json", table), ("linear_crossover.json", results)):
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    steps = [{"name": name, "exit_code": 0, "timed_out": False, "seconds": 1.0, "limit_s": 20, "outputs": {out: True}, "ok": True}
             for name, out in (("env", "env.json"), ("linear-crossover", "tables/linear_crossover.json"))]
    summary = {"measured_on_gpu": on_gpu, "dry_run": not on_gpu, "started_utc": f"{DATE}T10:00:00+00:00", "seconds": 400.0,
               "budget_s": 540.0, "steps": steps, "env": env}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary))
    return out


@pytest.fixture
def repo_copy(tmp_path):
    """A README with the markers and a data folder with the linear table (holding an sm_80
    entry of its own), copied so the real ones stay untouched."""
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    shutil.copy(REPO / "README.md", root / "README.md")
    table = json.loads((REPO / "fastbert" / "data" / "linear_crossover.json").read_text())
    table["table"]["80"] = [{"committed": True}]
    (root / "data" / "linear_crossover.json").write_text(json.dumps(table))
    return root


def _ingest(out, root, **kw):
    return ingest.ingest(out, root / "results", root / "README.md", data_dir=root / "data", **kw)


def test_a_gpu_run_becomes_a_results_folder_and_the_readme_table(tmp_path, repo_copy):
    out = fake_run(tmp_path)
    dest = _ingest(out, repo_copy, allow_cpu=False)
    assert dest.name == f"h200-{DATE}"
    for name in ("summary.json", "env.json", "attention.json", "elementwise.json", "compile-check.json",
                 "bench/bench.json", "prune_speed.json", "logs/env.log", "README.md"):
        assert (dest / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    text = (dest / "README.md").read_text()
    for row in json.loads((dest / "prune_speed.json").read_text())["results"]:
        assert f"| {row['what']} | 4096 | {row['seconds_median'] * 1e3:.3f} | {row['speedup_vs_dense']:.2f}x |" in text
    for fact in ("NVIDIA H200", "driver 580.1", "torch 2.11.0", "triton 3.6.0", "transformers 5.17.0", DATE,
                 summary["env"]["commit"], "sm_90: 173 ok, 0 failed"):
        assert fact in text, fact
    assert "not GPU" not in text
    readme = (repo_copy / "README.md").read_text()
    block = readme[readme.index(ingest.BEGIN):readme.index(ingest.END)]
    attention = json.loads((dest / "attention.json").read_text())["rows"]
    assert f"Measured on NVIDIA H200 on {DATE}" in block and f"benchmarks/results/{dest.name}/" in block
    for row in attention:
        assert f"{row['fastbert_tflops']:.4g} | {row['sdpa_flash_tflops']:.4g}" in block
    assert readme.count(ingest.BEGIN) == 1 and readme.count(ingest.END) == 1
    pytest.importorskip("matplotlib", reason="the charts need matplotlib (the bench extra)")
    assert (dest / "attention.png").stat().st_size > 0 and (dest / "elementwise.png").stat().st_size > 0


def test_a_second_ingest_replaces_the_readme_table_and_never_overwrites_a_folder(tmp_path, repo_copy):
    _ingest(fake_run(tmp_path), repo_copy, allow_cpu=False)
    with pytest.raises(Refused, match="exists already"):
        _ingest(fake_run(tmp_path, seed=1), repo_copy, allow_cpu=False)
    dest = _ingest(fake_run(tmp_path, seed=2), repo_copy, allow_cpu=False, name="h200-rerun")
    readme = (repo_copy / "README.md").read_text()
    assert readme.count(ingest.BEGIN) == 1 and "benchmarks/results/h200-rerun/" in readme and dest.name == "h200-rerun"


@pytest.mark.parametrize("cpu_files", [("attention.json",), ("bench/bench.json",), ("attention.json", "elementwise.json"),
                                       ("prune_speed.json",)])
def test_any_file_measured_off_the_gpu_is_refused(tmp_path, repo_copy, cpu_files):
    out = fake_run(tmp_path, cpu_files=cpu_files)
    before = (repo_copy / "README.md").read_text()
    with pytest.raises(Refused, match="not GPU results"):
        _ingest(out, repo_copy, allow_cpu=False)
    assert (repo_copy / "README.md").read_text() == before and not (repo_copy / "results").exists()


def test_a_cpu_run_is_refused_unless_allowed_and_then_labelled(tmp_path, repo_copy, capsys):
    out = fake_run(tmp_path, on_gpu=False)
    assert ingest.main([str(out), "--results-root", str(repo_copy / "results"), "--readme", str(repo_copy / "README.md")]) == 2
    assert "refusing" in capsys.readouterr().err
    dest = _ingest(out, repo_copy, allow_cpu=True)
    assert dest.name == f"cpu-dry-run-{DATE}"
    text = (dest / "README.md").read_text()
    assert text.startswith(f"# {dest.name}: CPU DRY RUN: NOT GPU RESULTS") and "Measured on" not in text
    readme = (repo_copy / "README.md").read_text()
    block = readme[readme.index(ingest.BEGIN):readme.index(ingest.END)]
    assert ingest.CPU_LABEL in block and "Measured on" not in block
    with pytest.raises(Refused, match="GPU only"):
        _ingest(out, repo_copy, allow_cpu=True, name="x", tables=True)


def test_apply_tables_copies_the_measured_architecture(tmp_path, repo_copy):
    before = json.loads((repo_copy / "data" / "linear_crossover.json").read_text())
    _ingest(fake_run(tmp_path, seed=7), repo_copy, allow_cpu=False, tables=True)
    after = json.loads((repo_copy / "data" / "linear_crossover.json").read_text())
    assert after["table"]["90"] == [{"measured": 7}]
    assert after["table"]["80"] == [{"committed": True}]  # the run's stale sm_80 copy is not applied
    assert {k: v for k, v in after.items() if k != "table"} == {k: v for k, v in before.items() if k != "table"}


def test_a_failed_sweep_leaves_its_table_alone(tmp_path, repo_copy):
    out = fake_run(tmp_path, seed=8)
    summary = json.loads((out / "summary.json").read_text())
    summary["steps"][1] |= {"exit_code": 124, "timed_out": True, "ok": False}
    (out / "summary.json").write_text(json.dumps(summary))
    before = (repo_copy / "data" / "linear_crossover.json").read_text()
    _ingest(out, repo_copy, allow_cpu=False, tables=True)
    assert (repo_copy / "data" / "linear_crossover.json").read_text() == before


def test_bad_input_is_a_one_line_refusal(tmp_path, repo_copy, capsys):
    assert ingest.main([str(tmp_path / "nowhere")]) == 2
    assert "summary.json is missing" in capsys.readouterr().err
    (repo_copy / "README.md").write_text("# no markers here\n")
    with pytest.raises(Refused, match="no <!-- BEGIN GPU RESULTS -->"):
        _ingest(fake_run(tmp_path), repo_copy, allow_cpu=False)
    assert not (repo_copy / "results").exists()  # refused before writing anything
