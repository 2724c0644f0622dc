"""The ahead-of-time build gate: real kernels pass it, deliberately bad configs fail it."""

from __future__ import annotations

import json

import pytest
import triton
import triton.language as tl

from fastbert.kernels import compile_check, launch, registry
from fastbert.kernels.registry import Variant


def _selftest_configs(arch: int) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK": 64}, num_warps=4, num_stages=2),  # fine
        triton.Config({"BLOCK": 256}, num_warps=8, num_stages=4),  # ~1 MB of pipelined tiles in shared memory
        triton.Config({"BLOCK": 64}, num_warps=2, num_stages=2),  # under a warpgroup: no wgmma on sm_90
        triton.Config({"BLOCK": 128}, num_warps=2, num_stages=1),  # 256 accumulators per thread: spills
    ]


@registry.kernel(
    name="gate_selftest_matmul",
    variants=[Variant("fp16", {"A": "*fp16", "B": "*fp16", "C": "*fp16", "K": 1024}, {}, matrix=True)],
    configs=_selftest_configs,
)
def _selftest_matmul(A, B, C, K, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK, BLOCK], tl.float32)
    for k in range(0, K, BLOCK):
        a = tl.load(A + offs[:, None] * K + (k + offs)[None, :])
        b = tl.load(B + (k + offs)[:, None] * BLOCK + offs[None, :])
        acc += tl.dot(a, b)
    tl.store(C + offs[:, None] * BLOCK + offs[None, :], acc.to(tl.float16))


def _run_gate(tmp_path, *argv):
    path = tmp_path / "gate.json"
    rc = compile_check.main([*argv, "--json", str(path)])
    return rc, json.loads(path.read_text())


def _fastbert_kernels() -> list[registry.Kernel]:
    compile_check.load_kernel_modules()
    return [k for k in registry.kernels() if k.module.startswith("fastbert.kernels.")]


@pytest.mark.slow
def test_every_kernel_passes_the_gate(tmp_path, capsys):
    """The gate as ``fastbert compile-check`` runs it, on this Triton: every kernel x variant x
    config on sm_75 (what runs there), sm_80 and sm_90; the heaviest config of each variant on
    sm_86 and sm_89."""
    kernels = _fastbert_kernels()
    rc, report = _run_gate(tmp_path, *[arg for k in kernels for arg in ("--kernel", k.name)])
    table = capsys.readouterr().out
    rows = report["rows"]
    failed = [r for r in rows if r["status"] != "ok"]
    assert rc == 0 and not failed, "\n".join(str(r) for r in failed) + "\n" + table[-3000:]
    expected, left_out = set(), set()
    for k in kernels:
        for v in k.variants:
            for arch in registry.ARCHS:
                if launch.unsupported_reason(arch, k.module, bf16="*bf16" in v.args.values()) is not None:
                    left_out.add((k.name, v.label, f"sm_{arch}"))
                    continue
                configs = k.configs_for(arch, v)
                if arch in compile_check.DEFAULT_REPRESENTATIVE:
                    configs = [configs[compile_check.heaviest_config(configs)]]
                expected |= {(k.name, v.label, registry.config_label(c), f"sm_{arch}") for c in configs}
    got = [(r["kernel"], r["variant"], r["config"], r["arch"]) for r in rows]
    assert len(got) == len(set(got)) and set(got) == expected
    assert {(r["kernel"], r["variant"], r["arch"]) for r in report["not_built"]} == left_out
    assert {arch for _, _, arch in left_out} == {"sm_75"}  # only T4 leaves anything out
    for r in rows:
        arch = int(r["arch"][3:])
        assert r["local"] == 0 and r["regs"] <= 255 and r["smem"] <= compile_check.SMEM_LIMIT[arch]
        variant = next(v for v in registry.get(r["kernel"]).variants if v.label == r["variant"])
        if variant.matrix:  # each matmul-class row shows its arch's tensor-core instructions
            assert compile_check.MATRIX_SASS[arch][1] in r["matrix"].split("+")
    coverage = {arch: c["coverage"] for arch, c in report["summary"].items()}
    assert coverage == {f"sm_{a}": "representative" if a in compile_check.DEFAULT_REPRESENTATIVE else "full"
                        for a in registry.ARCHS}
    assert sum(c["ok"] for c in report["summary"].values()) == len(rows) and report["triton"] == triton.__version__
    for name in {r["kernel"] for r in rows}:
        assert name in table


def test_heaviest_config_is_the_largest_tile_times_stages():
    configs = [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_stages=3), triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_stages=2),
               triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_stages=4), triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_stages=1)]
    assert compile_check.heaviest_config(configs) == 1  # 128x64 x 2 stages ties 128x32 x 4 (16384): the first wins
    assert compile_check.heaviest_config(configs[2:]) == 0


def test_bad_configs_fail_the_gate(tmp_path):
    rc, report = _run_gate(tmp_path, "--kernel", "gate_selftest", "--arch", "80", "--arch", "sm_90")
    assert rc == 1
    status = {(r["config"], r["arch"]): r["status"] for r in report["rows"]}
    assert len(status) == 8
    good, smem, narrow, spill = (registry.config_label(c) for c in _selftest_configs(90))
    assert status[(good, "sm_80")] == "ok" and status[(good, "sm_90")] == "ok"
    assert "shared memory" in status[(smem, "sm_80")] and "shared memory" in status[(smem, "sm_90")]
    assert status[(narrow, "sm_80")] == "ok" and "no wgmma" in status[(narrow, "sm_90")]
    assert "spills" in status[(spill, "sm_80")] and "spills" in status[(spill, "sm_90")]
    assert report["summary"]["sm_90"] == {"coverage": "full", "compiled": 4, "ok": 1, "failed": 3, "not_built": {}}


def test_matmul_kernels_are_not_built_for_sm75(tmp_path, capsys):
    """sm_75 has no tensor-core dots in Triton: the matmul-class selftest is listed as not built, never as passing."""
    rc, report = _run_gate(tmp_path, "--kernel", "gate_selftest", "--arch", "75")
    assert rc == 0 and report["rows"] == []
    assert [r["arch"] for r in report["not_built"]] == ["sm_75"]
    assert "tensor-core" in report["not_built"][0]["reason"]
    assert "not built" in capsys.readouterr().out


def test_arch_option_and_unknown_kernel(tmp_path):
    rc, report = _run_gate(tmp_path, "--kernel", "gate_selftest", "--arch", "sm_80")
    assert {r["arch"] for r in report["rows"]} == {"sm_80"} and len(report["rows"]) == 4
    assert compile_check.main(["--kernel", "no-such-kernel"]) == 2  # a bad argument: test_compile_check_args.py
    for bad in ("sm_70", "95", "hopper"):
        with pytest.raises(SystemExit):
            compile_check.main(["--arch", bad])
    assert compile_check.parse_arch("all") == list(registry.ARCHS)
    rc, report = _run_gate(tmp_path, "--kernel", "gate_selftest", "--arch", "80", "--representative", "89")
    assert [(r["arch"], r["config"]) for r in report["rows"] if r["arch"] == "sm_89"] == [
        ("sm_89", registry.config_label(_selftest_configs(89)[1]))]  # the heaviest: BLOCK=256, 4 stages
    assert report["summary"]["sm_89"]["coverage"] == "representative" and report["summary"]["sm_80"]["compiled"] == 4


def test_cli_subcommand_takes_the_gate_options(tmp_path, capsys):
    """``fastbert compile-check --arch 90 --json X`` through the main CLI, as the GPU suite calls it."""
    from fastbert.cli import main

    path = tmp_path / "gate.json"
    assert main(["compile-check", "--arch", "90", "--kernel", "layernorm_bwd_reduce", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert [(r["kernel"], r["arch"], r["status"]) for r in report["rows"]] == [("layernorm_bwd_reduce", "sm_90", "ok")]
    captured = capsys.readouterr()
    assert "1 ok, 0 failed" in captured.out
    assert "compile-check: 1/1 compiled, 0 failed" in captured.err  # the progress line
    with pytest.raises(SystemExit) as bad:
        main(["compile-check", "--arch", "70"])
    assert bad.value.code == 2 and "unsupported arch" in capsys.readouterr().err
