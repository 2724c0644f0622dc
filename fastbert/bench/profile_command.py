"""``fastbert profile``: one configuration under torch.profiler, fastbert (and HF SDPA with
``--compare hf``): Chrome traces, per-kernel tables, per-class rates, roofline PNG, JSON."""

from __future__ import annotations

import json
import torch

from fastbert.bench import metadata, opcost, peaks, profile_report, roofline
from fastbert.bench.command import apply_threads, check_seq_len, default_out_dir, resolve_device
from fastbert.bench.inputs import make_batch
from fastbert.bench.profiling import profile_model
from fastbert.bench.runners import VARIANTS, load_base_model
from fastbert.bench.sweep import canonical_dtype
from fastbert.check import DTYPES
from fastbert.cli_args import checkpoint_dir, output_dir, positive_ints

# Defaults per device: (arch, batch, seq_len, dtype).
PROFILE_DEFAULTS = {"cuda": ("bert-base", 32, 128, "float16"), "cpu": ("bert-tiny", 4, 64, "float32")}


def run_profile_command(args) -> int:
    """Run ``fastbert profile`` for parsed CLI ``args``; returns the exit code."""
    device = resolve_device(args.device)
    apply_threads(args.threads)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    arch, batch, seq_len, dtype = PROFILE_DEFAULTS[dev_type]
    if args.model_dir and args.arch:
        raise ValueError("give --arch or --model-dir, not both")
    if args.model_dir:
        checkpoint_dir(args.model_dir, "--model-dir")
    model_name = args.model_dir or args.arch or arch
    batch = batch if args.batch is None else args.batch
    seq_len = seq_len if args.seq_len is None else args.seq_len
    dtype = canonical_dtype(args.dtype) if args.dtype else dtype
    positive_ints(batch, "--batch")
    positive_ints(seq_len, "--seq-len")
    positive_ints(args.steps, "--steps")
    if args.warmup < 0 or args.top < 1:
        raise ValueError(f"--warmup must be at least 0 and --top positive, got {args.warmup} and {args.top}")
    check_seq_len(model_name, seq_len)
    out_dir = output_dir(args.out or str(default_out_dir("profile")), "--out")

    base = load_base_model(model_name, args.seed)
    feed = make_batch(base.config, batch, seq_len, False, args.seed, device)
    names = ["fastbert"] + (["hf_sdpa"] if args.compare == "hf" else [])
    meta = metadata.collect(device)
    peak_tflops, peak_gbps, peak_note = peaks.resolve_peak(meta.get("gpu_name"), dtype, args.peak_tflops, args.peak_gbps)
    if dev_type == "cpu" and args.peak_tflops is None:
        peak_note = "peak unknown on the CPU; measured on the CPU (not a GPU result)"
    elem = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    costs = opcost.forward_costs(base.config, batch, seq_len, elem, pooler=getattr(base, "pooler", None) is not None)

    where = meta.get("gpu_name") or f"CPU ({meta.get('cpu_name')}), not a GPU result"
    print(f"fastbert profile: {model_name}, batch {batch} x seq {seq_len}, {dtype}, on {where}")
    results, summaries = {}, {}
    for name in names:
        model = VARIANTS[name].build(base, DTYPES[dtype], torch.device(device))
        trace = out_dir / f"trace-{name}.json"
        result = profile_model(model, feed, device, args.warmup, args.steps, trace)
        results[name] = result
        summaries[name] = profile_report.class_summary(result, costs, peak_tflops, peak_gbps)
        print(f"\n== {name}: per op/kernel ({result.timed}) — Chrome trace {trace}")
        print(profile_report.format_rows(result, args.top))
        print(f"\n== {name}: per class, counted work per forward (see fastbert/bench/opcost.py)")
        print(profile_report.format_classes(summaries[name], peak_note))
        del model
    if len(names) > 1:
        print("\n== where the time went, per forward")
        print(profile_report.format_side_by_side(summaries))

    title = f"{model_name} b={batch} s={seq_len} {dtype} — {where}"
    png = roofline.write_roofline(summaries, peak_tflops, peak_gbps, title, out_dir / "roofline.png")
    doc = {
        "schema": "fastbert-profile/1", "metadata": meta,
        "config": {"model": model_name, "batch": batch, "seq_len": seq_len, "dtype": dtype, "device": device,
                   "warmup": args.warmup, "steps": args.steps},
        "peak": {"tflops": peak_tflops, "gbps": peak_gbps, "source": peak_note},
        "costs": {k: {"flops": c.flops, "bytes": c.bytes} for k, c in costs.items()},
        "profiles": {n: {"timed": r.timed, "total_us": r.total_us, "steps": r.steps,
                         "rows": [row.to_dict() for row in r.rows],
                         "classes": [c.to_dict() for c in summaries[n]],
                         "trace": f"trace-{n}.json"} for n, r in results.items()},
    }
    (out_dir / "profile.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    print(f"\nwrote {out_dir / 'profile.json'}, traces, "
          + (f"{png.name}" if png else "no roofline (matplotlib is not installed)"))
    return 0
