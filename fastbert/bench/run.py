"""The sweep loop: every configuration, every variant, same process, same inputs."""

from __future__ import annotations

import copy
import gc
import itertools
import sys
import time

import torch

from fastbert.bench import errors, inputs as bench_inputs, timing
from fastbert.bench.measure import BenchOptions, measure_config, speedups, variant_result
from fastbert.bench.runners import VARIANTS, load_base_model, reference_dtype, set_attention
from fastbert.bench.sweep import BenchConfig
from fastbert.check import DTYPES


def _progress_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _config_entry(cfg: BenchConfig, tokens, reference: str, variants: dict) -> dict:
    real, padded = tokens
    return {
        "config": cfg.to_dict(), "label": cfg.label(), "real_tokens": real, "padded_tokens": padded,
        "padding_fraction": 1.0 - real / padded if padded else 0.0, "reference": reference,
        "variants": variants, "speedup": speedups(variants),
    }


def _progress_line(index: int, total: int, elapsed: float, entry: dict) -> str:
    parts = []
    for name, r in entry["variants"].items():
        parts.append(f"{name} {r['median_ms']:.3g} ms" if r["status"] == "ok" else f"{name} {r['status']}")
    if entry["variants"] and all(r["status"] == "skipped" for r in entry["variants"].values()):
        parts = [next(iter(entry["variants"].values()))["error"]]
    return f"[{index}/{total} {elapsed:6.1f}s] {entry['label']}: " + " | ".join(parts)


class _ModelVariants:
    """Variant modules of one model, built on first use per (variant, dtype); a build
    failure is remembered and reported for every configuration that needs it."""

    def __init__(self, base, device):
        self.base, self.device, self.cache = base, torch.device(device), {}

    def get(self, name: str, dtype: str):
        key = (name, dtype)
        if key not in self.cache:
            try:
                self.cache[key] = VARIANTS[name].build(self.base, DTYPES[dtype], self.device)
            except Exception as exc:
                self.cache[key] = exc
        return self.cache[key]


def _skipped_entry(cfg: BenchConfig, opts: BenchOptions, reference: str) -> dict:
    msg = f"skipped: the time budget of {opts.time_budget_s:g} s was spent"
    lengths = bench_inputs.row_lengths(cfg.batch, cfg.seq_len, cfg.varlen, opts.seed)
    tokens = (int(lengths.sum()), cfg.batch * cfg.seq_len)
    return _config_entry(cfg, tokens, reference, {n: variant_result("skipped", msg) for n in opts.variants})


def run_sweep(configs: list[BenchConfig], opts: BenchOptions) -> list[dict]:
    """Measure every configuration; returns one entry per configuration (see report.py
    for the schema). Failures are recorded per variant, never raised. Once
    ``opts.time_budget_s`` has passed, no configuration (or model) is started: the rest are
    recorded as skipped."""
    progress = opts.progress or _progress_to_stderr
    device = torch.device(opts.device)
    start, entries = time.perf_counter(), []
    reference = f"HF sdpa in {str(reference_dtype(device)).replace('torch.', '')} on {device.type}"

    def budget_spent() -> bool:
        return opts.time_budget_s is not None and time.perf_counter() - start > opts.time_budget_s

    def record(entry: dict) -> None:
        entries.append(entry)
        progress(_progress_line(len(entries), len(configs), time.perf_counter() - start, entry))
        if opts.on_entry is not None:
            opts.on_entry(entries)

    if device.type == "cuda":
        timing.l2_flush_buffer(device)  # allocated before any variant's memory is tracked
    for model_name, model_cfgs in itertools.groupby(configs, key=lambda c: c.model):
        model_cfgs = list(model_cfgs)
        if budget_spent():
            for cfg in model_cfgs:
                record(_skipped_entry(cfg, opts, reference))
            continue
        try:
            base = load_base_model(model_name, opts.seed)
            ref_model = set_attention(copy.deepcopy(base).to(device=device, dtype=reference_dtype(device)).eval(), "sdpa")
        except Exception as exc:
            for cfg in model_cfgs:
                message = f"loading the model: {errors.failure_message(exc)}"
                record(_config_entry(cfg, (0, 0), "none", {n: variant_result("error", message) for n in opts.variants}))
            continue
        models = _ModelVariants(base, device)
        for (seq_len, varlen, batch), shape_cfgs in itertools.groupby(model_cfgs, key=lambda c: (c.seq_len, c.varlen, c.batch)):
            feed = bench_inputs.make_batch(base.config, batch, seq_len, varlen, opts.seed, device)
            tokens = bench_inputs.token_counts(feed)
            ref_out = None
            for cfg in shape_cfgs:
                if budget_spent():
                    record(_skipped_entry(cfg, opts, reference))
                    continue
                if ref_out is None:
                    ref_out = _reference_output(ref_model, feed)
                modules = {name: models.get(name, cfg.dtype) for name in opts.variants}
                record(_config_entry(cfg, tokens, reference, measure_config(modules, feed, ref_out, tokens, opts)))
        del models, ref_model, base
        if "hf_compile" in opts.variants:
            torch._dynamo.reset()  # drop this model's compiled graphs
        gc.collect()
        errors.release_memory(device)
    return entries


def _reference_output(ref_model, feed) -> torch.Tensor | None:
    """The reference model's last hidden state (None if it cannot run, e.g. out of memory)."""
    try:
        with torch.no_grad():
            return ref_model(**feed).last_hidden_state
    except Exception:
        return None
