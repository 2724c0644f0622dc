"""Pieces of the bench/profile machinery: counted FLOPs, op classes, peaks, repeats, inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastbert import numerics
from fastbert.bench import measure, profile, sweep
from fastbert.configs import random_hf_model


@pytest.mark.parametrize("arch", ["bert-tiny", "minilm-l6"])
def test_counted_matmul_flops_match_the_models_linear_layers(arch):
    model = random_hf_model(arch)
    batch, seq = 3, 7
    linears = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    expected = sum(2 * batch * seq * m.in_features * m.out_features for m in linears)
    expected += 2 * batch * model.pooler.dense.in_features * model.pooler.dense.out_features
    costs = profile.forward_costs(model.config, batch, seq, 4, pooler=True)
    assert costs["matmul"].flops == expected
    layers, hidden, _ = profile.encoder_dims(model.config)
    assert costs["attention"].flops == layers * 4 * batch * seq * seq * hidden


@pytest.mark.parametrize(("chain", "kernel", "expected"), [
    (["aten::bmm", "aten::matmul"], None, "attention"),
    (["aten::mm", "aten::matmul", "aten::linear"], None, "matmul"),
    (["aten::native_layer_norm", "aten::layer_norm"], None, "layernorm"),
    (["aten::copy_", "aten::contiguous", "aten::scaled_dot_product_attention"], None, "attention"),
    (["cudaLaunchKernel", "aten::addmm"], "sm90_xmma_gemm_f16f16", "matmul"),
    ([], "_attn_fwd", "attention"),
    (["aten::gelu"], "vectorized_elementwise_kernel", "other"),
])
def test_op_classes(chain, kernel, expected):
    assert profile.classify(chain, kernel) == expected


def test_peaks_known_for_hopper_and_unknown_on_cpu():
    h200 = profile.known_peak("NVIDIA H200")
    h100 = profile.known_peak("NVIDIA H100 80GB HBM3")
    assert h200.tflops["bfloat16"] == h100.tflops["bfloat16"] and h200.gbps > h100.gbps
    assert profile.known_peak("NVIDIA H100 PCIe").gbps < h100.gbps
    assert profile.resolve_peak(None, "float32", None, None) == (None, None, "peak unknown for this device")
    assert profile.resolve_peak(None, "float32", 1.5, 20.0)[:2] == (1.5, 20.0)


def test_repeat_count_respects_the_time_limit():
    assert measure.repeat_count(0.001, 50, 1.0) == 50
    assert measure.repeat_count(0.1, 50, 1.0) == 10
    assert measure.repeat_count(10.0, 50, 1.0) == measure.MIN_REPEATS
    assert measure.repeat_count(10.0, 1, 1.0) == 1


def test_measure_reports_order_statistics_and_the_last_output():
    values = iter(range(100))
    t, last = measure.time_alone(lambda: next(values), "cpu", warmup=2, repeats=5)
    assert t.repeats == 5 and last == 6 and t.min_s <= t.median_s <= t.p90_s


def test_varlen_lengths_are_seeded_and_in_range():
    a = sweep.row_lengths(64, 128, True, seed=3)
    assert torch.equal(a, sweep.row_lengths(64, 128, True, seed=3))
    assert a.min() >= sweep.VARLEN_MIN_LENGTH and a.max() <= 128 and len(set(a.tolist())) > 1
    assert sweep.row_lengths(4, 8, True, seed=0).tolist() == [8] * 4  # seq below 16: every row full


def test_sweep_order_and_dtype_aliases():
    configs = sweep.build_sweep(["m"], [1, 2], [8], ["fp16", "bf16"])
    assert [(c.varlen, c.batch, c.dtype) for c in configs] == [
        (False, 1, "float16"), (False, 1, "bfloat16"), (False, 2, "float16"), (False, 2, "bfloat16"),
        (True, 1, "float16"), (True, 1, "bfloat16"), (True, 2, "float16"), (True, 2, "bfloat16")]
    with pytest.raises(ValueError, match="dtype"):
        numerics.canonical_dtype("fp8")


def test_interleaved_timing_drops_a_failing_function_and_keeps_the_others():
    calls = []

    def ok():
        calls.append("ok")
        return "ok-out"

    def breaks_on_second_call():
        calls.append("bad")
        if calls.count("bad") == 2:
            raise RuntimeError("CUDA out of memory")
        return "bad-out"

    times, outputs, failed = measure.interleaved({"ok": ok, "bad": breaks_on_second_call}, {"ok": 3, "bad": 3}, "cpu")
    assert calls == ["ok", "bad", "ok", "bad", "ok"]  # one call of each in turn
    assert len(times["ok"]) == 3 and "bad" not in times and outputs["ok"] == "ok-out"
    assert isinstance(failed["bad"], RuntimeError)


def test_choose_variants_graph_modes_on_request_and_gpu_only():
    """The latency sweep's variants (fastbert's cuda_graphs mode, torch.compile reduce-overhead)
    run only when asked for, only on a GPU, and reduce-overhead is a compiled variant."""
    from fastbert.bench.command import choose_variants

    names, _ = choose_variants("cuda", None, False, True)
    assert names == ["hf_eager", "hf_sdpa", "fastbert", "fastbert_cudagraph"]
    asked = ["hf_sdpa", "hf_compile_ro", "fastbert", "fastbert_graphs"]
    assert choose_variants("cuda", asked, False, False)[0] == asked
    names, notes = choose_variants("cuda", asked, False, True)
    assert names == ["hf_sdpa", "fastbert", "fastbert_graphs"] and any("hf_compile_ro" in n for n in notes)
    names, notes = choose_variants("cpu", asked, True, False)
    assert names == ["hf_sdpa", "fastbert"]
    assert sorted(n.split()[0] for n in notes) == ["fastbert_graphs", "hf_compile_ro"]
    with pytest.raises(ValueError, match="unknown variant"):
        choose_variants("cpu", ["fastbert_graph"], False, False)
