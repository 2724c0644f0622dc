"""``fastbert bench`` and ``fastbert profile``: from parsed arguments to a run, its output and
its exit code.

Each command first resolves its arguments into what to run (:func:`bench_plan`,
:func:`profile_plan`): the device's defaults where an option was not given, and every
argument checked (ValueError, exit code 2) before any model is loaded. Then it runs
(:func:`fastbert.bench.measure.run_sweep`, :func:`fastbert.bench.profile.profile_model`)
and reports (:mod:`fastbert.bench.report`, :mod:`fastbert.bench.profile`). ``bench --model PATH
[--texts FILE]`` (the user's checkpoint on the user's texts, :mod:`fastbert.bench.texts`)
is resolved by :func:`text_bench_plan`; ``profile --model PATH`` profiles one batch of
those texts (:func:`fastbert.bench.user_model.profile_batch`). ``bench --train`` is
:mod:`fastbert.bench.train_command`, which reuses these resolvers.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fastbert.bench import measure, profile, report, sweep, texts
from fastbert.bench.user_model import profile_batch, read_texts, resolve_user_model, runner_class
from fastbert.bench.variants import BASELINES, COMPILED, DEFAULT_VARIANTS, VARIANTS
from fastbert.cli_args import (checkpoint_config, checkpoint_weights, output_dir, positive_ints, positive_number,
                               resolve_device)
from fastbert.numerics import DTYPES, canonical_dtype

# Per-device defaults. bench: (warm-up calls, max timed calls, seconds per variant);
# profile: (arch, batch, seq_len, dtype).
MEASURE_DEFAULTS = {"cuda": (5, 30, 1.0), "cpu": (1, 10, 0.5)}
PROFILE_DEFAULTS = {"cuda": ("bert-base", 32, 128, "float16"), "cpu": ("bert-tiny", 4, 64, "float32")}


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


def device_type(device: str) -> str:
    """``"cuda"`` or ``"cpu"``: the kind of a resolved device, which picks the defaults."""
    return "cuda" if device.startswith("cuda") else "cpu"


# ---------------------------------------------------------------------------
# fastbert bench
# ---------------------------------------------------------------------------


@dataclass
class BenchPlan:
    """What ``fastbert bench`` runs, resolved from its arguments."""

    device: str
    variants: list[str]
    notes: list[str]
    configs: list[sweep.BenchConfig]
    options: measure.BenchOptions
    out_dir: Path


def choose_variants(device: str, requested: list[str] | None, compile_on_cpu: bool, no_compile: bool,
                    catalog: dict = VARIANTS) -> tuple[list[str], list[str]]:
    """(variants of ``catalog`` to run, notes on what was left out and why)."""
    notes = []
    names = list(requested) if requested else list(DEFAULT_VARIANTS if catalog is VARIANTS else catalog)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; expected some of {list(catalog)}")
    on_gpu = device.startswith("cuda")
    for name in [n for n in names if catalog[n].gpu_only and not on_gpu]:
        names.remove(name)
        notes.append(f"{name} skipped: CUDA graphs need a GPU")
    for name in [n for n in names if n in COMPILED]:
        if no_compile or (not on_gpu and not compile_on_cpu and not requested):
            names.remove(name)
            why = "--no-compile was given" if no_compile else "compiling is slow on a few CPU cores; pass --compile to include it"
            notes.append(f"{name} ({catalog[name].description}) skipped: {why}")
    if "fastbert" not in names:
        notes.append("no 'fastbert' variant: no speedups are reported")
    return names, notes


def measure_options(args, device: str, variants: list[str], defaults: dict = MEASURE_DEFAULTS) -> measure.BenchOptions:
    """BenchOptions from the CLI arguments, with this device's ``defaults`` (warm-up, repeats,
    seconds per variant) where none was given."""
    warmup, repeats, max_s = defaults[device_type(device)]
    if (args.repeats is not None and args.repeats < 1) or (args.warmup is not None and args.warmup < 0):
        raise ValueError("--repeats must be at least 1 and --warmup at least 0")
    if args.max_time_per_variant is not None and not args.max_time_per_variant > 0:
        raise ValueError("--max-time-per-variant must be positive")
    if args.time_budget is not None and not args.time_budget > 0:
        raise ValueError(f"--time-budget must be a positive number of seconds, got {args.time_budget}")
    return measure.BenchOptions(
        device=device, variants=variants, warmup=args.warmup if args.warmup is not None else warmup,
        repeats=args.repeats if args.repeats is not None else repeats,
        max_seconds_per_variant=args.max_time_per_variant if args.max_time_per_variant is not None else max_s,
        time_budget_s=args.time_budget, seed=args.seed,
    )


def bench_plan(args) -> BenchPlan:
    """Resolve ``fastbert bench``'s arguments; ValueError (exit 2) for any bad one, before any work."""
    if args.texts is not None:
        raise ValueError("--texts goes with --model PATH (your checkpoint on your texts)")
    device = resolve_device(args.device)
    apply_threads(args.threads)
    dev_type = device_type(device)
    variants, notes = choose_variants(device, args.variants, args.compile, args.no_compile)
    configs = sweep.resolve_sweep(dev_type, args.quick, args.arch, args.model_dir, args.batch, args.seq_len, args.dtype,
                                  varlen=not args.no_varlen)
    options = measure_options(args, device, variants)
    out_dir = output_dir(args.out or str(default_out_dir("bench")), "--out")
    if dev_type == "cpu":
        notes.insert(0, "measured on the CPU (no GPU used): these are CPU numbers, not GPU results")
    notes.append("peak memory: " + ("model weights + CUDA allocator peak growth during the variant's build and warm-up forwards"
                                    if dev_type == "cuda" else "not measured on the CPU (null)"))
    return BenchPlan(device, variants, notes, configs, options, out_dir)


def run_bench_command(args) -> int:
    """Run ``fastbert bench`` (without ``--train``) for parsed CLI ``args``; returns the exit code."""
    for flag, given in (("--task", args.task is not None), ("--no-max-batch", args.no_max_batch)):
        if given:
            raise ValueError(f"{flag} goes with --train")
    if args.model is not None:
        return run_text_bench_command(args)
    wall_start = time.perf_counter()
    plan = bench_plan(args)
    settings = announce_run(plan, args, "fastbert bench")
    opts = plan.options
    record = report.BenchRecord(plan.device, settings, plan.out_dir, started=wall_start)
    # Partial results are saved after every configuration, so a run stopped by a time limit keeps them.
    opts.on_entry = record.save
    entries = measure.run_sweep(plan.configs, opts)
    return bench_exit_code(record.finish(entries, plots=not args.no_plots))


def announce_run(plan: BenchPlan, args, title: str, **extra) -> dict:
    """Print the plan's notes and a one-line summary on stderr; return the run's settings as
    recorded in its JSON (``extra`` adds command-specific ones)."""
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{title}: {len(plan.configs)} configurations x {len(plan.variants)} variants on {plan.device}", file=sys.stderr)
    opts = plan.options
    return {
        "device": plan.device, **extra, "variants": plan.variants,
        "baselines": [v for v in plan.variants if v in BASELINES], "warmup": opts.warmup, "repeats": opts.repeats,
        "max_seconds_per_variant": opts.max_seconds_per_variant, "time_budget_s": opts.time_budget_s,
        "seed": opts.seed, "quick": args.quick, "notes": plan.notes,
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
    }


def bench_exit_code(doc: dict, files: str = "bench.json") -> int:
    """1 when a variant failed with an error or nothing was measured (out of memory is a result, not a failure)."""
    statuses = [r["status"] for e in doc["results"] for r in e["variants"].values()]
    errors = statuses.count("error")
    if errors or "ok" not in statuses:
        why = f"{errors} run(s) failed with an error" if errors else "nothing was measured"
        print(f"fastbert bench: {why}; see {files}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------
# fastbert profile
# ---------------------------------------------------------------------------


@dataclass
class ProfilePlan:
    """What ``fastbert profile`` runs, resolved from its arguments."""

    device: str
    model: str
    batch: int
    seq_len: int
    dtype: str
    variants: list[str]
    out_dir: Path
    feed: dict[str, torch.Tensor] | None = None  # --model: one tokenized batch of the user's texts (CPU)
    repeats: int = 10  # timed forwards of each variant outside the profiler


def profile_plan(args) -> ProfilePlan:
    """Resolve ``fastbert profile``'s arguments; ValueError (exit 2) for any bad one, before any work."""
    device = resolve_device(args.device)
    apply_threads(args.threads)
    arch, batch, seq_len, dtype = PROFILE_DEFAULTS[device_type(device)]
    if args.model is not None or args.texts is not None:
        return _user_profile_plan(args, device, batch, dtype)
    if args.model_dir and args.arch:
        raise ValueError("give --arch or --model-dir, not both")
    if args.model_dir:
        checkpoint_config(args.model_dir, "--model-dir")
        checkpoint_weights(args.model_dir, "--model-dir")
    model = args.model_dir or args.arch or arch
    batch = batch if args.batch is None else args.batch
    seq_len = seq_len if args.seq_len is None else args.seq_len
    dtype = canonical_dtype(args.dtype) if args.dtype else dtype
    positive_ints(batch, "--batch")
    positive_ints(seq_len, "--seq-len")
    check_profile_counts(args)
    sweep.check_seq_len(model, seq_len)
    out_dir = output_dir(args.out or str(default_out_dir("profile")), "--out")
    variants = ["fastbert"] + (["hf_sdpa"] if args.compare == "hf" else [])
    return ProfilePlan(device, model, batch, seq_len, dtype, variants, out_dir, repeats=profile_repeats(args, device))


def profile_repeats(args, device: str) -> int:
    """``--repeats`` of ``fastbert profile`` (default: the bench's most timed calls on this device)."""
    return MEASURE_DEFAULTS[device_type(device)][1] if args.repeats is None else args.repeats


def check_profile_counts(args) -> None:
    """ValueError for a non-positive --steps, --top, --repeats, --peak-tflops or --peak-gbps, or a negative --warmup."""
    positive_ints(args.steps, "--steps")
    positive_ints(args.repeats, "--repeats")
    if args.warmup < 0 or args.top < 1:
        raise ValueError(f"--warmup must be at least 0 and --top positive, got {args.warmup} and {args.top}")
    positive_number(args.peak_tflops, "--peak-tflops")
    positive_number(args.peak_gbps, "--peak-gbps")


def run_profile_command(args) -> int:
    """Run ``fastbert profile`` for parsed CLI ``args``; returns the exit code."""
    plan = profile_plan(args)
    device, dtype, out_dir = plan.device, plan.dtype, plan.out_dir
    base = sweep.load_base_model(plan.model, args.seed)
    if plan.feed is not None:
        feed = {k: v.to(device) for k, v in plan.feed.items()}
    else:
        feed = sweep.make_batch(base.config, plan.batch, plan.seq_len, False, args.seed, device)
    meta = report.collect_metadata(device)
    peak_tflops, peak_gbps, peak_note = profile.resolve_peak(meta.get("gpu_name"), dtype, args.peak_tflops, args.peak_gbps)
    if device_type(device) == "cpu" and args.peak_tflops is None:
        peak_note = "peak unknown on the CPU; measured on the CPU (not a GPU result)"
    elem = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    costs = profile.forward_costs(base.config, plan.batch, plan.seq_len, elem, pooler=getattr(base, "pooler", None) is not None)

    where = meta.get("gpu_name") or f"CPU ({meta.get('cpu_name')}), not a GPU result"
    print(f"fastbert profile: {plan.model}, batch {plan.batch} x seq {plan.seq_len}, {dtype}, on {where}")
    results, summaries, models = {}, {}, {}
    for name in plan.variants:
        models[name] = model = VARIANTS[name].build(base, DTYPES[dtype], torch.device(device))
        trace = out_dir / f"trace-{name}.json"
        result = profile.profile_model(model, feed, device, args.warmup, args.steps, trace)
        results[name] = result
        summaries[name] = profile.class_summary(result, costs, peak_tflops, peak_gbps)
        print(f"\n== {name}: per op/kernel ({result.timed}) — Chrome trace {trace}")
        print(profile.format_rows(result, args.top))
        print(f"\n== {name}: per class, counted work per forward (see fastbert/bench/profile.py, forward_costs)")
        print(profile.format_classes(summaries[name], peak_note))
    if len(plan.variants) > 1:
        print(f"\n== where the time went, per forward (profiled: {args.steps} forward(s) each; the timed ratio below "
              "says how far to trust it)")
        print(profile.format_side_by_side(summaries))
    print(f"\n== wall time per forward outside the profiler: {plan.repeats} interleaved forwards of each, after "
          f"{max(args.warmup, 1)} warm-up")
    timed = profile.timed_forwards(models, feed, device, max(args.warmup, 1), plan.repeats)
    print(profile.format_timed(timed))
    timed["ratio"] = profile.timed_ratio({n: timed[n] for n in plan.variants})
    del models

    title = f"{plan.model} b={plan.batch} s={plan.seq_len} {dtype} — {where}"
    png = profile.write_roofline(summaries, peak_tflops, peak_gbps, title, out_dir / "roofline.png")
    config = {"model": plan.model, "batch": plan.batch, "seq_len": plan.seq_len, "dtype": dtype, "device": device,
              "warmup": args.warmup, "steps": args.steps, "repeats": plan.repeats}
    peak = {"tflops": peak_tflops, "gbps": peak_gbps, "source": peak_note}
    doc = profile.profile_document(meta, config, peak, costs, results, summaries, timed)
    (out_dir / "profile.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    print(f"\nwrote {out_dir / 'profile.json'}, traces, "
          + (f"{png.name}" if png else "no roofline (matplotlib is not installed)"))
    return 0


def _user_profile_plan(args, device: str, default_batch: int, default_dtype: str) -> ProfilePlan:
    """``profile --model PATH [--texts FILE]``: one batch of the user's texts, tokenized as the
    user's pipeline does; its padded length is the profiled sequence length."""
    if args.model is None:
        raise ValueError("--texts goes with --model PATH (your checkpoint on your texts)")
    _refuse_with_model(args, {"arch": "--arch", "model_dir": "--model-dir", "seq_len": "--seq-len"})
    batch = default_batch if args.batch is None else args.batch
    positive_ints(batch, "--batch")
    check_profile_counts(args)
    dtype = canonical_dtype(args.dtype) if args.dtype else default_dtype
    user = resolve_user_model(args.model)
    text_list, _ = read_texts(args.texts)
    feed = profile_batch(user, text_list, batch)
    out_dir = output_dir(args.out or str(default_out_dir("profile")), "--out")
    variants = ["fastbert"] + (["hf_sdpa"] if args.compare == "hf" else [])
    batch, seq_len = feed["input_ids"].shape
    return ProfilePlan(device, str(user.hf_dir), batch, seq_len, dtype, variants, out_dir, feed,
                       profile_repeats(args, device))


# ---------------------------------------------------------------------------
# fastbert bench --model PATH [--texts FILE]: the user's checkpoint on the user's texts
# ---------------------------------------------------------------------------

# Per device: (batch sizes, dtypes, warm-up passes, timed passes per variant).
TEXT_DEFAULTS = {"cuda": ([1, 8, 32, 128], ["float16"], 1, 5), "cpu": ([1, 8, 32, 128], ["float32"], 1, 3)}
SWEEP_ONLY = {"arch": "--arch", "model_dir": "--model-dir", "seq_len": "--seq-len", "no_varlen": "--no-varlen",
              "variants": "--variants", "compile": "--compile", "no_compile": "--no-compile", "quick": "--quick",
              "max_time_per_variant": "--max-time-per-variant"}
"""Options of the random-token sweep that mean nothing for ``--model`` (refused with it)."""


def _refuse_with_model(args, options: dict[str, str]) -> None:
    """ValueError when any of ``options`` (attribute -> flag) was given alongside ``--model``."""
    given = [flag for attr, flag in options.items() if getattr(args, attr, None) not in (None, False, [])]
    if given:
        raise ValueError(f"{' '.join(given)} cannot go with --model: --model runs your checkpoint on your texts, "
                         "the others choose the random-token runs (--arch / --model-dir)")


def text_bench_plan(args) -> texts.TextBenchPlan:
    """Resolve ``fastbert bench --model``'s arguments; ValueError/TypeError (exit 2) for any bad
    one, before any model loads."""
    _refuse_with_model(args, SWEEP_ONLY)
    device = resolve_device(args.device)
    apply_threads(args.threads)
    batches, dtypes, warmup, repeats = TEXT_DEFAULTS[device_type(device)]
    batches = args.batch or batches
    positive_ints(batches, "--batch")
    dtypes = [canonical_dtype(d) for d in args.dtype] if args.dtype else dtypes
    measure_options(args, device, list(texts.VARIANTS))  # checks --warmup, --repeats and --time-budget
    user = resolve_user_model(args.model)
    text_list, source = read_texts(args.texts)
    out_dir = output_dir(args.out or str(default_out_dir("bench")), "--out")
    notes = []
    if device_type(device) == "cpu":
        notes.append("measured on the CPU (no GPU used): these are CPU numbers, not GPU results")
    return texts.TextBenchPlan(
        user=user, texts=text_list, texts_source=source, device=device, dtypes=list(dict.fromkeys(dtypes)),
        batches=list(dict.fromkeys(batches)), warmup=warmup if args.warmup is None else args.warmup,
        repeats=repeats if args.repeats is None else args.repeats, time_budget_s=args.time_budget, out_dir=out_dir,
        notes=notes,
    )


def run_text_bench_command(args) -> int:
    """Run ``fastbert bench --model PATH [--texts FILE]``; returns the exit code."""
    wall_start = time.perf_counter()
    plan = text_bench_plan(args)
    runner = runner_class(plan.user).description
    plan.notes.append(f"plain: {runner}; fastbert: the same after fastbert.optimize")
    print(f"fastbert bench: {plan.user.path} ({plan.user.kind}) on {len(plan.texts)} texts from {plan.texts_source}, "
          f"batch {' '.join(map(str, plan.batches))}, {' '.join(plan.dtypes)}, on {plan.device}", file=sys.stderr)
    settings = {
        "model": plan.user.path, "kind": plan.user.kind, "runner": runner, "texts": plan.texts_source,
        "sentences": len(plan.texts), "max_seq_length": plan.user.max_seq_length, "device": plan.device,
        "dtypes": plan.dtypes, "batches": plan.batches, "warmup": plan.warmup, "repeats": plan.repeats,
        "time_budget_s": plan.time_budget_s, "notes": plan.notes,
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
    }
    record = texts.TextBenchRecord(plan, settings, started=wall_start)
    entries = texts.run_text_bench(plan, on_entry=record.save)
    return bench_exit_code(record.finish(entries))
