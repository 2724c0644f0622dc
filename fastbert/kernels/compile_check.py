"""Build gate: compile every registered kernel ahead of time for sm_80 and sm_90.

For each kernel in :mod:`fastbert.kernels.registry` x each representative variant x
each autotune config x each architecture, this compiles to a cubin with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` (no GPU or
driver needed), reads registers, shared memory and local memory (spills) with the
``cuobjdump`` shipped in Triton's wheel, and checks the SASS for the architecture's
matrix instructions (``HMMA`` = mma on sm_80, ``HGMMA`` = wgmma on sm_90).

It fails (nonzero exit) on a compile error, any local memory (spills), shared memory
over the chip's per-block limit, or a matmul-class variant without its matrix
instructions. Run it as ``fastbert compile-check`` or
``python -m fastbert.kernels.compile_check [--arch 90] [--kernel attention] [--json out.json]``.

Compilation runs in fresh worker processes with ``TRITON_INTERPRET`` unset, since
under the interpreter ``triton.jit`` yields functions the compiler cannot take.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import importlib
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
"""Largest shared memory one block may use (bytes): A100 163 KB, H100 227 KB."""
MATRIX_SASS = {80: ("HMMA", "mma"), 90: ("HGMMA", "wgmma")}
_NOT_KERNEL_MODULES = {"registry", "compile_check"}


@dataclasses.dataclass(frozen=True)
class Job:
    """One compilation: a registered kernel's variant and config for one architecture."""

    module: str
    kernel: str
    variant: int
    config: int
    arch: int


def load_kernel_modules() -> list[dict]:
    """Import every module of ``fastbert.kernels`` so that its kernels register.

    Returns a failing table row for each module that does not import (its kernels
    cannot be checked, so the gate fails).
    """
    import fastbert.kernels as package

    rows = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_KERNEL_MODULES:
            continue
        name = f"{package.__name__}.{info.name}"
        try:
            importlib.import_module(name)
        except Exception as e:  # report it in the table like any other build failure
            row = dict.fromkeys(["variant", "config", "arch", "regs", "smem", "local", "matrix"])
            rows.append(row | {"kernel": name, "status": f"FAIL import: {_first_line(e)}", "seconds": 0.0})
    return rows


def plan(archs: list[int], name_filters: list[str]) -> list[Job]:
    """Every (kernel, variant, config, arch) to compile, for kernels matching a filter."""
    from fastbert.kernels import registry

    jobs = []
    for entry in registry.kernels():
        if name_filters and not any(f in entry.name for f in name_filters):
            continue
        for vi, variant in enumerate(entry.variants):
            for arch in archs:
                for ci in range(len(entry.configs_for(arch, variant))):
                    jobs.append(Job(entry.module, entry.name, vi, ci, arch))
    return jobs


def _signature(fn: Any, args: dict, config_kwargs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ASTSource, mirroring how the JIT specializes."""
    signature, constexprs, attrs = {}, {}, {}
    values = {**args, **config_kwargs}
    missing = [p for p in fn.arg_names if p not in values]
    if missing:
        raise ValueError(f"variant of {fn.__name__} gives no value for {missing}")
    for i, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[param.name] = "constexpr"  # the JIT turns ints equal to 1 into constants too
            constexprs[param.name] = value
        elif isinstance(value, str):
            signature[param.name] = value
            if value.startswith("*"):  # torch allocations are 16-byte aligned
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, int) and not isinstance(value, bool):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"cannot build a signature for {fn.__name__}.{param.name} from {value!r}")
    return signature, constexprs, attrs


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _cuobjdump() -> str:
    import triton

    default = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    path = os.environ.get("TRITON_CUOBJDUMP_PATH", default)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cuobjdump not found at {path}; set TRITON_CUOBJDUMP_PATH")
    return path


def inspect_cubin(cubin: bytes) -> dict:
    """Registers, static shared and local memory (spills) and matrix instructions of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    if m is None:
        raise RuntimeError(f"cannot parse cuobjdump -res-usage output:\n{usage}")
    regs, stack, shared, local = map(int, m.groups())
    found = [name for opcode, name in (("HGMMA", "wgmma"), ("HMMA", "mma")) if re.search(rf"\b{opcode}\.", sass)]
    return {"regs": regs, "static_smem": shared, "local": stack + local, "matrix": "+".join(found) or "-"}


def compile_one(job: Job) -> dict:
    """Compile one job and check it; returns a table row (runs in a worker process)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastbert.kernels import registry

    importlib.import_module(job.module)
    entry = registry.get(job.kernel)
    variant = entry.variants[job.variant]
    config = entry.configs_for(job.arch, variant)[job.config]
    row = {
        "kernel": job.kernel,
        "variant": variant.label,
        "config": registry.config_label(config),
        "arch": f"sm_{job.arch}",
        "regs": None,
        "smem": None,
        "local": None,
        "matrix": None,
        "status": "ok",
        "seconds": 0.0,
    }
    start = time.perf_counter()
    try:
        signature, constexprs, attrs = _signature(entry.fn, dict(variant.args), dict(config.kwargs))
        src = ASTSource(fn=entry.fn, signature=signature, constexprs=constexprs, attrs=attrs)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        compiled = triton.compile(src, target=GPUTarget("cuda", job.arch, 32), options=options)
        info = inspect_cubin(compiled.asm["cubin"])
    except Exception as e:  # the gate reports every failure instead of stopping at the first
        row["status"] = f"FAIL compile: {_first_line(e)}"
        row["seconds"] = round(time.perf_counter() - start, 2)
        return row
    row["seconds"] = round(time.perf_counter() - start, 2)
    row.update(regs=info["regs"], smem=compiled.metadata.shared + info["static_smem"], local=info["local"])
    row["matrix"] = info["matrix"]
    problems = []
    if info["local"] > 0:
        problems.append(f"spills ({info['local']} B local memory)")
    if row["smem"] > SMEM_LIMIT[job.arch]:
        problems.append(f"shared memory {row['smem']} B > {SMEM_LIMIT[job.arch]} B")
    opcode, needed = MATRIX_SASS[job.arch]
    if variant.matrix and needed not in info["matrix"].split("+"):
        problems.append(f"no {needed} ({opcode}) instructions")
    if problems:
        row["status"] = "FAIL " + "; ".join(problems)
    return row


@contextlib.contextmanager
def _compiler_environment() -> Iterator[None]:
    """Workers spawned inside this block run Triton's real compiler, not the interpreter."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def run_jobs(jobs: list[Job], workers: int) -> list[dict]:
    """Compile ``jobs`` in ``workers`` fresh processes; rows come back in job order."""
    if not jobs:
        return []
    context = multiprocessing.get_context("spawn")
    with _compiler_environment(), concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(compile_one, jobs))


def format_table(rows: list[dict]) -> str:
    """The gate's table: kernel, variant, config, arch, regs, smem, local, matrix, status."""
    columns = ["kernel", "variant", "config", "arch", "regs", "smem", "local", "matrix", "status"]
    cells = [[("-" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    fmt = lambda line: "  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(line) for line in cells])


def _parse_arch(value: str) -> int:
    arch = int(value.lower().removeprefix("sm_").removeprefix("sm"))
    if arch not in SMEM_LIMIT:
        raise argparse.ArgumentTypeError(f"unsupported arch {value!r}; choose from sm_80, sm_90")
    return arch


def main(argv: list[str] | None = None) -> int:
    """Run the build gate; print the table; return 0 when every row passes, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="fastbert compile-check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", type=_parse_arch, help="80/sm_80 or 90/sm_90 (repeatable; default both)")
    parser.add_argument("--kernel", action="append", default=[], help="only kernels whose name contains this (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="parallel compiler processes")
    args = parser.parse_args(argv)
    archs = sorted(set(args.arch or SMEM_LIMIT))

    import_failures = load_kernel_modules()
    jobs = plan(archs, args.kernel)
    if not jobs and not import_failures:
        print(f"compile-check: no registered kernel matches {args.kernel}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    rows = import_failures + run_jobs(jobs, max(1, min(args.jobs, len(jobs))))
    failed = [r for r in rows if r["status"] != "ok"]
    print(format_table(rows))
    kernels = len({r["kernel"] for r in rows})
    print(
        f"\n{len(rows)} compilations ({kernels} kernels x variants x configs x {len(archs)} archs) in "
        f"{time.perf_counter() - start:.0f} s: {len(rows) - len(failed)} ok, {len(failed)} failed"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
