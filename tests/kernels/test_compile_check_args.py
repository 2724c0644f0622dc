"""``fastbert compile-check``'s bad arguments: exit code 2 and one line, before anything compiles
(the gate itself: tests/kernels/test_compile_check.py)."""

from __future__ import annotations

import pytest

from fastbert.cli import main
from fastbert.kernels import compile_check


@pytest.fixture
def nothing_compiles(monkeypatch):
    """Fail the test if the gate starts compiling."""
    def refuse(*args, **kwargs):
        raise AssertionError("compiled although an argument was bad")

    monkeypatch.setattr(compile_check, "run_jobs", refuse)


def _case(tmp_path, template: list[str]) -> list[str]:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    return [a.format(FILE=tmp_path / "a-file", DIR=tmp_path / "a-folder") for a in template]


BAD = [
    (["--kernel", "no-such-kernel"], "no registered kernel"),
    (["--kernel", "layernorm", "--kernel", "no-such-kernel"], "no-such-kernel"),
    (["--json", "{FILE}/gate.json"], "is a file"),
    (["--json", "{DIR}"], "is a folder"),
    (["--jobs", "0"], "--jobs"),
]


@pytest.mark.parametrize("template,match", BAD, ids=[" ".join(t) for t, _ in BAD])
@pytest.mark.parametrize("entry", ["fastbert compile-check", "python -m fastbert.kernels.compile_check"])
def test_a_bad_argument_exits_2_before_compiling(entry, template, match, tmp_path, capsys, nothing_compiles):
    argv = _case(tmp_path, template)
    code = main(["compile-check", *argv]) if entry.startswith("fastbert") else compile_check.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0] and err[0].startswith("fastbert compile-check"), err


def test_a_json_path_in_new_folders_is_accepted(tmp_path):
    compile_check.check_json_path(str(tmp_path / "new" / "deeper" / "gate.json"))
