"""Flattened rows (several sequences end to end in one row, no attention mask) against HF.

transformers 5 splits a row at restarting ``position_ids`` for BERT, RoBERTa, XLM-R,
CamemBERT and ELECTRA (``masking_utils.find_packed_sequence_indices``: a new sequence
wherever a position id is not the previous one plus 1), and attends over the whole row for
DistilBERT and ALBERT; transformers 4 over the whole row for every family. Each test holds
fastbert against the installed HF, so it checks whichever of these the installed version
does. The flash-attention keywords (``cu_seq_lens_q`` ...) are read only by HF's
flash-attention implementation, which attends within those sequences: its oracle here is HF
(SDPA) given the same sequences as a block-diagonal 4D mask; transformers 4's base models
take no such keywords (TypeError, in HF and fastbert alike).
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import transformers
from torch._dynamo.testing import CompileCounterWithBackend

import fastbert
from fastbert.modules.flattened import sequence_starts
from tests.helpers import build, family_configs, grads_in_hf_names, hf_splits_flattened_rows, pad_id, rel_err

CONFIGS = family_configs()
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")
TAKES_KWARGS = any(p.kind is inspect.Parameter.VAR_KEYWORD
                   for p in inspect.signature(transformers.BertModel.forward).parameters.values())
SPLITS_ROWS = hf_splits_flattened_rows()
needs_kwargs = pytest.mark.skipif(not TAKES_KWARGS, reason=f"transformers {transformers.__version__}'s base models "
                                  "take no flash-attention keywords (test_keywords_refused_where_hf_refuses_them)")


def _model_class(family: str, suffix: str = "Model"):
    return getattr(transformers, type(CONFIGS[family]).__name__.replace("Config", suffix))


def _flattened(family: str, lengths, seed: int):
    """One flattened row: random ids of ``lengths`` sequences end to end, their restarting
    position ids (from RoBERTa's padding_idx + 1 where positions start there) and cu_seqlens."""
    gen = torch.Generator().manual_seed(seed)
    start = pad_id(CONFIGS[family]) + 1 if family in ROBERTA_LIKE else 0
    ids = torch.randint(3, CONFIGS[family].vocab_size, (1, sum(lengths)), generator=gen)
    positions = torch.cat([torch.arange(n) for n in lengths])[None] + start
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return ids, positions, cu


def _block_mask(cu: torch.Tensor, tokens: int) -> torch.Tensor:
    """``(1, 1, tokens, tokens)`` bool: each token sees its own sequence of ``cu``."""
    sequence = torch.searchsorted(cu[1:].long(), torch.arange(tokens), right=True)
    return (sequence[:, None] == sequence[None, :])[None, None]


def _skip_without_position_ids(family: str) -> None:
    if "position_ids" not in inspect.signature(_model_class(family).forward).parameters:
        pytest.skip(f"transformers {transformers.__version__}'s {family} takes no position_ids")


def _assert_same(out, ref, tol=1e-5):
    assert set(ref.keys()) <= set(out.keys())
    for key, r in ref.items():
        if key == "hidden_states":
            assert len(out[key]) == len(r)
            for o, h in zip(out[key], r):
                assert rel_err(o, h) < tol, key
        elif isinstance(r, torch.Tensor):
            assert out[key].shape == r.shape and rel_err(out[key], r) < tol, key


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_restarting_position_ids_match_hf_at_every_token(family):
    _skip_without_position_ids(family)
    hf, fast = build(_model_class(family), CONFIGS[family])
    ids, positions, _ = _flattened(family, [5, 1, 9, 3], seed=1)
    with torch.no_grad():
        ref = hf(input_ids=ids, position_ids=positions, output_hidden_states=True)
        out = fast(input_ids=ids, position_ids=positions, output_hidden_states=True)
        whole_row = fast(input_ids=ids, position_ids=positions, attention_mask=torch.ones_like(ids))
    _assert_same(out, ref)
    splits = fast.base_model._fastbert_adapter.splits_rows_by_position_ids()
    assert splits == (family not in ("distilbert", "albert") and SPLITS_ROWS)
    # with a mask nothing is split, as in HF: the flattened row differs from it exactly where HF splits
    assert (rel_err(out.last_hidden_state, whole_row.last_hidden_state) > 1e-3) == splits


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_position_ids_neither_a_range_nor_clean_restarts_match_hf(family):
    """Jumps, repeats and descents, in a batch of two rows, one of them a plain range
    starting above 0 (one sequence for HF) and position ids broadcast from one row."""
    _skip_without_position_ids(family)
    hf, fast = build(_model_class(family), CONFIGS[family])
    start = pad_id(CONFIGS[family]) + 1 if family in ROBERTA_LIKE else 0
    odd = torch.tensor([0, 1, 2, 5, 6, 6, 3, 2, 1, 0, 1, 2]) + start
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, CONFIGS[family].vocab_size, (2, 12), generator=gen)
    for positions in (torch.stack((odd, torch.arange(12) + start + 3)), odd[None]):
        with torch.no_grad():
            ref = hf(input_ids=ids, position_ids=positions, output_hidden_states=True)
            out = fast(input_ids=ids, position_ids=positions, output_hidden_states=True)
        _assert_same(out, ref)


def test_sequence_starts_follow_transformers_rule():
    """The rule fastbert applies equals the one HF's masks use, on random position ids."""
    masking_utils = pytest.importorskip("transformers.masking_utils")
    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        pytest.skip(f"transformers {transformers.__version__} has no packed-sequence detection")
    gen = torch.Generator().manual_seed(3)
    positions = torch.randint(0, 4, (3, 40), generator=gen).cumsum(1) - 5
    positions[1, 7:] = torch.arange(33)
    ref = masking_utils.find_packed_sequence_indices(positions)
    assert torch.equal(sequence_starts(positions).cumsum(1) - 1, ref)


@needs_kwargs
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_flash_keywords_attend_within_their_sequences(family):
    """As HF's flash-attention implementation: each token attends within its cu_seq_lens
    sequence, position ids as given (restarting) or, when not given, the row's own 0..n-1."""
    hf, fast = build(_model_class(family), CONFIGS[family])
    ids, positions, cu = _flattened(family, [4, 7, 1, 6], seed=4)
    mask = _block_mask(cu, ids.shape[1])
    flash = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu.clone(), max_length_q=7, max_length_k=torch.tensor(7),
                 seq_idx=torch.repeat_interleave(torch.arange(4, dtype=torch.int32), cu.diff())[None])
    for given in (positions, None):
        with torch.no_grad():
            ref = hf(input_ids=ids, position_ids=given, attention_mask=mask, output_hidden_states=True)
            out = fast(input_ids=ids, position_ids=given, output_hidden_states=True, **flash)
        _assert_same(out, ref)


@needs_kwargs
def test_flash_keywords_are_checked_before_any_work():
    _, fast = build(transformers.BertModel, CONFIGS["bert"])
    ids, _, cu = _flattened("bert", [4, 7], seed=5)
    good = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=7, max_length_k=7)
    cases = [
        ({"max_length_k": None}, ValueError, "missing \\['max_length_k'\\]"),
        ({"cu_seq_lens_k": torch.tensor([0, 5, 11], dtype=torch.int32)}, ValueError, "must be equal"),
        ({"max_length_q": 8}, ValueError, "must be equal"),
        ({"cu_seq_lens_q": [0, 4, 11]}, TypeError, "cu_seq_lens_q must be a torch.Tensor"),
        ({"cu_seq_lens_q": cu.float(), "cu_seq_lens_k": cu.float()}, ValueError, "int32/int64"),
        ({"max_length_q": -1, "max_length_k": -1}, ValueError, "non-negative int"),
        ({"attention_mask": torch.ones_like(ids)}, ValueError, "attention_mask=None"),
        ({"cu_seq_lens_q": torch.tensor([0, 4, 12]), "cu_seq_lens_k": torch.tensor([0, 4, 12]), "max_length_q": 8,
          "max_length_k": 8}, ValueError, "describe 12 tokens"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            fast(input_ids=ids, **{**good, **change})


@pytest.mark.skipif(TAKES_KWARGS, reason=f"transformers {transformers.__version__}'s base models take **kwargs")
def test_keywords_refused_where_hf_refuses_them():
    hf, fast = build(transformers.BertModel, CONFIGS["bert"])
    ids, _, cu = _flattened("bert", [4, 7], seed=5)
    flash = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=7, max_length_k=7)
    for model in (hf, fast):
        with pytest.raises(TypeError):
            model(input_ids=ids, **flash)


def _collated(family: str, flash: bool):
    """A DataCollatorWithFlattening batch of 4 random sequences (MLM labels), as the Trainer gets it."""
    gen = torch.Generator().manual_seed(6)
    start = pad_id(CONFIGS[family]) + 1 if family in ROBERTA_LIKE else 0
    collator = transformers.DataCollatorWithFlattening(**({"return_flash_attn_kwargs": True} if flash else {}))
    features = []
    for n in (6, 11, 2, 8):
        ids = torch.randint(3, CONFIGS[family].vocab_size, (n,), generator=gen).tolist()
        features.append({"input_ids": ids, "labels": ids})
    batch = collator(features)
    batch["position_ids"] += start  # what position_ids_start (transformers 5) does
    return batch


@pytest.mark.parametrize("family, flash", [("bert", False), ("roberta", False), ("electra", False), ("bert", True)])
def test_data_collator_with_flattening_trains_as_hf(family, flash):
    """Padding-free training: the loss of a ...ForMaskedLM on a collated flattened batch and
    every parameter's gradient equal HF's (the keywords need transformers 5, where HF's
    SDPA splits at the position ids the collator also returns, as its flash attention does)."""
    if flash and not (TAKES_KWARGS and SPLITS_ROWS):
        pytest.skip(f"transformers {transformers.__version__}: no SDPA reference for the keywords (its base models "
                    "take none, or its SDPA attention does not split rows)")
    config = copy.deepcopy(CONFIGS[family])
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    hf, fast = build(_model_class(family, "ForMaskedLM"), config)
    hf.train(), fast.train()
    batch = _collated(family, flash)
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    ref = hf(**batch)
    out = fast(**batch)
    assert abs(out.loss.item() - ref.loss.item()) < 1e-5 * ref.loss.item()
    ref.loss.backward()
    out.loss.backward()
    grads = grads_in_hf_names(fast)
    # all together: some entries are zero up to rounding (a key bias shifts no softmax)
    got = torch.cat([grads[name].flatten() for name, _ in hf.named_parameters()])
    want = torch.cat([p.grad.flatten() for _, p in hf.named_parameters()])
    assert rel_err(got, want) < 1e-5


def test_trainer_with_flattened_batches_logs_hf_losses(tmp_path):
    """Two steps of HF's Trainer with DataCollatorWithFlattening: the losses it logs for the
    optimized model equal those of the plain one (same seed, same batches, no dropout)."""
    pytest.importorskip("accelerate", reason="the Trainer needs accelerate")
    config = copy.deepcopy(CONFIGS["bert"])
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    hf, fast = build(transformers.BertForMaskedLM, config)
    gen = torch.Generator().manual_seed(7)
    data = [{"input_ids": (ids := torch.randint(3, config.vocab_size, (int(n),), generator=gen).tolist()),
             "labels": ids} for n in torch.randint(2, 20, (8,), generator=gen)]
    losses = []
    for model in (hf, fast):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, logging_steps=1, report_to=[],
            learning_rate=1e-3, use_cpu=True, save_strategy="no", seed=0, dataloader_num_workers=0,
        )
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                       data_collator=transformers.DataCollatorWithFlattening())
        trainer.train()
        losses.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert len(losses[0]) == 2 and losses[0][0] > 0
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.skipif(not SPLITS_ROWS, reason=f"transformers {transformers.__version__} does not split rows")
def test_host_reads_once_per_forward_on_flattened_rows(monkeypatch):
    """Restarting position ids: one host read (the sequence count and the longest one), however
    many layers; the keyword form reads nothing (value checks off, as in the encoder's test)."""
    from fastbert.ops import record_dispatch
    from tests.helpers import HostSyncs

    monkeypatch.setenv("FASTBERT_CHECK_INPUTS", "0")
    config = copy.deepcopy(CONFIGS["bert"])
    config.num_hidden_layers = 4
    _, fast = build(transformers.BertModel, config)
    ids, positions, cu = _flattened("bert", [5, 9, 2], seed=8)
    flash = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=9, max_length_k=9)
    calls = [(dict(position_ids=positions), 1), (flash, 0)]

    def no_unpad(*args, **kwargs):
        raise AssertionError("a flattened row is packed already: nothing to unpad")

    monkeypatch.setattr("fastbert.modules.encoder.unpad", no_unpad)
    for kwargs, budget in calls:
        with torch.no_grad(), record_dispatch() as log, HostSyncs(monkeypatch) as syncs:
            fast(input_ids=ids, output_hidden_states=True, **kwargs)
        assert ("varlen_attention", "torch") in log  # the packed path ran
        assert len(syncs.ops) == budget, syncs.ops


@pytest.mark.skipif(not SPLITS_ROWS, reason=f"transformers {transformers.__version__} does not split rows")
@pytest.mark.parametrize("fullgraph, form", [(True, "position_ids"), (False, "position_ids"), (True, "keywords")])
def test_compiled_flattened_rows_equal_hf(fullgraph, form):
    """torch.compile (backend aot_eager): with fullgraph=True the sequences' count is an
    unbacked size in the graph; without it the row runs padded with a block-diagonal mask;
    the keywords' offsets are a graph input. Each equals HF, on two rows of different lengths."""
    torch._dynamo.reset()
    config = copy.deepcopy(CONFIGS["bert"])
    config.num_hidden_layers = 1
    hf, fast = build(transformers.BertModel, config)
    counter = CompileCounterWithBackend("aot_eager")
    # dynamic=False: a graph per shape (fastbert::packed_positions' fake implementation under
    # dynamic sizes is issue 22 item 4, fixed separately)
    compiled = torch.compile(fast, fullgraph=fullgraph, dynamic=False, backend=counter)
    for lengths in ([5, 1, 9], [3, 3]):
        ids, positions, cu = _flattened("bert", lengths, seed=sum(lengths))
        flash = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
        with torch.no_grad():
            ref = hf(input_ids=ids, position_ids=positions)
            out = compiled(input_ids=ids, position_ids=positions, **(flash if form == "keywords" else {}))
        _assert_same(out, ref)
    assert counter.frame_count >= 1
    torch._dynamo.reset()
