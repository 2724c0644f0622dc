"""Timers: CUDA events on a GPU, ``time.perf_counter`` on the CPU; median and p90.

Variants are compared as ratios, so they are timed *interleaved* (one call of each in
turn, round after round): slow drifts of the machine (clocks, other processes) then touch
every variant alike instead of whichever happened to run during them.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

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

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


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


def interleaved(fns: dict[str, Callable], counts: dict[str, int], device) -> tuple[dict, dict, dict]:
    """Time ``counts[name]`` calls of each ``fns[name]``, one call of each in turn per round.

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
    for round_index in range(max(counts.values(), default=0)):
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


def measure(fn: Callable, device, warmup: int = 1, repeats: int = 10, max_seconds: float | None = None):
    """Time one function alone: warm-up, then :func:`interleaved` with it as the only
    variant. Returns (Timing, last return value); raises what ``fn`` raises."""
    warm = warm_up(fn, device, warmup)
    count = repeat_count(warm.estimate_s, repeats, max_seconds)
    times, outputs, failed = interleaved({"fn": fn}, {"fn": count}, device)
    if failed:
        raise failed["fn"]
    return summarize(times["fn"], warm.first_call_s, timer_name(device)), outputs.get("fn", warm.output)
