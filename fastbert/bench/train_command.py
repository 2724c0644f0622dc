"""``fastbert bench --train``: from parsed arguments to a training-step run, its output and
its exit code.

The arguments are ``fastbert bench``'s, resolved by the same functions
(:mod:`fastbert.bench.command`) with the training defaults of :mod:`fastbert.bench.train`;
then the sweep (:func:`fastbert.bench.train.run_train_sweep`), on a GPU the largest-batch
searches (:mod:`fastbert.bench.max_batch`), and the report
(:mod:`fastbert.bench.train_report`).
"""

from __future__ import annotations

import sys
import time

from fastbert.bench import max_batch, sweep, train, train_report
from fastbert.bench.command import (BenchPlan, announce_run, apply_threads, bench_exit_code, choose_variants,
                                    default_out_dir, device_type, measure_options, run_bench_command)
from fastbert.cli_args import output_dir, resolve_device
from fastbert.models import max_sequence_length


def train_plan(args) -> BenchPlan:
    """Resolve ``fastbert bench --train``'s arguments (its own defaults: :mod:`fastbert.bench.train`);
    ValueError (exit 2) for any bad one, before any work. ``options`` are TrainOptions."""
    for flag, value in (("--model", args.model), ("--texts", args.texts)):
        if value is not None:
            raise ValueError(f"{flag} times inference on your texts and does not go with --train "
                             "(train a checkpoint with --model-dir DIR)")
    device = resolve_device(args.device)
    apply_threads(args.threads)
    dev_type = device_type(device)
    variants, notes = choose_variants(device, args.variants, args.compile, args.no_compile, train.TRAIN_VARIANTS)
    chosen = train.train_defaults(dev_type, args.quick)
    archs = args.arch or ([] if args.model_dir else chosen["models"])
    configs = sweep.resolve_sweep(dev_type, args.quick, archs, args.model_dir, args.batch or chosen["batches"],
                                  args.seq_len or chosen["seq_lens"], args.dtype or chosen["dtypes"], varlen=not args.no_varlen)
    bench_opts = measure_options(args, device, variants, train.MEASURE_DEFAULTS)
    options = train.TrainOptions(**vars(bench_opts), task=args.task or "cls")
    out_dir = output_dir(args.out or str(default_out_dir("train")), "--out")
    if dev_type == "cpu":
        notes.insert(0, "measured on the CPU (no GPU used): these are CPU numbers, not GPU results")
        notes.append("largest-batch search: not run on the CPU (it looks for the GPU's out-of-memory point; "
                     "a CPU swaps or is killed instead)")
    elif args.no_max_batch:
        notes.append("largest-batch search: skipped (--no-max-batch)")
    notes.append("peak memory: " + (train.TRAIN_MEMORY_KIND if dev_type == "cuda" else "not measured on the CPU (null)"))
    return BenchPlan(device, variants, notes, configs, options, out_dir)


def run_bench_or_train_command(args) -> int:
    """``fastbert bench``: :func:`run_train_command` with ``--train``, else the forward bench."""
    return run_train_command(args) if args.train else run_bench_command(args)


def run_train_command(args) -> int:
    """Run ``fastbert bench --train`` for parsed CLI ``args``; returns the exit code: 1 when a
    variant failed with an error, nothing was measured, or a variant's loss disagreed."""
    wall_start = time.perf_counter()
    plan = train_plan(args)
    opts = plan.options
    settings = announce_run(plan, args, f"fastbert bench --train ({opts.task})", task=opts.task,
                            learning_rate=train.LEARNING_RATE, weight_decay=train.WEIGHT_DECAY)
    record = train_report.TrainRecord(plan.device, settings, plan.out_dir, started=wall_start)
    opts.on_entry = record.save
    entries = train.run_train_sweep(plan.configs, opts)
    if device_type(plan.device) == "cuda" and not args.no_max_batch:
        record.max_batch = _max_batch_searches(plan, opts, not args.no_varlen, wall_start)
    doc = record.finish(entries, plots=not args.no_plots)
    code = bench_exit_code(doc, "train.json")
    disagreeing = train_report.loss_failures(entries)
    if disagreeing:
        print(f"fastbert bench --train: the loss of {len(disagreeing)} variant(s) disagrees; see train.json", file=sys.stderr)
        code = 1
    return code


def _max_batch_searches(plan: BenchPlan, opts, varlen: bool, wall_start: float) -> list[dict]:
    """The largest-batch searches for the first model and dtype of the run, at seq 128 and 512
    (those its position table holds), fixed-length and, with ``varlen``, variable-length."""
    cfg = plan.configs[0]
    task_model = train.load_task_model(cfg.model, opts.task, opts.seed)
    seq_lens = [s for s in max_batch.SEQ_LENS if s <= max_sequence_length(task_model.config)]
    spent = lambda: opts.time_budget_s is not None and time.perf_counter() - wall_start > opts.time_budget_s  # noqa: E731
    return max_batch.run_max_batch(task_model, plan.variants, opts.task, cfg.dtype, seq_lens, [False, True] if varlen else [False],
                                   opts, spent)
