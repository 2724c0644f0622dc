"""``fastbert bench``: resolve the sweep and the variants, run, print, write JSON/CSV/PNG."""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import torch

from fastbert.bench import metadata, plots, report, sweep
from fastbert.bench.measure import BenchOptions
from fastbert.bench.run import run_sweep
from fastbert.bench.runners import BASELINES, VARIANTS, model_config
from fastbert.check import resolve_device
from fastbert.cli_args import checkpoint_dir, output_dir
from fastbert.models import max_sequence_length

# Per-device measurement defaults: (warm-up calls, max timed calls, seconds per variant).
MEASURE_DEFAULTS = {"cuda": (5, 30, 1.0), "cpu": (1, 10, 0.5)}


def default_out_dir(kind: str) -> Path:
    """``./fastbert-out/<kind>-<local timestamp>``."""
    return Path("fastbert-out") / f"{kind}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def apply_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given (ValueError if not positive)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be positive, got {threads}")
    torch.set_num_threads(threads)


def choose_variants(device: str, requested: list[str] | None, compile_on_cpu: bool, no_compile: bool) -> tuple[list[str], list[str]]:
    """(variants to run, notes on what was left out and why)."""
    notes = []
    names = list(requested) if requested else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    on_gpu = device.startswith("cuda")
    if not on_gpu and "fastbert_cudagraph" in names:
        names.remove("fastbert_cudagraph")
        notes.append("fastbert_cudagraph skipped: CUDA graphs need a GPU")
    if "hf_compile" in names and (no_compile or (not on_gpu and not compile_on_cpu and not requested)):
        names.remove("hf_compile")
        why = "--no-compile was given" if no_compile else "compiling is slow on a few CPU cores; pass --compile to include it"
        notes.append(f"hf_compile (torch.compile of HF sdpa) skipped: {why}")
    if "fastbert" not in names:
        notes.append("no 'fastbert' variant: no speedups are reported")
    return names, notes


def measure_options(args, device: str, variants: list[str]) -> BenchOptions:
    """BenchOptions from the CLI arguments, with this device's defaults where none was given."""
    warmup, repeats, max_s = MEASURE_DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]
    if (args.repeats is not None and args.repeats < 1) or (args.warmup is not None and args.warmup < 0):
        raise ValueError("--repeats must be at least 1 and --warmup at least 0")
    if args.max_time_per_variant is not None and not args.max_time_per_variant > 0:
        raise ValueError("--max-time-per-variant must be positive")
    if args.time_budget is not None and not args.time_budget > 0:
        raise ValueError(f"--time-budget must be a positive number of seconds, got {args.time_budget}")
    return BenchOptions(
        device=device, variants=variants, warmup=args.warmup if args.warmup is not None else warmup,
        repeats=args.repeats if args.repeats is not None else repeats,
        max_seconds_per_variant=args.max_time_per_variant if args.max_time_per_variant is not None else max_s,
        time_budget_s=args.time_budget, seed=args.seed,
    )


def run_bench_command(args) -> int:
    """Run ``fastbert bench`` for parsed CLI ``args``; returns the exit code."""
    wall_start = time.perf_counter()
    device = resolve_device(args.device)
    apply_threads(args.threads)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    variants, notes = choose_variants(device, args.variants, args.compile, args.no_compile)
    chosen = sweep.defaults(dev_type, args.quick)
    models = list(dict.fromkeys((args.arch or []) + (args.model_dir or []))) or chosen["models"]
    for d in args.model_dir or []:
        checkpoint_dir(d, "--model-dir")
    seq_lens = args.seq_len or chosen["seq_lens"]
    configs = sweep.build_sweep(models, args.batch or chosen["batches"], seq_lens,
                                args.dtype or chosen["dtypes"], varlen=not args.no_varlen)
    for model in models:  # every model is known and takes every length before anything runs
        check_seq_len(model, max(seq_lens))
    opts = measure_options(args, device, variants)
    out_dir = output_dir(args.out or str(default_out_dir("bench")), "--out")
    if dev_type == "cpu":
        notes.insert(0, "measured on the CPU (no GPU used): these are CPU numbers, not GPU results")
    notes.append("peak memory: " + ("model weights + CUDA allocator peak growth during the variant's build and warm-up forwards"
                                    if dev_type == "cuda" else "not measured on the CPU (null)"))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"fastbert bench: {len(configs)} configurations x {len(variants)} variants on {device}", file=sys.stderr)
    meta = metadata.collect(device)
    settings = {
        "device": device, "variants": variants, "baselines": [v for v in variants if v in BASELINES],
        "warmup": opts.warmup, "repeats": opts.repeats, "max_seconds_per_variant": opts.max_seconds_per_variant,
        "time_budget_s": opts.time_budget_s, "seed": opts.seed, "quick": args.quick, "notes": notes,
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
    }

    def save(entries: list[dict], complete: bool) -> dict:
        doc = report.document(meta, settings, entries, time.perf_counter() - wall_start, complete)
        report.write_json(doc, out_dir / "bench.json")
        report.write_csv(entries, out_dir / "bench.csv")
        return doc

    # Partial results are saved after every configuration, so a run stopped by a time limit keeps them.
    opts.on_entry = lambda entries: save(entries, complete=False)
    entries = run_sweep(configs, opts)
    print(report.format_table(entries, variants))
    written = None if args.no_plots else plots.write_plots(report.document(meta, settings, entries, 0.0, True), out_dir)
    doc = save(entries, complete=True)
    _print_footer(doc, out_dir, written, args.no_plots)
    return _exit_code(doc)


def check_seq_len(model: str, seq_len: int) -> None:
    """ValueError unless ``model`` (a named arch or a checkpoint folder) is one fastbert runs
    and its position table numbers ``seq_len`` tokens."""
    limit = max_sequence_length(model_config(model))
    if seq_len > limit:
        raise ValueError(f"--seq-len {seq_len} exceeds {model}'s position table: at most {limit} tokens")


def _exit_code(doc: dict) -> int:
    """1 when a variant failed with an error or nothing was measured (out of memory is a result, not a failure)."""
    statuses = [r["status"] for e in doc["results"] for r in e["variants"].values()]
    errors = statuses.count("error")
    if errors or "ok" not in statuses:
        why = f"{errors} run(s) failed with an error" if errors else "nothing was measured"
        print(f"fastbert bench: {why}; see bench.json", file=sys.stderr)
        return 1
    return 0


def _print_footer(doc: dict, out_dir: Path, written, no_plots: bool) -> None:
    statuses = [r["status"] for e in doc["results"] for r in e["variants"].values()]
    failed = {s: statuses.count(s) for s in ("oom", "error", "skipped") if s in statuses}
    for note in doc["settings"]["notes"]:
        print(f"note: {note}")
    if doc["results"]:
        print(f"rel err: against {doc['results'][0]['reference']}, on real (non-padded) tokens, last hidden state")
    if failed:
        print("not measured: " + ", ".join(f"{n} {s}" for s, n in failed.items()) + " (see bench.json for messages)")
    plots_line = ("plots: skipped (--no-plots)" if no_plots else
                  "plots: skipped (matplotlib is not installed)" if written is None else
                  f"plots: {', '.join(p.name for p in written)}")
    print(plots_line)
    print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.csv'}; wall time {doc['wall_time_s']:.1f} s")
