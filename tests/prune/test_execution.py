"""How pruned projections run: the path choice per device/table, the block-sparse path through the layer, the report."""

from __future__ import annotations

import pytest
import torch
import transformers

from fastbert.modules import FastBertLayer
from fastbert.modules import projection
from fastbert.modules.projection import SparsePlan, plan_of
from fastbert.ops import dispatch
from fastbert.ops.sparse_linear import execution_path
from fastbert.prune import prune
from tests.helpers import build, padded_batch, rel_err

CUDA = torch.device("cuda")
CONFIG = transformers.BertConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                 intermediate_size=96, max_position_embeddings=40)


@pytest.fixture
def capability(monkeypatch):
    """Pretend the CUDA device has the given compute capability (no GPU needed for the choice)."""
    def set_capability(major, minor=0):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    return set_capability


def _entry(kind, wins, m=4096, n=1536, k=384, block=0, sparsity=0.5, dtype="fp16"):
    return dict(kind=kind, dtype=dtype, m=m, n=n, k=k, block=block, sparsity=sparsity, sparse_us=1.0, dense_us=1.0,
                sparse_wins=wins)


def test_off_cuda_everything_is_dense(capability):
    capability(9)
    for kind in ("2:4", "block"):
        assert execution_path(kind, torch.device("cpu"), torch.float16, 1536, 384, 8192, 32, 0.75) == "dense"


def test_two_four_path(capability):
    capability(8)
    path = lambda dtype=torch.float16, n=1536, k=384, table={}: execution_path(  # noqa: E731
        "2:4", CUDA, dtype, n, k, 8192, table=table)
    assert path() == "2:4" and path(torch.bfloat16) == "2:4"
    assert path(torch.float32) == "dense"  # sparse tensor cores: 16-bit only
    assert path(n=1530) == "dense" and path(k=96) == "dense"  # shapes PyTorch's kernels refuse
    assert path(table={80: [_entry("2:4", False, m=8192)]}) == "dense"  # measured slower here: dense
    assert path(table={80: [_entry("2:4", True, m=8192)]}) == "2:4"
    assert path(table={80: [_entry("2:4", True, m=8192, n=768, k=768)]}) == "dense"  # measured, not this shape
    capability(7, 5)
    assert path() == "dense"  # no sparse tensor cores before sm_80


def test_block_path_follows_the_measured_table(capability):
    capability(9)
    path = lambda table, sparsity=0.75: execution_path(  # noqa: E731
        "block", CUDA, torch.float16, 1536, 384, 8192, 32, sparsity, table=table)
    assert path({}) == "dense"  # nothing measured: dense
    win = {90: [_entry("block", True, m=8192, block=32, sparsity=0.75)]}
    assert path(win) == "block"
    assert path(win, sparsity=0.5) == "dense"  # less sparse than anything measured
    assert path({90: [_entry("block", False, m=8192, block=32, sparsity=0.75)]}) == "dense"
    with pytest.raises(ValueError, match="kind"):
        execution_path("csr", CUDA, torch.float16, 1, 1, 1)


def _layer(seed=0):
    torch.manual_seed(seed)
    return FastBertLayer(64, 4, 96, "gelu").eval()


def test_block_sparse_path_gives_the_dense_masked_result_through_the_layer(monkeypatch):
    """With the table (monkeypatched) choosing the block-sparse kernel, the layer's output is the
    dense layer's with the pruned weights: Triton kernels under TRITON_INTERPRET on the CPU."""
    if not dispatch.interpreter_enabled() and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 or a GPU")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(transformers.BertModel, CONFIG)[1].eval().to(device)
    prune(model, 0.5, pattern="block", block_size=16, scope="layer")
    layer = model.encoder.layers[0]
    assert isinstance(plan_of(layer.intermediate), SparsePlan)
    x = torch.randn(2, 7, 64, device=device)
    mask = torch.ones(2, 7, dtype=torch.bool, device=device)
    mask[1, 5:] = False
    attn_mask = mask[:, None, None, :]
    with torch.no_grad():
        ref = layer(x, attn_mask=attn_mask)  # reference backend, dense GEMMs on the masked weights
        monkeypatch.delenv("FASTBERT_BACKEND", raising=False)
        monkeypatch.setattr(projection, "execution_path", lambda kind, *a, **k: kind)
        with dispatch.record_dispatch() as log:
            out = layer(x, attn_mask=attn_mask)
    assert [op for op, _ in log].count("sparse_linear") == 4 and ("sparse_linear", "triton") in log
    assert rel_err(out, ref, mask) < 1e-5
    # the sparse form follows the weights: change one kept weight, the next call sees it
    with torch.no_grad():
        w = layer.output.weight
        kept = (w != 0).nonzero()[0]
        w[kept[0], kept[1]] += 1.0
        with dispatch.record_dispatch():
            again = layer(x, attn_mask=attn_mask)
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    with torch.no_grad():
        want = layer(x, attn_mask=attn_mask)
    assert rel_err(again, want, mask) < 1e-5 and rel_err(again, out, mask) > 1e-4


def test_training_runs_dense(monkeypatch):
    model = build(transformers.BertModel, CONFIG)[1]
    prune(model, 0.5, pattern="2:4")
    monkeypatch.setattr(projection, "execution_path", lambda kind, *a, **k: kind)
    plan = plan_of(model.encoder.layers[1].qkv)
    x = torch.randn(3, 64)
    assert plan.path(x, model.encoder.layers[1].qkv.weight) == "dense"  # grad enabled, weight trains
    with torch.no_grad():
        assert plan.path(x, model.encoder.layers[1].qkv.weight) == "2:4"


@pytest.mark.parametrize("pattern,words", [
    ("unstructured", "not skipped (no speedup)"), ("2:4", "2:4 semi-structured"), ("block", "block-sparse Triton"),
    ("neurons", "smaller dense"),
])
def test_report_says_ideal_and_how_it_runs(pattern, words):
    model = build(transformers.BertModel, CONFIG)[1]
    report = prune(model, 0.5, pattern=pattern, block_size=16, scope="layer")
    text = report.format()
    assert "ideal projection FLOP ratio" in text and "(ideal: not a measured speedup)" in text
    assert words in text and "speedup: not measured" in text and "predicted" not in text
    assert report.to_dict()["measured_speedup"] is None and report.ideal_flop_ratio > 1.0
    planned = [plan_of(getattr(layer, a)) is not None for layer in model.encoder.layers
               for a in ("qkv", "attention_output", "intermediate", "output")]
    assert all(planned) if pattern in ("2:4", "block") else not any(planned)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_two_four_layer_matches_dense_masked(dtype):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need sm_80+")
    torch.manual_seed(1)
    layer = FastBertLayer(384, 12, 1536, "gelu").eval().cuda().to(dtype)
    from fastbert.prune.execution import plan_execution
    from fastbert.prune.masks import two_four_mask
    from fastbert.prune.targets import LAYER_MATRICES, Target

    chosen = [Target(a, 0, r, getattr(layer, a)) for a, r in LAYER_MATRICES.items()]
    with torch.no_grad():
        for t in chosen:
            t.module.weight.mul_(two_four_mask(t.module.weight.abs().float()))
    x = torch.randn(8, 512, 384, device="cuda", dtype=dtype)
    with torch.no_grad():
        ref = layer(x)
        plan_execution(chosen, "2:4", 0)
        assert plan_of(layer.intermediate).path(x, layer.intermediate.weight) == "2:4"
        out = layer(x)
    assert rel_err(out, ref) < 1e-2
