"""Property-based tests (hypothesis): random family, task head, sizes, mask and ``unpad`` mode
against Hugging Face at every position a head reads.

Masks: none, right / left / middle padding, rows without any real token, and general
per-query masks; given to fastbert as 2D, 3D or 4D, bool, integer or float (additive for
3D/4D), while HF gets the canonical form (2D for padding, 4D additive otherwise), so the
forms are checked against each other too. Sequence-level outputs (pooler, classification,
multiple choice, next-sentence / sentence-order) are compared in full, per-token outputs on
real tokens. fp32 < 1e-5 relative; fp16 (fastbert in fp16 vs HF in fp32) < 1e-2.

Flattened batches (:func:`test_flattened_rows_match_hf`): sequences of random lengths end
to end in one or two rows without a mask, marked by restarting position ids (clean restarts,
or any other numbering: jumps, repeats, descents) or by flash-attention's ``cu_seq_lens_*``
keywords, compared at every token with HF given the same position ids (and, for the
keywords, the same sequences as a block-diagonal mask: what HF's flash attention computes).

PEFT models and dropout settings (:func:`test_peft_and_dropout_settings_match_hf`): LoRA on a
random subset of the family's projections, applied before ``optimize`` (HF's names) or after
it (fastbert's names for the same modules, the adapter weights carried over), in eval mode or
in train mode with ``p = 0`` set on every ``nn.Dropout`` (the HF way to train
deterministically), against PEFT on HF in eval mode, at every real token.

Bounded for CI: small models, a fixed seed per family and no example database (the same
examples every run), and 12 examples per family (6 flattened), so the file adds about a
minute on a 2-core CPU.
"""

from __future__ import annotations

import copy
import inspect
import zlib

import pytest
import torch
import transformers

import fastbert
from tests.helpers import rel_err

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, seed, settings, strategies as st  # noqa: E402

FAMILIES = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert", "albert": "Albert", "electra": "Electra"}
HEADS = ("Model", "ForSequenceClassification", "ForMaskedLM", "ForPreTraining", "ForTokenClassification",
         "ForQuestionAnswering", "ForMultipleChoice")
SEQUENCE_LEVEL = {"pooler_output", "seq_relationship_logits", "sop_logits"}
MASK_KINDS = ("none", "right", "left", "middle", "empty rows", "general")
if int(transformers.__version__.split(".")[0]) < 5:
    # transformers 4.x refuses 4D masks in some families' SDPA path (no "general" reference) and
    # gives rows without any real token a different result than 5.x, which fastbert follows.
    MASK_KINDS = MASK_KINDS[:4]
# Per family (five of them): 12 examples, 60 in all. Each family's examples come from its own
# fixed seed (no example database): every run draws the same cases, and the families differ.
EXAMPLES_PER_FAMILY = 12
FLATTENED_EXAMPLES_PER_FAMILY = 6
FLASH_KEYWORDS = any(p.kind is inspect.Parameter.VAR_KEYWORD
                     for p in inspect.signature(transformers.BertModel.forward).parameters.values())


def hf_config(family: str, heads: int, head_dim: int, layers: int, intermediate: int):
    """A small HF config of ``family`` with the drawn sizes (vocabulary 97, 24 positions)."""
    hidden = heads * head_dim
    common = dict(vocab_size=97, max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "distilbert":
        return transformers.DistilBertConfig(vocab_size=97, max_position_embeddings=24, dim=hidden, n_heads=heads,
                                             n_layers=layers, hidden_dim=intermediate, dropout=0.0, attention_dropout=0.0)
    cls = getattr(transformers, FAMILIES[family] + "Config")
    extra = {"pad_token_id": 1, "max_position_embeddings": 26} if family == "roberta" else {}
    if family in ("albert", "electra"):
        extra["embedding_size"] = max(8, hidden // 2)
    return cls(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=layers, intermediate_size=intermediate,
               **{**common, **extra})


def make_mask(kind: str, batch: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    """``(batch, seq)`` 0/1 padding mask of ``kind`` or, for "general", ``(batch, seq, seq)`` keep mask."""
    if kind == "general":
        keep = torch.rand(batch, seq, seq, generator=gen) > 0.4
        return (keep | torch.eye(seq, dtype=torch.bool)).long()  # every query sees at least itself
    if kind == "none":
        return torch.ones(batch, seq, dtype=torch.long)
    if kind == "middle":
        mask = (torch.rand(batch, seq, generator=gen) > 0.4).long()
        mask[:, 0] = 1
        return mask
    lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    if kind == "left":
        return mask.flip(1)
    if kind == "empty rows":
        mask[torch.rand(batch, generator=gen) < 0.5] = 0
        mask[-1] = 0
    return mask


def mask_form(mask: torch.Tensor, form: str, dtype: str, heads: int, additive: float) -> torch.Tensor:
    """The same mask as fastbert may receive it: 2D / 3D / 4D (one head or every head), bool / int / float."""
    keep = mask.bool()
    if form == "2d":
        return {"bool": keep, "int": mask.int(), "float": mask.float()}[dtype]
    seq = keep.shape[-1]
    if keep.dim() == 2:  # a padding mask seen by every query
        keep = keep[:, None, :].expand(-1, seq, -1)
    if form == "4d":
        keep = keep[:, None]
    elif form == "4d per head":
        keep = keep[:, None].expand(-1, heads, -1, -1)
    if dtype == "float":
        return torch.zeros(keep.shape).masked_fill(~keep, additive)
    return keep if dtype == "bool" else keep.long()


@st.composite
def cases(draw, family: str):
    """One drawn case of ``family``: model shape, head class, batch, mask (kind and form), dtype, unpad mode, seed."""
    head = draw(st.sampled_from([h for h in HEADS if hasattr(transformers, FAMILIES[family] + h)]))
    kind = draw(st.sampled_from(MASK_KINDS))
    forms = ["2d"] if head == "ForMultipleChoice" else ["2d", "3d", "4d", "4d per head"]
    if kind == "general":
        forms = [f for f in forms if f != "2d"] or None
    return dict(
        family=family,
        head=head,
        sizes=(draw(st.integers(1, 4)), draw(st.sampled_from([8, 12, 16])), draw(st.integers(1, 2)),
               draw(st.integers(8, 80))),
        batch=draw(st.integers(1, 4)),
        seq=draw(st.integers(1, 12)),
        kind=kind if forms else "right",
        form=draw(st.sampled_from(forms or ["2d"])),
        mask_dtype=draw(st.sampled_from(["bool", "int", "float"])),
        additive=draw(st.sampled_from([torch.finfo(torch.float32).min, float("-inf")])),
        dtype=draw(st.sampled_from([torch.float32, torch.float32, torch.float32, torch.float16])),
        unpad=draw(st.sampled_from([True, False, "auto"])),
        seed=draw(st.integers(0, 2**16)),
    )


def build_pair(case):
    """Seeded HF model (fp32, eval, every weight perturbed) and its optimized copy in the case's dtype."""
    config = hf_config(case["family"], *case["sizes"])
    torch.manual_seed(case["seed"])
    hf = getattr(transformers, FAMILIES[case["family"]] + case["head"])(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fast = fastbert.optimize(copy.deepcopy(hf).to(case["dtype"]), unpad=case["unpad"])
    return hf, fast, config


def compare_where_heads_read(out, ref, head: str, real: torch.Tensor, tol: float) -> None:
    """Sequence-level outputs in full; per-token outputs (and hidden states) on real tokens."""
    for o, r in zip(out.hidden_states, ref.hidden_states):
        assert rel_err(o.float()[real], r[real]) < tol
    for key, r in ref.items():
        if not isinstance(r, torch.Tensor) or key == "hidden_states":
            continue
        o = out[key].float()
        sequence_level = key in SEQUENCE_LEVEL or (key == "logits" and head in ("ForSequenceClassification",
                                                                                 "ForMultipleChoice"))
        err = rel_err(o, r) if sequence_level else rel_err(o[real], r[real])
        assert err < tol, (key, err)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_matches_hf_where_heads_read(family):
    @seed(zlib.crc32(family.encode()))
    @settings(max_examples=EXAMPLES_PER_FAMILY, deadline=None, database=None, print_blob=True)
    @given(case=cases(family))
    def check(case):
        check_case(case)

    check()


def check_case(case) -> None:
    """Run one drawn case through HF and fastbert and compare where heads read."""
    hf, fast, config = build_pair(case)
    gen = torch.Generator().manual_seed(case["seed"])
    batch, seq = case["batch"], case["seq"]
    mask = make_mask(case["kind"], batch, seq, gen)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids = torch.randint(3, config.vocab_size, (batch, seq), generator=gen)
    if mask.dim() == 2:
        ids = ids.masked_fill(mask == 0, pad)
        hf_mask, real = mask, mask.bool()
    else:  # a general mask: HF takes it 4D additive; every token is real
        hf_mask = torch.zeros(batch, 1, seq, seq).masked_fill(~mask.bool()[:, None], torch.finfo(torch.float32).min)
        real = torch.ones(batch, seq, dtype=torch.bool)
    fast_mask = mask_form(mask, case["form"], case["mask_dtype"], config.num_attention_heads, case["additive"])
    if case["head"] == "ForMultipleChoice":  # one example whose choices are the rows
        ids, hf_mask, fast_mask = ids[None], hf_mask[None], fast_mask[None]
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=hf_mask, output_hidden_states=True)
        out = fast(input_ids=ids, attention_mask=fast_mask, output_hidden_states=True)
    tol = 1e-5 if case["dtype"] == torch.float32 else 1e-2
    compare_where_heads_read(out, ref, case["head"], real, tol)


@st.composite
def flattened_cases(draw, family: str):
    """One flattened batch of ``family``: head, sizes, rows of sequences (lengths), how the
    sequences are marked, dtype and seed."""
    heads = [h for h in HEADS if h != "ForMultipleChoice" and hasattr(transformers, FAMILIES[family] + h)]
    head = draw(st.sampled_from(heads))
    rows = draw(st.integers(1, 2))
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    marks = ["restarts", "any numbering"] + (["keywords"] if FLASH_KEYWORDS else [])
    return dict(
        family=family, head=head, unpad=draw(st.sampled_from([True, False, "auto"])),
        sizes=(draw(st.integers(1, 4)), draw(st.sampled_from([8, 12, 16])), draw(st.integers(1, 2)),
               draw(st.integers(8, 80))),
        rows=rows, lengths=lengths, marks=draw(st.sampled_from(marks)),
        dtype=draw(st.sampled_from([torch.float32, torch.float32, torch.float16])),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_flattened_rows_match_hf(family):
    if "position_ids" not in inspect.signature(getattr(transformers, FAMILIES[family] + "Model").forward).parameters:
        pytest.skip(f"transformers {transformers.__version__}'s {family} takes no position_ids")

    @seed(zlib.crc32(family.encode()) + 1)
    @settings(max_examples=FLATTENED_EXAMPLES_PER_FAMILY, deadline=None, database=None, print_blob=True)
    @given(case=flattened_cases(family))
    def check(case):
        check_flattened_case(case)

    check()


def check_flattened_case(case) -> None:
    """Run one flattened batch through HF and fastbert and compare every output at every token."""
    hf, fast, config = build_pair(case)
    gen = torch.Generator().manual_seed(case["seed"])
    seq = sum(case["lengths"])
    batch = case["rows"]
    start = config.pad_token_id + 1 if case["family"] == "roberta" else 0
    restarts = torch.cat([torch.arange(n) for n in case["lengths"]]) + start
    ids = torch.randint(3, config.vocab_size, (batch, seq), generator=gen)
    if case["marks"] == "any numbering":
        top = config.max_position_embeddings - 1
        positions = torch.randint(start, top + 1, (batch, seq), generator=gen)
        positions[:, 1:][torch.rand(batch, seq - 1, generator=gen) < 0.5] = -1  # -1: previous + 1 (a run)
        for t in range(1, seq):
            run = positions[:, t] == -1
            positions[run, t] = (positions[run, t - 1] + 1).clamp(max=top)
    else:
        positions = restarts.expand(batch, seq)
    fast_kwargs, hf_kwargs = {}, {}
    if case["marks"] == "keywords":  # the sequences of every row, in the flattened batch * seq tokens
        cu = torch.tensor([0, *torch.tensor(case["lengths"] * batch).cumsum(0).tolist()], dtype=torch.int32)
        fast_kwargs = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(case["lengths"]),
                           max_length_k=max(case["lengths"]))
        sequence = torch.repeat_interleave(torch.arange(len(case["lengths"])), torch.tensor(case["lengths"]))
        hf_kwargs = dict(attention_mask=(sequence[:, None] == sequence[None, :]).expand(batch, 1, seq, seq))
    with torch.no_grad():
        ref = hf(input_ids=ids, position_ids=positions, output_hidden_states=True, **hf_kwargs)
        out = fast(input_ids=ids, position_ids=positions, output_hidden_states=True, **fast_kwargs)
    tol = 1e-5 if case["dtype"] == torch.float32 else 1e-2
    for o, r in zip(out.hidden_states, ref.hidden_states):
        assert rel_err(o.float(), r) < tol
    for key, r in ref.items():
        if isinstance(r, torch.Tensor):
            assert rel_err(out[key].float(), r) < tol, (key, rel_err(out[key].float(), r))


# The family's HF projection names PEFT can target, and fastbert's names for the same modules.
PEFT_TARGETS = {
    "bert": {"query": ["query"], "key": ["key"], "value": ["value"],
             "dense": ["attention_output", "intermediate", "output", "dense"]},
    "distilbert": {"q_lin": ["q_lin"], "k_lin": ["k_lin"], "v_lin": ["v_lin"], "out_lin": ["attention_output"],
                   "lin1": ["intermediate"], "lin2": ["output"]},
    "albert": {"query": ["query"], "value": ["value"], "dense": ["attention_output", "dense"],
               "ffn": ["intermediate"], "ffn_output": ["output"]},
}
PEFT_TARGETS["roberta"] = PEFT_TARGETS["electra"] = PEFT_TARGETS["bert"]
PEFT_EXAMPLES_PER_FAMILY = 8


@st.composite
def peft_cases(draw, family: str):
    """A PEFT case: head, sizes, padding, LoRA targets and rank, order, dropout setting, unpad mode, seed."""
    head = draw(st.sampled_from(["Model", "ForSequenceClassification", "ForTokenClassification"]))
    names = sorted(PEFT_TARGETS[family])
    return dict(
        family=family, head=head,
        sizes=(draw(st.integers(1, 3)), draw(st.sampled_from([8, 12])), draw(st.integers(1, 2)),
               draw(st.integers(8, 48))),
        batch=draw(st.integers(1, 3)), seq=draw(st.integers(1, 10)),
        kind=draw(st.sampled_from(["none", "right", "left", "middle"])),
        targets=draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True)),
        rank=draw(st.integers(1, 4)), order=draw(st.sampled_from(["peft first", "optimize first"])),
        dropout=draw(st.sampled_from(["eval", "train with p = 0"])),
        unpad=draw(st.sampled_from([True, False, "auto"])), seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_peft_and_dropout_settings_match_hf(family):
    peft = pytest.importorskip("peft")

    @seed(zlib.crc32(("peft" + family).encode()))
    @settings(max_examples=PEFT_EXAMPLES_PER_FAMILY, deadline=None, database=None, print_blob=True)
    @given(case=peft_cases(family))
    def check(case):
        config = hf_config(family, *case["sizes"])
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.3  # on unless switched off
        if family == "distilbert":
            config.dropout = config.attention_dropout = 0.3
        torch.manual_seed(case["seed"])
        hf = getattr(transformers, FAMILIES[family] + case["head"])(config).eval()
        lora = dict(r=case["rank"], lora_alpha=2 * case["rank"], lora_dropout=0.0)
        peft_hf = peft.get_peft_model(hf, peft.LoraConfig(target_modules=case["targets"], **lora))
        with torch.no_grad():
            for p in peft_hf.parameters():
                p.add_(torch.randn_like(p) * 0.05)  # the adapters' B too: they act
        carried = fastbert.optimize(copy.deepcopy(peft_hf), unpad=case["unpad"])
        if case["order"] == "peft first":
            fast = carried
        else:
            fast_names = sorted({n for t in case["targets"] for n in PEFT_TARGETS[family][t]})
            fast = peft.get_peft_model(fastbert.optimize(copy.deepcopy(peft_hf).unload(), unpad=case["unpad"]),
                                       peft.LoraConfig(target_modules=fast_names, **lora))
            adapters = {k: v for k, v in carried.state_dict().items() if "lora_" in k}
            assert set(adapters) == {k for k in fast.state_dict() if "lora_" in k}
            fast.load_state_dict(adapters, strict=False)
        if case["dropout"] != "eval":
            fast.train()
            for m in fast.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        gen = torch.Generator().manual_seed(case["seed"])
        mask = make_mask(case["kind"], case["batch"], case["seq"], gen)
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        ids = torch.randint(3, config.vocab_size, mask.shape, generator=gen).masked_fill(mask == 0, pad)
        with torch.no_grad():
            ref = peft_hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            out = fast(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        compare_where_heads_read(out, ref, case["head"], mask.bool(), 1e-5)

    check()
