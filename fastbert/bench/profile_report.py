"""Tables of a profile: per op/kernel rows, per-class achieved rates, and a side-by-side."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fastbert.bench.opclass import CLASSES
from fastbert.bench.opcost import Cost
from fastbert.bench.profiling import ProfileResult


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
