"""Fused embeddings kernel (gather + sum + LayerNorm + dropout) against float64 math and the reference.

Without a GPU these run under TRITON_INTERPRET=1 (see conftest.py), fp32 and fp16;
bf16 at BERT sizes runs in the ``gpu`` tests. Launchers NaN-poison their outputs here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastbert.kernels.embeddings import embeddings_backward, embeddings_forward
from fastbert.ops import dispatch
from fastbert.ops.embeddings import embeddings, embeddings_reference
from fastbert.ops.embeddings_triton import triton_embeddings
from tests.helpers import rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}
TENSORS = ("word_weight", "position_weight", "token_type_weight", "norm_weight", "norm_bias", "inputs_embeds")


def make_inputs(batch, seq, hidden, dtype, seed, *, vocab=13, types=2, use_ids=True, type_ids=True, positions=None):
    """Seeded random tables and indices; ids repeat within a batch so scatter-adds collide."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    positions = positions or seq + 3
    t = {
        "input_ids": torch.randint(0, vocab, (batch, seq), generator=gen) if use_ids else None,
        "position_ids": (torch.arange(seq) + 1)[None, :],  # (1, seq): broadcast over the batch, offset like RoBERTa
        "token_type_ids": torch.randint(0, types, (batch, seq), generator=gen) if (types and type_ids) else None,
        "word_weight": rnd(vocab, hidden).to(dtype),
        "position_weight": rnd(positions, hidden).to(dtype),
        "token_type_weight": rnd(types, hidden).to(dtype) if types else None,
        "norm_weight": (1 + 0.5 * rnd(hidden)).to(dtype),
        "norm_bias": (0.5 * rnd(hidden)).to(dtype),
        "inputs_embeds": None if use_ids else rnd(batch, seq, hidden).to(dtype),
    }
    return {k: v.to(DEVICE) if v is not None else None for k, v in t.items()}


def run(fn, inputs, dy, eps, **kw):
    """Output and gradients of every float tensor input."""
    leaves = {k: inputs[k].detach().clone().requires_grad_() for k in TENSORS if inputs[k] is not None}
    args = {**inputs, **leaves}
    out = fn(args["input_ids"], args["position_ids"], args["token_type_ids"], args["word_weight"], args["position_weight"],
             args["token_type_weight"], args["norm_weight"], args["norm_bias"], eps, inputs_embeds=args["inputs_embeds"],
             **kw)  # fmt: skip
    out.backward(dy.to(out.dtype))
    return out.detach(), {k: v.grad for k, v in leaves.items() if v.grad is not None}


def oracle(input_ids, position_ids, token_type_ids, word, pos, types, w, b, eps, *, inputs_embeds=None, keep=None, p=0.0):
    """float64 definition; ``keep`` is the dropout keep mask."""
    h = (word[input_ids] if inputs_embeds is None else inputs_embeds).double()
    if types is not None:
        h = h + (types[0] if token_type_ids is None else types[token_type_ids]).double()
    h = h + pos[position_ids.expand(h.shape[:2])].double()
    y = F.layer_norm(h, (h.shape[-1],), w.double(), b.double(), eps)
    return y * keep / (1 - p) if keep is not None else y


def check(inputs, eps, tol, seed=0, keep=None, dropout_p=0.0):
    dy = torch.randn(*_shape(inputs), generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    out, g = run(triton_embeddings, inputs, dy, eps, dropout_p=dropout_p)
    dbl = {k: (v.double() if k in TENSORS and v is not None else v) for k, v in inputs.items()}
    ref, ref_g = run(lambda *a, **kw: oracle(*a, **kw, keep=keep, p=dropout_p), dbl, dy.double(), eps)
    assert out.dtype == inputs["position_weight"].dtype and out.is_contiguous()
    assert rel_err(out, ref) < tol, "forward"
    for name in g:
        assert g[name].dtype == inputs[name].dtype and g[name].shape == inputs[name].shape, name
        assert rel_err(g[name], ref_g[name]) < tol, name
    if dropout_p == 0.0:  # the reference in fp32: its fp16 backward sums table grads in fp16
        ref2, ref_g2 = run(embeddings_reference, {k: (v.float() if k in TENSORS and v is not None else v) for k, v in inputs.items()}, dy, eps)
        assert rel_err(out, ref2) < tol
        for name in g:
            assert rel_err(g[name], ref_g2[name]) < tol, name
    return out, g


def _shape(inputs):
    ids, emb = inputs["input_ids"], inputs["inputs_embeds"]
    batch, seq = ids.shape if ids is not None else emb.shape[:2]
    return batch, seq, inputs["position_weight"].shape[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hidden", [96, 200, 384, 768, 1024])
@pytest.mark.parametrize("batch, seq", [(1, 1), (1, 7), (4, 25)])
def test_sizes(batch, seq, hidden, dtype):
    check(make_inputs(batch, seq, hidden, dtype, seed=hidden + seq), 1e-12, TOL[dtype], seed=seq)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_inputs_embeds(dtype):
    check(make_inputs(3, 9, 72, dtype, seed=1, use_ids=False), 1e-12, TOL[dtype])


@pytest.mark.parametrize(
    "kw", [dict(type_ids=False), dict(types=0), dict(types=1, type_ids=False, use_ids=False)],
    ids=["type-ids-none", "no-type-table", "embeds-one-type"],
)
def test_token_type_variants(kw):
    check(make_inputs(2, 11, 96, torch.float32, seed=2, **kw), 1e-5, TOL[torch.float32])


def test_position_ids_per_row_and_eps():
    inputs = make_inputs(3, 8, 200, torch.float32, seed=3)
    inputs["position_ids"] = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    check(inputs, 1e-3, TOL[torch.float32])


def test_many_tokens_share_rows():
    """Every token hits one of 2 word rows: the atomic scatter-add must sum every contribution."""
    inputs = make_inputs(4, 50, 96, torch.float32, seed=5, vocab=2)
    check(inputs, 1e-12, 1e-5)


# --- dropout ---------------------------------------------------------------------


def kernel_keep(inputs, p, seed):
    """The kernel's keep mask, read through the output (LayerNorm outputs are never exactly 0)."""
    args = [inputs[k] for k in ("input_ids", "position_ids", "token_type_ids", "word_weight", "position_weight",
                                "token_type_weight", "norm_weight", "norm_bias")]  # fmt: skip
    out, mean, rstd = embeddings_forward(*args, 1e-12, inputs["inputs_embeds"], p, seed)
    return out, out != 0, (mean, rstd)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_rate(p):
    inputs = make_inputs(4, 16, 768, torch.float32, seed=6)
    _, keep, _ = kernel_keep(inputs, p, seed=1234)
    dropped = 1 - keep.double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / keep.numel())
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])


def test_dropout_same_seed_same_output():
    inputs = make_inputs(2, 7, 96, torch.float32, seed=7)
    a, b, c = (kernel_keep(inputs, 0.3, s)[0] for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dropout_backward_matches_forward_mask(dtype):
    inputs = make_inputs(3, 10, 200, dtype, seed=8)
    p = 0.2
    torch.manual_seed(5)  # the op draws its kernel seed from torch's generator, like this
    seed = int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64))
    _, keep, _ = kernel_keep(inputs, p, seed)
    torch.manual_seed(5)
    check(inputs, 1e-12, TOL[dtype], keep=keep, dropout_p=p)


def test_op_dropout_follows_torch_manual_seed():
    inputs = make_inputs(2, 7, 96, torch.float32, seed=9)
    call = lambda: run(triton_embeddings, inputs, torch.ones(2, 7, 96, device=DEVICE), 1e-12, dropout_p=0.5)[0]  # noqa: E731
    torch.manual_seed(0)
    a = call()
    torch.manual_seed(0)
    b = call()
    assert torch.equal(a, b) and not torch.equal(a, call())


# --- the op: dispatch, torch.compile, bad input -----------------------------------------


def test_dispatch_runs_the_kernel():
    assert dispatch.has_implementation("embeddings", "triton")
    inputs = make_inputs(2, 5, 96, torch.float32, seed=10)
    args = [inputs[k] for k in ("input_ids", "position_ids", "token_type_ids", "word_weight", "position_weight",
                                "token_type_weight", "norm_weight", "norm_bias")]  # fmt: skip
    with dispatch.record_dispatch() as log:
        out = embeddings(*args, 1e-12)
    assert log == [("embeddings", "triton")]
    assert rel_err(out, oracle(*args, 1e-12)) < 1e-6


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    inputs = make_inputs(2, 5, 96, torch.float32, seed=11)

    def fn(word):
        return triton_embeddings(inputs["input_ids"], inputs["position_ids"], inputs["token_type_ids"], word * 2,
                                 inputs["position_weight"], inputs["token_type_weight"], inputs["norm_weight"],
                                 inputs["norm_bias"], 1e-12, dropout_p=0.25).sin()  # fmt: skip

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    w_c, w_e = inputs["word_weight"].clone().requires_grad_(), inputs["word_weight"].clone().requires_grad_()
    torch.manual_seed(3)
    out_c = compiled(w_c)
    torch.manual_seed(3)
    out_e = fn(w_e)
    out_c.sum().backward()
    out_e.sum().backward()
    assert torch.equal(out_c, out_e) and rel_err(w_c.grad, w_e.grad) < 1e-6


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(input_ids=None), ValueError, "exactly one"),
        (dict(input_ids=torch.zeros(2, 5)), TypeError, "input_ids must be an int"),
        (dict(position_ids=torch.zeros(3, 5, dtype=torch.long)), ValueError, "does not broadcast"),
        (dict(word_weight=torch.zeros(13, 95)), ValueError, "word_weight must"),
        (dict(position_weight=torch.zeros(8, 96, dtype=torch.float64)), TypeError, "position_weight must be float16"),
        (dict(norm_bias=torch.zeros(5)), ValueError, "norm_bias must"),
    ],
)
def test_bad_input(change, error, match):
    inputs = make_inputs(2, 5, 96, torch.float32, seed=12) | {k: v.to(DEVICE) if v is not None else None for k, v in change.items()}
    args = [inputs[k] for k in ("input_ids", "position_ids", "token_type_ids", "word_weight", "position_weight",
                                "token_type_weight", "norm_weight", "norm_bias")]  # fmt: skip
    with pytest.raises(error, match=match):
        embeddings_forward(*args, 1e-12)


def test_backward_without_ids_returns_inputs_embeds_grad():
    inputs = make_inputs(2, 4, 96, torch.float32, seed=13, use_ids=False)
    args = [inputs[k] for k in ("input_ids", "position_ids", "token_type_ids", "word_weight", "position_weight",
                                "token_type_weight", "norm_weight", "norm_bias")]  # fmt: skip
    _, mean, rstd = embeddings_forward(*args, 1e-12, inputs["inputs_embeds"])
    dy = torch.randn(2, 4, 96, generator=torch.Generator().manual_seed(14)).to(DEVICE)
    d_word, d_pos, d_type, d_emb, d_w, d_b = embeddings_backward(dy, *args[:-1], mean, rstd, inputs["inputs_embeds"])
    assert d_word is None and d_emb.shape == (2, 4, 96) and d_w.dtype == torch.float32
    assert rel_err(d_b, dy.double().sum((0, 1))) < 1e-6


# --- GPU: BERT sizes in half precision ---------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hidden", [768, 1024], ids=["bert-base", "bert-large"])
def test_gpu_bert_shapes(hidden, dtype):
    inputs = make_inputs(16, 512, hidden, dtype, seed=hidden, vocab=30522, positions=514)
    dy = torch.randn(16, 512, hidden, generator=torch.Generator().manual_seed(15)).to(DEVICE)
    out, g = run(triton_embeddings, inputs, dy, 1e-12)
    ref, ref_g = run(embeddings_reference, {k: (v.float() if k in TENSORS and v is not None else v) for k, v in inputs.items()}, dy, 1e-12)
    assert rel_err(out, ref) < 1e-2
    for name in g:
        assert rel_err(g[name], ref_g[name]) < 1e-2, name
