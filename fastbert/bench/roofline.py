"""Roofline PNG of a profile: achieved TFLOP/s against arithmetic intensity per class,
under the device's compute and bandwidth roofs when known, beside achieved GB/s per class.
matplotlib is imported lazily: without it, :func:`write_roofline` returns None."""

from __future__ import annotations

from pathlib import Path

from fastbert.bench.opclass import CLASSES


def write_roofline(summaries: dict, peak_tflops, peak_gbps, title: str, path: Path) -> Path | None:
    """Write the plot for ``summaries`` (``{model name: [ClassRow]}``); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
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
