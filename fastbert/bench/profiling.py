"""Run a model under ``torch.profiler`` and turn the events into per-op/per-kernel rows.

GPU: one row per CUDA kernel name (device time), classified by the op that launched it.
CPU: one row per op name with its self CPU time, classified by its op chain.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from fastbert.bench.opclass import classify


@dataclass
class OpRow:
    """Time spent in one op or kernel over the profiled forwards."""

    name: str
    op_class: str
    calls: int
    self_us: float
    share: float  # of the total profiled time

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class ProfileResult:
    """Rows (largest first), totals and what was timed."""

    rows: list[OpRow]
    total_us: float
    steps: int
    timed: str  # "CUDA kernel time" or "CPU self time"


def _chain(event) -> list[str]:
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


def _is_device(event) -> bool:
    return event.device_type != torch.autograd.DeviceType.CPU


def rows_from_events(events, on_gpu: bool) -> ProfileResult:
    """Aggregate profiler ``events`` into rows (see module docstring)."""
    totals, calls = defaultdict(float), defaultdict(int)
    if on_gpu:
        launchers = {e.id: e for e in events if not _is_device(e)}
        for e in events:
            if _is_device(e) and e.device_type == torch.autograd.DeviceType.CUDA:
                launcher = launchers.get(getattr(e, "linked_correlation_id", 0))
                key = (e.name, classify(_chain(launcher) if launcher else [], kernel=e.name))
                totals[key] += e.time_range.elapsed_us()
                calls[key] += 1
        timed = "CUDA kernel time"
    else:
        for e in events:
            if not _is_device(e) and not e.is_async:
                key = (e.name, classify(_chain(e)))
                totals[key] += e.self_cpu_time_total
                calls[key] += 1
        timed = "CPU self time"
    total = sum(totals.values()) or 1.0
    rows = [OpRow(n, c, calls[(n, c)], t, t / total) for (n, c), t in totals.items()]
    rows.sort(key=lambda r: -r.self_us)
    return ProfileResult(rows, sum(totals.values()), 0, timed)


def profile_model(model, feed: dict, device, warmup: int, steps: int, trace_path: Path) -> ProfileResult:
    """Profile ``steps`` forwards of ``model(**feed)`` after ``warmup`` ones; write a Chrome trace."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with torch.no_grad():
        for _ in range(warmup):
            model(**feed)
        if on_gpu:
            torch.cuda.synchronize(device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                model(**feed)
            if on_gpu:
                torch.cuda.synchronize(device)
    prof.export_chrome_trace(str(trace_path))
    result = rows_from_events(prof.events(), on_gpu)
    result.steps = steps
    return result
