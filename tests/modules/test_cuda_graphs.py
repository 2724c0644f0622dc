"""CUDA-graph mode: buckets, padding a batch up to its bucket, the eager fallback, memory.

On the CPU the runner replays its bucketed steps eagerly (``replay_eagerly=True``): the
same static buffers, masks and bucket layouts a graph records, so their results are
checked here against the plain eager encoder. Capture and replay themselves run in the
``gpu`` tests.
"""

from __future__ import annotations

import copy
import logging
import pickle
import warnings

import pytest
import torch
import transformers

import fastbert
from fastbert import FastBertConfig, FastBertEncoder
from fastbert.modules import cuda_graphs
from fastbert.modules.cuda_graphs import CudaGraphRunner, GraphBuckets
from fastbert.ops import padding, record_dispatch
from tests.helpers import HostSyncs, build, family_configs, padded_batch, rel_err

BUCKETS = GraphBuckets(batches=(1, 2, 4, 8), seq_lens=(16, 32))


def _encoder(mode="auto", device="cpu"):
    torch.manual_seed(0)
    cfg = FastBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         vocab_size=50, max_position_embeddings=64)
    enc = FastBertEncoder(cfg).to(device).eval()
    enc.unpad = mode
    return enc


def _graphed(enc, buckets=BUCKETS):
    """``enc`` and a copy that runs its bucketed steps (eagerly on the CPU, replayed on a GPU)."""
    graphed = copy.deepcopy(enc)
    graphed.cuda_graphs = buckets
    graphed.cuda_graphs.replay_eagerly = next(enc.parameters()).device.type != "cuda"
    return graphed


def _batch(lengths, seq, seed, left=False, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return torch.randn(len(lengths), seq, 32, generator=gen).to(device), (mask.flip(1) if left else mask).to(device)


def test_buckets():
    b = GraphBuckets(batches=(1, 4, 8), seq_lens=(16, 128))
    assert [b.batch_bucket(n) for n in (1, 2, 4, 5, 8, 9)] == [1, 4, 4, 8, 8, None]
    assert [b.seq_bucket(n) for n in (1, 16, 17, 128, 129)] == [16, 16, 128, 128, None]
    assert [GraphBuckets.token_bucket(t, 8, 128) for t in (1, 16, 17, 64, 65, 1000, 1024)] == [16, 16, 32, 64, 128, 1024, 1024]
    assert GraphBuckets.token_bucket(5, 1, 8) == 8  # never more rows than the bucket's batch x seq
    for bad in ((), (4, 2), (0, 1), (2, 2), (1.0,)):
        with pytest.raises(ValueError, match="batches"):
            GraphBuckets(batches=bad)
    with pytest.raises(ValueError, match="cuda_graphs"):
        _encoder().cuda_graphs = "yes"


def test_bucket_layout_keeps_real_tokens_apart_from_the_filler():
    keep = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]).bool()  # 4 real tokens, an empty row
    layout = padding.bucket_layout(keep, 11, 4)
    assert layout.indices.tolist() == [0, 1, 2, 4] + [12] * 7  # real positions, then the dropped row
    assert layout.cu_seqlens.tolist() == [0, 3, 4, 4, 8, 11, 11]  # rows 3, 1, 0 tokens; filler 4 + 3
    x = torch.randn(3, 4, 5)
    packed = padding.gather_bucket(x, layout)
    assert torch.equal(packed[:4], x.reshape(-1, 5)[[0, 1, 2, 4]]) and torch.isfinite(packed).all()
    back = padding.pad_bucket(packed * 2, layout, 3, 4)
    assert torch.equal(back[keep], 2 * x[keep]) and not back[~keep].any()


@pytest.mark.parametrize("mode", [True, False, "auto"])
def test_bucketed_results_equal_eager_for_every_batch_within_the_buckets(mode):
    """Rows and positions added for the bucket are masked out: every real output (and, on the
    padded path, every padded position HF computes) equals the eager encoder's."""
    enc = _encoder(mode)
    graphed = _graphed(enc)
    cases = [([5], 7, False), ([16, 9, 3], 16, False), ([13, 2, 8, 8, 1], 13, False), ([30, 17], 30, True),
             ([7, 7], 7, False), ([1, 1, 1, 1, 1, 1, 1, 1], 1, False)]  # fmt: skip
    with torch.no_grad():
        for i, (lengths, seq, left) in enumerate(cases):
            x, mask = _batch(lengths, seq, seed=i, left=left)
            ref = enc(x, attention_mask=mask).last_hidden_state
            out = graphed(x, attention_mask=mask).last_hidden_state
            assert out.shape == ref.shape and rel_err(out, ref) < 1e-5, (lengths, seq)
        x, _ = _batch([9, 9, 9], 9, seed=9)
        assert rel_err(graphed(x).last_hidden_state, enc(x).last_hidden_state) < 1e-5  # no mask
    assert graphed.cuda_graphs.eager_calls == 0


def test_one_graph_per_bucket_and_path():
    graphed = _graphed(_encoder(True))
    with torch.no_grad():
        for lengths, seq in (([9, 4, 6], 12), ([16, 1, 3], 15), ([10, 6, 2, 8], 10)):  # batch 4, seq 16, 17-32 tokens
            graphed(*_batch(lengths, seq, seed=seq))
        assert graphed.cuda_graph_memory().graphs == 1
        graphed(*_batch([16, 9, 16], 16, seed=1, left=True))  # left padding: the padded path, a second graph
        graphed(*_batch([16, 16, 16, 1], 16, seed=2))  # 49 tokens: the next token bucket, a third
    memory = graphed.cuda_graph_memory()
    assert memory.graphs == 3 and memory.input_bytes == 4 * 16 * 32 * 4 + 4 * 16  # one buffer pair for batch 4 x seq 16


def test_outputs_are_the_callers_not_overwritten_by_the_next_call():
    enc = _encoder(True)
    graphed = _graphed(enc)
    with torch.no_grad():
        x1, m1 = _batch([8, 3], 8, seed=1)
        out1 = graphed(x1, attention_mask=m1).last_hidden_state
        kept = out1.clone()
        graphed(*_batch([8, 5], 8, seed=2))
    assert torch.equal(out1, kept)


def test_eager_fallback():
    """Past the largest bucket, with hidden states requested, general masks, or gradients
    needed, the eager encoder runs (and gives its own results)."""
    enc = _encoder(True)
    graphed = _graphed(enc)
    calls = [
        (lambda: _batch([33, 5], 33, seed=1), {}),  # sequence past the largest bucket
        (lambda: _batch([4] * 9, 4, seed=2), {}),  # batch past the largest bucket
        (lambda: (torch.randn(2, 6, 32), torch.rand(2, 6, 6) > 0.3), {}),  # a 3D mask
    ]
    with torch.no_grad():
        for make, kwargs in calls:
            x, mask = make()
            assert torch.equal(graphed(x, attention_mask=mask).last_hidden_state, enc(x, attention_mask=mask).last_hidden_state)
        x, mask = _batch([6, 2], 6, seed=3)
        hidden = graphed(x, attention_mask=mask, output_hidden_states=True).hidden_states
        assert len(hidden) == 3
    assert graphed.cuda_graphs.eager_calls == 3 and graphed.cuda_graph_memory().graphs == 0
    x, mask = _batch([6, 2], 6, seed=4)
    out = graphed(x, attention_mask=mask).last_hidden_state  # gradients enabled, parameters require them
    out.sum().backward()
    assert graphed.layers[0].qkv.weight.grad is not None and graphed.cuda_graph_memory().graphs == 0


def test_inference_mode_then_no_grad():
    """Static buffers made inside torch.inference_mode are still written under no_grad."""
    enc = _encoder(True)
    graphed = _graphed(enc)
    x, mask = _batch([10, 3], 10, seed=5)
    with torch.inference_mode():
        first = graphed(x, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        second = graphed(x, attention_mask=mask).last_hidden_state
        assert rel_err(second, enc(x, attention_mask=mask).last_hidden_state) < 1e-5
    assert torch.equal(first, second)


def test_copies_and_pickles_keep_the_setting_not_the_graphs():
    graphed = _graphed(_encoder(True))
    with torch.no_grad():
        graphed(*_batch([5, 2], 5, seed=6))
    for clone in (copy.deepcopy(graphed), pickle.loads(pickle.dumps(graphed))):
        assert clone.cuda_graphs.buckets == BUCKETS and clone.cuda_graph_memory().graphs == 0
    graphed.float()  # .to()/.float() drop the graphs: they read the parameters' old tensors
    assert graphed.cuda_graph_memory().graphs == 0 and graphed.cuda_graphs is not None
    graphed.cuda_graphs = False
    assert graphed.cuda_graphs is None and graphed.cuda_graph_memory().graphs == 0


def test_optimize_switches_graphs_on_for_the_hf_model():
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertModel, config)
    fastbert.optimize(fast, cuda_graphs=GraphBuckets(batches=(4,), seq_lens=(16,)))
    assert isinstance(fast.encoder.cuda_graphs, CudaGraphRunner)
    fast.encoder.cuda_graphs.replay_eagerly = True
    ids, mask = padded_batch(config.vocab_size, [11, 3, 7], 0, seed=6)
    with torch.no_grad(), record_dispatch() as log:
        ref = hf(input_ids=ids, attention_mask=mask)
        out = fast(input_ids=ids, attention_mask=mask)
    assert fast.encoder.cuda_graph_memory().graphs == 1 and ("gather_rows", "torch") in log
    assert rel_err(out.last_hidden_state, ref.last_hidden_state, mask) < 1e-5
    assert rel_err(out.pooler_output, ref.pooler_output) < 1e-5
    fastbert.optimize(fast, cuda_graphs=False)
    assert fast.encoder.cuda_graphs is None
    with pytest.raises(ValueError, match="cuda_graphs"):
        fastbert.optimize(fast, cuda_graphs="on")


@pytest.mark.parametrize("mode", [True, False])
def test_the_recorded_step_reads_nothing_on_the_host(mode, monkeypatch):
    """What a graph records must not make the host wait for values (capture would fail):
    replaying the bucketed step forces no host sync, and the whole call only the one read
    of the unpad decision (value checks off, the latency setting)."""
    monkeypatch.setenv("FASTBERT_CHECK_INPUTS", "0")
    graphed = _graphed(_encoder(mode))
    graphed.cuda_graphs.replay_eagerly = True  # the step itself, also on a GPU machine
    x, mask = _batch([16, 9, 3], 16, seed=7)
    with torch.no_grad():
        graphed(x, attention_mask=mask)  # captures
        (step,) = graphed.cuda_graphs._graphs.values()
        with record_dispatch() as log, HostSyncs(monkeypatch) as syncs:
            step.replay()
        assert syncs.ops == [] and (("gather_rows", "torch") in log) == mode  # the path under test ran
        with HostSyncs(monkeypatch) as syncs:
            graphed(x, attention_mask=mask)
        assert len(syncs.ops) == int(mode), syncs.ops


# --- GPU: capture and replay ---------------------------------------------------------


@pytest.mark.gpu  # skipped, with the reason, without CUDA (tests/conftest.py)
@pytest.mark.parametrize("mode", [True, False])
def test_gpu_replay_equals_eager_and_memory_is_reported(mode, caplog):
    enc = _encoder(mode, device="cuda")
    graphed = _graphed(enc)
    assert not graphed.cuda_graphs.replay_eagerly
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="fastbert.cuda_graphs"):
        for i, (lengths, seq) in enumerate((([5, 2, 7], 7), ([16, 9, 3], 16), ([30, 1], 30))):
            x, mask = _batch(lengths, seq, seed=i, device="cuda")
            ref = enc(x, attention_mask=mask).last_hidden_state
            for _ in range(2):  # the first call captures, the second replays
                out = graphed(x, attention_mask=mask).last_hidden_state
                assert rel_err(out, ref) < 1e-5
    graphs = 3 if mode else 2  # packed: 16 and 32 tokens in batch 4 x seq 16, 32 in 2 x 32; padded: one per bucket
    memory = graphed.cuda_graph_memory()
    assert memory.graphs == graphs and memory.pool_bytes > 0 and memory.input_bytes > 0
    assert sum("captured a CUDA graph" in r.getMessage() for r in caplog.records) == graphs
    assert graphed.cuda_graphs.eager_calls == 0


@pytest.mark.parametrize("bad", [8, None, 3.0, "16"])
@pytest.mark.parametrize("field", ["batches", "seq_lens"])
def test_buckets_that_are_not_sequences_are_a_type_error_naming_the_argument(field, bad):
    with pytest.raises(TypeError, match=f"{field} must be a sequence"):
        GraphBuckets(**{field: bad})
    assert GraphBuckets(**{field: [1, 16]}) == GraphBuckets(**{field: (1, 16)})  # any sequence works


def test_optimize_refuses_sequence_buckets_past_the_position_table(monkeypatch):
    """A bucket longer than the model's positions is refused before the model is touched; up to
    the table is accepted (RoBERTa numbers positions from its padding index: fewer tokens)."""
    monkeypatch.setattr(cuda_graphs, "_warned_without_cuda", True, raising=False)
    for family in ("bert", "roberta"):
        config = family_configs()[family]
        config.max_position_embeddings = 40
        model = transformers.AutoModel.from_config(config).eval()
        limit = fastbert.models.max_sequence_length(config)
        with pytest.raises(ValueError, match=rf"seq_lens \[100000\] exceed the model's position table \(at most {limit}"):
            fastbert.optimize(model, cuda_graphs=GraphBuckets(seq_lens=(16, 100000)))
        with pytest.raises(ValueError, match=rf"seq_lens \[{limit + 1}\]"):
            fastbert.optimize(model, cuda_graphs=GraphBuckets(seq_lens=(16, limit + 1)))
        assert not fastbert.models.base.is_optimized(model)  # refused before any work
        fastbert.optimize(model, cuda_graphs=GraphBuckets(seq_lens=(16, limit)))
        assert model.encoder.cuda_graphs.buckets.seq_lens == (16, limit)


def test_graphs_on_without_cuda_warn_once(monkeypatch):
    """Without a CUDA device every call runs eagerly: optimize says so, once per process."""
    monkeypatch.setattr(cuda_graphs, "_warned_without_cuda", False, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = family_configs()["bert"]
    with pytest.warns(UserWarning, match="no CUDA device is available, so every forward runs eagerly"):
        fastbert.optimize(transformers.BertModel(config), cuda_graphs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastbert.optimize(transformers.BertModel(config), cuda_graphs=GraphBuckets(seq_lens=(16,)))  # not again
        monkeypatch.setattr(cuda_graphs, "_warned_without_cuda", False, raising=False)
        fastbert.optimize(transformers.BertModel(config), cuda_graphs=False)  # graphs off: nothing to say
