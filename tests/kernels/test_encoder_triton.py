"""The whole optimized model on the Triton backend (interpreter on the CPU) against HF."""

from __future__ import annotations

import collections

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

import fastbert
from fastbert.ops import record_dispatch
from fastbert import FastBertConfig, FastBertEncoder
from tests.helpers import build, hf_splits_flattened_rows, pad_id, padded_batch, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PREFIX = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert", "albert": "Albert", "electra": "Electra"}
SMALL = dict(vocab_size=97, max_position_embeddings=40)


def _config(family):
    """Tiny configs with head dim 24 and odd FFN widths (the interpreter is slow)."""
    t = transformers
    return {
        "bert": t.BertConfig(hidden_size=48, num_attention_heads=2, num_hidden_layers=2, intermediate_size=37, **SMALL),
        "roberta": t.RobertaConfig(hidden_size=48, num_attention_heads=2, num_hidden_layers=1, intermediate_size=53,
                                   pad_token_id=1, **SMALL),
        "distilbert": t.DistilBertConfig(dim=48, n_heads=2, n_layers=1, hidden_dim=37, **SMALL),
        "albert": t.AlbertConfig(embedding_size=16, hidden_size=48, num_attention_heads=2, num_hidden_layers=2,
                                 intermediate_size=37, **SMALL),
        "electra": t.ElectraConfig(embedding_size=16, hidden_size=48, num_attention_heads=2, num_hidden_layers=1,
                                   intermediate_size=37, **SMALL),
    }[family]


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "triton")


@pytest.mark.parametrize("family", list(PREFIX))
@pytest.mark.parametrize("unpad", [False, True])
def test_family_matches_hf_fp32(family, unpad, triton_backend):
    config = _config(family)
    hf, fast = build(getattr(transformers, PREFIX[family] + "Model"), config)
    fastbert.optimize(fast, unpad=unpad)
    hf, fast = hf.to(DEVICE), fast.to(DEVICE)
    ids, mask = padded_batch(config.vocab_size, [11, 4, 1, 7], pad_id(config), seed=1)
    ids, mask = ids.to(DEVICE), mask.to(DEVICE)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        with record_dispatch() as log:
            out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    backends = {op: b for op, b in log}
    attention_op = "varlen_attention" if unpad else "attention"
    assert all(backends[op] == "triton" for op in (attention_op, "linear", "add_layernorm", "embeddings"))
    assert rel_err(out, ref, mask) < 1e-5


def test_bert_fp16_within_target(triton_backend):
    config = _config("bert")
    hf, fast = build(transformers.BertModel, config)
    fast = fast.half().to(DEVICE)
    ids, mask = padded_batch(config.vocab_size, [11, 4, 7], 0, seed=2)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = fast(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE)).last_hidden_state
    assert out.dtype == torch.float16 and rel_err(out.cpu(), ref, mask) < 1e-2


def test_bert_gradients_match_hf(triton_backend):
    config = _config("bert")
    hf, fast = build(transformers.BertForSequenceClassification, config)
    ids, mask = padded_batch(config.vocab_size, [9, 4, 6], 0, seed=3)
    labels = torch.tensor([0, 1, 1])
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    fast(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    from tests.helpers import grads_in_hf_names

    grads = grads_in_hf_names(fast)
    got = torch.cat([grads[k].flatten() for k, _ in hf.named_parameters()])
    ref = torch.cat([p.grad.flatten() for _, p in hf.named_parameters()])
    assert rel_err(got, ref) < 1e-4


def test_at_most_seven_launches_per_layer_in_inference(triton_backend):
    config = _config("bert")
    _, fast = build(transformers.BertModel, config)
    fastbert.optimize(fast, unpad=False)
    ids, mask = padded_batch(config.vocab_size, [11, 4], 0, seed=4)
    with torch.no_grad():
        hidden = fast.embeddings(input_ids=ids)
        with record_dispatch() as log:
            fast.encoder(hidden, attention_mask=mask)
    per_layer = len(log) / config.num_hidden_layers
    assert all(b == "triton" for _, b in log)
    assert per_layer <= 7, log


class _CountAtenOps(TorchDispatchMode):
    """Counts the aten ops that run inside the block."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_packed_encoder_attends_natively_without_pad_or_gather(monkeypatch):
    """The packed path on Triton: one unpad before the layers and one pad after, none around
    attention (``varlen_attention`` reads and writes the packed tokens), and the same forward
    and gradients as the reference backend."""
    config = FastBertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                            vocab_size=50, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    encoder = FastBertEncoder(config).to(DEVICE).eval()
    encoder.unpad = True
    lengths = [11, 4, 1, 7]  # every first token real: the encoder unpads only then
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(len(lengths), max(lengths), 48, generator=gen).to(DEVICE)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long().to(DEVICE)
    probe = torch.randn(x.shape, generator=gen).to(DEVICE) * mask[..., None]
    results = {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("FASTBERT_BACKEND", backend)
        encoder.zero_grad()
        xx = x.clone().requires_grad_()
        with record_dispatch() as log, _CountAtenOps() as aten:
            out = encoder(xx, attention_mask=mask).last_hidden_state
        (out * probe).sum().backward()
        results[backend] = (out, xx.grad, [p.grad.clone() for p in encoder.parameters()], log, aten.counts)
    out, grad_x, grads, log, aten = results["triton"]
    ops = collections.Counter(op for op, _ in log)
    assert ops["varlen_attention"] == 2 and ops["attention"] == 0
    assert ops["gather_rows"] == 1 and ops["scatter_rows"] == 1  # the encoder's unpad and pad, nothing per layer
    assert all(b == "triton" for op, b in log if op not in ("gather_rows", "scatter_rows"))
    assert aten["index_select"] == 1 and aten["index_copy"] == 1
    ref_out, ref_grad_x, ref_grads, _, ref_aten = results["torch"]
    assert ref_aten["index_copy"] > 1  # the reference pads around attention: the count above can fail
    assert rel_err(out, ref_out, mask) < 1e-5 and torch.count_nonzero(out[~mask.bool()]) == 0
    assert rel_err(grad_x, ref_grad_x, mask) < 1e-5
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < 1e-5


def test_flattened_batch_trains_as_hf(triton_backend):
    """A DataCollatorWithFlattening batch (one row, restarting position ids, no mask) on the
    Triton kernels: the MLM loss and every gradient equal HF's, whose SDPA attends within
    the sequences too (transformers 5); the packed attention kernel ran."""
    if not hf_splits_flattened_rows():
        pytest.skip(f"transformers {transformers.__version__} attends over the whole flattened row")
    config = _config("bert")
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    hf, fast = build(transformers.BertForMaskedLM, config)
    hf.train(), fast.train()
    gen = torch.Generator().manual_seed(4)
    features = [{"input_ids": (ids := torch.randint(3, config.vocab_size, (n,), generator=gen).tolist()), "labels": ids}
                for n in (5, 9, 2)]
    batch = transformers.DataCollatorWithFlattening()(features)
    ref = hf(**batch)
    with record_dispatch() as log:
        out = fast(**batch)
    assert ("varlen_attention", "triton") in log
    assert abs(out.loss.item() - ref.loss.item()) < 1e-5 * ref.loss.item()
    ref.loss.backward()
    out.loss.backward()
    from tests.helpers import grads_in_hf_names

    grads = grads_in_hf_names(fast)
    got = torch.cat([grads[k].flatten() for k, _ in hf.named_parameters()])
    want = torch.cat([p.grad.flatten() for _, p in hf.named_parameters()])
    assert rel_err(got, want) < 1e-4
