"""What the GPU crossover scripts (linear_crossover.py, sparse_crossover.py) share: their
common options, rotating inputs, CUDA-event timing, the results file and the table write.

The scripts import it as a sibling (``python benchmarks/<script>.py`` puts this folder
on ``sys.path``); the measured table itself is written through
:func:`fastbert.data.tables.write_table`, the one writer of fastbert's tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the checkout's fastbert, also when run from elsewhere
    sys.path.insert(0, ROOT)
TIMING = "triton.testing.do_bench median, rotating inputs > 2x L2"


def add_common_arguments(parser: argparse.ArgumentParser, table: str, dtypes, tokens, margin: float, wins: str) -> None:
    """The options every crossover script has: dtypes, token counts, the winning margin,
    the results file, ``--write-table`` and ``--list``."""
    parser.add_argument("--dtypes", nargs="+", default=list(dtypes), choices=list(dtypes))
    parser.add_argument("--tokens", nargs="+", type=int, default=tokens)
    parser.add_argument("--margin", type=float, default=margin, help=f"{wins} must be faster by this fraction to win")
    parser.add_argument("--json", help=f"output path (default benchmarks/results/{table}_sm<arch>_<date>.json)")
    parser.add_argument("--write-table", action="store_true",
                        help=f"replace this GPU architecture's entries in fastbert/data/{table}.json")
    parser.add_argument("--list", action="store_true", help="print what would be measured and exit (no GPU needed)")


def cuda_target(script: str) -> tuple[torch.device, int, int]:
    """``(device, architecture family, L2 bytes)`` of the GPU; without one, a message and exit code 2."""
    if not torch.cuda.is_available():
        print(f"{script}: needs a CUDA GPU (nothing measured, table unchanged)", file=sys.stderr)
        raise SystemExit(2)
    from fastbert.kernels import launch

    device = torch.device("cuda")
    l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
    return device, launch.arch(device), l2_bytes


def rotating(make, nbytes: int, l2_bytes: int) -> list:
    """Enough copies of an input that cycling through them exceeds L2 twice over (2 to 16)."""
    count = min(16, max(2, -(-2 * l2_bytes // max(nbytes, 1))))
    return [make() for _ in range(count)]


def time_us(fn) -> float:
    """Median microseconds of ``fn()`` by ``triton.testing.do_bench``, after one untimed call
    (autotuning, cuBLAS heuristics)."""
    import triton.testing

    fn()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def finish(table: str, args, device: torch.device, arch: int, rows: list[dict], entries: list[dict], **meta) -> None:
    """Write every measured row with the run's metadata to the results JSON; with
    ``--write-table``, replace this architecture's entries in ``fastbert/data/<table>.json``."""
    import triton

    from fastbert.data.tables import write_table

    date = datetime.date.today().isoformat()
    out = args.json or os.path.join(ROOT, "benchmarks", "results", f"{table}_sm{arch}_{date}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    meta = {
        "gpu": torch.cuda.get_device_name(device), "arch": arch, "date": date, "torch": torch.__version__,
        "triton": triton.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "margin": args.margin, "timing": TIMING,
    } | meta  # fmt: skip
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {out}")
    if args.write_table:
        path = write_table(table, str(arch), entries)
        print(f"rewrote the sm_{arch} entries of {path}")
