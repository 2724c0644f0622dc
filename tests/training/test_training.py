"""Training through an optimized model: checkpointing, accumulation, AMP, Trainer."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import fastbert
from tests.helpers import build, family_configs, grads_in_hf_names, padded_batch, rel_err


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _step_grads(model, ids, mask, labels, seed=0):
    model.zero_grad(set_to_none=False)
    torch.manual_seed(seed)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    return _grads(model)


@pytest.mark.parametrize("family", ["bert", "albert", "distilbert"])
def test_gradient_checkpointing_gives_the_same_gradients(family):
    config = family_configs()[family]
    prefix = {"bert": "Bert", "albert": "Albert", "distilbert": "DistilBert"}[family]
    _, model = build(getattr(transformers, prefix + "ForSequenceClassification"), config)
    model.train()  # dropout on: checkpointing must replay the same masks
    ids, mask = padded_batch(config.vocab_size, [11, 5, 8], config.pad_token_id or 0, seed=2)
    labels = torch.tensor([0, 1, 1])
    plain = _step_grads(model, ids, mask, labels)
    model.gradient_checkpointing_enable()
    assert model.base_model.encoder.gradient_checkpointing
    checkpointed = _step_grads(model, ids, mask, labels)
    for a, b in zip(checkpointed, plain):
        assert rel_err(a, b) < 1e-6


def test_gradient_accumulation_equals_large_batch():
    config = family_configs()["bert"]
    _, model = build(transformers.BertForSequenceClassification, config)
    model.eval()  # deterministic: no dropout
    ids, mask = padded_batch(config.vocab_size, [9, 3, 7, 9, 2, 6], 0, seed=4)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    full = _step_grads(model, ids, mask, labels)
    model.zero_grad()
    for part in (slice(0, 3), slice(3, 6)):
        (model(input_ids=ids[part], attention_mask=mask[part], labels=labels[part]).loss / 2).backward()
    for a, b in zip(_grads(model), full):
        assert rel_err(a, b) < 1e-5


def test_bf16_autocast_training_step():
    config = family_configs()["bert"]
    hf, model = build(transformers.BertForSequenceClassification, config)
    ids, mask = padded_batch(config.vocab_size, [9, 3, 7], 0, seed=5)
    labels = torch.tensor([0, 1, 1])
    _step_grads(hf.eval(), ids, mask, labels)
    model.eval()
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = grads_in_hf_names(model)
    got = torch.cat([grads[k].flatten() for k, p in hf.named_parameters()])
    ref = torch.cat([p.grad.flatten() for _, p in hf.named_parameters()])
    assert rel_err(got, ref) < 5e-2  # bf16 matmuls against the fp32 HF gradients


def test_hf_trainer_trains_an_optimized_model(tmp_path):
    pytest.importorskip("accelerate", reason="HF Trainer needs accelerate (in the test extra)")
    config = family_configs()["bert"]
    _, model = build(transformers.BertForSequenceClassification, config)
    ids, mask = padded_batch(config.vocab_size, [9, 3, 7, 9, 2, 6, 5, 8], 0, seed=6)
    labels = (ids[:, 0] % 2).tolist()

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "attention_mask": mask[i], "labels": torch.tensor(labels[i])}

    before = copy.deepcopy(model.state_dict())
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-3,
        report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data())
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("encoder.layer.0.attention.self.query.weight" in k for k in changed)
    trainer.save_model(str(tmp_path / "final"))
    reloaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "final").eval()
    model.eval()
    with torch.no_grad():
        assert rel_err(reloaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits) < 1e-5


def test_fp16_autocast_with_grad_scaler_steps():
    config = family_configs()["bert"]
    _, model = build(transformers.BertForSequenceClassification, config)
    ids, mask = padded_batch(config.vocab_size, [9, 3, 7], 0, seed=5)
    labels = torch.tensor([0, 1, 1])
    before = copy.deepcopy(model.state_dict())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    scaler = torch.amp.GradScaler(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        with torch.autocast(device, dtype=torch.float16):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert torch.isfinite(loss)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)
