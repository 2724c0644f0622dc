"""Measuring: timers, peak memory, failures, one configuration, and the sweep loop.

Variants are compared as ratios, so they are timed *interleaved* (one call of each in
turn, round after round): slow drifts of the machine (clocks, other processes) then touch
every variant alike instead of whichever happened to run during them. GPU: CUDA events
around each call, after zeroing a buffer larger than L2 (as ``triton.testing.do_bench``
does), so a call does not find the previous call's data in L2. CPU: ``time.perf_counter``.

Peak memory (GPU only) is each variant's weights plus the allocator's peak growth over
its build and warm-up, so each variant's peak is its own although the timed calls are
interleaved. A variant that fails is recorded as ``"oom"`` or ``"error"``, never raised:
one failure does not stop the sweep. :func:`run_sweep` measures every configuration of a
sweep (:mod:`fastbert.bench.sweep`) for every variant (:mod:`fastbert.bench.variants`)
on the same inputs, against the HF reference (:mod:`fastbert.numerics`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fastbert.bench.sweep import BenchConfig, load_base_model, make_batch, row_lengths, token_counts
from fastbert.bench.variants import BASELINES, VARIANTS, set_attention
from fastbert.numerics import DTYPES, compare, reference_dtype
from fastbert.ops import dispatch


# ---------------------------------------------------------------------------
# Timers
# ---------------------------------------------------------------------------

# Zeroing a buffer larger than the L2 cache before each timed call (as
# triton.testing.do_bench does) so a run does not find the previous run's data in L2.
_L2_FLUSH_BYTES = 256 * 1024 * 1024
MIN_REPEATS = 3
CPU_TIMER = "time.perf_counter"
GPU_TIMER = "cuda events (L2 flushed before each call)"


@dataclass
class Timing:
    """Measured seconds of one variant at one configuration."""

    median_s: float
    p90_s: float
    min_s: float
    repeats: int
    first_call_s: float  # the first warm-up call: includes compilation / capture / autotuning
    timer: str


@dataclass
class WarmUp:
    """What the warm-up calls of one variant showed: first call, per-call estimate, last output."""

    first_call_s: float
    estimate_s: float
    output: object


@functools.lru_cache(maxsize=None)
def l2_flush_buffer(device: torch.device) -> torch.Tensor:
    """The buffer zeroed before each timed GPU call; allocated once per device, so that it is
    not counted in a variant's peak memory when allocated before the sweep."""
    return torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device=device)


def summarize(times: list[float], first_call_s: float, timer: str) -> Timing:
    """Median, 90th percentile (linear interpolation) and minimum of ``times``."""
    arr = np.asarray(times, dtype=float)
    return Timing(float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.min()), len(times), first_call_s, timer)


def repeat_count(estimate_s: float, repeats: int, max_seconds: float | None) -> int:
    """How many timed calls: ``repeats``, reduced so they take about ``max_seconds``
    (never below ``min(repeats, MIN_REPEATS)``)."""
    if max_seconds is None or estimate_s <= 0:
        return repeats
    fit = math.floor(max_seconds / estimate_s)
    return max(min(repeats, MIN_REPEATS), min(repeats, fit))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wall_call(fn: Callable, device: torch.device) -> tuple[float, object]:
    _synchronize(device)
    start = time.perf_counter()
    out = fn()
    _synchronize(device)
    return time.perf_counter() - start, out


def warm_up(fn: Callable, device, calls: int) -> WarmUp:
    """Run ``fn`` ``max(calls, 1)`` times (synchronized wall clock); the fastest call after
    the first (or the first, if it is the only one) estimates one call's time."""
    device = torch.device(device)
    times, out = [], None
    for _ in range(max(calls, 1)):
        t, out = _wall_call(fn, device)
        times.append(t)
    return WarmUp(times[0], min(times[1:]) if len(times) > 1 else times[0], out)


def timer_name(device) -> str:
    """Which clock :func:`interleaved` uses on ``device``."""
    return GPU_TIMER if torch.device(device).type == "cuda" else CPU_TIMER


def interleaved(fns: dict[str, Callable], counts: dict[str, int], device,
                on_round: Callable[[int, int], None] | None = None) -> tuple[dict, dict, dict]:
    """Time ``counts[name]`` calls of each ``fns[name]``, one call of each in turn per round
    (``on_round(rounds done, rounds)`` after each, e.g. for progress lines).

    Returns ``(seconds per call, last output, exception)`` dicts keyed by name; a function
    that raises is dropped from later rounds and appears only in the exception dict.
    GPU: each call is bracketed by its own pair of CUDA events, after an L2 flush, and the
    device is synchronized once at the end. CPU: ``time.perf_counter`` around each call.
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    flush = l2_flush_buffer(device) if on_gpu else None
    pending = {n: [] for n in fns}  # CPU: seconds; GPU: event pairs
    outputs, failed = {}, {}
    rounds = max(counts.values(), default=0)
    for round_index in range(rounds):
        if on_round is not None and round_index:
            on_round(round_index, rounds)
        for name, fn in fns.items():
            if name in failed or round_index >= counts[name]:
                continue
            try:
                if on_gpu:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    flush.zero_()
                    start.record()
                    outputs[name] = fn()
                    end.record()
                    pending[name].append((start, end))
                else:
                    seconds, outputs[name] = _wall_call(fn, device)
                    pending[name].append(seconds)
            except Exception as exc:  # recorded per variant by the caller
                failed[name] = exc
    if on_gpu:
        torch.cuda.synchronize(device)
        pending = {n: [s.elapsed_time(e) / 1e3 for s, e in pairs] for n, pairs in pending.items()}
    times = {n: t for n, t in pending.items() if n not in failed}
    return times, outputs, failed


def time_alone(fn: Callable, device, warmup: int = 1, repeats: int = 10, max_seconds: float | None = None):
    """Time one function alone: warm-up, then :func:`interleaved` with it as the only
    variant. Returns (Timing, last return value); raises what ``fn`` raises."""
    warm = warm_up(fn, device, warmup)
    count = repeat_count(warm.estimate_s, repeats, max_seconds)
    times, outputs, failed = interleaved({"fn": fn}, {"fn": count}, device)
    if failed:
        raise failed["fn"]
    return summarize(times["fn"], warm.first_call_s, timer_name(device)), outputs.get("fn", warm.output)


# ---------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------

CUDA_KIND = "cuda: model weights + torch.cuda.max_memory_allocated() growth during build and warm-up forwards"
CPU_KIND = "not measured on the CPU (null)"


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the module's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class PeakMemory:
    """Result holder for :func:`track_peak`: ``bytes`` (None on the CPU) and ``kind``."""

    def __init__(self, kind: str):
        self.kind = kind
        self.bytes: int | None = None


@contextlib.contextmanager
def track_peak(module: nn.Module, device, kind: str = CUDA_KIND) -> Iterator[PeakMemory]:
    """Measure the peak memory of the work done inside the block.

    On a GPU: this module's weights plus how far ``torch.cuda.max_memory_allocated``
    rose above what was allocated when the block began, i.e. what this variant would need
    alone (the other variants' models, resident at the same time, are not counted).
    ``kind`` says in the results what that covers.
    """
    device = torch.device(device)
    if device.type != "cuda":
        yield PeakMemory(CPU_KIND)
        return
    result = PeakMemory(kind)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield result
    finally:
        torch.cuda.synchronize(device)
        result.bytes = weight_bytes(module) + max(0, torch.cuda.max_memory_allocated(device) - base)


# ---------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """True for ``torch.cuda.OutOfMemoryError`` and RuntimeErrors saying "out of memory"."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def failure_status(exc: BaseException) -> str:
    """``"oom"`` or ``"error"``."""
    return "oom" if is_out_of_memory(exc) else "error"


def failure_message(exc: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line, at most ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def release_memory(device) -> None:
    """Return cached CUDA blocks after a failure so the next variant starts clean."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# One configuration
# ---------------------------------------------------------------------------

PROGRESS_EVERY_S = 5.0
"""Seconds of silence after which a configuration still being measured prints what it is doing."""


class StageProgress:
    """Progress lines from inside one configuration (building and warming up each variant,
    timed rounds), through ``opts.progress`` (default: stderr): a stage is reported only once
    :data:`PROGRESS_EVERY_S` seconds have passed since the configuration began or since the
    last line, so quick configurations print nothing extra."""

    def __init__(self, label: str, opts: "BenchOptions"):
        self.label, self.report = label, opts.progress or _progress_to_stderr
        self.start = self.last = time.perf_counter()

    def __call__(self, what: str) -> None:
        """Report ``what`` (e.g. "hf_eager warmed up") if the last line is old enough."""
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S:
            self.report(f"  {self.label}: {what} ({now - self.start:.0f} s into this configuration)")
            self.last = now

    def rounds(self, done: int, total: int) -> None:
        """:func:`interleaved`'s ``on_round``."""
        self(f"timed round {done}/{total}")



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
    warm: WarmUp
    peak: PeakMemory
    backends: str | None


def prepare_call(make_call: Callable[[], Callable], module, opts: BenchOptions, baseline: bool, grad: bool = False,
                 memory_kind: str = CUDA_KIND) -> _Prepared:
    """Make a variant's call (compiling / capturing happens here) and warm it up, without
    autograd unless ``grad``. Peak memory is tracked over both, so that each variant's peak
    is its own even though the timed calls are interleaved; the backends fastbert's dispatch
    chose are recorded for non-``baseline`` variants."""
    grad_mode = contextlib.nullcontext() if grad else torch.no_grad()
    with grad_mode, track_peak(module, opts.device, memory_kind) as peak, dispatch.record_dispatch() as calls:
        call = make_call()
        warm = warm_up(call, opts.device, opts.warmup)
    return _Prepared(call, warm, peak, None if baseline else _backends(calls))


def _prepare(name: str, module, feed: dict, opts: BenchOptions) -> _Prepared:
    variant = VARIANTS[name]
    return prepare_call(lambda: variant.make_forward(module, feed), module, opts, variant.baseline)


def measure_config(modules: dict, feed: dict, ref_out, tokens, opts: BenchOptions,
                   progress: StageProgress | None = None) -> dict[str, dict]:
    """Time every variant on one batch, interleaved; record each one's numeric error against
    the reference. ``modules`` maps variant name to its module, or to the exception its
    build raised. Failures are recorded per variant, never raised. A configuration that
    takes long reports its stages through ``progress`` (:class:`StageProgress`)."""
    results, prepared = {}, {}
    progress = progress or StageProgress("", opts)
    for name, module in modules.items():
        if isinstance(module, Exception):
            results[name] = variant_result(failure_status(module), f"building the variant: {failure_message(module)}")
            continue
        try:
            prepared[name] = _prepare(name, module, feed, opts)
        except Exception as exc:  # one variant failing must not stop the sweep
            results[name] = variant_result(failure_status(exc), failure_message(exc))
            release_memory(opts.device)
        progress(f"{name} warmed up")
    counts = {n: repeat_count(p.warm.estimate_s, opts.repeats, opts.max_seconds_per_variant) for n, p in prepared.items()}
    with torch.no_grad():
        times, outputs, failed = interleaved({n: p.forward for n, p in prepared.items()}, counts, opts.device,
                                             progress.rounds)
    for name, exc in failed.items():
        results[name] = variant_result(failure_status(exc), failure_message(exc))
    for name, seconds in times.items():
        results[name] = ok_result(prepared[name], seconds, outputs.get(name, prepared[name].warm.output), ref_out,
                                  feed, tokens, opts)
    del prepared, outputs
    release_memory(opts.device)
    return {n: results[n] for n in modules}


def ok_result(prep: _Prepared, seconds: list[float], out, ref_out, feed, tokens, opts) -> dict:
    """The result record of a variant timed ``seconds``; its error against ``ref_out`` (None:
    not compared) on real tokens."""
    t = summarize(seconds, prep.warm.first_call_s, timer_name(opts.device))
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


def ranges_overlap(a_low: float, a_high: float, b_low: float, b_high: float) -> bool:
    """Whether the timing ranges ``[a_low, a_high]`` and ``[b_low, b_high]`` (fastest call to 90th
    percentile) overlap: then which variant is faster depends on which calls one looks at, and
    their ratio is not a reliable result (the rule the tables' ``?`` marks)."""
    return a_low <= b_high and b_low <= a_high


def reliable_speedups(variants: dict[str, dict]) -> dict[str, dict[str, bool]]:
    """``{fastbert variant: {baseline: reliable}}`` for the pairs :func:`speedups` gives: a ratio
    is reliable when the two variants' ``[min_ms, p90_ms]`` ranges do not overlap."""
    ok = {n: r for n, r in variants.items() if r["status"] == "ok"}
    return {fb: {base: not ranges_overlap(ok[fb]["min_ms"], ok[fb]["p90_ms"], ok[base]["min_ms"], ok[base]["p90_ms"])
                 for base in ok if base in BASELINES}
            for fb in ok if fb not in BASELINES}


def speedups(variants: dict[str, dict], key: str = "median_ms") -> dict[str, dict[str, float]]:
    """``{fastbert variant: {baseline: baseline median / fastbert median}}`` over the
    variants measured ("ok") in this configuration (``key="min_ms"``: the same with minima)."""
    ok = {n: r[key] for n, r in variants.items() if r["status"] == "ok"}
    out = {}
    for fb in (n for n in ok if n not in BASELINES):
        out[fb] = {base: ok[base] / ok[fb] for base in ok if base in BASELINES}
    return out


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


def _progress_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class SweepLog:
    """The entries of a sweep as they come: a progress line and ``opts.on_entry`` after each,
    and whether ``opts.time_budget_s`` is spent (counted from this log's creation)."""

    def __init__(self, total: int, opts: BenchOptions):
        self.total, self.opts, self.entries = total, opts, []
        self.progress = opts.progress or _progress_to_stderr
        self.start = time.perf_counter()

    def budget_spent(self) -> bool:
        """Whether the time budget has passed (never, without one)."""
        budget = self.opts.time_budget_s
        return budget is not None and time.perf_counter() - self.start > budget

    def record(self, entry: dict) -> None:
        """Keep ``entry``, print its progress line, then call ``opts.on_entry`` with every entry so far."""
        self.entries.append(entry)
        self.progress(progress_line(len(self.entries), self.total, time.perf_counter() - self.start, entry))
        if self.opts.on_entry is not None:
            self.opts.on_entry(self.entries)

    def skip(self, configs: list[BenchConfig], reference: str) -> None:
        """Record ``configs`` as skipped: the time budget was spent before them."""
        for cfg in configs:
            self.record(skipped_entry(cfg, self.opts, reference))

    def fail(self, configs: list[BenchConfig], exc: BaseException) -> None:
        """Record ``configs`` as failed for every variant: their model could not be loaded."""
        message = f"loading the model: {failure_message(exc)}"
        for cfg in configs:
            self.record(config_entry(cfg, (0, 0), "none", {n: variant_result("error", message) for n in self.opts.variants}))


def config_entry(cfg: BenchConfig, tokens, reference: str, variants: dict) -> dict:
    """One configuration's entry of the results (see report.py for the schema)."""
    real, padded = tokens
    return {
        "config": cfg.to_dict(), "label": cfg.label(), "real_tokens": real, "padded_tokens": padded,
        "padding_fraction": 1.0 - real / padded if padded else 0.0, "reference": reference,
        "variants": variants, "speedup": speedups(variants), "speedup_reliable": reliable_speedups(variants),
    }


def progress_line(index: int, total: int, elapsed: float, entry: dict) -> str:
    """``[i/n elapsed] label: variant ms | ...`` for the progress printed after each configuration."""
    parts = []
    for name, r in entry["variants"].items():
        parts.append(f"{name} {r['median_ms']:.3g} ms ({r['min_ms']:.3g}-{r['p90_ms']:.3g})" if r["status"] == "ok"
                     else f"{name} {r['status']}")
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


def skipped_entry(cfg: BenchConfig, opts: BenchOptions, reference: str) -> dict:
    """The entry of a configuration not started because the time budget was spent."""
    msg = f"skipped: the time budget of {opts.time_budget_s:g} s was spent"
    lengths = row_lengths(cfg.batch, cfg.seq_len, cfg.varlen, opts.seed)
    tokens = (int(lengths.sum()), cfg.batch * cfg.seq_len)
    return config_entry(cfg, tokens, reference, {n: variant_result("skipped", msg) for n in opts.variants})


def run_sweep(configs: list[BenchConfig], opts: BenchOptions) -> list[dict]:
    """Measure every configuration; returns one entry per configuration (see report.py
    for the schema). Failures are recorded per variant, never raised. Once
    ``opts.time_budget_s`` has passed, no configuration (or model) is started: the rest are
    recorded as skipped."""
    device = torch.device(opts.device)
    log = SweepLog(len(configs), opts)
    reference = f"HF sdpa in {str(reference_dtype(device)).replace('torch.', '')} on {device.type}"
    if device.type == "cuda":
        l2_flush_buffer(device)  # allocated before any variant's memory is tracked
    for model_name, model_cfgs in itertools.groupby(configs, key=lambda c: c.model):
        model_cfgs = list(model_cfgs)
        if log.budget_spent():
            log.skip(model_cfgs, reference)
            continue
        try:
            base = load_base_model(model_name, opts.seed)
            ref_model = set_attention(copy.deepcopy(base).to(device=device, dtype=reference_dtype(device)).eval(), "sdpa")
        except Exception as exc:
            log.fail(model_cfgs, exc)
            continue
        models = _ModelVariants(base, device)
        for (seq_len, varlen, batch), shape_cfgs in itertools.groupby(model_cfgs, key=lambda c: (c.seq_len, c.varlen, c.batch)):
            feed = make_batch(base.config, batch, seq_len, varlen, opts.seed, device)
            tokens = token_counts(feed)
            ref_out = None
            for cfg in shape_cfgs:
                if log.budget_spent():
                    log.record(skipped_entry(cfg, opts, reference))
                    continue
                if ref_out is None:
                    ref_out = _reference_output(ref_model, feed)
                progress = StageProgress(cfg.label(), opts)
                modules = {}
                for name in opts.variants:
                    modules[name] = models.get(name, cfg.dtype)
                    progress(f"{name} built")
                results = measure_config(modules, feed, ref_out, tokens, opts, progress)
                log.record(config_entry(cfg, tokens, reference, results))
        del models, ref_model, base
        if "hf_compile" in opts.variants:
            torch._dynamo.reset()  # drop this model's compiled graphs
        gc.collect()
        release_memory(device)
    return log.entries


def _reference_output(ref_model, feed) -> torch.Tensor | None:
    """The reference model's last hidden state (None if it cannot run, e.g. out of memory)."""
    try:
        with torch.no_grad():
            return ref_model(**feed).last_hidden_state
    except Exception:
        return None
