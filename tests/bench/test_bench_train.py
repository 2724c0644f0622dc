"""``fastbert bench --train`` on tiny CPU configurations, and its parts: task models with
dropout off, labels, the training step, fresh weights per configuration, the loss check."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import pytest
import torch
import transformers
from torch import nn

from fastbert.bench import train, train_report
from fastbert.cli import main
from fastbert.configs import hf_config

TINY = ["--arch", "bert-tiny", "--batch", "2", "3", "--seq-len", "24", "--repeats", "2", "--warmup", "1",
        "--device", "cpu", "--no-plots"]


@pytest.fixture(scope="module")
def train_run(_one_cpu_thread, tmp_path_factory):
    """One tiny training run shared by the schema tests: (exit code, JSON document, out dir);
    on one thread (conftest), which a module fixture must ask for to be set up after it, and
    with the conftest's backend for tests outside tests/kernels (its fixture is per test)."""
    out = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTBERT_BACKEND", os.environ.get("FASTBERT_BACKEND", "torch"))
        code = main(["bench", "--train", *TINY, "--out", str(out)])
    return code, json.loads((out / "train.json").read_text()), out


def test_train_json_schema_settings_and_notes(train_run):
    code, doc, _ = train_run
    assert code == 0
    assert doc["schema"] == train_report.TRAIN_SCHEMA and doc["complete"] is True
    assert doc["metadata"]["measured_on_gpu"] is False and doc["metadata"]["device"] == "cpu"
    settings = doc["settings"]
    assert settings["task"] == "cls" and settings["learning_rate"] == train.LEARNING_RATE
    assert settings["variants"] == ["hf_eager", "hf_sdpa", "fastbert", "fastbert_ckpt"]  # no compile on the CPU
    notes = " ".join(settings["notes"])
    assert "not GPU results" in notes and "largest-batch search: not run on the CPU" in notes and "--compile" in notes
    assert doc["max_batch"] is None
    assert [(e["config"]["batch"], e["config"]["varlen"], e["config"]["task"]) for e in doc["results"]] == [
        (2, False, "cls"), (3, False, "cls"), (2, True, "cls"), (3, True, "cls")]


def test_every_variant_took_the_same_steps_and_reached_the_same_loss(train_run):
    _, doc, _ = train_run
    for e in doc["results"]:
        assert e["loss_reference"] == "hf_eager" and e["loss_ok"] is True
        assert e["loss_tolerance"] == train.LOSS_TOLERANCE["float32"]
        ref = e["variants"]["hf_eager"]
        for name, r in e["variants"].items():
            assert r["status"] == "ok", (name, r["error"])
            assert r["repeats"] == 2 and r["steps"] == 1 + 2  # warm-up + timed, before the final loss
            assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] >= r["min_ms"]
            assert r["real_tokens_per_s"] == pytest.approx(e["real_tokens"] / (r["median_ms"] / 1e3))
            assert r["peak_memory_bytes"] is None and "not measured" in r["memory_kind"]
            assert r["rel_error"] is None and r["max_abs_error"] is None
            # same initial weights and batch: the first losses agree; the optimizer moved the weights
            assert math.isclose(r["first_loss"], ref["first_loss"], rel_tol=1e-5)
            assert r["final_loss"] != r["first_loss"]
            assert r["loss_rel_diff"] == pytest.approx(abs(r["final_loss"] - ref["final_loss"]) / abs(ref["final_loss"]))
            assert r["loss_ok"] is True and r["loss_rel_diff"] <= train.LOSS_TOLERANCE["float32"]
            assert (r["backends"] is None) == (name in ("hf_eager", "hf_sdpa"))


def test_speedups_are_ratios_of_medians_and_of_minima(train_run):
    _, doc, _ = train_run
    for e in doc["results"]:
        v = e["variants"]
        assert set(e["speedup"]) == set(e["speedup_min"]) == {"fastbert", "fastbert_ckpt"}
        for fb in ("fastbert", "fastbert_ckpt"):
            for base in ("hf_eager", "hf_sdpa"):
                assert math.isclose(e["speedup"][fb][base], v[base]["median_ms"] / v[fb]["median_ms"], rel_tol=1e-12)
                assert math.isclose(e["speedup_min"][fb][base], v[base]["min_ms"] / v[fb]["min_ms"], rel_tol=1e-12)
        if e["config"]["varlen"]:
            assert 0 < e["padding_fraction"] < 1 and e["real_tokens"] < e["padded_tokens"]


def test_csv_matches_json(train_run):
    _, doc, out = train_run
    with (out / "train.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == train_report.TRAIN_CSV_COLUMNS
    expected = [(e, n, r) for e in doc["results"] for n, r in e["variants"].items()]
    assert len(rows) == len(expected)
    for row, (e, name, r) in zip(rows, expected):
        assert row["variant"] == name and row["task"] == "cls" and int(row["batch"]) == e["config"]["batch"]
        assert float(row["median_ms"]) == pytest.approx(r["median_ms"])
        assert float(row["final_loss"]) == pytest.approx(r["final_loss"]) and row["loss_ok"] == "True"


def test_the_table_shows_every_variant_and_the_loss_check(train_run, capsys):
    _, doc, _ = train_run
    table = train_report.format_train_table(doc["results"], doc["settings"]["variants"])
    head = table.splitlines()[0]
    for column in ("hf_sdpa ms", "fastbert_ckpt ms", "fastbert/hf_sdpa", "loss check"):
        assert column in head
    assert "MiB" not in head  # no peak memory on the CPU
    assert all(line.endswith(" ok") for line in table.splitlines()[2:6])


def test_a_disagreeing_loss_is_flagged_and_exits_1(tmp_path, monkeypatch, capsys):
    def perturbed(base, dtype, device):
        model = train.TRAIN_VARIANTS["hf_sdpa"].build(base, dtype, device)
        with torch.no_grad():
            model.classifier.bias[0] += 0.5  # another class bias than the others': another loss
        return model

    monkeypatch.setitem(train.TRAIN_VARIANTS, "fastbert", dataclasses.replace(train.TRAIN_VARIANTS["fastbert"], build=perturbed))
    code = main(["bench", "--train", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "8", "--no-varlen", "--repeats", "1",
                 "--variants", "hf_eager", "fastbert", "--device", "cpu", "--no-plots", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and "disagrees" in captured.err and "DISAGREES" in captured.out
    doc = json.loads((tmp_path / "train.json").read_text())
    entry = doc["results"][0]
    assert entry["loss_ok"] is False and entry["variants"]["fastbert"]["loss_ok"] is False
    assert entry["variants"]["hf_eager"]["loss_ok"] is True


def test_a_failing_variant_exits_1_and_the_others_are_measured(tmp_path, monkeypatch, capsys):
    def broken(base, dtype, device):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(train.TRAIN_VARIANTS, "fastbert_ckpt", dataclasses.replace(train.TRAIN_VARIANTS["fastbert_ckpt"], build=broken))
    code = main(["bench", "--train", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "8", "--no-varlen", "--repeats", "1",
                 "--variants", "hf_sdpa", "fastbert", "fastbert_ckpt", "--device", "cpu", "--no-plots", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and "1 run(s) failed" in captured.err and "train.json" in captured.err
    variants = json.loads((tmp_path / "train.json").read_text())["results"][0]["variants"]
    assert variants["fastbert_ckpt"]["status"] == "error" and "kernel exploded" in variants["fastbert_ckpt"]["error"]
    assert variants["fastbert"]["status"] == "ok" and variants["fastbert"]["loss_ok"] is True


def test_mlm_run_and_a_spent_time_budget(tmp_path, monkeypatch, capsys):
    # the budget counts as spent once the first configuration is recorded
    monkeypatch.setattr(train.measure.SweepLog, "budget_spent", lambda self: len(self.entries) >= 1)
    code = main(["bench", "--train", "--task", "mlm", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "20",
                 "--repeats", "1", "--variants", "hf_sdpa", "fastbert", "--device", "cpu", "--no-plots",
                 "--time-budget", "1", "--out", str(tmp_path)])
    assert code == 0
    doc = json.loads((tmp_path / "train.json").read_text())
    first, second = doc["results"]
    assert first["config"]["task"] == second["config"]["task"] == "mlm" and first["loss_ok"] is True
    assert all(r["status"] == "ok" for r in first["variants"].values())
    assert all(r["status"] == "skipped" for r in second["variants"].values())
    assert "skipped" in capsys.readouterr().out


def test_nothing_measured_exits_1(tmp_path, capsys):
    code = main(["bench", "--train", "--arch", "bert-tiny", "--batch", "2", "--seq-len", "20", "--no-varlen",
                 "--variants", "hf_sdpa", "--device", "cpu", "--no-plots", "--time-budget", "1e-9", "--out", str(tmp_path)])
    assert code == 1 and "nothing was measured" in capsys.readouterr().err
    entry = json.loads((tmp_path / "train.json").read_text())["results"][0]
    assert entry["config"]["task"] == "cls" and entry["variants"]["hf_sdpa"]["status"] == "skipped"


# --- the parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert-tiny", "distilbert-base", "albert-base"])
def test_task_models_have_every_dropout_off(arch):
    config = train.dropout_off(hf_config(arch))
    rates = {k: v for k, v in vars(config).items() if "dropout" in k and isinstance(v, float)}
    assert rates and all(v == 0.0 for v in rates.values())
    if arch == "bert-tiny":
        for task in train.TASKS:
            model = train.load_task_model(arch, task, seed=3)
            assert model.training and all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
            again = train.load_task_model(arch, task, seed=3)
            assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_labels_for_each_task():
    config = hf_config("bert-tiny")
    feed = train.training_batch(config, "mlm", 5, 40, True, seed=7, device="cpu")
    labels, mask = feed["labels"], feed["attention_mask"].bool()
    picked = labels != -100
    assert not (picked & ~mask).any() and picked.any(dim=1).all()  # on real tokens only, every row has one
    assert torch.equal(labels[picked], feed["input_ids"][picked])
    assert 0.05 < picked.sum() / mask.sum() < 0.3
    again = train.training_batch(config, "mlm", 5, 40, True, seed=7, device="cpu")
    assert all(torch.equal(feed[k], again[k]) for k in feed)
    cls = train.training_batch(config, "cls", 64, 8, False, seed=1, device="cpu")["labels"]
    assert cls.dtype == torch.long and set(cls.tolist()) == set(range(config.num_labels))
    config.problem_type = "multi_label_classification"
    multi = train.make_labels("cls", config, cls_feed := train.training_batch(config, "mlm", 4, 8, False, 1, "cpu"), 1)
    assert multi.shape == (4, config.num_labels) and multi.dtype == torch.float32
    config.num_labels, config.problem_type = 1, None
    assert train.make_labels("cls", config, cls_feed, 1).shape == (4,)


def test_a_step_updates_the_weights_and_fresh_restores_them():
    task_model = train.load_task_model("bert-tiny", "cls", 0)
    models = train.TrainVariants(task_model, "cpu")
    module = models.fresh("fastbert_ckpt")
    assert module.training and module.base_model.encoder.gradient_checkpointing
    initial = [p.detach().clone() for p in module.parameters()]
    feed = train.training_batch(task_model.config, "cls", 3, 12, True, 0, "cpu")
    step = train.TrainStep(module, feed, torch.float32, "cpu")
    first, second = step(), step()
    assert len(step.losses) == 2 and not torch.equal(first, second)
    assert any(not torch.equal(p, q) for p, q in zip(module.parameters(), initial))
    step.release()
    assert all(p.grad is None for p in module.parameters()) and not step.optimizer.state
    assert models.fresh("fastbert_ckpt") is module
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), initial))


def test_bf16_autocast_step_on_the_cpu():
    task_model = train.load_task_model("bert-tiny", "cls", 0)
    feed = train.training_batch(task_model.config, "cls", 2, 12, False, 0, "cpu")
    model = train.TrainVariants(task_model, "cpu").fresh("fastbert")
    step = train.TrainStep(model, feed, torch.bfloat16, "cpu")
    loss = step()
    assert torch.isfinite(loss) and all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        ref = task_model(**feed).loss
    assert abs(float(step.losses[0]) - float(ref)) / abs(float(ref)) < 5e-2


def test_check_losses_picks_the_reference_and_flags_nan():
    def ok(loss):
        return train.train_result("ok", final_loss=loss)

    results = {"hf_sdpa": ok(2.0), "fastbert": ok(2.0 * (1 + 1e-6)), "fastbert_ckpt": ok(float("nan")),
               "hf_eager": train.train_result("oom")}
    assert train.check_losses(results, "float32") == "hf_sdpa"
    assert results["fastbert"]["loss_ok"] is True and results["fastbert_ckpt"]["loss_ok"] is False
    assert results["hf_eager"]["loss_ok"] is None
    results["fastbert"] = ok(2.1)
    train.check_losses(results, "float32")
    assert results["fastbert"]["loss_ok"] is False and train.check_losses(results, "bfloat16") == "hf_sdpa"
    assert train.check_losses({"fastbert": train.train_result("error")}, "float32") is None


def test_checkpoint_folder_as_model(tmp_path):
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                                     intermediate_size=37, max_position_embeddings=40, hidden_dropout_prob=0.3)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "ckpt")  # no head: it is seeded
    model = train.load_task_model(str(tmp_path / "ckpt"), "cls", seed=1)
    assert isinstance(model, transformers.BertForSequenceClassification)
    assert model.config.hidden_dropout_prob == 0.0 and model.training


@pytest.mark.parametrize("argv, message", [
    (["bench", "--task", "mlm"], "--task goes with --train"),
    (["bench", "--no-max-batch"], "--no-max-batch goes with --train"),
    (["bench", "--train", "--variants", "fastbert", "nope"], "unknown variant"),
    (["bench", "--train", "--repeats", "0"], "--repeats must be at least 1"),
    (["bench", "--train", "--threads", "0"], "--threads must be positive"),
    (["bench", "--train", "--model-dir", "no/such/dir"], "--model-dir"),
    (["bench", "--train", "--model", "some/dir"], "--model times inference"),
    (["bench", "--train", "--texts", "texts.txt"], "--texts times inference"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "train.json").exists()


def _in_hf_layout(module: nn.Module, grads: bool) -> dict[str, torch.Tensor]:
    """The module's weights (or, ``grads``, their gradients) under HF's names and shapes,
    through its state_dict (fastbert's hooks write the HF layout), in float64."""
    params = list(module.parameters())
    saved = [p.data for p in params]
    if grads:
        for p in params:
            p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    try:
        return {k: v.double().clone() for k, v in module.state_dict().items() if v.is_floating_point()}
    finally:
        for p, data in zip(params, saved):
            p.data = data


def test_one_fastbert_step_matches_hf_gradients_and_update():
    """The step the command times: fastbert's loss and every gradient equal HF eager's
    (float32, fresh seeded weights, padded odd-sized batch). The weights after the AdamW
    step are not compared elementwise: its first update, lr * g / (|g| + eps), turns float
    rounding of near-zero gradients into differences of up to lr."""
    task_model = train.load_task_model("bert-tiny", "cls", seed=5)
    models = train.TrainVariants(task_model, "cpu")
    feed = train.training_batch(task_model.config, "cls", 3, 19, True, seed=5, device="cpu")
    assert not feed["attention_mask"].all()
    found = {}
    for name in ("hf_eager", "fastbert"):
        module = models.fresh(name)
        loss = train.TrainStep(module, feed, torch.float32, "cpu")()
        found[name] = (float(loss), _in_hf_layout(module, grads=True))
    (ref_loss, ref_grads), (loss, grads) = found["hf_eager"], found["fastbert"]
    assert math.isfinite(loss) and abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    shared = grads.keys() & ref_grads.keys()
    assert len(shared) > 10 and any(g.abs().max() > 0 for g in grads.values())
    # The key bias's gradient is zero in exact arithmetic (softmax ignores a per-query shift):
    # rounding noise, held against a thousandth of the largest gradient instead of itself.
    floor = 1e-3 * max(float(g.abs().max()) for g in ref_grads.values())
    for n in shared:
        scale = ref_grads[n].abs().max().clamp_min(floor)
        assert torch.isfinite(grads[n]).all() and ((grads[n] - ref_grads[n]).abs().max() / scale) < 1e-5, n
