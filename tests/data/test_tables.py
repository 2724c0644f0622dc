"""The measured tables: JSON files under fastbert/data, one reader, one writer, and the
benchmark scripts that write them."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from fastbert.data import tables
from fastbert.kernels import linear_table, sparse_table
from fastbert.modules import unpad_policy

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("linear_crossover", "sparse_crossover", "unpad_threshold")


@pytest.fixture
def table_dir(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped tables that the writer writes to instead of the package's."""
    for name in NAMES:
        shutil.copy(tables.table_path(name), tmp_path)
    monkeypatch.setattr(tables, "TABLE_DIR", tmp_path)
    return tmp_path


def _script(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # its sibling crossover.py, as `python benchmarks/x.py` has
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_tables_are_what_the_layers_read():
    assert linear_table.TABLE == tables.load_table("linear_crossover", key=int) == {}  # no GPU run yet
    assert sparse_table.TABLE == tables.load_table("sparse_crossover", key=int) == {}
    assert unpad_policy.AUTO_PADDING_THRESHOLD == tables.load_table("unpad_threshold")
    assert 0.0 <= unpad_policy.AUTO_PADDING_THRESHOLD["cpu"] < 1.0 and "cuda" not in unpad_policy.AUTO_PADDING_THRESHOLD
    for name in NAMES:
        doc = json.loads(tables.table_path(name).read_text())
        assert set(doc) == {"about", "written_by", "table"} and "benchmarks/" in doc["written_by"]


def test_shipped_as_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"fastbert.data" = ["*.txt", "*.json", "*.tsv"]' in text  # sentences, tables, corpus


def test_writer_replaces_one_key_and_the_lookups_read_it(table_dir):
    linear = dict(dtype="bf16", m=1024, n=768, k=3072, activation="none", choice="cublas", triton_us=9.5, cublas_us=8.0)
    tables.write_table("linear_crossover", "90", [linear])
    tables.write_table("linear_crossover", "80", [dict(linear, choice="triton")])
    tables.write_table("linear_crossover", "90", [linear])  # rewriting an architecture replaces its entries
    written = tables.load_table("linear_crossover", key=int)
    assert written == {80: [dict(linear, choice="triton")], 90: [linear]}
    assert linear_table.choose(90, 700, 768, 3072, "bf16", None, table=written) == "cublas"
    assert linear_table.choose(80, 700, 768, 3072, "bf16", None, table=written) == "triton"

    sparse = dict(kind="block", dtype="bf16", m=8192, n=768, k=3072, block=64, sparsity=0.9, sparse_us=5.0,
                  dense_us=9.0, sparse_wins=True)  # fmt: skip
    tables.write_table("sparse_crossover", "90", [sparse])
    assert sparse_table.choose(90, 8192, 768, 3072, "bf16", 64, 0.9, table=tables.load_table("sparse_crossover", key=int)) == "block"

    doc = json.loads((table_dir / "linear_crossover.json").read_text())
    assert doc["about"] == json.loads(tables.table_path("linear_crossover").read_text())["about"]
    assert json.loads((ROOT / "fastbert" / "data" / "linear_crossover.json").read_text())["table"] == {}  # untouched


def test_crossover_scripts_list_their_sweeps_without_a_gpu(monkeypatch, capsys):
    linear = _script("linear_crossover", monkeypatch)
    assert linear.main(["--list", "--models", "bert-base"]) == 0
    assert "768 -> 3072  gelu" in capsys.readouterr().out
    sparse = _script("sparse_crossover", monkeypatch)
    assert sparse.main(["--list", "--shapes", "ffn.in", "--dtypes", "fp16", "--tokens", "4096", "--write-table"]) == 0
    assert "10 points" in capsys.readouterr().out  # 3 block sizes x 3 sparsities, plus 2:4
    assert linear.rotating(lambda: 0, nbytes=1, l2_bytes=10**9) == [0] * 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the scripts' refusal without a GPU")
def test_crossover_scripts_refuse_to_run_without_a_gpu(monkeypatch, capsys):
    for name in ("linear_crossover", "sparse_crossover"):
        with pytest.raises(SystemExit) as exit_info:
            _script(name, monkeypatch).main(["--write-table"])
        assert exit_info.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
    assert json.loads(tables.table_path("linear_crossover").read_text())["table"] == {}  # nothing written


def test_unpad_threshold_rule(monkeypatch):
    rule = _script("unpad_cpu", monkeypatch).threshold
    results = [{"padding_fraction": f, "speedup_packed_vs_padded": s}
               for f, s in ((0.11, 1.07), (0.0, 1.01), (0.05, 0.98), (0.5, 1.6), (0.02, 1.02))]  # fmt: skip
    assert rule(results, margin=0.03) == 0.05  # the last fraction before packed wins by more than 3 %
    assert rule(results, margin=0.10) == 0.11  # only 50 % wins by 10 %
    assert rule(results[:1], margin=0.03) == 0.0  # the lowest measured already wins: unpad at any padding


@pytest.mark.slow
def test_unpad_script_writes_the_threshold_it_measured(table_dir, monkeypatch, capsys):
    script = _script("unpad_cpu", monkeypatch)
    args = ["--arch", "bert-tiny", "--batch", "4", "--seq", "32", "--repeats", "1", "--threshold", "--write-table"]
    assert script.main(args) == 0
    value = tables.load_table("unpad_threshold")["cpu"]
    measured = [float(line.split("padding ")[1].split("%")[0]) / 100 for line in capsys.readouterr().out.splitlines()
                if " padding " in line]  # fmt: skip
    assert len(measured) == 5 and (value == 0.0 or any(abs(value - m) < 1e-3 for m in measured))
    with pytest.raises(SystemExit):
        script.main(["--write-table"])  # a threshold needs the sweep
