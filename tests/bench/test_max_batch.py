"""The largest-batch search: its logic on made-up "fits" predicates, and the whole search run
on the CPU with a step that raises an out-of-memory error above a made-up size."""

from __future__ import annotations

import random

import pytest
import torch

from fastbert.bench import max_batch, measure, train


def _threshold_predicate(threshold: int, calls: list[int]):
    def fits(size: int) -> bool:
        calls.append(size)
        return size <= threshold

    return fits


@pytest.mark.parametrize("seed", range(4))
def test_the_search_brackets_the_true_limit_within_its_precision(seed):
    rng = random.Random(seed)
    for _ in range(50):
        threshold, limit = rng.randint(1, 5000), rng.randint(1, 8192)
        start = rng.choice([1, 3, 8, 64])
        calls: list[int] = []
        found = max_batch.largest_batch(_threshold_predicate(threshold, calls), limit, start=start)
        assert found.probes == [(c, c <= threshold) for c in calls] and len(calls) <= max_batch.MAX_PROBES
        if threshold >= limit:
            assert found.largest == limit and found.first_failing is None and found.at_limit
            continue
        assert not found.at_limit
        assert found.largest <= threshold < found.first_failing, (threshold, found)
        assert found.first_failing - found.largest <= max(1, int(found.largest * max_batch.PRECISION)), found


def test_nothing_fits_and_exact_search_at_precision_zero():
    found = max_batch.largest_batch(lambda size: False, 100, start=8)
    assert (found.largest, found.first_failing) == (0, 1)
    calls: list[int] = []
    exact = max_batch.largest_batch(_threshold_predicate(777, calls), 10_000, start=8, precision=0.0)
    assert (exact.largest, exact.first_failing) == (777, 778)
    assert calls[:8] == [8, 16, 32, 64, 128, 256, 512, 1024]  # doubling, then bisection


def test_the_probe_limit_stops_the_search():
    found = max_batch.largest_batch(lambda size: True, 1 << 20, start=1, max_probes=5)
    assert [p[0] for p in found.probes] == [1, 2, 4, 8, 16] and found.largest == 16 and not found.at_limit


def test_errors_other_than_running_out_of_memory_are_raised():
    def broken(size):
        raise RuntimeError("an illegal memory access")

    with pytest.raises(RuntimeError, match="illegal"):
        max_batch.largest_batch(broken, 64)
    with pytest.raises(ValueError, match="positive"):
        max_batch.largest_batch(lambda s: True, 0)


def test_size_limit_keeps_the_widest_activation_within_int32():
    config = train.load_task_model("bert-tiny", "cls", 0).config
    for seq in (17, 128, 512):
        limit = max_batch.size_limit(config, seq)
        widest = max(config.intermediate_size, 3 * config.hidden_size)
        assert limit * seq * widest <= max_batch.ELEMENT_LIMIT < (limit + 1) * seq * widest


def test_run_max_batch_on_the_cpu_with_a_made_up_memory_limit(monkeypatch):
    """Every variant is searched at every shape; a step over the made-up token budget raises
    CUDA's out-of-memory message, which is "does not fit"; fastbert's budget is larger."""
    budgets = {"hf_sdpa": 300, "fastbert": 700}
    real_step = train.TrainStep

    class BudgetedStep(real_step):
        def __call__(self):
            tokens = self.feed["input_ids"].numel()
            variant = "fastbert" if hasattr(self.model.base_model.encoder, "unpad") else "hf_sdpa"
            if tokens > budgets[variant]:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().__call__()

    monkeypatch.setattr(max_batch, "TrainStep", BudgetedStep)
    monkeypatch.setattr(max_batch, "ELEMENT_LIMIT", 2**31 - 1)
    task_model = train.load_task_model("bert-tiny", "cls", 0)
    opts = measure.BenchOptions(device="cpu", variants=["hf_sdpa", "fastbert"], seed=0)
    entries = max_batch.run_max_batch(task_model, ["hf_sdpa", "fastbert"], "cls", "float32", [16], [False, True], opts)
    assert [(e["seq_len"], e["varlen"]) for e in entries] == [(16, False), (16, True)]
    for e in entries:
        for name, budget in budgets.items():
            r = e["variants"][name]
            assert r["status"] == "ok", r["error"]
            assert r["largest"] * 16 <= budget < r["first_failing"] * 16
            assert r["probes"][0] == [max_batch.START, True]
        assert e["ratio"] == {"fastbert": {"hf_sdpa": e["variants"]["fastbert"]["largest"] / e["variants"]["hf_sdpa"]["largest"]}}
        assert e["ratio"]["fastbert"]["hf_sdpa"] > 1


def test_run_max_batch_records_errors_and_a_spent_budget():
    task_model = train.load_task_model("bert-tiny", "cls", 0)
    opts = measure.BenchOptions(device="cpu", variants=["hf_sdpa"], seed=0)
    skipped = max_batch.run_max_batch(task_model, ["hf_sdpa"], "cls", "float32", [16], [False], opts, lambda: True)
    assert skipped[0]["variants"]["hf_sdpa"]["status"] == "skipped" and skipped[0]["ratio"] == {}
    # a sequence longer than the position table is an error of the step (not "out of memory")
    too_long = max_batch.run_max_batch(task_model, ["hf_sdpa"], "cls", "float32", [4096], [False], opts)
    r = too_long[0]["variants"]["hf_sdpa"]
    assert r["status"] == "error" and r["largest"] is None and r["error"]


def test_a_probe_frees_the_gradients_and_optimizer_state():
    task_model = train.load_task_model("bert-tiny", "cls", 0)
    fits = max_batch.fits_in_memory(task_model, task_model.config, "cls", 16, True, torch.float32, 0, "cpu")
    assert fits(3)
    assert all(p.grad is None for p in task_model.parameters())
