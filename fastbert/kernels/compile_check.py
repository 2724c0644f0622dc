"""Build gate: compile every registered kernel ahead of time for each CUDA architecture.

For each kernel in :mod:`fastbert.kernels.registry` x each representative variant x
each autotune config x each architecture (sm_75, sm_80, sm_86, sm_89, sm_90), this
compiles to a cubin with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
arch, 32))`` (no GPU or driver needed), reads registers, shared memory and local
memory (spills) with the ``cuobjdump`` shipped in Triton's wheel, and, for variants
that must use tensor cores, checks the SASS for the architecture's matrix
instructions (``HMMA`` = mma on sm_80/86/89, ``HGMMA`` = wgmma on sm_90).

Coverage: by default every config on sm_75, sm_80 and sm_90, and on sm_86 and sm_89 the
heaviest config of each variant (:data:`DEFAULT_REPRESENTATIVE`); ``--arch all`` compiles
every config everywhere, ``--representative ARCH`` one per variant for ARCH.

What runs where: :func:`fastbert.kernels.launch.unsupported_reason` decides, for
dispatch and for this gate alike. On sm_75 Triton has no tensor-core matmul, so the
attention, linear and sparse kernels are not built there (their ops run PyTorch's
reference), nor are bfloat16 variants; the row kernels (LayerNorm, embeddings) are,
in fp16 and fp32. Such combinations are listed as "not built", never as passing.

It fails (nonzero exit) on a compile error, any local memory (spills), shared memory
over the chip's per-block limit, or a matmul-class variant without its matrix
instructions. Run it as ``fastbert compile-check [--arch 90] [--kernel attention]
[--json out.json]`` (or ``python -m fastbert.kernels.compile_check ...``).

Compilation runs in fresh worker processes with ``TRITON_INTERPRET`` unset, since
under the interpreter ``triton.jit`` yields functions the compiler cannot take. They
share one Triton cache: ``TRITON_CACHE_DIR`` when set, else a temporary folder
removed afterwards, so identical specializations compile once per run and nothing
from an earlier run is reused unless the caller asks for it.
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
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

KB = 1024
SMEM_LIMIT = {75: 64 * KB, 80: 163 * KB, 86: 99 * KB, 89: 99 * KB, 90: 227 * KB}
"""Largest shared memory one block may use (bytes): T4 64 KB, A100 163 KB, A10/RTX 3090 and
L4/RTX 4090 99 KB, H100/H200 227 KB."""
MATRIX_SASS = {80: ("HMMA", "mma"), 86: ("HMMA", "mma"), 89: ("HMMA", "mma"), 90: ("HGMMA", "wgmma")}
"""The tensor-core instruction a matmul-class variant must use per architecture (SASS opcode, name)."""
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


def _combinations(archs: list[int], name_filters: list[str]) -> Iterator[tuple[Any, int, Any, int, str | None]]:
    """(kernel, variant index, variant, arch, reason it is not built or None) for matching kernels."""
    from fastbert.kernels import launch, registry

    for entry in registry.kernels():
        if name_filters and not any(f in entry.name for f in name_filters):
            continue
        for vi, variant in enumerate(entry.variants):
            bf16 = any(value == "*bf16" for value in variant.args.values())
            for arch in archs:
                yield entry, vi, variant, arch, launch.unsupported_reason(arch, entry.module, bf16=bf16)


def heaviest_config(configs: list) -> int:
    """Index of the config with the largest tile volume x pipeline depth (product of its int
    meta-parameters x ``num_stages``; first on ties): the one most likely to spill or run out
    of shared memory, which is what a representative compile must catch."""
    def footprint(config) -> int:
        volume = 1
        for value in config.kwargs.values():
            if isinstance(value, int) and not isinstance(value, bool):
                volume *= value
        return volume * max(config.num_stages, 1)

    sizes = [footprint(c) for c in configs]
    return sizes.index(max(sizes))


def plan(archs: list[int], name_filters: list[str], representative: tuple[int, ...] = ()) -> list[Job]:
    """Every (kernel, variant, config, arch) to compile, for kernels matching a filter, leaving
    out what cannot run on an architecture (:func:`not_built`). Archs in ``representative``
    get one config per variant, the heaviest (:func:`heaviest_config`)."""
    jobs = []
    for entry, vi, variant, arch, reason in _combinations(archs, name_filters):
        if reason is None:
            configs = entry.configs_for(arch, variant)
            chosen = [heaviest_config(configs)] if arch in representative else range(len(configs))
            jobs += [Job(entry.module, entry.name, vi, ci, arch) for ci in chosen]
    return jobs


def not_built(archs: list[int], name_filters: list[str]) -> list[dict]:
    """The (kernel, variant, arch) combinations left out of the plan, each with the reason."""
    return [
        {"kernel": entry.name, "variant": variant.label, "arch": f"sm_{arch}", "reason": reason}
        for entry, _, variant, arch, reason in _combinations(archs, name_filters)
        if reason is not None
    ]


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


def inspect_cubin(cubin: bytes, sass: bool = True) -> dict:
    """Registers, static shared and local memory (spills) of a cubin and, when ``sass``, the
    matrix instructions in its SASS (disassembling costs about as much as compiling, so
    the gate does it only for variants that must use tensor cores; else ``matrix`` is None)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        flags = ["-res-usage", "-sass"] if sass else ["-res-usage"]
        out = subprocess.run([_cuobjdump(), *flags, f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if m is None:
        raise RuntimeError(f"cannot parse cuobjdump -res-usage output:\n{out[:2000]}")
    regs, stack, shared, local = map(int, m.groups())
    found = None
    if sass:
        names = [name for opcode, name in (("HGMMA", "wgmma"), ("HMMA", "mma")) if re.search(rf"\b{opcode}\.", out)]
        found = "+".join(names) or "-"
    return {"regs": regs, "static_smem": shared, "local": stack + local, "matrix": found}


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
        info = inspect_cubin(compiled.asm["cubin"], sass=variant.matrix)
    except Exception as e:  # the gate reports every failure instead of stopping at the first
        row["status"] = f"FAIL compile: {_first_line(e)}"
        row["seconds"] = round(time.perf_counter() - start, 2)
        return row
    row["seconds"] = round(time.perf_counter() - start, 2)
    row.update(regs=info["regs"], smem=compiled.metadata.shared + info["static_smem"], local=info["local"])
    row["matrix"] = info["matrix"] or "n/a"
    problems = []
    if info["local"] > 0:
        problems.append(f"spills ({info['local']} B local memory)")
    if row["smem"] > SMEM_LIMIT[job.arch]:
        problems.append(f"shared memory {row['smem']} B > {SMEM_LIMIT[job.arch]} B")
    if variant.matrix:
        opcode, needed = MATRIX_SASS[job.arch]
        if needed not in info["matrix"].split("+"):
            problems.append(f"no {needed} ({opcode}) instructions")
    if problems:
        row["status"] = "FAIL " + "; ".join(problems)
    return row


@contextlib.contextmanager
def _compiler_environment() -> Iterator[None]:
    """Workers spawned inside this block run Triton's real compiler, not the interpreter, and
    share one Triton cache (``TRITON_CACHE_DIR``, else a temporary folder for this block)."""
    saved = {name: os.environ.get(name) for name in ("TRITON_INTERPRET", "TRITON_CACHE_DIR")}
    os.environ.pop("TRITON_INTERPRET", None)
    scratch = None
    if not saved["TRITON_CACHE_DIR"]:
        scratch = tempfile.mkdtemp(prefix="fastbert-gate-cache-")
        os.environ["TRITON_CACHE_DIR"] = scratch
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


PROGRESS_EVERY_S = 5.0
"""Seconds between two progress lines of :func:`run_jobs` (one also comes at the end)."""


def _progress_line(done: int, total: int, failed: int, seconds: float) -> str:
    return f"compile-check: {done}/{total} compiled, {failed} failed, {seconds:.0f} s"


def run_jobs(jobs: list[Job], workers: int, progress=None) -> list[dict]:
    """Compile ``jobs`` in ``workers`` fresh processes; rows come back in job order. While
    they compile, ``progress`` (default: print to stderr) gets a line every
    :data:`PROGRESS_EVERY_S` seconds and one when all are done."""
    if not jobs:
        return []
    report = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    context = multiprocessing.get_context("spawn")
    start = last = time.perf_counter()
    rows: list[dict | None] = [None] * len(jobs)
    with _compiler_environment(), concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(compile_one, job): i for i, job in enumerate(jobs)}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            rows[futures[future]] = future.result()
            now = time.perf_counter()
            if now - last >= PROGRESS_EVERY_S or done == len(jobs):
                failed = sum(r is not None and r["status"] != "ok" for r in rows)
                report(_progress_line(done, len(jobs), failed, now - start))
                last = now
    return rows


def format_table(rows: list[dict]) -> str:
    """The gate's table: kernel, variant, config, arch, regs, smem, local, matrix, status."""
    columns = ["kernel", "variant", "config", "arch", "regs", "smem", "local", "matrix", "status"]
    cells = [[("-" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    fmt = lambda line: "  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(line) for line in cells])


def parse_arch(value: str) -> list[int]:
    """``"90"``, ``"sm_90"`` or ``"all"`` -> the architectures it names (argparse type)."""
    from fastbert.kernels import registry

    if value.strip().lower() == "all":
        return list(registry.ARCHS)
    try:
        arch = int(value.strip().lower().removeprefix("sm_").removeprefix("sm"))
    except ValueError:
        arch = None
    if arch not in SMEM_LIMIT:
        choices = ", ".join(f"sm_{a}" for a in registry.ARCHS)
        raise argparse.ArgumentTypeError(f"unsupported arch {value!r}; choose from {choices} or all")
    return [arch]


DEFAULT_REPRESENTATIVE = (86, 89)
"""Archs the plain gate compiles with representative configs only (one per variant, the
heaviest): sm_86 and sm_89 take sm_80's config table and Triton's code path for it (mma),
with 99 KB of shared memory, so full sweeps there would mostly repeat sm_80's at CI's
expense (only ptxas's register allocation differs; the heaviest config is where it spills
first). ``--arch all`` compiles every config everywhere."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate's options, shared by ``fastbert compile-check`` and ``python -m``."""
    parser.add_argument("--arch", action="extend", type=parse_arch,
                        help="75/sm_75, 80, 86, 89, 90, or all: every config (repeatable; default: every arch, "
                        f"sm_{'/'.join(map(str, DEFAULT_REPRESENTATIVE))} representative)")
    parser.add_argument("--representative", action="extend", type=parse_arch, default=[], metavar="ARCH",
                        help="also this arch, one config per variant: the heaviest (repeatable)")
    parser.add_argument("--kernel", action="append", default=[], help="only kernels whose name contains this (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the summary as JSON to PATH")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="parallel compiler processes")


def coverage(args: argparse.Namespace) -> tuple[list[int], tuple[int, ...]]:
    """(archs, the ones compiled representatively) from parsed options."""
    from fastbert.kernels import registry

    if not args.arch and not args.representative:
        return list(registry.ARCHS), DEFAULT_REPRESENTATIVE
    representative = tuple(sorted(set(args.representative)))
    return sorted(set(args.arch or []) | set(representative)), representative


def summarize(rows: list[dict], skipped: list[dict], archs: list[int], representative: tuple[int, ...] = ()) -> dict:
    """Per architecture: coverage, compilations, passed, failed, and variants not built (by reason)."""
    per_arch = {}
    for arch in archs:
        name = f"sm_{arch}"
        mine = [r for r in rows if r["arch"] == name]
        failed = sum(r["status"] != "ok" for r in mine)
        reasons: dict[str, int] = {}
        for s in skipped:
            if s["arch"] == name:
                reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        per_arch[name] = {"coverage": "representative" if arch in representative else "full", "compiled": len(mine),
                          "ok": len(mine) - failed, "failed": failed, "not_built": reasons}
    return per_arch


def check_json_path(path: str | None) -> None:
    """ValueError unless ``path`` (``--json``) can be written after the run: not a folder, and
    its nearest existing ancestor a writable folder (missing folders are created when writing)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"--json {path!r} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--json {path!r}: {parent!r} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--json {path!r}: the folder {parent!r} is not writable")


def check_kernel_filters(filters: list[str]) -> None:
    """ValueError naming the registered kernels when a ``--kernel`` filter matches none of them
    (the kernel modules must be loaded: :func:`load_kernel_modules`)."""
    from fastbert.kernels import registry

    names = [entry.name for entry in registry.kernels()]
    unmatched = [f for f in filters if not any(f in name for name in names)]
    if unmatched:
        raise ValueError(f"--kernel {' '.join(unmatched)}: no registered kernel's name contains it; "
                         f"the kernels are {', '.join(names)}")


def _check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise ValueError(f"--jobs must be positive, got {jobs}")


def run(args: argparse.Namespace) -> int:
    """Run the gate for parsed options; print the table; 0 when every row passes, 1 otherwise.
    ValueError (exit code 2) before anything compiles for a ``--json`` path that cannot be
    written, a ``--kernel`` that matches no kernel or a ``--jobs`` below 1."""
    check_json_path(args.json)
    _check_jobs(args.jobs)
    archs, representative = coverage(args)
    import_failures = load_kernel_modules()
    check_kernel_filters(args.kernel)
    jobs = plan(archs, args.kernel, representative)
    skipped = not_built(archs, args.kernel)
    workers = max(1, min(args.jobs, len(jobs)))
    print(f"compile-check: {len(jobs)} compilations for {', '.join(f'sm_{a}' for a in archs)} in {workers} "
          "process(es)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    rows = import_failures + run_jobs(jobs, workers)
    seconds = time.perf_counter() - start
    failed = [r for r in rows if r["status"] != "ok"]
    per_arch = summarize(rows, skipped, archs, representative)
    print(format_table(rows))
    print()
    for name, counts in per_arch.items():
        left_out = "; ".join(f"{n} variants not built: {reason}" for reason, n in counts["not_built"].items())
        print(f"{name} ({counts['coverage']}): {counts['ok']} ok, {counts['failed']} failed" + (f" ({left_out})" if left_out else ""))
    kernels = len({r["kernel"] for r in rows})
    print(f"{len(rows)} compilations ({kernels} kernels x variants x configs x {len(archs)} archs) in "
          f"{seconds:.0f} s: {len(rows) - len(failed)} ok, {len(failed)} failed")
    if args.json:
        import triton

        report = {"triton": triton.__version__, "archs": [f"sm_{a}" for a in archs], "seconds": round(seconds, 1),
                  "summary": per_arch, "rows": rows, "not_built": skipped}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fastbert.kernels.compile_check``: parse options, run the gate; a bad option
    is one line on stderr and exit code 2, as in ``fastbert compile-check``."""
    parser = argparse.ArgumentParser(prog="fastbert compile-check", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        print(f"fastbert compile-check: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
