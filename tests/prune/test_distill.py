"""Recovery by distillation: the loss, masks kept, a plain loop and HF Trainer's callback."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from fastbert.prune import Distiller, keep_mask, prune
from tests.helpers import build, padded_batch

CONFIG = transformers.BertConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                 intermediate_size=96, max_position_embeddings=40, num_labels=3)


NO_DROPOUT = transformers.BertConfig(**(CONFIG.to_dict() | {"hidden_dropout_prob": 0.0,
                                                            "attention_probs_dropout_prob": 0.0}))


def _pair(config=CONFIG):
    teacher = build(transformers.BertForSequenceClassification, config)[1].eval()
    student = copy.deepcopy(teacher)
    prune(student, 0.6, pattern="unstructured", scope="layer")
    return student, teacher


def _batch(seed, labels=False):
    ids, mask = padded_batch(120, [9, 4, 7, 11], 0, seed=seed)
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels:
        batch["labels"] = torch.tensor([0, 2, 1, 0])
    return batch


def _reference_hidden_loss(student, teacher, batch):
    with torch.no_grad():
        hs = student(**batch, output_hidden_states=True).hidden_states
        ht = teacher(**batch, output_hidden_states=True).hidden_states
    keep = batch["attention_mask"].bool()
    return sum(((s[keep] - t[keep]).pow(2).sum() / t[keep].pow(2).sum()).item() for s, t in zip(hs, ht)) / len(hs)


def test_hidden_loss_matches_its_definition_and_is_zero_for_the_teacher():
    student, teacher = _pair()
    student.eval()
    batch = _batch(1)
    loss = Distiller(student, teacher).loss(batch)
    assert loss.item() == pytest.approx(_reference_hidden_loss(student, teacher, batch), rel=1e-5)
    assert Distiller(copy.deepcopy(teacher), teacher).loss(batch).item() < 1e-10
    kl = Distiller(student, teacher, hidden_weight=0.0, logits_weight=1.0, temperature=2.0).loss(batch)
    with torch.no_grad():
        zs, zt = student(**batch).logits.double() / 2, teacher(**batch).logits.double() / 2
    want = (zt.softmax(-1) * (zt.log_softmax(-1) - zs.log_softmax(-1))).sum(-1).mean() * 4
    assert kl.item() == pytest.approx(want.item(), rel=1e-4)


def test_pooled_loss_matches_its_definition():
    student, teacher = _pair()
    batch = _batch(2)
    loss = Distiller(student, teacher, hidden_weight=0.0, pooled_weight=1.0).loss(batch)
    with torch.no_grad():
        hs = student.eval()(**batch, output_hidden_states=True).hidden_states[-1]
        ht = teacher(**batch, output_hidden_states=True).hidden_states[-1]
    want = []
    for row, keep in enumerate(batch["attention_mask"].bool()):  # one sentence at a time, real tokens only
        s, t = hs[row][keep].mean(0), ht[row][keep].mean(0)
        want.append(1 - (s @ t / (s.norm() * t.norm())).item())
    assert loss.item() == pytest.approx(sum(want) / len(want), rel=1e-4)
    assert Distiller(copy.deepcopy(teacher), teacher, pooled_weight=1.0).loss(batch).item() < 1e-6


def test_student_dropout_is_off_unless_asked_and_its_mode_is_restored():
    student, teacher = _pair(WITH_DROPOUT)
    batch = _batch(4)
    student.train()
    quiet = Distiller(student, teacher)
    assert quiet.loss(batch).item() == quiet.loss(batch).item()  # no dropout noise
    assert student.training and all(m.training for m in student.modules())
    noisy = Distiller(student, teacher, dropout=True)
    assert noisy.loss(batch).item() != noisy.loss(batch).item()
    student.eval()
    quiet.loss(batch)
    assert not student.training
    with pytest.raises(TypeError, match="dropout"):
        Distiller(student, teacher, dropout=1)


def test_plain_loop_recovers_and_keeps_masks():
    student, teacher = _pair()
    zeros = {n: ~keep_mask(m) for n, m in student.named_modules() if keep_mask(m) is not None}
    distiller = Distiller(student, teacher, hidden_weight=1.0, logits_weight=0.5)
    probe = _batch(10, labels=True)  # labels are dropped when task_weight is 0
    before = distiller.loss(probe).item()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    student.train()
    for step in range(15):
        distiller.loss(_batch(10 + step % 3, labels=True)).backward()
        optimizer.step()
        optimizer.zero_grad()
    student.eval()
    assert distiller.loss(probe).item() < before
    modules = dict(student.named_modules())
    assert all((modules[n].weight.detach()[z] == 0).all() for n, z in zeros.items())
    assert all(p.grad is None for p in teacher.parameters())


WITH_DROPOUT = transformers.BertConfig(**(CONFIG.to_dict() | {"hidden_dropout_prob": 0.5}))


@pytest.mark.parametrize("config, dropout", [(NO_DROPOUT, True), (WITH_DROPOUT, False)], ids=["no-dropout-model",
                                                                                                "dropout-off"])
def test_trainer_callback_trains_on_the_distillation_loss(tmp_path, config, dropout):
    # either way the training-mode loss must be the eval-mode one
    student, teacher = _pair(config)
    distiller = Distiller(student, teacher, dropout=dropout)
    rows = [{k: v[i] for k, v in _batch(20 + j, labels=True).items()} for j in range(3) for i in range(4)]
    seen = []

    class Record(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                seen.append(logs["loss"])

    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                                          logging_steps=1, report_to=[], save_strategy="no", use_cpu=True)
    trainer = transformers.Trainer(model=student, args=args, train_dataset=rows,
                                   callbacks=[distiller.trainer_callback(), Record()])
    first = rows[:4]
    batch = {k: torch.stack([r[k] for r in first]) for k in first[0]}
    student.eval()
    expected = distiller.loss(batch).item()  # the Trainer's first step sees this batch (no shuffling below)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(rows)
    trainer.train()
    assert len(seen) == 3 and seen[0] == pytest.approx(expected, rel=1e-3)
    student.train()
    with torch.no_grad():  # hooks are removed after training: the model's own loss again
        assert student(**batch).loss.item() != pytest.approx(expected, rel=1e-3)


def test_bad_arguments():
    student, teacher = _pair()
    with pytest.raises(ValueError, match="same model"):
        Distiller(teacher, teacher)
    with pytest.raises(ValueError, match="hidden_weight"):
        Distiller(student, teacher, hidden_weight=-1)
    with pytest.raises(ValueError, match="at least one"):
        Distiller(student, teacher, hidden_weight=0)
    with pytest.raises(ValueError, match="pooled_weight"):
        Distiller(student, teacher, pooled_weight=-0.5)
    with pytest.raises(ValueError, match="layers"):
        Distiller(student, teacher, layers="first")
    with pytest.raises(ValueError, match="labels"):
        Distiller(student, teacher, task_weight=1.0).loss(_batch(3))
