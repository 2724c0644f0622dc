"""The ahead-of-time build gate: real kernels pass it, deliberately bad configs fail it."""

from __future__ import annotations

import json

import pytest
import triton
import triton.language as tl

from fastbert.kernels import compile_check, registry
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


@pytest.mark.slow
def test_attention_kernels_pass_the_gate(tmp_path, capsys):
    rc, rows = _run_gate(tmp_path, "--kernel", "attention")
    table = capsys.readouterr().out
    failed = [r for r in rows if r["status"] != "ok"]
    assert rc == 0 and not failed, table
    expected = {
        (k.name, v.label, registry.config_label(c), f"sm_{arch}")
        for k in registry.kernels()
        if "attention" in k.name
        for v in k.variants
        for arch in registry.ARCHS
        for c in k.configs_for(arch, v)
    }
    assert {"attention_fwd", "attention_bwd_delta", "attention_bwd_dkdv", "attention_bwd_dq"} <= {e[0] for e in expected}
    got = [(r["kernel"], r["variant"], r["config"], r["arch"]) for r in rows]
    assert len(got) == len(set(got)) and set(got) == expected
    for r in rows:
        assert r["local"] == 0 and r["regs"] <= 255 and r["smem"] <= compile_check.SMEM_LIMIT[int(r["arch"][3:])]
        assert r["kernel"] in table and r["config"] in table


def test_bad_configs_fail_the_gate(tmp_path):
    rc, rows = _run_gate(tmp_path, "--kernel", "gate_selftest")
    assert rc == 1
    status = {(r["config"], r["arch"]): r["status"] for r in rows}
    assert len(status) == 8
    good, smem, narrow, spill = (registry.config_label(c) for c in _selftest_configs(90))
    assert status[(good, "sm_80")] == "ok" and status[(good, "sm_90")] == "ok"
    assert "shared memory" in status[(smem, "sm_80")] and "shared memory" in status[(smem, "sm_90")]
    assert status[(narrow, "sm_80")] == "ok" and "no wgmma" in status[(narrow, "sm_90")]
    assert "spills" in status[(spill, "sm_80")] and "spills" in status[(spill, "sm_90")]


def test_arch_option_and_unknown_kernel(tmp_path, capsys):
    rc, rows = _run_gate(tmp_path, "--kernel", "gate_selftest", "--arch", "sm_80")
    assert {r["arch"] for r in rows} == {"sm_80"} and len(rows) == 4
    assert compile_check.main(["--kernel", "no-such-kernel"]) == 1
    with pytest.raises(SystemExit):
        compile_check.main(["--arch", "sm_75"])
