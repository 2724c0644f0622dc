"""One configuration: every variant built, warmed up, timed interleaved on the same batch,
and checked against the reference; plus fastbert's speedups from the measured medians."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from fastbert.bench import errors, memory, timing
from fastbert.bench.runners import VARIANTS
from fastbert.check import compare
from fastbert.ops import dispatch


@dataclass
class BenchOptions:
    """How to measure: device, variants, warm-up and repeats, time limits, seed."""

    device: str = "cpu"
    variants: list[str] = field(default_factory=lambda: ["hf_eager", "hf_sdpa", "fastbert"])
    warmup: int = 1
    repeats: int = 10
    max_seconds_per_variant: float | None = None
    time_budget_s: float | None = None
    seed: int = 0
    progress: Callable[[str], None] | None = None
    on_entry: Callable[[list[dict]], None] | None = None  # called with all entries so far, after each


def variant_result(status: str, message: str | None = None, **values) -> dict:
    """One variant's result record; every key present, None where not measured."""
    result = {
        "status": status, "median_ms": None, "p90_ms": None, "min_ms": None, "repeats": 0, "first_call_ms": None,
        "timer": None, "real_tokens_per_s": None, "padded_tokens_per_s": None, "peak_memory_bytes": None,
        "memory_kind": None, "rel_error": None, "max_abs_error": None, "backends": None, "error": message,
    }
    result.update(values)
    return result


@dataclass
class _Prepared:
    """A variant ready to be timed: its call, warm-up findings, peak memory, backends."""

    forward: Callable
    warm: timing.WarmUp
    peak: memory.PeakMemory
    backends: str | None


def _prepare(name: str, module, feed: dict, opts: BenchOptions) -> _Prepared:
    """Build the variant's call (compiling / capturing happens here) and warm it up. Peak
    memory is tracked over the build and the warm-up forwards, so that each variant's peak is
    its own even though the timed calls are interleaved."""
    variant = VARIANTS[name]
    with torch.no_grad(), memory.track_peak(module, opts.device) as peak, dispatch.record_dispatch() as calls:
        forward = variant.make_forward(module, feed)
        warm = timing.warm_up(forward, opts.device, opts.warmup)
    return _Prepared(forward, warm, peak, None if variant.baseline else _backends(calls))


def measure_config(modules: dict, feed: dict, ref_out, tokens, opts: BenchOptions) -> dict[str, dict]:
    """Time every variant on one batch, interleaved; record each one's numeric error against
    the reference. ``modules`` maps variant name to its module, or to the exception its
    build raised. Failures are recorded per variant, never raised."""
    results, prepared = {}, {}
    for name, module in modules.items():
        if isinstance(module, Exception):
            results[name] = variant_result(errors.failure_status(module), f"building the variant: {errors.failure_message(module)}")
            continue
        try:
            prepared[name] = _prepare(name, module, feed, opts)
        except Exception as exc:  # one variant failing must not stop the sweep
            results[name] = variant_result(errors.failure_status(exc), errors.failure_message(exc))
            errors.release_memory(opts.device)
    counts = {n: timing.repeat_count(p.warm.estimate_s, opts.repeats, opts.max_seconds_per_variant) for n, p in prepared.items()}
    with torch.no_grad():
        times, outputs, failed = timing.interleaved({n: p.forward for n, p in prepared.items()}, counts, opts.device)
    for name, exc in failed.items():
        results[name] = variant_result(errors.failure_status(exc), errors.failure_message(exc))
    for name, seconds in times.items():
        results[name] = _ok_result(prepared[name], seconds, outputs.get(name, prepared[name].warm.output), ref_out,
                                   feed, tokens, opts)
    del prepared, outputs
    errors.release_memory(opts.device)
    return {n: results[n] for n in modules}


def _ok_result(prep: _Prepared, seconds: list[float], out, ref_out, feed, tokens, opts) -> dict:
    t = timing.summarize(seconds, prep.warm.first_call_s, timing.timer_name(opts.device))
    real, padded = tokens
    max_abs = rel = None
    if ref_out is not None:
        max_abs, rel = compare(out, ref_out, feed["attention_mask"])
        if not bool(torch.isfinite(out).all()):
            max_abs = rel = float("inf")
    return variant_result(
        "ok", median_ms=t.median_s * 1e3, p90_ms=t.p90_s * 1e3, min_ms=t.min_s * 1e3, repeats=t.repeats,
        first_call_ms=t.first_call_s * 1e3, timer=t.timer, real_tokens_per_s=real / t.median_s,
        padded_tokens_per_s=padded / t.median_s, peak_memory_bytes=prep.peak.bytes, memory_kind=prep.peak.kind,
        rel_error=rel, max_abs_error=max_abs, backends=prep.backends,
    )


def _backends(calls: list[tuple[str, str]]) -> str:
    """``op=backend`` pairs fastbert's dispatch chose, e.g. ``attention=triton;linear=triton``."""
    chosen: dict[str, set] = {}
    for op, backend in calls:
        chosen.setdefault(op, set()).add(backend)
    return ";".join(f"{op}={'+'.join(sorted(b))}" for op, b in sorted(chosen.items()))


def speedups(variants: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``{fastbert variant: {baseline: baseline median / fastbert median}}`` over the
    variants measured ("ok") in this configuration."""
    ok = {n: r["median_ms"] for n, r in variants.items() if r["status"] == "ok"}
    out = {}
    for fb in (n for n in ok if not VARIANTS[n].baseline):
        out[fb] = {base: ok[base] / ok[fb] for base in ok if VARIANTS[base].baseline}
    return out
