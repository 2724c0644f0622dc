"""PNG plots of a bench run: throughput and fastbert's speedup against batch size.

One figure pair per (model, dtype); one line per sequence length (variable-length
batches as their own line); throughput has one panel per variant, speedup one panel per
baseline. matplotlib is imported lazily: without it, :func:`write_plots` returns None.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from fastbert.bench.runners import BASELINES


def _series(entries, model, dtype, value):
    """``{line label: [(batch, y), ...]}`` for one model and dtype."""
    lines = defaultdict(list)
    for e in entries:
        c = e["config"]
        if c["model"] != model or c["dtype"] != dtype:
            continue
        y = value(e)
        if y is not None:
            lines[f"seq {c['seq_len']}{' varlen' if c['varlen'] else ''}"].append((c["batch"], y))
    return {k: sorted(v) for k, v in lines.items()}


def _panel(ax, lines, title, ylabel):
    batches = sorted({p[0] for points in lines.values() for p in points})
    for label, points in sorted(lines.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    if batches:
        ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(fontsize=7)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_plots(doc: dict, out_dir: Path) -> list[Path] | None:
    """Write ``throughput-<model>-<dtype>.png`` and ``speedup-<model>-<dtype>.png`` into
    ``out_dir``; returns their paths, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    entries, meta = doc["results"], doc["metadata"]
    where = f"GPU: {meta['gpu_name']}" if meta.get("measured_on_gpu") else f"CPU (not a GPU result): {meta.get('cpu_name')}"
    variants = doc["settings"]["variants"]
    baselines = [v for v in variants if v in BASELINES]
    written = []
    for model, dtype in sorted({(e["config"]["model"], e["config"]["dtype"]) for e in entries}):
        suffix = f"{_safe(Path(model).name)}-{dtype}.png"
        fig, axes = plt.subplots(1, len(variants), figsize=(3.6 * len(variants), 3.4), squeeze=False)
        for ax, v in zip(axes[0], variants):
            lines = _series(entries, model, dtype, lambda e, v=v: e["variants"][v]["real_tokens_per_s"])
            _panel(ax, lines, v, "real tokens / s")
        fig.suptitle(f"{model} {dtype}: throughput (median) — {where}", fontsize=10)
        fig.tight_layout()
        written.append(out_dir / f"throughput-{suffix}")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
        if baselines:
            fig, axes = plt.subplots(1, len(baselines), figsize=(3.6 * len(baselines), 3.4), squeeze=False)
            for ax, b in zip(axes[0], baselines):
                lines = _series(entries, model, dtype, lambda e, b=b: e["speedup"].get("fastbert", {}).get(b))
                _panel(ax, lines, f"fastbert vs {b}", "speedup (x)")
                ax.axhline(1.0, color="grey", linewidth=0.8)
            fig.suptitle(f"{model} {dtype}: fastbert speedup — {where}", fontsize=10)
            fig.tight_layout()
            written.append(out_dir / f"speedup-{suffix}")
            fig.savefig(written[-1], dpi=110)
            plt.close(fig)
    return written
