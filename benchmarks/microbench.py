"""Shared parts of the microbenchmarks (attention_microbench.py, elementwise_microbench.py).

Timing: on a GPU ``triton.testing.do_bench`` (CUDA events, L2 cleared before each call),
its median; on the CPU (the suite's dry run) the median of a few ``time.perf_counter``
calls. Every results file carries where it was measured: ``measured_on_gpu`` false means
the numbers are CPU numbers from a dry run of the scripts, never GPU results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CPU_REPEATS = 3


def device() -> torch.device:
    """CUDA when available, else the CPU (whose numbers are labelled as such)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(argv: list[str] | None, description: str, shapes: list, tiny_shapes: list,
        measure: Callable[[tuple, str, torch.device], list[dict]], describe: Callable[[dict], str], **meta) -> int:
    """A microbenchmark's command line: ``--json PATH [--dtype ...] [--tiny]``.

    ``measure(shape, dtype_name, device)`` returns result rows, each with ``agrees`` (its
    output matched the reference) and ``rel_err``; ``describe(row)`` is its printed line;
    ``meta`` goes into the results file. Exit code 1 when any row disagrees.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", required=True, metavar="PATH", help="write the results here")
    parser.add_argument("--dtype", nargs="+", default=["fp16"], choices=list(DTYPES))
    parser.add_argument("--tiny", action="store_true", help="small shapes (the suite's CPU dry run)")
    args = parser.parse_args(argv)
    dev = device()
    rows = []
    for dtype_name in args.dtype:
        for shape in tiny_shapes if args.tiny else shapes:
            for row in measure(shape, dtype_name, dev):
                rows.append(row)
                print(describe(row) + ("" if row["agrees"] else f"  DISAGREES: rel err {row['rel_err']}"), flush=True)
    write_results(args.json, dev, rows, **meta)
    return 0 if all(row["agrees"] for row in rows) else 1


def median_ms(fn: Callable[[], object], dev: torch.device) -> float:
    """Median milliseconds of one call of ``fn`` (see the module docstring for the clock)."""
    if dev.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()  # warm-up
    times = []
    for _ in range(CPU_REPEATS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_sides(row: dict, fns: dict[str, Callable[[], object]], dev: torch.device, amount: float, unit: str) -> None:
    """Time each side's function; set ``row[f"{side}_ms"]`` and ``row[f"{side}_{unit}"]`` =
    ``amount`` per second (``amount`` in the unit's scale: FLOPs / 1e12 for ``tflops``,
    bytes / 1e9 for ``gbps``)."""
    for side, fn in fns.items():
        ms = median_ms(fn, dev)
        row[f"{side}_ms"] = sig(ms)
        row[f"{side}_{unit}"] = sig(amount / (ms * 1e-3))


def timer_name(dev: torch.device) -> str:
    """What :func:`median_ms` measured with, for the results file."""
    if dev.type == "cuda":
        return "triton.testing.do_bench (CUDA events, L2 cleared per call), median, warmup 25 ms, rep 100 ms"
    return f"time.perf_counter, median of {CPU_REPEATS} calls after one warm-up (CPU dry run)"


def sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (for results files)."""
    return float(f"{x:.{digits}g}")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 (NaN anywhere gives NaN, which fails every check)."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())


def write_results(path: str, dev: torch.device, rows: list[dict], **extra) -> None:
    """Rows plus metadata (device, versions, commit, date, ``measured_on_gpu``) as JSON."""
    from fastbert.bench.report import collect_metadata

    meta = collect_metadata(dev) | {"timer": timer_name(dev)} | extra
    if not meta["measured_on_gpu"]:
        meta["label"] = "CPU dry run: not GPU results"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {path}")
