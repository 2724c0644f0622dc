"""The ``fastbert`` command line: ``fastbert check``, ``prune``, ``bench``, ``profile``, ``compile-check``.

This module parses; each subcommand's work lives in its library module and runs only when
that subcommand is chosen (``fastbert --help`` imports none of them):

==============  =====================================================
check           :func:`fastbert.check.run_check_command`
prune           :func:`fastbert.prune.command.run_prune_command`
bench           :func:`fastbert.bench.command.run_bench_command`
profile         :func:`fastbert.bench.command.run_profile_command`
compile-check   :func:`fastbert.kernels.compile_check.main` (its own parser)
==============  =====================================================

Exit codes: 0 success, 1 a failed run (one line on stderr), 2 a bad argument (one line),
130 interrupted. ``FASTBERT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fastbert.configs import ARCH_NAMES

ARCHS_HELP = ", ".join(ARCH_NAMES)


def _subcommand(sub, name: str, runs: str, help_: str, description: str) -> argparse.ArgumentParser:
    """Add subcommand ``name``, run by ``runs`` (``"module:function"``, imported only when it runs)."""
    module, function = runs.split(":")
    p = sub.add_parser(name, help=help_, description=description)
    p.set_defaults(func=lambda args: getattr(importlib.import_module(module), function)(args))
    return p


def _add_run_options(p: argparse.ArgumentParser, out: str) -> None:
    """The options bench and profile share: device, CPU threads, seed, output folder."""
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); recorded in the metadata")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help=f"output directory (default ./fastbert-out/{out}-<timestamp>)")


def _check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", nargs="?", help="local Hugging Face checkpoint directory")
    p.add_argument("--arch", help=f"named architecture with random weights instead of a checkpoint ({ARCHS_HELP})")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch", type=int, default=8, help="sentences / rows (default 8)")
    p.add_argument("--seq-len", type=int, default=64, help="max tokens per row (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")


def _prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="local Hugging Face checkpoint or sentence-transformers directory")
    p.add_argument("--sparsity", required=True, help="fraction to remove, in [0, 1), or one per matrix role for "
                   "unstructured/block (with --scope layer, the default), each once, e.g. attention=0.25,ffn=0.625")
    p.add_argument("--pattern", default="unstructured", help="unstructured, block, heads, neurons or N:M such as "
                   "2:4 (default unstructured: with the default method, the best the README measured without "
                   "calibration)")
    p.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "sparsegpt"],
                   help="how weights are chosen (default magnitude; wanda and sparsegpt need --calibration and keep "
                   "more)")
    p.add_argument("--calibration", metavar="FILE", help="calibration texts, one per line, tokenized with the "
                   "checkpoint's tokenizer (for --method wanda/sparsegpt)")
    p.add_argument("--calibration-batch-size", type=int, default=16, help="texts per calibration batch (default 16)")
    p.add_argument("--quiet", action="store_true", help="no calibration progress on stderr")
    p.add_argument("--scope", default=None, choices=["global", "layer"],
                   help="each matrix to the target (layer, the default) or one ranking over all matrices (global; "
                   "refused where it would remove a matrix whole)")
    p.add_argument("--block-size", type=int, default=32, choices=[16, 32, 64])
    p.add_argument("--layers", type=int, nargs="+", help="only these layer indices, each once (ALBERT: indices of its "
                   "shared weight sets)")
    p.add_argument("--out", help="directory for the pruned model (save_pretrained) and prune_report.json; "
                   "must be new or empty unless --force")
    p.add_argument("--min-cosine", type=float, default=None, help="quality check: least mean cosine of the pruned "
                   "model's embeddings to the dense model's on 16 texts (--calibration's, else fastbert's shipped "
                   "corpus); below it nothing is written and the exit code is 1 (default 0.5)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out, overwriting its files, and "
                   "write a model that fails the quality check")


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", action="extend", nargs="+", help=f"named architectures with random weights: {ARCHS_HELP}")
    p.add_argument("--model-dir", action="extend", nargs="+", help="local Hugging Face checkpoint directories")
    p.add_argument("--model", metavar="PATH", help="your checkpoint (Hugging Face or sentence-transformers folder) on "
                   "your texts, plain vs fastbert, as your pipeline runs it; sentences/s and tokens/s per --batch")
    p.add_argument("--texts", metavar="FILE", help="with --model: one text per line (default: fastbert's shipped corpus)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes")
    p.add_argument("--seq-len", type=int, nargs="+", help="sequence lengths (padded length of every batch)")
    p.add_argument("--dtype", nargs="+", help="fp32 fp16 bf16 (or float32 float16 bfloat16)")
    p.add_argument("--no-varlen", action="store_true", help="skip the variable-length batches (lengths uniform in [16, seq])")
    p.add_argument("--variants", nargs="+", help="subset of hf_eager hf_sdpa hf_compile fastbert fastbert_cudagraph (the default), and "
                   "fastbert_graphs hf_compile_ro (GPU only, on request)")
    p.add_argument("--compile", action="store_true", help="include torch.compile on the CPU (skipped there by default)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile everywhere")
    p.add_argument("--quick", action="store_true", help="smaller default sweep (GPU: bert-base, batch 1 32 128)")
    p.add_argument("--warmup", type=int, help="warm-up calls per variant and configuration (default GPU 5, CPU 1)")
    p.add_argument("--repeats", type=int, help="most timed calls per variant and configuration (default GPU 30, CPU 10)")
    p.add_argument("--max-time-per-variant", type=float, metavar="SECONDS",
                   help="fewer repeats (never under 3) when they would take longer than this (default GPU 1.0, CPU 0.5)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="start no configuration after this many seconds; the rest are recorded as skipped")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.add_argument("--train", action="store_true",
                   help="time training steps (forward + backward + AdamW) instead of forwards; variants hf_eager hf_sdpa "
                   "hf_compile fastbert fastbert_ckpt (gradient checkpointing); writes train.json, train.csv, plots. "
                   "Defaults: GPU bert-base bf16, batch 8 32, seq 512 128; CPU minilm-l6 fp32, batch 16, seq 128")
    p.add_argument("--task", choices=["cls", "mlm"], help="with --train: sequence classification (default) or masked LM")
    p.add_argument("--no-max-batch", action="store_true",
                   help="with --train on a GPU: skip the search for the largest batch that trains at seq 128 and 512")
    _add_run_options(p, "bench")


def _profile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None, help="named architecture (default: bert-base on a GPU, bert-tiny on the CPU)")
    p.add_argument("--model-dir", help="local Hugging Face checkpoint directory instead of --arch")
    p.add_argument("--model", metavar="PATH", help="your checkpoint (Hugging Face or sentence-transformers folder), "
                   "profiled on one batch of your texts, tokenized as your pipeline does")
    p.add_argument("--texts", metavar="FILE", help="with --model: one text per line (default: fastbert's shipped corpus)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: GPU 32, CPU 4)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default: GPU 128, CPU 64)")
    p.add_argument("--dtype", default=None, help="fp32 fp16 bf16 (default: fp16 on a GPU, fp32 on the CPU)")
    p.add_argument("--compare", choices=["hf"], help="also profile the HF SDPA model and compare")
    p.add_argument("--steps", type=int, default=3, help="profiled forwards (after warm-up; default 3)")
    p.add_argument("--repeats", type=int, help="forwards of each variant timed outside the profiler, interleaved, for "
                   "the median, fastest and 90th percentile and their ratio (default GPU 30, CPU 10)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up forwards before profiling (default 2)")
    p.add_argument("--top", type=int, default=25, help="rows of the per-kernel table (default 25)")
    p.add_argument("--peak-tflops", type=float, help="peak matmul TFLOP/s to compare against (overrides the table)")
    p.add_argument("--peak-gbps", type=float, help="peak memory bandwidth GB/s to compare against")
    _add_run_options(p, "profile")


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


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_SUBCOMMANDS = (  # name, what runs it ("module:function"), its arguments, help, description
    (
        "check", "fastbert.check:run_check_command", _check_arguments,
        "compare fastbert with Hugging Face on a checkpoint, per layer",
        "Run HF and fastbert side by side on the same inputs and report, per layer and at "
        "the output, the max absolute and relative error against the numerics targets of "
        "docs/ARCHITECTURE.md (float32 < 1e-5, float16/bfloat16 < 1e-2 relative). Exit code 0 = pass.",
    ),
    (
        "prune", "fastbert.prune.command:run_prune_command", _prune_arguments,
        "prune a checkpoint's encoder (magnitude, wanda, sparsegpt; block, 2:4, unstructured, heads, neurons)",
        "Load a local Hugging Face checkpoint as the task model its config names (its head is "
        "kept; a sentence-transformers folder is kept whole), switch it to fastbert, prune its encoder projections, "
        "check what the pruned model keeps on a few texts, print the report and save the pruned model and report. "
        "Defaults: unstructured magnitude pruning, each matrix to the target (--scope layer), --min-cosine 0.5.",
    ),
    (
        "bench", "fastbert.bench.train_command:run_bench_or_train_command", _bench_arguments,
        "time HF eager / HF SDPA / torch.compile / fastbert (/ CUDA graphs) over a sweep of shapes",
        "Sweep models x batch sizes x sequence lengths x dtypes (plus variable-length batches) and time, "
        "in one process on the same inputs, HF eager, HF SDPA, torch.compile of HF SDPA, fastbert and, on a GPU, "
        "fastbert in a CUDA graph. Prints a table; writes bench.json, bench.csv and PNG plots to --out. "
        "Defaults: on a GPU bert-base and bert-large, batch 1 8 32 128 256, seq 128 512, fp16 and bf16; "
        "without one a small CPU sweep (bert-tiny, minilm-l6, batch 1 8, seq 32 128, fp32). "
        "With --train: training steps instead (forward + backward + AdamW step), their peak memory (GPU), the losses "
        "of all variants checked against each other, and on a GPU the largest batch each variant trains.",
    ),
    (
        "profile", "fastbert.bench.command:run_profile_command", _profile_arguments,
        "profile one configuration with torch.profiler: trace, per-kernel table, roofline",
        "Run one configuration under torch.profiler; write a Chrome trace, print a per-kernel/op table "
        "(self time, share, launches) and a per-class summary (matmul, attention, layernorm, ...) with achieved "
        "TFLOP/s and GB/s from counted FLOPs and bytes against the device's peak, and write a roofline PNG.",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from fastbert import __version__

    parser = _Parser(
        prog="fastbert", description="Fast BERT-family encoders with Triton kernels, a drop-in for Hugging Face."
    )
    parser.add_argument("--version", action="version", version=f"fastbert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, runs, add_arguments, help_, description in _SUBCOMMANDS:
        add_arguments(_subcommand(sub, name, runs, help_, description))
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
    return _run_command(args)


def _run_command(args) -> int:
    """Run a subcommand. Bad arguments (ValueError/TypeError, raised by the commands before any
    work) -> one line on stderr, exit 2; any other failure -> one line, exit 1; never a
    traceback, unless FASTBERT_DEBUG=1 asks for one."""
    from fastbert.cli_args import one_line

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"fastbert {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("FASTBERT_DEBUG") == "1":
            raise
        code = 2 if isinstance(exc, (ValueError, TypeError)) else 1
        kind = "" if code == 2 else f"{type(exc).__name__}: "
        print(f"fastbert {args.command}: {kind}{one_line(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
