"""The GPU suite's plan and machinery, without running its real steps (CI's dry run does that:
``tests/benchmarks/test_suite_dry_run.py``)."""

from __future__ import annotations

import json
import random
import re
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_suite
from benchmarks.gpu_suite import Context, Step


@pytest.fixture
def ctx(tmp_path):
    return Context(work=tmp_path, python=sys.executable, dry_run=False, cpus=2)


def test_the_plan_fits_one_gpu_call():
    limits = sum(s.limit_s for s in gpu_suite.STEPS)
    assert limits + gpu_suite.RESERVE_S <= gpu_suite.BUDGET_S["gpu"] <= 9 * 60
    assert gpu_suite.BUDGET_S["cpu"] <= 120
    files = gpu_suite.returned_files()
    assert len(files) == len(set(files)) <= gpu_suite.MAX_RETURNED
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)  # what the GPU machine returns by name
    names = [s.name for s in gpu_suite.STEPS]
    assert len(names) == len(set(names))
    for required in ("env", "gpu-tests", "compile-check", "attention", "elementwise", "bench", "latency", "profile",
                     "linear-crossover", "sparse-crossover"):
        assert required in names


@pytest.mark.parametrize("dry_run", [False, True])
def test_every_step_declares_its_files_and_commands(tmp_path, dry_run):
    ctx = Context(work=tmp_path, python=sys.executable, dry_run=dry_run, cpus=2)
    for step in gpu_suite.STEPS:
        argv, outputs = step.argv(ctx), step.outputs(ctx)
        assert argv[0] == sys.executable and outputs, step.name
        assert all(not Path(o).is_absolute() and len(Path(o).parts) <= 2 for o in outputs), step.name
        if step.returned and not dry_run:
            assert step.returned in outputs
    by_name = {s.name: s for s in gpu_suite.STEPS}
    gate = by_name["compile-check"].argv(ctx)
    assert gate[1:4] == ["-m", "fastbert.cli", "compile-check"] and gate[gate.index("--arch") + 1] == "90"
    assert ("--list" in by_name["linear-crossover"].argv(ctx)) == dry_run
    assert ("--tiny" in by_name["attention"].argv(ctx)) == dry_run


def _step(name, code, outputs=("out.txt",), limit=10.0, **kw):
    writes = "; ".join(f"open({str(o)!r}, 'w').write('x')" for o in outputs)
    return Step(name, limit, lambda c: [sys.executable, "-c", f"import os; os.chdir({str(c.work)!r}); {writes}; {code}"],
                lambda c: list(outputs), **kw)


def test_a_step_past_its_limit_is_killed_with_its_children(ctx):
    pid_file = ctx.work / "child.pid"
    step = Step("sleepy", 2.0, lambda c: ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], lambda c: ["never.txt"])
    (ctx.work / "logs").mkdir()
    record = gpu_suite.run_step(step, ctx, step.limit_s)
    assert record["timed_out"] and record["exit_code"] == 124 and not record["ok"]
    assert record["seconds"] < 15 and record["outputs"] == {"never.txt": False}
    child = Path(f"/proc/{int(pid_file.read_text())}")
    deadline = time.monotonic() + 10  # the signal is delivered at once; exiting may take a moment
    while _alive_sleep(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive_sleep(child)


def _alive_sleep(proc: Path) -> bool:
    """Whether the /proc entry is still our ``sleep 60``, running (not a zombie, nor a reused pid)."""
    try:
        return proc.joinpath("cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"60"] and \
            proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def test_steps_are_independent_and_the_summary_says_what_happened(tmp_path, monkeypatch):
    steps = [
        _step("first", "import sys; sys.exit(3)", returned="out.txt"),
        _step("second", "pass", outputs=("second.json",), returned="second.json"),
        _step("third", "pass", outputs=("logs/third-extra.txt",)),
    ]
    monkeypatch.setattr(gpu_suite, "STEPS", steps)
    out = tmp_path / "out"
    assert gpu_suite.run_suite(out, dry_run=True) == 1  # "first" failed
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["exit_code"], s["ok"]) for s in summary["steps"]] == [
        ("first", 3, False), ("second", 0, True), ("third", 0, True)]
    assert summary["measured_on_gpu"] is False and summary["dry_run"] and "NOT GPU" in summary["label"]
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_suite.returned_files())
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"out.txt", "second.json", "logs/third-extra.txt", "summary.json"} <= names
    assert {f"logs/{n}.log" for n in ("first", "second", "third")} <= names


def test_only_runs_the_named_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, "STEPS", [_step("a", "pass"), _step("b", "raise SystemExit(1)")])
    assert gpu_suite.run_suite(tmp_path, dry_run=True, only=["a"]) == 0
    assert [s["name"] for s in json.loads((tmp_path / "summary.json").read_text())["steps"]] == ["a"]


def test_a_step_with_no_time_left_is_recorded_as_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, "STEPS", [_step("late", "pass")])
    monkeypatch.setitem(gpu_suite.BUDGET_S, "cpu", gpu_suite.RESERVE_S)  # nothing left once the reserve is kept
    assert gpu_suite.run_suite(tmp_path, dry_run=True) == 1
    record = json.loads((tmp_path / "summary.json").read_text())["steps"][0]
    assert record["exit_code"] is None and "no time left" in record["skipped"]


def test_add_step_is_the_hook_for_later_steps(monkeypatch):
    monkeypatch.setattr(gpu_suite, "STEPS", list(gpu_suite.STEPS))
    gpu_suite.add_step(_step("cuda-graph-latency", "pass"), before="bench")
    names = [s.name for s in gpu_suite.STEPS]
    assert names.index("cuda-graph-latency") == names.index("bench") - 1
    with pytest.raises(ValueError, match="exists already"):
        gpu_suite.add_step(_step("bench", "pass"))


def test_the_bundle_drops_profiler_traces_rather_than_pass_the_file_limit(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "profile").mkdir(parents=True)
    out.mkdir()
    (work / "profile" / "trace-fastbert.json").write_bytes(random.Random(0).randbytes(2**20))  # 1 MiB, incompressible
    (work / "profile" / "profile.json").write_text("{}")
    monkeypatch.setattr(gpu_suite, "MAX_FILE_BYTES", 64 * 1024)
    record = gpu_suite.bundle(work, out)
    assert record["left_out"] == ["profile/trace-fastbert.json"] and record["bytes"] <= 64 * 1024
    with tarfile.open(out / "results.tar.gz") as tar:
        assert tar.getnames() == ["profile/profile.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the suite would run, not refuse")
def test_without_a_gpu_the_suite_refuses_unless_asked_for_a_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FASTBERT_SUITE_ALLOW_CPU", raising=False)
    assert gpu_suite.main([str(tmp_path / "out")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_gpu_commands_parse(ctx, capsys, monkeypatch):
    """The GPU-only arguments never run here: each step's GPU command line is at least parsed
    by the program it calls (the crossover scripts with ``--list`` added, which stops there)."""
    import importlib.util

    from fastbert.cli import build_parser

    monkeypatch.syspath_prepend(str(Path(gpu_suite.__file__).parent))  # the scripts import their sibling helper
    for step in gpu_suite.STEPS:
        argv = step.argv(ctx)
        if argv[1:3] == ["-m", "fastbert.cli"]:
            build_parser().parse_args(argv[3:])
        elif argv[1].endswith("_crossover.py"):
            spec = importlib.util.spec_from_file_location(Path(argv[1]).stem, argv[1])
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            assert module.main([*argv[2:], "--list"]) == 0, step.name
    assert "points" in capsys.readouterr().out
