"""``torch.compile(fullgraph=True)`` of the encoder and of an optimized HF model, on both paths.

Under compile the unpad decision cannot be read on the host without a graph break; the
encoder computes it on the device and ``torch.cond`` picks the packed or the padded path
at run time (both are in the one graph), so compiled results equal eager ones for every
mode and batch: packed where eager packs, padded where eager runs padded. The backend is
``aot_eager`` (AOTAutograd's tracing with functionalization, eager kernels): what a
fullgraph compile must trace, without Inductor's CPU code generation time.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch._dynamo.testing import CompileCounterWithBackend

import fastbert
from fastbert import FastBertConfig, FastBertEncoder
from tests.helpers import build, family_configs, pad_id, padded_batch, rel_err


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _encoder(mode, layers=2):
    torch.manual_seed(0)
    cfg = FastBertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=37,
                         vocab_size=50, max_position_embeddings=64)
    enc = FastBertEncoder(cfg).eval()
    enc.unpad = mode
    return enc


def _batch(lengths, seq, seed, left=False):
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return torch.randn(len(lengths), seq, 32, generator=gen), mask.flip(1) if left else mask


@pytest.mark.parametrize("mode", [False, True, "auto"])
def test_fullgraph_matches_eager_on_both_paths(mode):
    """One compiled graph serves a right-padded batch (packed unless mode is False) and a
    left-padded one (always padded), each equal to eager at every position, hidden states
    included. fullgraph=True raises on any graph break; the graphs are counted too: one,
    holding the torch.cond and the packed branch's data-dependent unpad op."""
    enc = _encoder(mode)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(enc, fullgraph=True, backend=counter)
    for lengths, left in (([9, 4, 1, 7], False), ([9, 6, 2, 9], True)):
        x, mask = _batch(lengths, 9, seed=len(lengths) + left, left=left)
        with torch.no_grad():
            eager = enc(x, attention_mask=mask, output_hidden_states=True)
            out = compiled(x, attention_mask=mask, output_hidden_states=True)
        assert len(out.hidden_states) == len(eager.hidden_states) == 3
        for o, e in zip((out.last_hidden_state, *out.hidden_states), (eager.last_hidden_state, *eager.hidden_states)):
            assert rel_err(o, e) < 1e-5
        packed = mode is not False and not left
        padded_positions = out.last_hidden_state[~mask.bool()]
        assert bool((padded_positions == 0).all()) == packed  # zeros there exactly when it ran packed
    assert counter.frame_count == 1
    targets = {str(n.target) for g in counter.graphs[0].modules() if isinstance(g, torch.fx.GraphModule)
               for n in g.graph.nodes}  # fmt: skip
    assert ("fastbert.packed_positions.default" in targets and "cond" in targets) == (mode is not False), targets


def test_without_fullgraph_the_padded_path_compiles_without_breaks():
    """torch.compile's default (graph breaks allowed) cannot hold the packed path's data-dependent
    size inside torch.cond: the padded path is compiled, in one graph, with eager's padded results."""
    enc = _encoder("auto")
    x, mask = _batch([9, 4, 1], 9, seed=4)
    explanation = torch._dynamo.explain(enc)(x, attention_mask=mask)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    torch._dynamo.reset()
    out = torch.compile(enc, backend="aot_eager")(x, attention_mask=mask).last_hidden_state
    enc.unpad = False
    assert rel_err(out, enc(x, attention_mask=mask).last_hidden_state) < 1e-6


def test_gradients_through_the_compiled_packed_path():
    enc = _encoder(True).double()
    x, mask = _batch([9, 4, 1, 7], 9, seed=5)
    x = x.double()
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grads = []
    for run in (enc, torch.compile(enc, fullgraph=True, backend="aot_eager")):
        xx = x.clone().requires_grad_()
        (run(xx, attention_mask=mask).last_hidden_state * probe).sum().backward()
        grads.append((xx.grad, [p.grad.clone() for p in enc.parameters()]))
        enc.zero_grad()
    (gx_eager, gp_eager), (gx_compiled, gp_compiled) = grads
    assert rel_err(gx_compiled, gx_eager) < 1e-10
    for a, b in zip(gp_compiled, gp_eager):
        assert rel_err(a, b) < 1e-10


def test_optimized_hf_model_compiles_in_one_graph_and_matches_hf():
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    fastbert.optimize(fast, unpad=True)
    ids, mask = padded_batch(config.vocab_size, [11, 3, 7], 0, seed=6)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        out = compiled(input_ids=ids, attention_mask=mask)
    assert rel_err(out.last_hidden_state, ref.last_hidden_state, mask) < 1e-5
    assert rel_err(out.pooler_output, ref.pooler_output) < 1e-5


# Several shapes in sequence. After the first shape torch.compile retraces with dynamic sizes
# (automatic dynamic shapes), where the batch and the sequence are symbols; with dynamic=True
# the first trace already is. The shapes take the packed branch (right padding) and the
# padded one (left padding); with dynamic=True, or without fullgraph, the padded path is
# compiled alone (fastbert/modules/compiling.py).
SHAPES = (([9, 4, 1, 7], 9, False), ([5, 3], 6, False), ([6, 6, 2], 6, True))


@pytest.mark.parametrize("fullgraph, dynamic", [(True, None), (True, True), (False, None)])
def test_several_shapes_match_eager(fullgraph, dynamic):
    """Each shape equals eager at every real token and, at padded positions, eager's zeros where
    the branch packs and HF's values (the padded path's) elsewhere; no compile per shape."""
    enc = _encoder(True, layers=1)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(enc, fullgraph=fullgraph, dynamic=dynamic, backend=counter)
    branch_packs = fullgraph and dynamic is None
    for lengths, seq, left in SHAPES:
        x, mask = _batch(lengths, seq, seed=seq + left, left=left)
        with torch.no_grad():
            out = compiled(x, attention_mask=mask, output_hidden_states=True)
            enc.unpad = True if branch_packs else False  # what the compiled forward must equal
            eager = enc(x, attention_mask=mask, output_hidden_states=True)
            enc.unpad = True
        for o, e in zip(out.hidden_states, eager.hidden_states):
            assert rel_err(o, e) < 1e-5
        assert rel_err(out.last_hidden_state, eager.last_hidden_state) < 1e-5
        packed = branch_packs and not left
        assert bool((out.last_hidden_state[~mask.bool()] == 0).all()) == packed
    assert counter.frame_count <= 2  # no compile per shape


@pytest.mark.slow
def test_a_float_changed_between_calls_compiles():
    """A LayerNorm eps changed after a compiled call (as recipes change a dropout's p) is a
    symbolic float on the retrace (automatic dynamic), which torch.cond refuses: the padded
    path is compiled and the result equals eager with the new eps."""
    enc = _encoder(True, layers=1)
    compiled = torch.compile(enc, fullgraph=True, backend="aot_eager")
    for eps, (lengths, seq, left) in zip((1e-12, 1e-3), SHAPES):
        for module in enc.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = eps
        x, mask = _batch(lengths, seq, seed=seq)
        with torch.no_grad():
            out = compiled(x, attention_mask=mask).last_hidden_state
            eager = enc(x, attention_mask=mask).last_hidden_state
        assert rel_err(out, eager, mask) < 1e-5


def _family_batches(config):
    batches = [padded_batch(config.vocab_size, lengths, pad_id(config), seed=seq) for lengths, seq, _ in SHAPES]
    return [(i.flip(1), m.flip(1)) if left else (i, m) for (i, m), (_, _, left) in zip(batches, SHAPES)]


def _one_layer(config):
    config = copy.deepcopy(config)
    setattr(config, "n_layers" if config.model_type == "distilbert" else "num_hidden_layers", 1)
    return config


FAMILIES = [f if f == "bert" else pytest.param(f, marks=pytest.mark.slow) for f in sorted(family_configs())]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_compiles_several_shapes_and_matches_hf(family):
    """fullgraph=True, the shapes dynamic from the first trace (mark_dynamic: the retrace that
    crashed, in one compile), packed and padded batches: HF's outputs at every real token.
    One layer: what is compiled per family is the same for every layer."""
    config = _one_layer(family_configs()[family])
    hf, fast = build(transformers.AutoModel.from_config, config)
    fastbert.optimize(fast, unpad=True)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fast, fullgraph=True, backend=counter)
    for n, (ids, mask) in enumerate(_family_batches(config)):
        if n == 0:
            for t in (ids, mask):
                torch._dynamo.mark_dynamic(t, 0)
                torch._dynamo.mark_dynamic(t, 1)
        with torch.no_grad():
            ref = hf(input_ids=ids, attention_mask=mask)
            out = compiled(input_ids=ids, attention_mask=mask)
        assert rel_err(out.last_hidden_state, ref.last_hidden_state, mask) < 1e-5
        if getattr(ref, "pooler_output", None) is not None:
            assert rel_err(out.pooler_output, ref.pooler_output) < 1e-5
    assert counter.frame_count == 1


@pytest.mark.slow
def test_gradients_on_several_shapes():
    """Backward through the compiled graph on a second shape (the dynamic retrace, packed) and a
    left-padded third (padded branch): the gradients of eager."""
    enc = _encoder(True, layers=1).double()
    compiled = torch.compile(enc, fullgraph=True, backend="aot_eager")
    for lengths, seq, left in SHAPES:
        x, mask = _batch(lengths, seq, seed=seq, left=left)
        probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(seq + 1), dtype=torch.float64)
        grads = []
        for run in (enc, compiled):
            xx = x.double().requires_grad_()
            (run(xx, attention_mask=mask).last_hidden_state * probe).sum().backward()
            grads.append([xx.grad, *(p.grad.clone() for p in enc.parameters())])
            enc.zero_grad()
        for eager, comp in zip(*grads):
            assert rel_err(comp, eager) < 1e-10
