"""The largest batch that trains without running out of GPU memory, per variant.

:func:`largest_batch` is the search, on any predicate "does a batch of this size fit":
doubling from a start size until a size fails, then bisection between the last size that
fit and the first that failed, until the two are within :data:`PRECISION` of each other
(or one apart). :func:`run_max_batch` runs it on a GPU for every variant alone (the others'
models freed), at each sequence length, with fixed-length and variable-length batches: a
size fits when two training steps (:class:`fastbert.bench.train.TrainStep`, a fresh
optimizer) run without an out-of-memory error. It is not run on the CPU, where running
out of memory means swapping or the process being killed, not an error to catch.

Sizes are capped where the widest activation of a step (``batch * seq_len *
max(intermediate_size, 3 * hidden_size)`` elements) would pass 2**31 - 1, beyond which
kernels indexing with 32-bit offsets are not exercised by any test; a variant that fits
at the cap is reported as ``at_limit`` (it fits at least that).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from fastbert.bench import measure
from fastbert.bench.train import TrainStep, TrainVariants, training_batch
from fastbert.bench.variants import BASELINES
from fastbert.numerics import DTYPES

START = 8
PRECISION = 1 / 16
"""Bisection stops when the first failing size is within this fraction of the largest fitting one."""
MAX_PROBES = 24
STEPS_PER_PROBE = 2  # the second step runs with the optimizer state the first one allocated
SEQ_LENS = (128, 512)
ELEMENT_LIMIT = 2**31 - 1


@dataclass
class Search:
    """What a search found: ``largest`` size that fit (0: none did), ``first_failing`` size
    (None: none failed up to ``limit``), every ``(size, fit)`` probed, in order."""

    largest: int
    first_failing: int | None
    limit: int
    probes: list[tuple[int, bool]] = field(default_factory=list)

    @property
    def at_limit(self) -> bool:
        """True when the limit itself fit: the largest size is at least ``largest``."""
        return self.first_failing is None and self.largest == self.limit


def largest_batch(fits: Callable[[int], bool], limit: int, start: int = START, precision: float = PRECISION,
                  max_probes: int = MAX_PROBES) -> Search:
    """The largest size in ``[1, limit]`` for which ``fits(size)`` holds, assuming that every
    smaller size fits too: doubling from ``start``, then bisection; ``first_failing - largest``
    ends at most ``max(1, largest * precision)``, unless ``max_probes`` calls run out first."""
    if limit < 1 or start < 1:
        raise ValueError(f"limit and start must be positive, got {limit} and {start}")
    search = Search(0, None, limit)

    def probe(size: int) -> bool:
        ok = fits(size)
        search.probes.append((size, ok))
        if ok:
            search.largest = size
        else:
            search.first_failing = size
        return ok

    size = min(start, limit)
    while probe(size) and size < limit and len(search.probes) < max_probes:
        size = min(2 * size, limit)
    while (search.first_failing is not None and len(search.probes) < max_probes
           and search.first_failing - search.largest > max(1, int(search.largest * precision))):
        probe((search.largest + search.first_failing) // 2)
    return search


def size_limit(config, seq_len: int) -> int:
    """The largest batch whose widest activation stays within :data:`ELEMENT_LIMIT` elements."""
    widest = max(config.intermediate_size, 3 * config.hidden_size)
    return max(1, ELEMENT_LIMIT // (seq_len * widest))


def fits_in_memory(module, config, task: str, seq_len: int, varlen: bool, dtype: torch.dtype, seed: int,
                   device) -> Callable[[int], bool]:
    """The predicate of the search for one variant: do :data:`STEPS_PER_PROBE` training steps
    at this batch size run without an out-of-memory error? Other errors are raised."""

    device = torch.device(device)

    def fits(batch: int) -> bool:
        step, out_of_memory = None, False
        try:
            feed = training_batch(config, task, batch, seq_len, varlen, seed, device)
            step = TrainStep(module, feed, dtype, device)
            for _ in range(STEPS_PER_PROBE):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as exc:
            if not measure.is_out_of_memory(exc):
                raise
            out_of_memory = True
        # The failed step's tensors are unreachable once the exception is gone: free them for the next probe.
        if step is not None:
            step.release()
        del step
        gc.collect()
        measure.release_memory(device)
        return not out_of_memory

    return fits


def run_max_batch(task_model, variants: list[str], task: str, dtype: str, seq_lens, varlens, opts: measure.BenchOptions,
                  budget_spent: Callable[[], bool] = lambda: False) -> list[dict]:
    """The search for every variant at every ``seq_lens`` x ``varlens`` (each variant alone on
    the GPU); one entry per shape: ``{"seq_len", "varlen", "dtype", "task", "limit",
    "variants": {name: {"status", "largest", "first_failing", "at_limit", "probes",
    "seconds", "error"}}, "ratio": {fastbert variant: {baseline: its largest / baseline's}}}``.
    Once ``budget_spent()`` the remaining searches are recorded as skipped."""
    device = torch.device(opts.device)
    config = task_model.config
    entries = []
    for seq_len in seq_lens:
        limit = size_limit(config, seq_len)
        for varlen in varlens:
            entries.append({"seq_len": seq_len, "varlen": varlen, "dtype": dtype, "task": task, "limit": limit,
                            "variants": {}, "ratio": {}})
    for name in variants:
        models = TrainVariants(task_model, device)
        for entry in entries:
            entry["variants"][name] = _search_one(models, name, entry, config, opts, device, budget_spent)
        del models
        gc.collect()
        measure.release_memory(device)
    for entry in entries:
        entry["ratio"] = _ratios(entry["variants"])
    return entries


def _search_one(models: TrainVariants, name: str, entry: dict, config, opts, device, budget_spent) -> dict:
    record = {"status": "skipped", "largest": None, "first_failing": None, "at_limit": None, "probes": [],
              "seconds": None, "error": None}
    if budget_spent():
        record["error"] = "skipped: the time budget was spent"
        return record
    module = models.fresh(name)
    if isinstance(module, Exception):
        return record | {"status": "error", "error": f"building the variant: {measure.failure_message(module)}"}
    start = time.perf_counter()
    fits = fits_in_memory(module, config, entry["task"], entry["seq_len"], entry["varlen"], DTYPES[entry["dtype"]],
                       opts.seed, device)
    try:
        search = largest_batch(fits, entry["limit"])
    except Exception as exc:
        return record | {"status": "error", "error": measure.failure_message(exc)}
    return record | {"status": "ok", "largest": search.largest, "first_failing": search.first_failing,
                     "at_limit": search.at_limit, "probes": [list(p) for p in search.probes],
                     "seconds": time.perf_counter() - start}


def _ratios(variants: dict[str, dict]) -> dict[str, dict[str, float]]:
    ok = {n: r["largest"] for n, r in variants.items() if r["status"] == "ok" and r["largest"]}
    return {fb: {b: ok[fb] / ok[b] for b in ok if b in BASELINES} for fb in ok if fb not in BASELINES}

