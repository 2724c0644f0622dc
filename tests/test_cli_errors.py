"""Every command x bad argument: exit code 2 and one line on stderr naming the problem; a run
that fails: exit code 1; never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers

from fastbert.cli import main

TINY_BERT = transformers.BertConfig(vocab_size=120, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                                    intermediate_size=37, max_position_embeddings=40, num_labels=2)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Folders every case can name: {EMPTY, BADCFG, NOWEIGHTS, FILE, CKPT, FULL}."""
    root = tmp_path_factory.mktemp("cli")
    (root / "empty").mkdir()
    (root / "badcfg").mkdir()
    (root / "badcfg" / "config.json").write_text("{not json")
    (root / "noweights").mkdir()
    (root / "noweights" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (root / "file").write_text("a file, not a folder")
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(TINY_BERT).save_pretrained(root / "ckpt")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("x")
    return {name.upper(): str(root / name) for name in ("empty", "badcfg", "noweights", "file", "ckpt", "full")}


def _argv(template, paths):
    return [a.format(**paths) if "{" in a else a for a in template]


P = "{CKPT}"
BAD_ARGUMENTS = [
    # top level
    (["nope"], "invalid choice"),
    # check
    (["check"], "MODEL_DIR or --arch"),
    (["check", P, "--arch", "bert-tiny"], "not both"),
    (["check", "--arch", "bert-huge"], "unknown arch"),
    (["check", "/no/such/dir"], "not a directory"),
    (["check", "{EMPTY}"], "no config.json"),
    (["check", "{BADCFG}"], "config.json"),
    (["check", "{NOWEIGHTS}"], "cannot load the checkpoint"),
    (["check", "{FILE}"], "not a directory"),
    (["check", "--arch", "bert-tiny", "--seq-len", "100000"], "position table"),
    (["check", "--arch", "bert-tiny", "--seq-len", "0"], "positive"),
    (["check", "--arch", "bert-tiny", "--batch", "0"], "positive"),
    (["check", "--arch", "bert-tiny", "--batch", "abc"], "invalid int"),
    (["check", "--arch", "bert-tiny", "--dtype", "fp8"], "invalid choice"),
    (["check", "--arch", "bert-tiny", "--device", "tpu"], "device"),
    (["check", "--arch", "bert-tiny", "--device", "cuda:x"], "device"),
    (["check", "--arch", "bert-tiny", "--json", "{FILE}/report.json"], "is a file"),
    (["check", "--arch", "bert-tiny", "--json", "{EMPTY}"], "is a folder"),
    # bench
    (["bench", "--arch", "nope", "--device", "cpu"], "unknown arch"),
    (["bench", "--arch", "bert-tiny", "--seq-len", "100000", "--device", "cpu"], "position table"),
    (["bench", "--arch", "bert-tiny", "--seq-len"], "expected at least one"),
    (["bench", "--arch", "bert-tiny", "--time-budget", "-1", "--device", "cpu"], "--time-budget"),
    (["bench", "--arch", "bert-tiny", "--time-budget", "0", "--device", "cpu"], "--time-budget"),
    (["bench", "--arch", "bert-tiny", "--out", "{FILE}/sub", "--device", "cpu"], "is a file"),
    (["bench", "--model-dir", "/no/such/dir", "--device", "cpu"], "not a directory"),
    (["bench", "--model-dir", "{BADCFG}", "--device", "cpu"], "config.json"),
    (["bench", "--dtype", "fp8", "--device", "cpu"], "dtype"),
    (["bench", "--variants", "tensorrt", "--device", "cpu"], "variant"),
    (["bench", "--batch", "0", "--device", "cpu"], "positive"),
    (["bench", "--repeats", "0", "--device", "cpu"], "--repeats"),
    (["bench", "--threads", "0", "--device", "cpu"], "--threads"),
    (["bench", "--device", "tpu"], "device"),
    # profile
    (["profile", "--seq-len", "0", "--device", "cpu"], "--seq-len"),
    (["profile", "--batch", "0", "--device", "cpu"], "--batch"),
    (["profile", "--steps", "0", "--device", "cpu"], "--steps"),
    (["profile", "--repeats", "0", "--device", "cpu"], "--repeats"),
    (["profile", "--model-dir", "/nonexistent", "--device", "cpu"], "not a directory"),
    (["profile", "--arch", "nope", "--device", "cpu"], "unknown arch"),
    (["profile", "--arch", "bert-tiny", "--model-dir", P, "--device", "cpu"], "not both"),
    (["profile", "--dtype", "fp8", "--device", "cpu"], "dtype"),
    (["profile", "--seq-len", "100000", "--device", "cpu"], "position table"),
    (["profile", "--out", "{FILE}/sub", "--device", "cpu"], "is a file"),
    (["profile", "--device", "tpu"], "device"),
    (["profile", "--peak-tflops", "-1", "--device", "cpu"], "--peak-tflops must be a positive number"),
    (["profile", "--peak-gbps", "0", "--device", "cpu"], "--peak-gbps must be a positive number"),
    (["profile", "--peak-gbps", "nan", "--device", "cpu"], "--peak-gbps must be a positive number"),
    (["profile", "--model-dir", "{NOWEIGHTS}", "--device", "cpu"], "holds no model weights"),
    (["bench", "--model-dir", "{NOWEIGHTS}", "--device", "cpu"], "holds no model weights"),
    (["bench", "--model", "{NOWEIGHTS}", "--device", "cpu"], "holds no model weights"),
    (["profile", "--model", "{NOWEIGHTS}", "--device", "cpu"], "holds no model weights"),
    # prune
    (["prune", P], "required: --sparsity"),
    (["prune", "/no/such/dir", "--sparsity", "0.5"], "not a directory"),
    (["prune", "{EMPTY}", "--sparsity", "0.5"], "no config.json"),
    (["prune", "{BADCFG}", "--sparsity", "0.5"], "config.json"),
    (["prune", "{NOWEIGHTS}", "--sparsity", "0.5"], "cannot load the checkpoint"),
    (["prune", P, "--sparsity", "1.5"], "sparsity"),
    (["prune", P, "--sparsity", "0.5", "--layers"], "expected at least one"),
    (["prune", P, "--sparsity", "0.5", "--layers", "7"], "layers"),
    (["prune", P, "--sparsity", "0.3", "--pattern", "2:4"], "2:4"),
    (["prune", P, "--sparsity", "0.5", "--pattern", "diagonal"], "pattern must be one of"),
    (["prune", P, "--sparsity", "0.5", "--out", "{FULL}"], "--force"),
    (["prune", P, "--sparsity", "0.5", "--out", "{FILE}"], "is a file"),
    (["prune", P, "--sparsity", "0.5", "--out", P], "being pruned"),
]
if torch.cuda.is_available():
    BAD_ARGUMENTS = [c for c in BAD_ARGUMENTS if "cuda" not in c[0]]
else:
    BAD_ARGUMENTS += [
        (["check", "--arch", "bert-tiny", "--device", "cuda"], "no CUDA GPU"),
        (["bench", "--arch", "bert-tiny", "--device", "cuda"], "no CUDA GPU"),
        (["profile", "--device", "cuda"], "no CUDA GPU"),
    ]


def _one_line_error(capsys, code, expected_code, match):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == expected_code, captured.err
    assert "Traceback" not in captured.out + captured.err
    assert len(lines) == 1 and match in lines[0], lines
    assert lines[0].startswith("fastbert")


@pytest.mark.parametrize("template,match", BAD_ARGUMENTS, ids=[" ".join(t) for t, _ in BAD_ARGUMENTS])
def test_bad_argument_exits_2_with_one_line(template, match, paths, capsys):
    capsys.readouterr()
    try:
        code = main(_argv(template, paths))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    _one_line_error(capsys, code, 2, match)


def test_a_failed_check_exits_1(monkeypatch, capsys):
    from fastbert.ops import dispatch
    from fastbert.ops.layernorm import add_layernorm_reference

    monkeypatch.setitem(dispatch._IMPLEMENTATIONS["add_layernorm"], "torch",
                        lambda *a, **k: add_layernorm_reference(*a, **k) * (1 + 1e-3))
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    assert main(["check", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "8"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_an_unexpected_failure_exits_1_with_one_line(monkeypatch, capsys):
    import fastbert.check

    def broken(*args, **kwargs):
        raise RuntimeError("the device fell over\nsecond line")

    monkeypatch.setattr(fastbert.check, "run_check", broken)
    code = main(["check", "--arch", "bert-tiny"])
    _one_line_error(capsys, code, 1, "RuntimeError: the device fell over second line")


def test_a_failed_save_exits_1(paths, tmp_path, monkeypatch, capsys):
    def no_space(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", no_space)
    code = main(["prune", paths["CKPT"], "--sparsity", "0.5", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1 and "No space left" in captured.err and "Traceback" not in captured.err


def test_bench_with_a_failing_variant_exits_1(tmp_path, monkeypatch, capsys):
    import dataclasses

    from fastbert.bench import variants

    def broken(base, dtype, device):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(variants.VARIANTS, "fastbert", dataclasses.replace(variants.VARIANTS["fastbert"], build=broken))
    code = main(["bench", "--arch", "bert-tiny", "--batch", "1", "--seq-len", "8", "--no-varlen", "--repeats", "1",
                 "--variants", "hf_sdpa", "fastbert", "--device", "cpu", "--no-plots", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and "1 run(s) failed" in captured.err
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["results"][0]["variants"]["fastbert"]["status"] == "error"


@pytest.mark.parametrize("argv,code,match", [
    (["check", "/no/such/dir"], 2, "not a directory"),
    (["prune", "/no/such/dir", "--sparsity", "0.5", "--layers"], 2, "expected at least one"),
])
def test_installed_entry_point_exit_codes(argv, code, match):
    out = subprocess.run([sys.executable, "-m", "fastbert.cli", *argv], capture_output=True, text=True)
    assert out.returncode == code and "Traceback" not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) == 1 and match in out.stderr


def test_check_json_into_a_new_folder_is_created_first(tmp_path, capsys):
    path = tmp_path / "new" / "folder" / "report.json"
    assert main(["check", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "8", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["passed"]
