"""Block-sparse linear for pruned weights: format, kernels, backward, dispatch table, 2:4, build gate.

Without a GPU the kernels run under TRITON_INTERPRET=1 (see conftest.py) on small
odd-sized matrices in fp32 and fp16; launchers NaN-poison their outputs here, so every
comparison also checks that every element was written. The oracle is a float64 dense
matmul of the masked weight (``BlockSparseWeight.to_dense()``).
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from fastbert.kernels import compile_check, registry, sparse_table
from fastbert.kernels.activations import activation_backward
from fastbert.kernels.sparse import sparse_forward, sparse_grad_input, sparse_grad_values
from fastbert.ops import dispatch
from fastbert.ops.linear import canonical_activation
from fastbert.ops.sparse_linear import (
    BlockSparseWeight,
    choose_path,
    is_two_four,
    pruned_linear,
    semi_structured_linear,
    semi_structured_or_none,
    semi_structured_unsupported_reason,
    sparse_linear,
    sparse_linear_reference,
    to_semi_structured,
)
from fastbert.prune.masks import block_mask, two_four_mask, unstructured_mask
from tests.helpers import TORCH_ACTIVATIONS, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def pruned(n, k, pattern, block, seed, sparsity=0.5):
    """A float32 (n, k) weight pruned the way fastbert.prune does it (plus the edge cases)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) / k**0.5
    scores = torch.rand(n, k, generator=gen)
    nb, kb = -(-n // block), -(-k // block)
    if pattern == "block":
        keep = block_mask(scores, sparsity, block)
    elif pattern == "unstructured":
        keep = unstructured_mask(scores, sparsity)
    elif pattern == "empty_rows":  # whole block rows (and a block column) gone, the rest half pruned
        keep = block_mask(scores, 0.5, block)
        keep[: block] = False
        keep[(nb - 1) * block :] = False
        keep[:, : block] = False
    elif pattern == "dense":
        keep = torch.ones(n, k, dtype=torch.bool)
    elif pattern == "zero":
        keep = torch.zeros(n, k, dtype=torch.bool)
    else:
        raise ValueError(pattern)
    assert nb and kb
    return w * keep


def make(m, n, k, dtype, pattern="block", block=32, seed=0, sparsity=0.5, lead=()):
    gen = torch.Generator().manual_seed(seed + 1000)
    w = pruned(n, k, pattern, block, seed, sparsity)
    return {
        "x": torch.randn(*lead, m, k, generator=gen).to(DEVICE, dtype),
        "w": w.to(DEVICE, dtype),
        "sw": BlockSparseWeight.from_dense(w.to(DEVICE, dtype), block),
        "bias": torch.randn(n, generator=gen).to(DEVICE, dtype),
        "residual": torch.randn(*lead, m, n, generator=gen).to(DEVICE, dtype),
    }


def dense_ref(x, w, bias=None, activation=None, residual=None):
    act = TORCH_ACTIVATIONS[canonical_activation(activation)]
    y = act(F.linear(x.double(), w.double(), None if bias is None else bias.double()))
    return y if residual is None else y + residual.double()


# --- format ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", [16, 32, 64])
@pytest.mark.parametrize("pattern, sparsity", [("dense", 0), ("block", 0.5), ("block", 0.9), ("empty_rows", 0),
                                               ("unstructured", 0.8), ("unstructured", 0.999), ("zero", 0)])  # fmt: skip
def test_format_round_trip_and_indices(pattern, sparsity, block):
    n, k = 100, 70  # neither a multiple of any block size
    w = pruned(n, k, pattern, block, seed=block, sparsity=sparsity)
    sw = BlockSparseWeight.from_dense(w, block)
    assert torch.equal(sw.to_dense(), w)
    nb, kb = -(-n // block), -(-k // block)
    tiles = F.pad(w, (0, kb * block - k, 0, nb * block - n)).view(nb, block, kb, block).transpose(1, 2)
    nonzero = (tiles != 0).flatten(2).any(-1)
    assert sw.nnz_blocks == int(nonzero.sum()) and sw.values.shape == (sw.nnz_blocks, block, block)
    assert sw.row_ptr.tolist() == [0] + nonzero.sum(1).cumsum(0).tolist()
    assert sw.block_sparsity == pytest.approx(1 - sw.nnz_blocks / (nb * kb))
    for j in range(sw.nnz_blocks):  # CSR, COO rows and padding
        r, c = int(sw.row_idx[j]), int(sw.col_idx[j])
        assert sw.row_ptr[r] <= j < sw.row_ptr[r + 1] and nonzero[r, c]
        assert torch.equal(sw.values[j], tiles[r, c])
    assert sw.t_ptr.tolist() == [0] + nonzero.sum(0).cumsum(0).tolist()
    for c in range(kb):  # transposed index: rows increasing, pointing at the right values
        span = range(int(sw.t_ptr[c]), int(sw.t_ptr[c + 1]))
        assert [int(sw.t_row[t]) for t in span] == nonzero[:, c].nonzero().flatten().tolist()
        assert all(int(sw.col_idx[sw.t_blk[t]]) == c and sw.row_idx[sw.t_blk[t]] == sw.t_row[t] for t in span)
    used = sw.dw_blocks[sw.dw_blocks >= 0]  # dW groups: every block exactly once, one column per group
    assert sorted(used.tolist()) == list(range(sw.nnz_blocks)) and sw.dw_blocks.shape[1] == 64 // block
    for g in range(sw.dw_blocks.shape[0]):
        blocks = sw.dw_blocks[g][sw.dw_blocks[g] >= 0]
        assert blocks.numel() and (sw.col_idx[blocks.long()] == sw.dw_col[g]).all()


def test_format_details():
    w = torch.zeros(40, 40)
    w[35, 3] = float("nan")  # NaN is not zero: its block is stored
    w[0, 39] = -1e-30
    sw = BlockSparseWeight.from_dense(w, 16)
    assert sw.nnz_blocks == 2 and sw.block_sparsity == pytest.approx(1 - 2 / 9)
    assert torch.equal(sw.to_dense().isnan(), w.isnan())
    half = sw.to(torch.float16)
    assert half.dtype == torch.float16 and half.row_ptr.dtype == torch.int32 and half.values.shape == sw.values.shape
    v = sw.values.clone().requires_grad_()
    sw.with_values(v).to_dense().sum().backward()  # to_dense is differentiable in the values
    ar = torch.arange(16)
    inside = ((sw.row_idx[:, None, None] * 16 + ar[None, :, None]) < 40) & ((sw.col_idx[:, None, None] * 16 + ar) < 40)
    assert torch.equal(v.grad, inside.float())  # the padding past N and K gets no gradient
    with pytest.raises(ValueError, match="block must be one of"):
        BlockSparseWeight.from_dense(w, 8)
    with pytest.raises(ValueError, match="2D"):
        BlockSparseWeight.from_dense(torch.zeros(4), 16)
    with pytest.raises(TypeError, match="floating-point"):
        BlockSparseWeight.from_dense(torch.zeros(4, 4, dtype=torch.int64), 16)
    with pytest.raises(ValueError, match="values must have shape"):
        sw.with_values(torch.zeros(3, 16, 16))


# --- forward kernel ---------------------------------------------------------------------


@pytest.mark.parametrize("block", [16, 32, 64])
@pytest.mark.parametrize("pattern, sparsity", [("dense", 0), ("block", 0.5), ("block", 0.9), ("empty_rows", 0),
                                               ("unstructured", 0.9), ("zero", 0)])  # fmt: skip
def test_forward_every_pattern(pattern, sparsity, block):
    t = make(37, 100, 70, torch.float32, pattern, block, seed=block + 1, sparsity=sparsity)
    y, pre = sparse_forward(t["x"], t["sw"], t["bias"], "gelu", save_pre=True)
    assert torch.isfinite(y).all() and torch.isfinite(pre).all()  # empty block rows written too
    assert rel_err(y, dense_ref(t["x"], t["w"], t["bias"], "gelu")) < 1e-5
    assert rel_err(pre, dense_ref(t["x"], t["w"], t["bias"])) < 1e-5
    y0, _ = sparse_forward(t["x"], t["sw"])  # no bias: empty block rows are zeros
    assert rel_err(y0, dense_ref(t["x"], t["w"])) < 1e-5
    if not t["w"].any():
        assert torch.equal(y0, torch.zeros_like(y0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, k", [(100, 70), (48, 130)])
@pytest.mark.parametrize("m", [1, 7, 100])
def test_forward_odd_shapes(m, n, k, dtype):
    t = make(m, n, k, dtype, "block", 32, seed=m + n, sparsity=0.5)
    y, _ = sparse_forward(t["x"], t["sw"], t["bias"], "relu")
    assert y.shape == (m, n) and y.dtype == dtype and y.is_contiguous()
    assert rel_err(y, dense_ref(t["x"], t["w"], t["bias"], "relu")) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation", [None, "gelu", "gelu_tanh", "relu", "silu"])
@pytest.mark.parametrize("residual", [False, True])
def test_forward_epilogues(activation, residual, dtype):
    t = make(19, 72, 40, dtype, "empty_rows", 16, seed=3)
    r = t["residual"] if residual else None
    y, _ = sparse_forward(t["x"], t["sw"], t["bias"], activation, r)
    hf_name = {"gelu_tanh": "gelu_new"}.get(activation, activation)
    assert rel_err(y, dense_ref(t["x"], t["w"], t["bias"], hf_name, r)) < TOL[dtype]


def test_forward_non_contiguous_input():
    t = make(30, 40, 72, torch.float32, "block", 16, seed=4)
    x = torch.randn(90, 100, generator=torch.Generator().manual_seed(5)).to(DEVICE)[::3, 5:77]  # strided rows
    x_t = torch.randn(72, 30, generator=torch.Generator().manual_seed(6)).to(DEVICE).t()  # unit stride along M
    for xi in (x, x_t):
        assert not xi.is_contiguous()
        y, _ = sparse_forward(xi, t["sw"], t["bias"], "silu", t["residual"])
        assert rel_err(y, dense_ref(xi, t["w"], t["bias"], "silu", t["residual"])) < 1e-5


def test_empty_inputs():
    t = make(5, 40, 72, torch.float32, "block", 32, seed=7)
    assert sparse_forward(t["x"][:0], t["sw"])[0].shape == (0, 40)
    assert sparse_grad_values(t["residual"][:0], t["x"][:0], t["sw"]).abs().sum() == 0  # no rows: zero gradient


# --- backward kernels and the autograd op -----------------------------------------------


def op_grads(fn, t, activation, dy, use_bias=True, use_residual=True):
    """Output and grads of x, values, bias, residual through ``fn(x, sw, bias, act, residual)``."""
    leaves = {
        "x": t["x"].detach().clone().requires_grad_(),
        "values": t["sw"].values.detach().clone().requires_grad_(),
        "bias": t["bias"].detach().clone().requires_grad_() if use_bias else None,
        "residual": t["residual"].detach().clone().requires_grad_() if use_residual else None,
    }
    sw = t["sw"].with_values(leaves["values"])
    out = fn(leaves["x"], sw, leaves["bias"], activation, leaves["residual"])
    out.backward(dy.to(out.dtype))
    return out.detach(), {k: v.grad for k, v in leaves.items() if v is not None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation, block, pattern", [
    (None, 16, "empty_rows"), ("gelu", 32, "block"), ("gelu_new", 64, "unstructured"), ("relu", 16, "block"),
    ("silu", 32, "empty_rows"),
])  # fmt: skip
def test_backward_against_autograd_of_the_reference(activation, block, pattern, dtype):
    t = make(23, 100, 70, dtype, pattern, block, seed=block + 8, sparsity=0.7, lead=(2,))
    dy = torch.randn(2, 23, 100, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    with dispatch.record_dispatch() as log:
        out, g = op_grads(sparse_linear, t, activation, dy)
    assert log == [("sparse_linear", "triton")]
    t64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in t.items()} | {"sw": t["sw"].to(torch.float64)}
    ref_out, ref_g = op_grads(sparse_linear_reference, t64, activation, dy.double())
    assert out.shape == (2, 23, 100) and out.dtype == dtype
    assert rel_err(out, ref_out) < TOL[dtype]
    for name in ("x", "values", "bias", "residual"):
        assert g[name].shape == ref_g[name].shape and g[name].dtype == dtype, name
        assert rel_err(g[name], ref_g[name]) < TOL[dtype], name


def test_backward_partial_and_no_grad():
    t = make(11, 48, 40, torch.float32, "block", 16, seed=10)
    dy = torch.randn(11, 48, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        y = sparse_linear(t["x"], t["sw"], t["bias"], "gelu")
    assert rel_err(y, dense_ref(t["x"], t["w"], t["bias"], "gelu")) < 1e-5
    v = t["sw"].values.clone().requires_grad_()  # fine-tuning the kept blocks only
    sparse_linear(t["x"], t["sw"].with_values(v), None, "silu").backward(dy)
    v64 = t["sw"].values.double().requires_grad_()
    F.silu(F.linear(t["x"].double(), t["sw"].with_values(v64).to_dense())).backward(dy.double())
    assert rel_err(v.grad, v64.grad) < 1e-5


def test_backward_kernels_directly_fp16():
    t = make(50, 100, 70, torch.float16, "empty_rows", 32, seed=12)
    dz = torch.randn(50, 100, generator=torch.Generator().manual_seed(13)).to(DEVICE, torch.float16)
    dx = sparse_grad_input(dz, t["sw"])
    assert rel_err(dx, dz.double() @ t["w"].double()) < 2e-3
    dv = sparse_grad_values(dz, t["x"], t["sw"])
    full = dz.double().t() @ t["x"].double()
    keep = t["sw"].with_values(torch.ones_like(t["sw"].values)).to_dense().bool()
    assert rel_err(t["sw"].with_values(dv).to_dense(), full * keep) < 2e-3
    z = torch.randn(50, 100, generator=torch.Generator().manual_seed(14)).to(DEVICE, torch.float16)
    zd = z.double().requires_grad_()
    F.gelu(zd).backward(dz.double())
    assert rel_err(activation_backward(dz, z, "gelu"), zd.grad) < 1e-3


# --- op dispatch and bad input ----------------------------------------------------------


def test_reference_backend(monkeypatch):
    t = make(9, 40, 72, torch.float32, "block", 16, seed=15)
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    with dispatch.record_dispatch() as log:
        y = sparse_linear(t["x"], t["sw"], t["bias"], "gelu_pytorch_tanh", t["residual"])
    assert log == [("sparse_linear", "torch")]
    assert rel_err(y, dense_ref(t["x"], t["w"], t["bias"], "gelu_new", t["residual"])) < 1e-6


@pytest.mark.parametrize("change, error, match", [
    (lambda t: {"x": t["x"].double()}, TypeError, "dtype"),
    (lambda t: {"x": t["x"][:, :5]}, ValueError, "in_features"),
    (lambda t: {"bias": t["bias"][:3]}, ValueError, "bias must have shape"),
    (lambda t: {"residual": t["residual"][:, :3]}, ValueError, "residual must have shape"),
    (lambda t: {"sw": t["w"]}, TypeError, "BlockSparseWeight"),
    (lambda t: {"activation": "tanh"}, ValueError, "activation"),
])  # fmt: skip
def test_bad_input(change, error, match):
    t = make(4, 40, 72, torch.float32, "block", 16, seed=16)
    args = {"x": t["x"], "sw": t["sw"], "bias": t["bias"], "activation": None, "residual": t["residual"]} | change(t)
    with pytest.raises(error, match=match):
        sparse_linear(args["x"], args["sw"], args["bias"], args["activation"], args["residual"])


# --- sparse or dense: the measured table ------------------------------------------------


def test_table_is_empty_and_dense_is_the_default():
    assert sparse_table.TABLE == {}  # no GPU run yet: nothing measured
    t = make(6, 48, 40, torch.float32, "block", 16, seed=17, sparsity=0.9)
    assert choose_path(t["sw"], 65536) == "dense"
    assert sparse_table.choose(90, 4096, 3072, 768, "fp16", 32, 0.99) == "dense"
    with dispatch.record_dispatch() as log:
        y = pruned_linear(t["x"], t["w"], t["sw"], t["bias"], "gelu", t["residual"])
    assert [op for op, _ in log] == ["linear"]
    assert rel_err(y, dense_ref(t["x"], t["w"], t["bias"], "gelu", t["residual"])) < 1e-5


def test_table_lookup_rule():
    base = dict(kind="block", dtype="fp16", n=3072, k=768, block=32, sparse_us=1.0, dense_us=1.0)
    wins = {(0.5, 4096): False, (0.5, 16384): True, (0.75, 4096): True, (0.75, 16384): True, (0.75, 65536): False}
    table = {90: [dict(base, sparsity=s, m=m, sparse_wins=w) for (s, m), w in wins.items()]}

    def choose(m, sparsity, **kw):
        key = dict(arch=90, n=3072, k=768, dtype="fp16", block=32, kind="block") | kw
        return sparse_table.choose(key["arch"], m, key["n"], key["k"], key["dtype"], key["block"], sparsity,
                                   key["kind"], table=table)  # fmt: skip

    assert choose(4096, 0.4) == "dense"  # sparser than the matrix was never measured
    assert choose(4096, 0.6) == "dense" and choose(16384, 0.6) == "block" and choose(10**6, 0.6) == "block"
    assert choose(8192, 0.6) == "dense"  # between a loss and a win: dense
    assert choose(1024, 0.8) == "block" and choose(16384, 0.95) == "block"
    assert choose(20000, 0.8) == "dense" and choose(10**6, 0.8) == "dense"  # beyond a loss: dense
    assert choose(16384, 0.8, arch=80) == "dense" and choose(16384, 0.8, block=64) == "dense"
    assert choose(16384, 0.8, dtype="bf16") == "dense" and choose(16384, 0.8, kind="2:4") == "dense"
    with pytest.raises(ValueError, match="kind"):
        sparse_table.choose(90, 1, 1, 1, "fp16", 32, 0.5, kind="csr")


# --- 2:4 semi-structured ----------------------------------------------------------------


def test_two_four_checks_without_gpu():
    w = torch.randn(64, 128)
    w24 = w * two_four_mask(w.abs())
    assert is_two_four(w24) and not is_two_four(w) and not is_two_four(torch.zeros(4, 6))
    if not torch.cuda.is_available():
        assert "CUDA" in semi_structured_unsupported_reason(w24.half())
        assert semi_structured_or_none(w24.half()) is None
        with pytest.raises(ValueError, match="CUDA"):
            to_semi_structured(w24.half())


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_semi_structured_linear(dtype):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need sm_80+")
    gen = torch.Generator().manual_seed(18)
    w = torch.randn(3072, 768, generator=gen) / 768**0.5
    w = (w * two_four_mask(w.abs())).to("cuda", dtype)
    x = torch.randn(4, 512, 768, generator=gen).to("cuda", dtype)
    b = torch.randn(3072, generator=gen).to("cuda", dtype)
    r = torch.randn(4, 512, 3072, generator=gen).to("cuda", dtype)
    w24 = to_semi_structured(w)
    y = semi_structured_linear(x, w24, b, "gelu", r)
    assert rel_err(y, dense_ref(x, w, b, "gelu", r)) < 1e-2
    assert semi_structured_unsupported_reason(w.float()) is not None  # fp32 rejected with a reason
    with pytest.raises(ValueError, match="not 2:4"):
        to_semi_structured(torch.randn(64, 128, device="cuda", dtype=dtype))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_block_sparse_bert_shapes(dtype):
    for n, k, act, block in ((3072, 768, "gelu", 32), (768, 3072, None, 64), (2304, 768, None, 16)):
        t = make(4096, n, k, dtype, "block", block, seed=n + block, sparsity=0.75)
        dy = torch.randn(4096, n, generator=torch.Generator().manual_seed(19)).to(DEVICE)
        out, g = op_grads(sparse_linear, t, act, dy)
        t32 = {k_: (v.float() if isinstance(v, torch.Tensor) else v) for k_, v in t.items()} | {"sw": t["sw"].to(torch.float32)}
        ref_out, ref_g = op_grads(sparse_linear_reference, t32, act, dy)
        assert rel_err(out, ref_out) < 1e-2
        for name in g:
            assert rel_err(g[name], ref_g[name]) < 1e-2, name


# --- build gate -------------------------------------------------------------------------

SPARSE_KERNELS = ["sparse_fwd", "sparse_dx", "sparse_dw"]


def test_sparse_kernels_are_registered_for_both_archs():
    compile_check.load_kernel_modules()
    for name in SPARSE_KERNELS:
        entry = registry.get(name)
        assert entry.module == "fastbert.kernels.sparse"
        for variant in entry.variants:
            for arch in registry.ARCHS:
                assert entry.configs_for(arch, variant), (name, variant.label, arch)
    for name in ("sparse_fwd", "sparse_dx", "sparse_dw"):  # 16-bit variants of every block size must use mma/wgmma
        variants = registry.get(name).variants
        assert {v.args["B"] for v in variants if v.matrix} == {16, 32, 64}
        assert any("bf16" in v.label and v.matrix for v in variants) and any("fp16" in v.label and v.matrix for v in variants)


def _job(name: str, label_part: str, arch: int, config: int) -> compile_check.Job:
    entry = registry.get(name)
    vi = next(i for i, v in enumerate(entry.variants) if label_part in v.label)
    return compile_check.Job(entry.module, name, vi, config, arch)


@pytest.mark.slow
def test_representatives_pass_the_gate_on_sm80_and_sm90():
    """The heaviest config of each matmul kernel compiles without spills and with mma/wgmma
    (the full sweep: ``python -m fastbert.kernels.compile_check --kernel sparse_``)."""
    compile_check.load_kernel_modules()
    jobs = [
        _job("sparse_fwd", "bf16 B=64 768->3072 act=2", arch, 1) for arch in (80, 90)  # BLOCK_M=128 on 4 warps
    ] + [_job("sparse_dx", "fp16 B=64", 90, 1), _job("sparse_dw", "fp16 B=16", 80, 1), _job("sparse_dw", "bf16 B=32", 90, 1)]
    rows = compile_check.run_jobs(jobs, workers=2)
    table = compile_check.format_table(rows)
    for row, job in zip(rows, jobs):
        assert row["status"] == "ok" and row["local"] == 0, table
        assert row["smem"] <= compile_check.SMEM_LIMIT[job.arch], table
        assert ("wgmma" if job.arch == 90 else "mma") in row["matrix"].split("+"), table
