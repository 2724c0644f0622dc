"""Architecture fallback in dispatch: where the kernels cannot run, the reference runs, with one warning.

No GPU here: the tests play a GPU of another compute capability by replacing
``dispatch._capability`` and asking for the implementation for a ``cuda`` device. The
Triton implementations they reach run on the CPU tensors through the interpreter.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from fastbert.kernels import compile_check, launch, registry
from fastbert.ops import dispatch, record_dispatch
from fastbert.ops import sparse_linear  # noqa: F401  (registers the sparse_linear op)
from fastbert.ops.layernorm import add_layernorm_reference
from tests.helpers import rel_err

CUDA = torch.device("cuda")
MATMUL_OPS = ("attention", "linear", "sparse_linear")
ROW_OPS = ("add_layernorm", "embeddings")


@pytest.fixture
def gpu(monkeypatch):
    """``gpu(arch)``: dispatch sees a CUDA device of compute capability ``arch``; warnings reset."""
    if not dispatch.triton_available():
        pytest.skip("triton is not importable here")
    monkeypatch.setenv("FASTBERT_BACKEND", "auto")
    monkeypatch.setattr(dispatch, "_WARNED", set())

    def play(arch: int) -> None:
        monkeypatch.setattr(dispatch, "_capability", lambda device: arch)

    return play


def _layernorm_inputs(dtype: torch.dtype, rows: int = 7, hidden: int = 96):
    gen = torch.Generator().manual_seed(rows * hidden)
    x, res = (torch.randn(rows, hidden, generator=gen).to(dtype) for _ in range(2))
    w, b = (torch.randn(hidden, generator=gen).to(dtype) for _ in range(2))
    return x, res, w, b, 1e-12


def _implementation_of(op: str, expect_warning: str | None):
    with warnings.catch_warnings(record=True) as caught, record_dispatch() as log:
        warnings.simplefilter("always")
        fn = dispatch.implementation(op, CUDA)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if expect_warning is None:
        assert messages == [], messages
    else:
        assert len(messages) == 1 and op in messages[0] and expect_warning in messages[0], messages
    return fn, log


@pytest.mark.parametrize("op", MATMUL_OPS + ROW_OPS)
def test_older_than_sm75_runs_the_reference_and_warns_once(gpu, op):
    gpu(70)
    fn, log = _implementation_of(op, "older than sm_75")
    assert fn is dispatch._IMPLEMENTATIONS[op]["torch"] and log == [(op, "torch")]
    fn, log = _implementation_of(op, None)  # the same op and reason: no second warning
    assert fn is dispatch._IMPLEMENTATIONS[op]["torch"] and log == [(op, "torch")]


@pytest.mark.parametrize("op", MATMUL_OPS)
def test_matmul_ops_run_the_reference_on_sm75(gpu, op):
    gpu(75)
    fn, log = _implementation_of(op, "no tensor-core matmul on sm_75")
    assert fn is dispatch._IMPLEMENTATIONS[op]["torch"] and log == [(op, "torch")]


def test_row_ops_on_sm75_run_triton_in_fp16_and_the_reference_in_bf16(gpu):
    gpu(75)
    fn, log = _implementation_of("add_layernorm", None)
    assert log == []  # decided per call, from the dtypes

    half = _layernorm_inputs(torch.float16)
    with warnings.catch_warnings(record=True) as caught, record_dispatch() as calls:
        warnings.simplefilter("always")
        out = fn(*half)
    assert caught == [] and calls == [("add_layernorm", "triton")]
    assert not out.isnan().any() and rel_err(out, add_layernorm_reference(*half)) < 1e-2

    bf16 = _layernorm_inputs(torch.bfloat16)
    for expected_warnings in (1, 0):  # the second call: same op, same reason, no warning
        with warnings.catch_warnings(record=True) as caught, record_dispatch() as calls:
            warnings.simplefilter("always")
            out = dispatch.implementation("add_layernorm", CUDA)(*bf16)
        messages = [str(w.message) for w in caught]
        assert len(messages) == expected_warnings and all("bfloat16 needs sm_80" in m for m in messages), messages
        assert calls == [("add_layernorm", "torch")]
        assert torch.equal(out, add_layernorm_reference(*bf16))  # it *is* the reference


@pytest.mark.parametrize("arch", [80, 86, 89, 90])
@pytest.mark.parametrize("op", MATMUL_OPS + ROW_OPS)
def test_supported_archs_run_triton_without_warning(gpu, op, arch):
    gpu(arch)
    fn, log = _implementation_of(op, None)
    assert fn is dispatch._IMPLEMENTATIONS[op]["triton"] and log == [(op, "triton")]


def test_warnings_are_per_op_and_reason(gpu):
    gpu(70)
    _implementation_of("linear", "older than sm_75")
    _implementation_of("attention", "older than sm_75")
    gpu(75)
    _implementation_of("linear", "no tensor-core matmul")  # same op, new reason


def test_cpu_tensors_never_consult_the_architecture(gpu, monkeypatch):
    def no_gpu(device):
        raise AssertionError("a CPU tensor asked for a compute capability")

    monkeypatch.setattr(dispatch, "_capability", no_gpu)
    dispatch.implementation("linear", torch.device("cpu"))


def test_every_triton_op_names_its_kernel_module():
    triton_ops = set(dispatch.TRITON_MODULES) | {"sparse_linear"}
    assert triton_ops <= set(dispatch.KERNEL_MODULES)


def test_the_gate_builds_for_sm75_exactly_what_dispatch_runs_there():
    compile_check.load_kernel_modules()
    jobs = compile_check.plan([75], [])
    built_modules = {job.module for job in jobs}
    # The elementwise activation kernels (no dots) still compile there; only the matmul ops
    # launch them, and those run their reference on sm_75.
    assert built_modules == {dispatch.KERNEL_MODULES[op] for op in ROW_OPS} | {"fastbert.kernels.activations"}
    for job in jobs:
        variant = registry.get(job.kernel).variants[job.variant]
        assert "*bf16" not in variant.args.values(), (job.kernel, variant.label)
    left_out = compile_check.not_built([75], [])
    assert left_out
    for row in left_out:
        assert row["reason"] == launch.unsupported_reason(75, registry.get(row["kernel"]).module, bf16="bf16" in row["variant"])
    assert not compile_check.not_built([80, 86, 89, 90], [])
