"""``fastbert profile``'s machinery: one configuration under ``torch.profiler``, its time
split by class of work, the counted work of that class, and achieved rates against the
device's peaks (tables, a roofline PNG, the JSON document).

- Rows: GPU, one row per CUDA kernel name (device time), classified by the op that
  launched it; CPU, one row per op name with its self CPU time, classified by its op chain.
- Classes (matmul, attention, layernorm, embedding, other): an op is classified by the
  innermost name in its chain (the op itself, then its parent ops) that matches a class; a
  GPU kernel by the chain of the op that launched it, then by its own name. In a BERT
  encoder batched matmuls (``bmm``) and softmax occur only inside attention, so they count
  as attention.
- Counted work: FLOPs and the minimum bytes of one forward per class, from the HF config
  (:func:`forward_costs` gives the formulas).
- Peaks: dense tensor-core rates and HBM bandwidth from NVIDIA's datasheets (:data:`_TABLE`),
  or given on the command line; unknown on the CPU.
- Timed forwards (:func:`timed_forwards`): the few profiled forwards cannot show how much a
  shared machine disturbed them, so every variant is also timed outside the profiler,
  interleaved, with its median, fastest and 90th percentile and the ratio's reliability.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from fastbert.bench import measure
from fastbert.bench.report import UNRELIABLE, pyplot


# ---------------------------------------------------------------------------
# Device peaks
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Peak:
    """Peak rates of one device: TFLOP/s per dtype and GB/s of memory bandwidth."""

    device: str
    tflops: dict  # dtype name -> TFLOP/s
    gbps: float
    source: str


# Dense (no sparsity) tensor-core rates and HBM bandwidth from NVIDIA's published datasheets
# (H100: "NVIDIA H100 Tensor Core GPU" datasheet, SXM / PCIe / NVL columns; H200: "NVIDIA
# H200 Tensor Core GPU" datasheet; A100: "NVIDIA A100 Tensor Core GPU" datasheet). The
# datasheets quote FP16/BF16 "with sparsity"; the dense rate is half of that (H100/H200
# SXM: 1,979 -> 989 TFLOP/s). float32 uses the non-tensor-core FP32 rate, since PyTorch's
# default float32 matmul does not use TF32. These are marketing peaks at boost clock;
# sustained rates are lower.
_TABLE = [
    # (substring of torch.cuda.get_device_name, Peak)
    ("H200 NVL", Peak("H200 NVL", {"float16": 835.0, "bfloat16": 835.0, "float32": 60.0}, 4800.0, "NVIDIA H200 datasheet")),
    ("H200", Peak("H200 SXM", {"float16": 989.0, "bfloat16": 989.0, "float32": 67.0}, 4800.0, "NVIDIA H200 datasheet")),
    ("H100 NVL", Peak("H100 NVL", {"float16": 835.0, "bfloat16": 835.0, "float32": 60.0}, 3900.0, "NVIDIA H100 datasheet")),
    ("H100 PCIe", Peak("H100 PCIe", {"float16": 756.0, "bfloat16": 756.0, "float32": 51.0}, 2000.0, "NVIDIA H100 datasheet")),
    ("H100", Peak("H100 SXM", {"float16": 989.0, "bfloat16": 989.0, "float32": 67.0}, 3350.0, "NVIDIA H100 datasheet")),
    ("A100-SXM4-80GB", Peak("A100 SXM 80GB", {"float16": 312.0, "bfloat16": 312.0, "float32": 19.5}, 2039.0, "NVIDIA A100 datasheet")),
    ("A100 80GB PCIe", Peak("A100 PCIe 80GB", {"float16": 312.0, "bfloat16": 312.0, "float32": 19.5}, 1935.0, "NVIDIA A100 datasheet")),
    ("A100", Peak("A100 40GB", {"float16": 312.0, "bfloat16": 312.0, "float32": 19.5}, 1555.0, "NVIDIA A100 datasheet")),
]


def known_peak(device_name: str | None) -> Peak | None:
    """The table's peak for a GPU name (e.g. ``"NVIDIA H200"``), or None (CPU or unknown GPU)."""
    if not device_name:
        return None
    for key, peak in _TABLE:
        if key.lower() in device_name.lower():
            return peak
    return None


def resolve_peak(device_name: str | None, dtype: str, tflops: float | None, gbps: float | None):
    """(peak TFLOP/s or None, peak GB/s or None, where they come from) for ``dtype``:
    values passed in win over the table; None where neither knows."""
    table = known_peak(device_name)
    peak_tflops = tflops if tflops is not None else (table.tflops.get(dtype) if table else None)
    peak_gbps = gbps if gbps is not None else (table.gbps if table else None)
    if tflops is not None or gbps is not None:
        source = "given on the command line" + (f" (others from {table.source}, {table.device})" if table else "")
    elif table:
        source = f"{table.source}, {table.device}, dense"
    else:
        source = "peak unknown for this device"
    return peak_tflops, peak_gbps, source


# ---------------------------------------------------------------------------
# Classes of work
# ---------------------------------------------------------------------------


CLASSES = ("matmul", "attention", "layernorm", "embedding", "other")

_PATTERNS = [
    ("attention", re.compile(r"attention|attn|sdpa|flash|fmha|bmm|softmax", re.I)),
    ("layernorm", re.compile(r"layer_?norm", re.I)),
    ("matmul", re.compile(r"addmm|aten::mm$|matmul|linear|gemm|gemv|cutlass|xmma", re.I)),
    ("embedding", re.compile(r"embedding|index_select", re.I)),
]


def match(name: str) -> str | None:
    """The class ``name`` names, or None."""
    for cls, pattern in _PATTERNS:
        if pattern.search(name):
            return cls
    return None


def classify(chain: list[str], kernel: str | None = None) -> str:
    """Class of an op (``chain``: its name, then its parents') or of ``kernel`` launched by it."""
    for name in chain:
        cls = match(name)
        if cls is not None:
            return cls
    if kernel is not None:
        return match(kernel) or "other"
    return "other"


# ---------------------------------------------------------------------------
# Counted work per forward
# ---------------------------------------------------------------------------


@dataclass
class Cost:
    """Counted work of one class for one forward (flops None where not counted)."""

    flops: float | None
    bytes: float


def encoder_dims(config) -> tuple[int, int, int]:
    """(layers, hidden, intermediate) from an HF config of any supported family."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim")
    inter = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim")
    return int(layers), int(hidden), int(inter)


def forward_costs(config, batch: int, seq_len: int, elem_bytes: int, pooler: bool) -> dict[str, Cost]:
    """``{class: Cost}`` for one forward of ``batch`` rows of ``seq_len`` real tokens.

    T = batch * seq_len tokens, hidden size H, intermediate size I, L layers, element size e
    bytes; a multiply-add counts as 2 FLOPs. Bytes are the *minimum* traffic: every input
    read once and every output written once (an implementation that materializes
    intermediates, such as eager attention's score matrix, moves more; its achieved GB/s is
    then an underestimate of its real traffic).

    - matmul, per layer: QKV (T x H) @ (H x 3H), output projection H x H, FFN H x I and
      I x H: FLOPs 2 T (3H^2 + H^2 + 2 H I); bytes e (A + W + C) per GEMM. Plus the pooler
      (B x H) @ (H x H) when the model has one. Biases and activations are not counted.
    - attention, per layer: Q K^T and P V over full (non-causal) rows: FLOPs 4 B S^2 H;
      bytes e * 4 T H (read Q, K, V, write the output).
    - layernorm, per layer: two residual-add + LayerNorms, each reading x and the residual
      and writing the output: bytes 2 * 3 e T H; FLOPs not counted (memory-bound).
    - embedding: word, position and token-type rows read and the normalized sum written:
      bytes 4 e T H; FLOPs not counted.

    ALBERT's embedding projection and DistilBERT's missing token types are not modelled.
    """
    layers, h, inter = encoder_dims(config)
    t, e = batch * seq_len, elem_bytes

    def gemm_bytes(m, k, n):
        return e * (m * k + k * n + m * n)

    mm_flops = layers * 2 * t * (4 * h * h + 2 * h * inter)
    mm_bytes = layers * (gemm_bytes(t, h, 3 * h) + gemm_bytes(t, h, h) + gemm_bytes(t, h, inter) + gemm_bytes(t, inter, h))
    if pooler:
        mm_flops += 2 * batch * h * h
        mm_bytes += gemm_bytes(batch, h, h)
    return {
        "matmul": Cost(float(mm_flops), float(mm_bytes)),
        "attention": Cost(float(layers * 4 * batch * seq_len * seq_len * h), float(layers * e * 4 * t * h)),
        "layernorm": Cost(None, float(layers * 2 * 3 * e * t * h)),
        "embedding": Cost(None, float(4 * e * t * h)),
    }


# ---------------------------------------------------------------------------
# The profiler run
# ---------------------------------------------------------------------------


@dataclass
class OpRow:
    """Time spent in one op or kernel over the profiled forwards."""

    name: str
    op_class: str
    calls: int
    self_us: float
    share: float  # of the total profiled time

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class ProfileResult:
    """Rows (largest first), totals and what was timed."""

    rows: list[OpRow]
    total_us: float
    steps: int
    timed: str  # "CUDA kernel time" or "CPU self time"


def _chain(event) -> list[str]:
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


def _is_device(event) -> bool:
    return event.device_type != torch.autograd.DeviceType.CPU


def rows_from_events(events, on_gpu: bool) -> ProfileResult:
    """Aggregate profiler ``events`` into rows, largest first (see the module docstring)."""
    totals, calls = defaultdict(float), defaultdict(int)
    if on_gpu:
        launchers = {e.id: e for e in events if not _is_device(e)}
        for e in events:
            if _is_device(e) and e.device_type == torch.autograd.DeviceType.CUDA:
                launcher = launchers.get(getattr(e, "linked_correlation_id", 0))
                key = (e.name, classify(_chain(launcher) if launcher else [], kernel=e.name))
                totals[key] += e.time_range.elapsed_us()
                calls[key] += 1
        timed = "CUDA kernel time"
    else:
        for e in events:
            if not _is_device(e) and not e.is_async:
                key = (e.name, classify(_chain(e)))
                totals[key] += e.self_cpu_time_total
                calls[key] += 1
        timed = "CPU self time"
    total = sum(totals.values()) or 1.0
    rows = [OpRow(n, c, calls[(n, c)], t, t / total) for (n, c), t in totals.items()]
    rows.sort(key=lambda r: -r.self_us)
    return ProfileResult(rows, sum(totals.values()), 0, timed)


def profile_model(model, feed: dict, device, warmup: int, steps: int, trace_path: Path) -> ProfileResult:
    """Profile ``steps`` forwards of ``model(**feed)`` after ``warmup`` ones; write a Chrome trace."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with torch.no_grad():
        for _ in range(warmup):
            model(**feed)
        if on_gpu:
            torch.cuda.synchronize(device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                model(**feed)
            if on_gpu:
                torch.cuda.synchronize(device)
    prof.export_chrome_trace(str(trace_path))
    result = rows_from_events(prof.events(), on_gpu)
    result.steps = steps
    return result


def timed_forwards(models: dict, feed: dict, device, warmup: int, repeats: int) -> dict[str, dict]:
    """Wall time of ``repeats`` forwards of each model outside the profiler, interleaved (one
    forward of each in turn, as ``fastbert bench`` times), after ``warmup`` each:
    ``{name: {"median_ms", "min_ms", "p90_ms", "repeats"}}``. A few profiled forwards cannot
    say how much a shared machine disturbed them; these show it."""
    calls = {name: (lambda m=model: m(**feed)) for name, model in models.items()}
    with torch.no_grad():
        for call in calls.values():
            measure.warm_up(call, device, warmup)
        times, _, failed = measure.interleaved(calls, dict.fromkeys(calls, repeats), device)
    if failed:
        raise next(iter(failed.values()))
    timings = {n: measure.summarize(t, 0.0, measure.timer_name(device)) for n, t in times.items()}
    return {n: {"median_ms": t.median_s * 1e3, "min_ms": t.min_s * 1e3, "p90_ms": t.p90_s * 1e3, "repeats": t.repeats,
                "timer": t.timer} for n, t in timings.items()}


def timed_ratio(wall: dict[str, dict]) -> dict | None:
    """With two timed models (fastbert first): the second's time over the first's, from medians
    and from minima, and whether it is reliable (their [min, p90] ranges do not overlap)."""
    if len(wall) != 2:
        return None
    (fb, f), (other, o) = wall.items()
    return {"of": f"{other}/{fb}", "median": o["median_ms"] / f["median_ms"], "min": o["min_ms"] / f["min_ms"],
            "reliable": not measure.ranges_overlap(f["min_ms"], f["p90_ms"], o["min_ms"], o["p90_ms"])}


def format_timed(wall: dict[str, dict]) -> str:
    """The timed forwards: median, fastest and 90th percentile per model, and their ratio."""
    lines = [f"{'variant':<10} {'median ms':>10} {'min ms':>10} {'p90 ms':>10}"]
    lines += [f"{n:<10} {w['median_ms']:>10.3f} {w['min_ms']:>10.3f} {w['p90_ms']:>10.3f}" for n, w in wall.items()]
    ratio = timed_ratio(wall)
    if ratio is not None:
        verdict = "" if ratio["reliable"] else (f" {UNRELIABLE} unreliable: the two ranges (fastest to 90th "
                                                "percentile) overlap; rerun with more --repeats on a quieter machine")
        lines.append(f"{ratio['of']}: {ratio['median']:.2f}x (medians), {ratio['min']:.2f}x (minima){verdict}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Tables and the roofline
# ---------------------------------------------------------------------------


@dataclass
class ClassRow:
    """Measured time and counted work of one class, with achieved rates against the peak."""

    op_class: str
    time_us: float  # per forward
    share: float
    flops: float | None
    bytes: float | None
    tflops: float | None
    gbps: float | None
    frac_peak_flops: float | None
    frac_peak_bw: float | None
    frac_roofline: float | None  # roofline time (max of the two floors) / measured time

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def class_summary(result: ProfileResult, costs: dict[str, Cost], peak_tflops, peak_gbps) -> list[ClassRow]:
    """Per-class rows: time per forward from ``result``, work from ``costs``, rates against peaks."""
    per_class = {c: 0.0 for c in CLASSES}
    for r in result.rows:
        per_class[r.op_class] += r.self_us / max(result.steps, 1)
    total = sum(per_class.values()) or 1.0
    rows = []
    for cls in CLASSES:
        t_us = per_class[cls]
        cost = costs.get(cls)
        flops = cost.flops if cost else None
        nbytes = cost.bytes if cost else None
        seconds = t_us * 1e-6
        tflops = flops / seconds / 1e12 if flops and seconds > 0 else None
        gbps = nbytes / seconds / 1e9 if nbytes and seconds > 0 else None
        floors = [x for x in ((flops / (peak_tflops * 1e12)) if flops and peak_tflops else None,
                              (nbytes / (peak_gbps * 1e9)) if nbytes and peak_gbps else None) if x is not None]
        rows.append(ClassRow(
            cls, t_us, t_us / total, flops, nbytes, tflops, gbps,
            tflops / peak_tflops if tflops and peak_tflops else None,
            gbps / peak_gbps if gbps and peak_gbps else None,
            max(floors) / seconds if floors and seconds > 0 else None,
        ))
    return rows


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_rows(result: ProfileResult, top: int) -> str:
    """The ``top`` largest ops/kernels: name, class, launches (calls), self time, share."""
    lines = [f"{'op / kernel':<60} {'class':<10} {'calls':>6} {'self ms':>9} {'share':>6}"]
    for r in result.rows[:top]:
        name = r.name if len(r.name) <= 60 else r.name[:57] + "..."
        lines.append(f"{name:<60} {r.op_class:<10} {r.calls:>6} {r.self_us / 1e3:>9.3f} {100 * r.share:>5.1f}%")
    rest = result.rows[top:]
    if rest:
        lines.append(f"{f'({len(rest)} more)':<60} {'':<10} {sum(r.calls for r in rest):>6} "
                     f"{sum(r.self_us for r in rest) / 1e3:>9.3f} {100 * sum(r.share for r in rest):>5.1f}%")
    lines.append(f"total {result.timed}: {result.total_us / 1e3:.3f} ms over {result.steps} forwards")
    return "\n".join(lines)


def format_classes(rows: list[ClassRow], peak_note: str) -> str:
    """Per-class table: time per forward, share, counted GFLOP and MB, achieved rates, fractions of peak."""
    lines = [f"{'class':<10} {'ms/fwd':>9} {'share':>6} {'GFLOP':>9} {'MB':>9} {'TFLOP/s':>8} {'GB/s':>8} "
             f"{'%peakF':>7} {'%peakBW':>7} {'%roof':>6}"]
    for r in rows:
        lines.append(
            f"{r.op_class:<10} {r.time_us / 1e3:>9.3f} {100 * r.share:>5.1f}% {_f(r.flops and r.flops / 1e9, '9.2f'):>9} "
            f"{_f(r.bytes and r.bytes / 1e6, '9.1f'):>9} {_f(r.tflops, '8.2f'):>8} {_f(r.gbps, '8.1f'):>8} "
            f"{_f(r.frac_peak_flops and 100 * r.frac_peak_flops, '6.1f'):>7} {_f(r.frac_peak_bw and 100 * r.frac_peak_bw, '6.1f'):>7} "
            f"{_f(r.frac_roofline and 100 * r.frac_roofline, '5.1f'):>6}"
        )
    lines.append(f"peaks: {peak_note}")
    return "\n".join(lines)


def format_side_by_side(summaries: dict[str, list[ClassRow]]) -> str:
    """Per-class time per forward of each profiled model, and the ratio of the first two."""
    names = list(summaries)
    head = f"{'class':<10} " + " ".join(f"{n + ' ms':>14}" for n in names)
    if len(names) == 2:
        head += f" {names[1] + '/' + names[0]:>18}"
    lines = [head]
    by_class = {n: {r.op_class: r for r in rows} for n, rows in summaries.items()}
    for cls in CLASSES + ("total",):
        times = [sum(r.time_us for r in summaries[n]) if cls == "total" else by_class[n][cls].time_us for n in names]
        line = f"{cls:<10} " + " ".join(f"{t / 1e3:>14.3f}" for t in times)
        if len(names) == 2:
            line += f" {(times[1] / times[0]) if times[0] > 0 else float('nan'):>17.2f}x"
        lines.append(line)
    return "\n".join(lines)


def write_roofline(summaries: dict, peak_tflops, peak_gbps, title: str, path: Path) -> Path | None:
    """Roofline PNG: achieved TFLOP/s against arithmetic intensity per class, under the
    device's compute and bandwidth roofs when known, beside achieved GB/s per class, for
    ``summaries`` (``{model name: [ClassRow]}``); None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, (roof, bw) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = ["o", "s", "^", "D"]  # one per profiled model
    colors = {cls: f"C{i}" for i, cls in enumerate(CLASSES)}  # one per class of work
    intensities = []
    for i, (name, rows) in enumerate(summaries.items()):
        for r in rows:
            if r.flops and r.bytes and r.tflops:
                ai = r.flops / r.bytes
                intensities.append(ai)
                roof.scatter(ai, r.tflops, marker=markers[i % len(markers)], color=colors[r.op_class],
                             label=f"{name}: {r.op_class}")
    if peak_tflops and peak_gbps:
        lo, hi = min(intensities + [1.0]) / 4, max(intensities + [peak_tflops * 1e3 / peak_gbps]) * 4
        xs = [lo * (hi / lo) ** (k / 100) for k in range(101)]
        roof.plot(xs, [min(peak_tflops, x * peak_gbps / 1e3) for x in xs], color="black", linewidth=1,
                  label=f"roof: {peak_tflops:g} TFLOP/s, {peak_gbps:g} GB/s")
    else:
        roof.text(0.5, 0.02, "peak unknown for this device: no roof drawn", transform=roof.transAxes, ha="center", fontsize=8)
    roof.set_xscale("log")
    roof.set_yscale("log")
    roof.set_xlabel("arithmetic intensity (counted FLOP / counted byte)")
    roof.set_ylabel("achieved TFLOP/s")
    roof.grid(True, which="both", alpha=0.3)
    roof.legend(fontsize=7)
    labels, values = [], []
    for name, rows in summaries.items():
        for r in rows:
            if r.gbps:
                labels.append(f"{name}\n{r.op_class}")
                values.append(r.gbps)
    bw.barh(range(len(values)), values, color=[colors[label.split("\n")[1]] for label in labels])
    bw.set_yticks(range(len(values)), labels, fontsize=7)
    if peak_gbps:
        bw.axvline(peak_gbps, color="black", linewidth=1, label=f"peak {peak_gbps:g} GB/s")
        bw.legend(fontsize=7)
    bw.set_xlabel("achieved GB/s (counted bytes / time)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def profile_document(meta: dict, config: dict, peak: dict, costs: dict[str, Cost], results: dict[str, ProfileResult],
                     summaries: dict[str, list[ClassRow]], timed: dict | None = None) -> dict:
    """The JSON document of one ``fastbert profile`` run (schema ``fastbert-profile/1``; ``timed``:
    :func:`timed_forwards`, with ``"ratio"``: :func:`timed_ratio`)."""
    return {
        "schema": "fastbert-profile/1", "metadata": meta, "config": config, "peak": peak, "timed": timed,
        "costs": {k: {"flops": c.flops, "bytes": c.bytes} for k, c in costs.items()},
        "profiles": {n: {"timed": r.timed, "total_us": r.total_us, "steps": r.steps,
                         "rows": [row.to_dict() for row in r.rows],
                         "classes": [c.to_dict() for c in summaries[n]],
                         "trace": f"trace-{n}.json"} for n, r in results.items()},
    }  # fmt: skip
