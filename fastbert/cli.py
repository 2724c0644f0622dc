"""The ``fastbert`` command line: ``fastbert check``, ``fastbert compile-check``, ..."""

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


def _add_compile_check(sub) -> None:
    p = sub.add_parser(
        "compile-check",
        help="compile every Triton kernel for sm_80/sm_90 without a GPU; report registers, smem, spills",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: __import__("fastbert.kernels.compile_check", fromlist=["main"]).main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from fastbert import __version__

    parser = argparse.ArgumentParser(
        prog="fastbert", description="Fast BERT-family encoders with Triton kernels, a drop-in for Hugging Face."
    )
    parser.add_argument("--version", action="version", version=f"fastbert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_check(sub)
    if _compile_check_available():
        _add_compile_check(sub)
    return parser


def _compile_check_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("fastbert.kernels.compile_check") is not None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastbert`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
