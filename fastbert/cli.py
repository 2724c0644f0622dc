"""The ``fastbert`` command line: ``fastbert check``, ``bench``, ``profile``, ``compile-check``, ..."""

from __future__ import annotations

import argparse
import json
import sys


def _add_check(sub) -> None:
    p = sub.add_parser(
        "check",
        help="compare fastbert with Hugging Face on a checkpoint, per layer",
        description="Run HF and fastbert side by side on the same inputs and report, per layer and at "
        "the output, the max absolute and relative error against DESIGN.md's targets. Exit code 0 = pass.",
    )
    p.add_argument("model_dir", nargs="?", help="local Hugging Face checkpoint directory")
    p.add_argument("--arch", help="named architecture with random weights instead of a checkpoint "
                   "(bert-tiny, minilm-l6, bert-base, bert-large, roberta-base, distilbert-base, albert-base, electra-base)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch", type=int, default=8, help="sentences / rows (default 8)")
    p.add_argument("--seq-len", type=int, default=64, help="max tokens per row (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.set_defaults(func=_run_check)


def _run_check(args) -> int:
    from fastbert.check import format_report, run_check

    if (args.model_dir is None) == (args.arch is None):
        print("fastbert check: give a MODEL_DIR or --arch NAME (not both)", file=sys.stderr)
        return 2
    try:
        report = run_check(args.model_dir, args.arch, args.dtype, args.device, args.batch, args.seq_len, args.seed)
    except (ValueError, TypeError) as exc:
        print(f"fastbert check: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report.to_dict(), fh, indent=2)
    return 0 if report.passed else 1


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time HF eager / HF SDPA / torch.compile / fastbert (/ CUDA graphs) over a sweep of shapes",
        description="Sweep models x batch sizes x sequence lengths x dtypes (plus variable-length batches) and time, "
        "in one process on the same inputs, HF eager, HF SDPA, torch.compile of HF SDPA, fastbert and, on a GPU, "
        "fastbert in a CUDA graph. Prints a table; writes bench.json, bench.csv and PNG plots to --out. "
        "Defaults: on a GPU bert-base and bert-large, batch 1 8 32 128 256, seq 128 512, fp16 and bf16; "
        "without one a small CPU sweep (bert-tiny, minilm-l6, batch 1 8, seq 32 128, fp32).",
    )
    p.add_argument("--arch", action="extend", nargs="+", help="named architectures with random weights: "
                   "bert-tiny, minilm-l6, bert-base, bert-large, roberta-base, distilbert-base, albert-base, electra-base")
    p.add_argument("--model-dir", action="extend", nargs="+", help="local Hugging Face checkpoint directories")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes")
    p.add_argument("--seq-len", type=int, nargs="+", help="sequence lengths (padded length of every batch)")
    p.add_argument("--dtype", nargs="+", help="fp32 fp16 bf16 (or float32 float16 bfloat16)")
    p.add_argument("--no-varlen", action="store_true", help="skip the variable-length batches (lengths uniform in [16, seq])")
    p.add_argument("--variants", nargs="+", help="subset of hf_eager hf_sdpa hf_compile fastbert fastbert_cudagraph")
    p.add_argument("--compile", action="store_true", help="include torch.compile on the CPU (skipped there by default)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile everywhere")
    p.add_argument("--quick", action="store_true", help="smaller default sweep (GPU: bert-base, batch 1 32 128)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--warmup", type=int, help="warm-up calls per variant and configuration (default GPU 5, CPU 1)")
    p.add_argument("--repeats", type=int, help="most timed calls per variant and configuration (default GPU 30, CPU 10)")
    p.add_argument("--max-time-per-variant", type=float, metavar="SECONDS",
                   help="fewer repeats (never under 3) when they would take longer than this (default GPU 1.0, CPU 0.5)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="start no configuration after this many seconds; the rest are recorded as skipped")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); recorded in the metadata")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default ./fastbert-out/bench-<timestamp>)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.set_defaults(func=_run_bench)


def _run_bench(args) -> int:
    from fastbert.bench.command import run_bench_command

    try:
        return run_bench_command(args)
    except ValueError as exc:
        print(f"fastbert bench: {exc}", file=sys.stderr)
        return 2


def _add_profile(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="profile one configuration with torch.profiler: trace, per-kernel table, roofline",
        description="Run one configuration under torch.profiler; write a Chrome trace, print a per-kernel/op table "
        "(self time, share, launches) and a per-class summary (matmul, attention, layernorm, ...) with achieved "
        "TFLOP/s and GB/s from counted FLOPs and bytes against the device's peak, and write a roofline PNG.",
    )
    p.add_argument("--arch", default=None, help="named architecture (default: bert-base on a GPU, bert-tiny on the CPU)")
    p.add_argument("--model-dir", help="local Hugging Face checkpoint directory instead of --arch")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: GPU 32, CPU 4)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default: GPU 128, CPU 64)")
    p.add_argument("--dtype", default=None, help="fp32 fp16 bf16 (default: fp16 on a GPU, fp32 on the CPU)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--compare", choices=["hf"], help="also profile the HF SDPA model and compare")
    p.add_argument("--steps", type=int, default=3, help="profiled forwards (after warm-up; default 3)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up forwards before profiling (default 2)")
    p.add_argument("--top", type=int, default=25, help="rows of the per-kernel table (default 25)")
    p.add_argument("--peak-tflops", type=float, help="peak matmul TFLOP/s to compare against (overrides the table)")
    p.add_argument("--peak-gbps", type=float, help="peak memory bandwidth GB/s to compare against")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default ./fastbert-out/profile-<timestamp>)")
    p.set_defaults(func=_run_profile)


def _run_profile(args) -> int:
    from fastbert.bench.profile_command import run_profile_command

    try:
        return run_profile_command(args)
    except ValueError as exc:
        print(f"fastbert profile: {exc}", file=sys.stderr)
        return 2


def _add_compile_check(sub) -> None:
    from fastbert.kernels import compile_check  # stdlib imports only: triton loads when the gate runs

    p = sub.add_parser(
        "compile-check",
        help="compile every Triton kernel for sm_75/80/86/89/90 without a GPU; report registers, smem, spills",
        description="The build gate: compile every registered kernel, variant and autotune config ahead of time "
        "for each CUDA architecture (no GPU needed) and fail on compile errors, local-memory spills, shared memory "
        "over the chip's limit, or matmul kernels without tensor-core instructions. Exit code 0 = every row passes.",
    )
    compile_check.add_arguments(p)
    p.set_defaults(func=compile_check.run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from fastbert import __version__

    parser = argparse.ArgumentParser(
        prog="fastbert", description="Fast BERT-family encoders with Triton kernels, a drop-in for Hugging Face."
    )
    parser.add_argument("--version", action="version", version=f"fastbert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_check(sub)
    from fastbert.prune.cli import add_parser as _add_prune

    _add_prune(sub)
    _add_bench(sub)
    _add_profile(sub)
    if _compile_check_available():
        _add_compile_check(sub)
    return parser


def _compile_check_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("fastbert.kernels.compile_check") is not None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastbert`` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
